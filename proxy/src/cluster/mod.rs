//! A cluster at run time: its current endpoints and balancer, connection
//! pools, circuit breakers, retry budget and metrics. Everything about how
//! an endpoint is chosen lives here; the router only names the cluster.

mod limits;
mod peer_settings;
mod pool;
mod retry_budget;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use arc_swap::ArcSwap;
use gridmesh_proto::config::cluster::{LbPolicy, UpstreamProtocol};
use hickory_resolver::TokioResolver;
use http::{HeaderMap, Request, Response, Version};
use hyper::body::Incoming;
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::balance::{self, Balance, Candidate, InFlight, Load, PickContext, Policy};
use crate::body::Body;
use crate::discovery::dns::{self, Addresses, DnsRefresh};
use crate::error::ProxyError;
use crate::metrics::{ClusterMetrics, Metrics};
use crate::transport::{Io, Origination};
use gridmesh_config::{ClusterSpec, EndpointAddress};
use gridmesh_identity::{IdentityStore, SpiffeId};

pub use limits::Permit;
use pool::Pool;
pub use pool::{Lease, SendError};
use retry_budget::RetryBudget;

pub struct Cluster {
    /// The settings this cluster was built with, and its latest endpoint
    /// list. Only the endpoints ever change (see [`Cluster::update`]): a
    /// change to anything else builds a new cluster.
    spec: ArcSwap<ClusterSpec>,
    pub metrics: ClusterMetrics,
    limits: Arc<limits::Limits>,
    retry_budget: RetryBudget,
    /// The balancer over the current endpoint set. A change (DNS, config)
    /// builds a new one off the request path and swaps it in whole.
    balancer: ArcSwap<Box<dyn Balance<Arc<Endpoint>>>>,
    resolver: Option<TokioResolver>,
    /// The latest addresses of each `hostname:port` endpoint.
    resolved: Mutex<HashMap<HostPort, Addresses>>,
    /// One DNS watch per name; each ends when its name leaves the spec, or
    /// with the cluster.
    discovery: Mutex<HashMap<HostPort, [JoinHandle<()>; 2]>>,
    /// The workload's identity, presented to meshed endpoints.
    identity: Option<Arc<IdentityStore>>,
    /// One mTLS origination per identity the endpoints present, shared by
    /// their pools (and so is its TLS session cache).
    originations: Mutex<HashMap<SpiffeId, Arc<Origination>>>,
}

type HostPort = (String, u16);

/// Why a cluster cannot take a spec.
#[derive(Debug, thiserror::Error)]
#[error("cluster {cluster:?} has hostname endpoints but DNS is unavailable: {reason}")]
pub struct NoResolver {
    pub cluster: String,
    pub reason: String,
}

/// An endpoint as the balancer sees it. Identified by its address and the
/// identity it must present (a pooled connection is never used for another
/// identity): a config change that only moves its weight makes a new
/// `Endpoint` around the same [`EndpointState`], so its connections, load
/// history and counters stay.
pub struct Endpoint {
    pub addr: SocketAddr,
    pub weight: u32,
    /// What it must present; `None`: plaintext.
    pub identity: Option<SpiffeId>,
    /// In-flight requests and latency estimate, read by the balancer.
    pub load: Arc<Load>,
    state: Arc<EndpointState>,
}

/// What an endpoint keeps across config changes.
struct EndpointState {
    pool: Arc<Pool>,
    requests: AtomicU64,
    failures: AtomicU64,
}

impl Candidate for Arc<Endpoint> {
    fn weight(&self) -> u32 {
        self.weight
    }

    fn load(&self) -> &Arc<Load> {
        &self.load
    }

    fn hash_key(&self) -> String {
        self.addr.to_string()
    }

    /// Health checking is not built yet: every endpoint takes traffic.
    fn is_healthy(&self) -> bool {
        true
    }
}

impl Cluster {
    /// Builds a cluster; `resolver` is required when any endpoint is a DNS
    /// name. Must run inside the data plane's runtime (DNS watches are
    /// spawned onto it).
    pub fn new(
        spec: Arc<ClusterSpec>,
        metrics: &Metrics,
        resolver: Option<&TokioResolver>,
        identity: Option<&Arc<IdentityStore>>,
    ) -> Result<Arc<Self>, NoResolver> {
        let limits = Arc::new(limits::Limits::new(
            spec.max_requests,
            spec.max_pending_requests,
            spec.max_connections,
        ));
        let cluster = Arc::new(Cluster {
            metrics: metrics.cluster(&spec.name),
            retry_budget: RetryBudget::new(spec.retry_percent, spec.min_retries_per_second),
            limits,
            balancer: ArcSwap::from_pointee(balance::build(policy(&spec), Vec::new())),
            resolver: resolver.cloned(),
            resolved: Mutex::new(HashMap::new()),
            discovery: Mutex::new(HashMap::new()),
            identity: identity.cloned(),
            originations: Mutex::new(HashMap::new()),
            spec: ArcSwap::new(Arc::new(ClusterSpec {
                endpoints: Vec::new(),
                ..(*spec).clone()
            })),
        });
        cluster.spec.store(spec);
        cluster.watch_dns()?;
        cluster.rebuild();
        Ok(cluster)
    }

    /// Whether `spec` differs from this cluster's only in its endpoints, so
    /// that [`Cluster::update`] can take it and keep pools, breakers, load
    /// history and the retry budget. A cluster built without a resolver
    /// (it had addresses only) cannot take hostname endpoints.
    pub fn can_update_to(&self, spec: &ClusterSpec) -> bool {
        let needs_dns = spec
            .endpoints
            .iter()
            .any(|e| matches!(e.address, EndpointAddress::Dns { .. }));
        if needs_dns && self.resolver.is_none() {
            return false;
        }
        self.spec.load().same_settings(spec)
    }

    /// Whether `spec` is the very spec this cluster serves (carried over
    /// from the snapshot it was built for, so nothing about it changed).
    pub fn serves(&self, spec: &Arc<ClusterSpec>) -> bool {
        Arc::ptr_eq(&self.spec.load(), spec)
    }

    /// Whether taking `spec` would change this cluster's endpoints.
    pub fn differs_from(&self, spec: &ClusterSpec) -> bool {
        **self.spec.load() != *spec
    }

    /// Takes a new endpoint list (the caller checked [`Cluster::can_update_to`],
    /// so a resolver is there for any hostname). Endpoints that stay keep
    /// their pools, load and counters, whatever their weight; removed ones
    /// stop getting new requests, finish those in flight, and then close.
    pub fn update(self: &Arc<Self>, spec: Arc<ClusterSpec>) {
        if !self.differs_from(&spec) {
            return;
        }
        self.spec.store(spec);
        if let Err(error) = self.watch_dns() {
            // can_update_to refuses hostnames without a resolver.
            tracing::error!(%error, "endpoints left unresolved");
        }
        self.rebuild();
    }

    /// Follows every `hostname:port` endpoint of the spec, and stops
    /// following names it no longer has; each change rebuilds the set.
    fn watch_dns(self: &Arc<Self>) -> Result<(), NoResolver> {
        let spec = self.spec.load();
        let names: HashMap<HostPort, ()> = spec
            .endpoints
            .iter()
            .filter_map(|e| match &e.address {
                EndpointAddress::Dns { host, port } => Some(((host.clone(), *port), ())),
                EndpointAddress::Socket(_) => None,
            })
            .collect();
        let mut watches = self.discovery.lock();
        watches.retain(|name, tasks| {
            let keep = names.contains_key(name);
            if !keep {
                tasks.iter().for_each(JoinHandle::abort);
            }
            keep
        });
        self.resolved
            .lock()
            .retain(|name, _| names.contains_key(name));
        let new: Vec<HostPort> = names
            .into_keys()
            .filter(|name| !watches.contains_key(name))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        let Some(resolver) = &self.resolver else {
            return Err(NoResolver {
                cluster: spec.name.clone(),
                reason: "no resolver was set up".into(),
            });
        };
        let refresh = DnsRefresh {
            min_refresh: spec.dns_min_refresh,
            ..Default::default()
        };
        for name in new {
            let (mut addresses, lookup) =
                dns::watch_host(resolver.clone(), name.0.clone(), name.1, refresh);
            let cluster = Arc::downgrade(self);
            let key = name.clone();
            let follow = tokio::spawn(async move {
                while addresses.changed().await.is_ok() {
                    let Some(cluster) = cluster.upgrade() else {
                        return;
                    };
                    let latest = addresses.borrow_and_update().clone();
                    cluster.resolved.lock().insert(key.clone(), latest);
                    cluster.rebuild();
                }
            });
            watches.insert(name, [lookup, follow]);
        }
        Ok(())
    }

    /// Rebuilds the balancer from the spec's static addresses and the latest
    /// DNS answers. Endpoints that stay keep their pools and load history;
    /// removed ones finish their in-flight requests and then close.
    fn rebuild(&self) {
        let spec = self.spec.load();
        let resolved = self.resolved.lock();
        let mut addrs: Vec<(SocketAddr, u32, Option<&SpiffeId>)> = Vec::new();
        for endpoint in &spec.endpoints {
            let identity = spec.identity_of(endpoint);
            match &endpoint.address {
                EndpointAddress::Socket(addr) => addrs.push((*addr, endpoint.weight, identity)),
                EndpointAddress::Dns { host, port } => addrs.extend(
                    resolved
                        .get(&(host.clone(), *port))
                        .into_iter()
                        .flat_map(|a| a.iter().map(|addr| (*addr, endpoint.weight, identity))),
                ),
            }
        }
        drop(resolved);
        let current = self.balancer.load();
        let existing: HashMap<(SocketAddr, Option<&SpiffeId>), &Arc<Endpoint>> = current
            .endpoints()
            .iter()
            .map(|e| ((e.addr, e.identity.as_ref()), e))
            .collect();
        let mut seen = std::collections::HashSet::new();
        let endpoints = addrs
            .into_iter()
            // Two names resolving to one address are one endpoint.
            .filter(|(addr, _, _)| seen.insert(*addr))
            .map(
                |(addr, weight, identity)| match existing.get(&(addr, identity)) {
                    Some(same) if same.weight == weight => Arc::clone(same),
                    // Reweighted: the same connections, load and counters.
                    Some(reweighted) => Arc::new(Endpoint {
                        addr,
                        weight,
                        identity: identity.cloned(),
                        load: reweighted.load.clone(),
                        state: reweighted.state.clone(),
                    }),
                    None => Arc::new(Endpoint {
                        addr,
                        weight,
                        identity: identity.cloned(),
                        load: Arc::default(),
                        state: Arc::new(EndpointState {
                            pool: Arc::new(Pool::new(
                                addr,
                                spec.connect_timeout,
                                spec.idle_connection_timeout,
                                self.limits.clone(),
                                identity.map(|id| self.origination(id)),
                            )),
                            requests: AtomicU64::new(0),
                            failures: AtomicU64::new(0),
                        }),
                    }),
                },
            )
            .collect();
        self.balancer
            .store(Arc::new(balance::build(policy(&spec), endpoints)));
    }

    /// How connections to endpoints presenting `id` are secured. Config
    /// validation only lets a spec name identities when the proxy has one;
    /// should that ever be bypassed, the origination gets an empty store
    /// and every handshake fails: never plaintext to a meshed endpoint.
    fn origination(&self, id: &SpiffeId) -> Arc<Origination> {
        let mut originations = self.originations.lock();
        originations
            .entry(id.clone())
            .or_insert_with(|| {
                let store = self.identity.clone().unwrap_or_else(|| {
                    tracing::error!(%id, "a meshed endpoint, and this sidecar has no identity");
                    IdentityStore::new()
                });
                Arc::new(Origination::new(&store, id.clone()))
            })
            .clone()
    }

    /// The settings now in force (a guard: hold it briefly).
    pub fn spec(&self) -> arc_swap::Guard<Arc<ClusterSpec>> {
        self.spec.load()
    }

    pub fn name(&self) -> String {
        self.spec.load().name.clone()
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

    pub fn pick(&self, headers: &HeaderMap) -> Result<Arc<Endpoint>, ProxyError> {
        let mut context = PickContext::new();
        if let Some(value) = self
            .spec
            .load()
            .ring_hash_header
            .as_ref()
            .and_then(|h| headers.get(h))
        {
            context = context.with_hash_key(value.as_bytes());
        }
        self.balancer
            .load()
            .pick(&context)
            .cloned()
            .ok_or(ProxyError::NoHealthyUpstream)
    }

    /// The balancer's choice unless it is one of `avoid` (endpoints an
    /// earlier try failed at); then another endpoint not among them, if
    /// there is one.
    pub fn pick_avoiding(
        &self,
        headers: &HeaderMap,
        avoid: &[SocketAddr],
    ) -> Result<Arc<Endpoint>, ProxyError> {
        let picked = self.pick(headers)?;
        if !avoid.contains(&picked.addr) {
            return Ok(picked);
        }
        let balancer = self.balancer.load();
        let others = balancer
            .endpoints()
            .iter()
            .filter(|e| !avoid.contains(&e.addr));
        Ok(others
            .min_by_key(|e| e.load.in_flight())
            .cloned()
            .unwrap_or(picked))
    }

    /// The endpoint `key` belongs to, the same on every proxy that holds
    /// the same endpoint set (rendezvous hashing: a change moves only the
    /// keys of the endpoints that came or went). For requests that must
    /// meet at one instance: the parts of a vDAG join.
    pub fn pick_by_key(&self, key: &[u8]) -> Result<Arc<Endpoint>, ProxyError> {
        let balancer = self.balancer.load();
        balancer
            .endpoints()
            .iter()
            .max_by_key(|e| {
                let seed = twox_hash::XxHash64::oneshot(0, e.addr.to_string().as_bytes());
                twox_hash::XxHash64::oneshot(seed, key)
            })
            .cloned()
            .ok_or(ProxyError::NoHealthyUpstream)
    }

    /// The protocol to speak upstream for a request that arrived as `downstream`.
    pub fn upstream_version(&self, downstream: Version) -> Version {
        match self.spec.load().protocol {
            UpstreamProtocol::Http1 => Version::HTTP_11,
            UpstreamProtocol::Http2 => Version::HTTP_2,
            UpstreamProtocol::UseDownstream if downstream == Version::HTTP_2 => Version::HTTP_2,
            UpstreamProtocol::UseDownstream => Version::HTTP_11,
        }
    }

    pub fn status(&self) -> ClusterStatus {
        let balancer = self.balancer.load();
        let spec = self.spec.load();
        ClusterStatus {
            name: spec.name.clone(),
            lb_policy: spec.lb_policy.as_str_name(),
            requests_in_flight: self.limits.requests_in_flight(),
            requests_pending: self.limits.pending_requests(),
            connections_open: self.limits.open_connections(),
            endpoints: balancer
                .endpoints()
                .iter()
                .map(|e| EndpointStatus {
                    address: e.addr,
                    weight: e.weight,
                    requests_in_flight: e.load.in_flight(),
                    latency_estimate_ms: e.load.rtt_estimate().as_secs_f64() * 1e3,
                    load_report: e.load.report().map(|report| LoadReportStatus {
                        text: report.text.to_string(),
                        age_ms: report.at.elapsed().as_millis() as u64,
                    }),
                    requests: e.state.requests.load(Ordering::Relaxed),
                    failures: e.state.failures.load(Ordering::Relaxed),
                    idle_http1_connections: e.state.pool.idle_http1_connections(),
                })
                .collect(),
        }
    }
}

/// A connection to an endpoint for opaque TCP: it holds a slot under the
/// cluster's connection cap and counts as a request in flight on the
/// endpoint (for least-request balancing) for its whole life.
pub struct TcpConnection {
    pub stream: Io,
    _slot: limits::ConnectionSlot,
    _in_flight: InFlight,
}

impl Cluster {
    /// Opens a connection to one of the cluster's endpoints, as its
    /// balancer picks it, for forwarding bytes.
    pub async fn connect_tcp(&self) -> Result<TcpConnection, ProxyError> {
        let endpoint = self.pick(&HeaderMap::new())?;
        let in_flight = endpoint.load.start();
        endpoint.state.requests.fetch_add(1, Ordering::Relaxed);
        match endpoint.state.pool.connect_tcp(&self.metrics).await {
            Ok((stream, slot)) => Ok(TcpConnection {
                stream,
                _slot: slot,
                _in_flight: in_flight,
            }),
            Err(error) => {
                endpoint.state.failures.fetch_add(1, Ordering::Relaxed);
                Err(ProxyError::from(error))
            }
        }
    }
}

impl Endpoint {
    pub async fn send(
        &self,
        req: Request<Body>,
        metrics: &ClusterMetrics,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        let state = &self.state;
        state.requests.fetch_add(1, Ordering::Relaxed);
        let result = if req.version() == Version::HTTP_2 {
            state.pool.send_http2(req, metrics).await
        } else {
            state.pool.send_http1(req, metrics).await
        };
        if result.is_err() {
            state.failures.fetch_add(1, Ordering::Relaxed);
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
    /// Waiting for a connection (`maxPendingRequests` caps it).
    requests_pending: u32,
    connections_open: u32,
    endpoints: Vec<EndpointStatus>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EndpointStatus {
    address: SocketAddr,
    weight: u32,
    requests_in_flight: u64,
    latency_estimate_ms: f64,
    /// The latest load report the endpoint sent (`endpoint-load-metrics`).
    #[serde(skip_serializing_if = "Option::is_none")]
    load_report: Option<LoadReportStatus>,
    requests: u64,
    failures: u64,
    idle_http1_connections: usize,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LoadReportStatus {
    text: String,
    age_ms: u64,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for tasks in self.discovery.get_mut().values() {
            tasks.iter().for_each(JoinHandle::abort);
        }
    }
}

fn policy(spec: &ClusterSpec) -> Policy {
    match spec.lb_policy {
        LbPolicy::RoundRobin => Policy::RoundRobin,
        LbPolicy::Random => Policy::Random,
        LbPolicy::LeastRequest => Policy::LeastRequest,
        LbPolicy::PeakEwma => Policy::PeakEwma,
        LbPolicy::RingHash => Policy::RingHash {
            replicas_per_weight: spec.ring_replicas_per_weight,
        },
    }
}
