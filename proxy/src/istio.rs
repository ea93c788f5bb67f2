//! Istio's standard request metrics, with Istio's names and label set, so
//! dashboards and alerts built for Istio (its Mesh, Service and Workload
//! dashboards, Kiali, SLO rules on `istio_requests_total`) read gridmesh
//! sidecars unchanged. gridmesh's own `gridmesh_*` families stay as they
//! are; these are the same requests seen as Istio counts them:
//!
//! - `istio_requests_total`
//! - `istio_request_duration_milliseconds` (histogram)
//! - `istio_request_bytes`, `istio_response_bytes` (histograms of body sizes)
//!
//! Each sidecar reports from its side, as Istio's do: `reporter="destination"`
//! for requests on an INBOUND listener, `"source"` on any other. The local
//! workload comes from the pod's environment (namespace, block id); the
//! peer from what the sidecar verified: on inbound, the caller's mTLS
//! SPIFFE ID (principal and namespace); on outbound, the cluster called
//! (`destination_service`) and the identity its endpoint presented. What
//! only Istio's peer metadata exchange would tell (the remote workload's
//! name, app and version) is `unknown`, as Istio itself writes it.
//!
//! Cardinality is bounded by the config (cluster names), the mesh's
//! identities (only CA-issued SPIFFE IDs pass mTLS), and small code sets.
//! Each listener resolves a label set's series once and finds it again by a
//! short scan, so a request hashes no labels.

use std::sync::Arc;

use arc_swap::ArcSwap;
use gridmesh_identity::{IdentityStore, SpiffeId};
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
};

const UNKNOWN: &str = "unknown";

/// Istio's label set, in its order.
const LABELS: [&str; 25] = [
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_canonical_service",
    "source_canonical_revision",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
];

/// Istio's default buckets: milliseconds, and bytes.
const DURATION_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];
const BYTES_BUCKETS: [f64; 10] = [1.0, 10.0, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];

/// Label sets one listener resolves at most; past that (config churn
/// through many cluster names) series are looked up by label each time.
const MAX_RESOLVED: usize = 512;

/// The families, and who this sidecar's workload is.
#[derive(Clone)]
pub struct IstioMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    request_bytes: HistogramVec,
    response_bytes: HistogramVec,
    local: Arc<Workload>,
}

/// The local workload as the labels name it.
#[derive(Debug, Clone)]
pub struct Workload {
    /// The block id (`GRIDMESH_BLOCK_ID`), which is also its app and
    /// canonical service.
    pub name: String,
    /// From the pod's environment; else its SPIFFE ID's namespace.
    pub namespace: Option<String>,
    /// Where its SPIFFE ID is, when it has an identity.
    pub identity: Option<Arc<IdentityStore>>,
}

impl Workload {
    /// This sidecar's workload, from the pod's environment (see
    /// `xds::node`); `unknown` where it says nothing.
    pub fn from_env(identity: Option<Arc<IdentityStore>>) -> Workload {
        let node = crate::xds::node::from_env(|var| std::env::var(var).ok());
        Workload {
            name: Some(node.cluster.clone())
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| UNKNOWN.into()),
            namespace: crate::xds::node::metadata(&node, "namespace"),
            identity,
        }
    }
}

impl IstioMetrics {
    /// Registers the families in `registry`, which must add no prefix.
    pub fn register(registry: &Registry, local: Workload) -> prometheus::Result<IstioMetrics> {
        let requests = IntCounterVec::new(
            Opts::new("istio_requests_total", "Requests, as Istio counts them."),
            &LABELS,
        )?;
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                &LABELS,
            )
        };
        let duration = histogram(
            "istio_request_duration_milliseconds",
            "Request durations in milliseconds, as Istio measures them.",
            &DURATION_BUCKETS,
        )?;
        let request_bytes = histogram(
            "istio_request_bytes",
            "Request body sizes in bytes.",
            &BYTES_BUCKETS,
        )?;
        let response_bytes = histogram(
            "istio_response_bytes",
            "Response body sizes in bytes.",
            &BYTES_BUCKETS,
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(request_bytes.clone()))?;
        registry.register(Box::new(response_bytes.clone()))?;
        Ok(IstioMetrics {
            requests,
            duration,
            request_bytes,
            response_bytes,
            local: Arc::new(local),
        })
    }

    /// The series of one listener, reporting as `reporter` says.
    pub fn listener(&self, inbound: bool) -> ListenerIstio {
        ListenerIstio {
            families: self.clone(),
            inbound,
            resolved: ArcSwap::from_pointee(Vec::new()),
        }
    }
}

/// What tells one request's label set from another's on a listener.
#[derive(PartialEq)]
pub struct Key<'a> {
    /// Inbound: the caller's verified identity. Outbound: the identity the
    /// upstream endpoint presented.
    pub peer: Option<&'a SpiffeId>,
    /// The cluster called; `None` when none was (no route).
    pub cluster: Option<&'a str>,
    pub grpc: bool,
    pub status: u16,
    pub grpc_status: Option<u32>,
    /// The `x-gridmesh-error` reason of a reply the sidecar made or cut.
    pub error: Option<&'static str>,
}

#[derive(Clone)]
struct OwnedKey {
    peer: Option<SpiffeId>,
    cluster: Option<String>,
    grpc: bool,
    status: u16,
    grpc_status: Option<u32>,
    error: Option<&'static str>,
}

impl OwnedKey {
    fn matches(&self, key: &Key<'_>) -> bool {
        self.peer.as_ref() == key.peer
            && self.cluster.as_deref() == key.cluster
            && self.grpc == key.grpc
            && self.status == key.status
            && self.grpc_status == key.grpc_status
            && self.error == key.error
    }
}

struct Series {
    requests: IntCounter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

/// One request's figures.
pub struct Measured {
    pub duration: std::time::Duration,
    pub request_bytes: u64,
    pub response_bytes: u64,
}

pub struct ListenerIstio {
    families: IstioMetrics,
    inbound: bool,
    resolved: ArcSwap<Vec<(OwnedKey, Arc<Series>)>>,
}

impl ListenerIstio {
    /// Whether this listener reports as the destination (INBOUND).
    pub fn inbound(&self) -> bool {
        self.inbound
    }

    pub fn record(&self, key: &Key<'_>, measured: &Measured) {
        let series = self.series(key);
        series.requests.inc();
        series
            .duration
            .observe(measured.duration.as_secs_f64() * 1e3);
        series.request_bytes.observe(measured.request_bytes as f64);
        series
            .response_bytes
            .observe(measured.response_bytes as f64);
    }

    fn series(&self, key: &Key<'_>) -> Arc<Series> {
        let resolved = self.resolved.load();
        if let Some((_, series)) = resolved.iter().find(|(k, _)| k.matches(key)) {
            return series.clone();
        }
        let series = Arc::new(self.resolve(key));
        if resolved.len() < MAX_RESOLVED {
            let owned = || OwnedKey {
                peer: key.peer.cloned(),
                cluster: key.cluster.map(str::to_string),
                grpc: key.grpc,
                status: key.status,
                grpc_status: key.grpc_status,
                error: key.error,
            };
            self.resolved.rcu(|current| {
                let mut next: Vec<(OwnedKey, Arc<Series>)> = current
                    .iter()
                    .map(|(k, s)| (k.clone(), s.clone()))
                    .collect();
                next.push((owned(), series.clone()));
                next
            });
        }
        series
    }

    fn resolve(&self, key: &Key<'_>) -> Series {
        let local = &self.families.local;
        let peer_namespace = key
            .peer
            .and_then(|p| p.workload())
            .map_or(UNKNOWN, |(namespace, _)| namespace);
        let peer_principal = key.peer.map_or(UNKNOWN, SpiffeId::as_str);
        let credentials = local
            .identity
            .as_ref()
            .and_then(|store| store.credentials());
        let local_id = credentials.as_ref().map(|c| c.id());
        let local_principal = local_id.map_or(UNKNOWN, SpiffeId::as_str);
        let local_namespace = (local.namespace.as_deref())
            .or_else(|| Some(local_id?.workload()?.0))
            .unwrap_or(UNKNOWN);
        let service = key.cluster.unwrap_or(UNKNOWN);
        let status = key.status.to_string();
        let grpc_status = key.grpc_status.map(|c| c.to_string()).unwrap_or_default();
        let (reporter, source, destination, service_namespace, security) = if self.inbound {
            let security = if key.peer.is_some() {
                "mutual_tls"
            } else {
                "none"
            };
            (
                "destination",
                [UNKNOWN, peer_namespace, peer_principal, UNKNOWN],
                [
                    local.name.as_str(),
                    local_namespace,
                    local_principal,
                    local.name.as_str(),
                ],
                local_namespace,
                security,
            )
        } else {
            (
                "source",
                [
                    local.name.as_str(),
                    local_namespace,
                    local_principal,
                    local.name.as_str(),
                ],
                [UNKNOWN, peer_namespace, peer_principal, UNKNOWN],
                peer_namespace,
                UNKNOWN,
            )
        };
        let [s_workload, s_namespace, s_principal, s_app] = source;
        let [d_workload, d_namespace, d_principal, d_app] = destination;
        let values: [&str; 25] = [
            reporter,
            s_workload,
            s_namespace,
            s_principal,
            s_app,
            UNKNOWN,
            s_app,
            "latest",
            UNKNOWN,
            d_workload,
            d_namespace,
            d_principal,
            d_app,
            UNKNOWN,
            service,
            service,
            service_namespace,
            d_app,
            "latest",
            UNKNOWN,
            if key.grpc { "grpc" } else { "http" },
            &status,
            &grpc_status,
            response_flags(key.error),
            security,
        ];
        let families = &self.families;
        Series {
            requests: families.requests.with_label_values(&values),
            duration: families.duration.with_label_values(&values),
            request_bytes: families.request_bytes.with_label_values(&values),
            response_bytes: families.response_bytes.with_label_values(&values),
        }
    }
}

/// Envoy's response flags for the replies the sidecar makes or cuts, which
/// Istio's `response_flags` label carries; `-` when none applies.
fn response_flags(error: Option<&str>) -> &'static str {
    match error {
        Some("route_not_found") => "NR",
        Some("no_healthy_upstream") => "UH",
        Some("overflow_requests" | "overflow_pending") => "UO",
        Some("upstream_connect_failure" | "upstream_connect_timeout") => "UF",
        Some("upstream_reset") => "UR",
        Some("upstream_response_timeout") => "UT",
        Some("stream_idle_timeout") => "SI",
        Some("deadline_exceeded") => "UMSDR",
        Some("bad_grpc_timeout") => "DPE",
        _ => "-",
    }
}
