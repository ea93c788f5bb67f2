//! A cluster at run time: its current endpoints and balancer, connection
//! pools, circuit breakers, retry budget and metrics. Everything about how
//! an endpoint is chosen lives here; the router only names the cluster.

mod limits;
mod pool;
mod retry_budget;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use gridmesh_proto::config::cluster::UpstreamProtocol;
use http::{HeaderMap, Request, Response, Version};
use hyper::body::Incoming;
use serde::Serialize;

use crate::body::Body;
use crate::config::{ClusterSpec, EndpointAddress};
use crate::error::ProxyError;
use crate::metrics::{ClusterMetrics, Metrics};

pub use limits::Permit;
use pool::Pool;
pub use pool::SendError;
use retry_budget::RetryBudget;

pub struct Cluster {
    pub spec: Arc<ClusterSpec>,
    pub metrics: ClusterMetrics,
    limits: Arc<limits::Limits>,
    retry_budget: RetryBudget,
    endpoints: ArcSwap<EndpointSet>,
}

/// One immutable set of endpoints with the balancer built for it. A change
/// (DNS, a config update) builds a new set off the request path and swaps it in.
pub struct EndpointSet {
    endpoints: Vec<Arc<Endpoint>>,
    next: AtomicUsize,
}

pub struct Endpoint {
    pub addr: SocketAddr,
    pub weight: u32,
    pool: Arc<Pool>,
    requests: AtomicU64,
    failures: AtomicU64,
}

impl Cluster {
    pub fn new(spec: Arc<ClusterSpec>, metrics: &Metrics) -> Arc<Self> {
        let limits = Arc::new(limits::Limits::new(
            spec.max_requests,
            spec.max_pending_requests,
            spec.max_connections,
        ));
        let cluster = Arc::new(Cluster {
            metrics: metrics.cluster(&spec.name),
            retry_budget: RetryBudget::new(spec.retry_percent, spec.min_retries_per_second),
            limits,
            endpoints: ArcSwap::from_pointee(EndpointSet {
                endpoints: Vec::new(),
                next: AtomicUsize::new(0),
            }),
            spec,
        });
        let static_endpoints = cluster
            .spec
            .endpoints
            .iter()
            .filter_map(|e| match e.address {
                EndpointAddress::Socket(addr) => Some((addr, e.weight)),
                EndpointAddress::Dns { .. } => None,
            })
            .collect();
        cluster.set_endpoints(static_endpoints);
        cluster
    }

    /// Replaces the endpoint set. Endpoints that stay keep their pools and
    /// load state; removed ones finish their in-flight requests and close.
    pub fn set_endpoints(&self, addrs: Vec<(SocketAddr, u32)>) {
        let current = self.endpoints.load();
        let existing: HashMap<(SocketAddr, u32), &Arc<Endpoint>> = current
            .endpoints
            .iter()
            .map(|e| ((e.addr, e.weight), e))
            .collect();
        let endpoints = addrs
            .into_iter()
            .map(|(addr, weight)| {
                existing
                    .get(&(addr, weight))
                    .map(|e| Arc::clone(e))
                    .unwrap_or_else(|| {
                        Arc::new(Endpoint {
                            addr,
                            weight,
                            pool: Arc::new(Pool::new(
                                addr,
                                self.spec.connect_timeout,
                                self.spec.idle_connection_timeout,
                                self.limits.clone(),
                            )),
                            requests: AtomicU64::new(0),
                            failures: AtomicU64::new(0),
                        })
                    })
            })
            .collect();
        self.endpoints.store(Arc::new(EndpointSet {
            endpoints,
            next: AtomicUsize::new(0),
        }));
    }

    /// Admits a request under the `max_requests` breaker.
    pub fn admit(&self) -> Result<Permit, ProxyError> {
        self.limits.admit_request().ok_or_else(|| {
            self.metrics.overflow_requests.inc();
            ProxyError::RequestOverflow
        })
    }

    pub fn deposit_request(&self) {
        self.metrics.requests.inc();
        self.retry_budget.deposit();
    }

    pub fn try_retry(&self) -> bool {
        let allowed = self.retry_budget.try_withdraw();
        if allowed {
            self.metrics.retries.inc();
        }
        allowed
    }

    pub fn pick(&self, _headers: &HeaderMap) -> Result<Arc<Endpoint>, ProxyError> {
        let set = self.endpoints.load();
        if set.endpoints.is_empty() {
            return Err(ProxyError::NoHealthyUpstream);
        }
        let i = set.next.fetch_add(1, Ordering::Relaxed) % set.endpoints.len();
        Ok(set.endpoints[i].clone())
    }

    /// The protocol to speak upstream for a request that arrived as `downstream`.
    pub fn upstream_version(&self, downstream: Version) -> Version {
        match self.spec.protocol {
            UpstreamProtocol::Http1 => Version::HTTP_11,
            UpstreamProtocol::Http2 => Version::HTTP_2,
            UpstreamProtocol::UseDownstream if downstream == Version::HTTP_2 => Version::HTTP_2,
            UpstreamProtocol::UseDownstream => Version::HTTP_11,
        }
    }

    pub fn status(&self) -> ClusterStatus {
        let set = self.endpoints.load();
        ClusterStatus {
            name: self.spec.name.clone(),
            lb_policy: self.spec.lb_policy.as_str_name(),
            requests_in_flight: self.limits.requests_in_flight(),
            connections_open: self.limits.open_connections(),
            endpoints: set
                .endpoints
                .iter()
                .map(|e| EndpointStatus {
                    address: e.addr,
                    weight: e.weight,
                    requests: e.requests.load(Ordering::Relaxed),
                    failures: e.failures.load(Ordering::Relaxed),
                    idle_http1_connections: e.pool.idle_http1_connections(),
                })
                .collect(),
        }
    }
}

impl Endpoint {
    pub async fn send(
        &self,
        req: Request<Body>,
        metrics: &ClusterMetrics,
    ) -> Result<Response<Incoming>, SendError> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let result = if req.version() == Version::HTTP_2 {
            self.pool.send_http2(req, metrics).await
        } else {
            self.pool.send_http1(req, metrics).await
        };
        if result.is_err() {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

/// What `/clusters` shows.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    name: String,
    lb_policy: &'static str,
    requests_in_flight: u32,
    connections_open: u32,
    endpoints: Vec<EndpointStatus>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EndpointStatus {
    address: SocketAddr,
    weight: u32,
    requests: u64,
    failures: u64,
    idle_http1_connections: usize,
}
