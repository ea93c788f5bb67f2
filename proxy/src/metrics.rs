//! Prometheus metrics. Label values are bounded: cluster and listener names
//! come from config, status codes and gRPC statuses are small fixed sets, and
//! error reasons are a closed enum. Handles are resolved once per cluster and
//! listener so the request path only touches atomics.

use std::collections::HashMap;

use arc_swap::ArcSwap;

use crate::access_log::AccessLogMetrics;

use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Every metric family of one proxy. Each proxy owns its registry, so
/// several proxies in one process (the test harness) never mix figures.
pub struct Metrics {
    pub registry: Registry,
    /// Istio's families ([`crate::istio`]), which keep their own names.
    pub unprefixed: Registry,
    upstream_requests: IntCounterVec,
    upstream_responses: IntCounterVec,
    upstream_response_headers: HistogramVec,
    upstream_duration: HistogramVec,
    upstream_retries: IntCounterVec,
    upstream_overflow: IntCounterVec,
    upstream_connects: IntCounterVec,
    upstream_connect_errors: IntCounterVec,
    upstream_connections_active: IntGaugeVec,
    downstream_connections_active: IntGaugeVec,
    downstream_connections: IntCounterVec,
    downstream_requests: IntCounterVec,
    downstream_tcp_connections: IntCounterVec,
    downstream_tcp_bytes: IntCounterVec,
    protocol_detection_timeouts: IntCounterVec,
    local_replies: IntCounterVec,
    downstream_tls_handshakes: IntCounterVec,
    access_denied: IntCounterVec,
    upstream_tls_handshake_errors: IntCounterVec,
    pub xds: XdsMetrics,
    identity_expiry: IntGaugeVec,
    identity_updates: IntCounterVec,
    access_log_entries: IntCounterVec,
}

/// The workload identity's figures.
pub struct IdentityMetrics {
    /// When the held certificate expires (Unix seconds).
    pub expiry: IntGauge,
    /// Credentials taken, and sets refused (bad, mismatched, untrusted).
    pub installed: IntCounter,
    pub refused: IntCounter,
}

/// The xDS client's view: how config updates go.
pub struct XdsMetrics {
    /// Responses handled, by resource type and `ack` / `nack`.
    pub updates: IntCounterVec,
    /// From a response's arrival to its ACK or NACK: decoding, validating
    /// the whole candidate config and applying it.
    pub update_duration: HistogramVec,
    /// 1 while the stream to the control plane is up.
    pub connected: IntGauge,
}

/// Apply times are milliseconds; finer buckets than request latencies.
const APPLY_BUCKETS: &[f64] = &[
    0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1.0,
];

pub struct ClusterMetrics {
    pub requests: IntCounter,
    pub response_headers: Histogram,
    pub duration: Histogram,
    pub retries: IntCounter,
    pub overflow_requests: IntCounter,
    pub overflow_pending: IntCounter,
    pub connects: IntCounter,
    pub connect_errors: IntCounter,
    pub connections_active: IntGauge,
    /// By HTTP status and the gRPC status's index in [`GRPC_LABELS`].
    responses: ResolvedCounters<(u16, u8)>,
    /// Failed mTLS handshakes with endpoints, by reason.
    tls_handshake_errors: ResolvedCounters<&'static str>,
}

/// The counters of one cluster or listener by further labels. Each key's
/// series is resolved once; the request path then finds its counter by
/// scanning the few keys seen so far, without hashing labels or taking a
/// lock.
struct ResolvedCounters<K> {
    family: IntCounterVec,
    /// The first label's value: the cluster or listener name.
    owner: String,
    seen: ArcSwap<Vec<(K, IntCounter)>>,
}

pub struct ListenerMetrics {
    pub connections_active: IntGauge,
    pub connections: IntCounter,
    pub requests: IntCounter,
    /// Connections forwarded as bytes (opaque TCP).
    pub tcp_connections: IntCounter,
    pub tcp_bytes_received: IntCounter,
    pub tcp_bytes_sent: IntCounter,
    /// AUTO connections that sent too little to tell HTTP within the
    /// detection timeout.
    pub detection_timeouts: IntCounter,
    /// By `x-gridmesh-error` reason.
    local_replies: ResolvedCounters<&'static str>,
    /// TLS handshakes by result: `ok`, or why it failed.
    tls_handshakes: ResolvedCounters<&'static str>,
    access_denied: IntCounterVec,
    name: String,
}

pub(crate) fn counter(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric name");
    c
}

pub(crate) fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric name");
    g
}

fn histogram(registry: &Registry, name: &str, help: &str) -> HistogramVec {
    latency_histogram(registry, name, help, &["cluster"])
}

pub(crate) fn latency_histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
    let h = HistogramVec::new(opts, labels).expect("valid metric definition");
    registry
        .register(Box::new(h.clone()))
        .expect("unique metric name");
    h
}

impl Default for Metrics {
    fn default() -> Self {
        let r = Registry::new_custom(Some("gridmesh".into()), None).expect("valid prefix");
        Metrics {
            upstream_requests: counter(
                &r,
                "upstream_requests_total",
                "Requests sent to a cluster (first attempts).",
                &["cluster"],
            ),
            upstream_responses: counter(
                &r,
                "upstream_responses_total",
                "Responses from a cluster by HTTP status and gRPC status (empty when not gRPC).",
                &["cluster", "code", "grpc_status"],
            ),
            upstream_response_headers: histogram(
                &r,
                "upstream_response_headers_seconds",
                "Time from request start to upstream response headers.",
            ),
            upstream_duration: histogram(
                &r,
                "upstream_request_duration_seconds",
                "Time from request start to the end of the response stream.",
            ),
            upstream_retries: counter(
                &r,
                "upstream_retries_total",
                "Retry attempts.",
                &["cluster"],
            ),
            upstream_overflow: counter(
                &r,
                "upstream_overflow_total",
                "Requests shed by a circuit breaker.",
                &["cluster", "breaker"],
            ),
            upstream_connects: counter(
                &r,
                "upstream_connections_total",
                "Upstream connections opened.",
                &["cluster"],
            ),
            upstream_connect_errors: counter(
                &r,
                "upstream_connect_errors_total",
                "Failed or timed-out upstream connects.",
                &["cluster"],
            ),
            upstream_connections_active: gauge(
                &r,
                "upstream_connections_active",
                "Open upstream connections.",
                &["cluster"],
            ),
            downstream_connections_active: gauge(
                &r,
                "downstream_connections_active",
                "Open downstream connections.",
                &["listener"],
            ),
            downstream_connections: counter(
                &r,
                "downstream_connections_total",
                "Accepted downstream connections.",
                &["listener"],
            ),
            downstream_requests: counter(
                &r,
                "downstream_requests_total",
                "Requests received.",
                &["listener"],
            ),
            downstream_tcp_connections: counter(
                &r,
                "downstream_tcp_connections_total",
                "Connections forwarded as bytes (opaque TCP).",
                &["listener"],
            ),
            downstream_tcp_bytes: counter(
                &r,
                "downstream_tcp_bytes_total",
                "Bytes of forwarded TCP connections: received from clients, sent to them.",
                &["listener", "direction"],
            ),
            protocol_detection_timeouts: counter(
                &r,
                "protocol_detection_timeouts_total",
                "Connections on AUTO listeners that sent too little to tell HTTP in time.",
                &["listener"],
            ),
            local_replies: counter(
                &r,
                "local_replies_total",
                "Responses the proxy made itself, by x-gridmesh-error reason.",
                &["listener", "reason"],
            ),
            downstream_tls_handshakes: counter(
                &r,
                "downstream_tls_handshakes_total",
                "TLS handshakes on listeners by result: ok, or why the connection was refused (untrusted, expired, not_yet_valid, not_an_svid, no_client_certificate, not_tls, timeout, closed, ...).",
                &["listener", "result"],
            ),
            access_denied: counter(
                &r,
                "authorization_denied_total",
                "Requests refused by authorization policies, by listener and the DENY policy that matched (empty: no ALLOW policy matched).",
                &["listener", "policy"],
            ),
            upstream_tls_handshake_errors: counter(
                &r,
                "upstream_tls_handshake_errors_total",
                "Failed mTLS handshakes with a cluster's endpoints, by reason (wrong_identity, untrusted, expired, peer_refused, ...).",
                &["cluster", "reason"],
            ),
            identity_expiry: gauge(
                &r,
                "identity_certificate_expiry_timestamp_seconds",
                "When the workload certificate held now expires (Unix time).",
                &[],
            ),
            identity_updates: counter(
                &r,
                "identity_updates_total",
                "Workload certificates installed, and sets refused (unreadable, mismatched key, not an SVID, untrusted).",
                &["result"],
            ),
            access_log_entries: counter(
                &r,
                "access_log_entries_total",
                "Access log entries by what became of them: written, dropped (the destination's queue was full) or failed (the write failed).",
                &["result"],
            ),
            xds: XdsMetrics {
                updates: counter(
                    &r,
                    "xds_updates_total",
                    "xDS responses handled, by resource type and result (ack or nack).",
                    &["type", "result"],
                ),
                update_duration: {
                    let opts = HistogramOpts::new(
                        "xds_update_duration_seconds",
                        "Time from an xDS response's arrival to its ACK or NACK (decode, validate, apply).",
                    )
                    .buckets(APPLY_BUCKETS.to_vec());
                    let h = HistogramVec::new(opts, &["type"]).expect("valid metric definition");
                    r.register(Box::new(h.clone())).expect("unique metric name");
                    h
                },
                connected: gauge(
                    &r,
                    "xds_connected",
                    "1 while the stream to the control plane is up.",
                    &[],
                )
                .with_label_values(&[] as &[&str]),
            },
            registry: r,
            unprefixed: Registry::new(),
        }
    }
}

impl Metrics {
    pub fn cluster(&self, cluster: &str) -> ClusterMetrics {
        let l = &[cluster];
        ClusterMetrics {
            requests: self.upstream_requests.with_label_values(l),
            response_headers: self.upstream_response_headers.with_label_values(l),
            duration: self.upstream_duration.with_label_values(l),
            retries: self.upstream_retries.with_label_values(l),
            overflow_requests: self
                .upstream_overflow
                .with_label_values(&[cluster, "requests"]),
            overflow_pending: self
                .upstream_overflow
                .with_label_values(&[cluster, "pending"]),
            connects: self.upstream_connects.with_label_values(l),
            connect_errors: self.upstream_connect_errors.with_label_values(l),
            connections_active: self.upstream_connections_active.with_label_values(l),
            responses: ResolvedCounters::new(&self.upstream_responses, cluster),
            tls_handshake_errors: ResolvedCounters::new(
                &self.upstream_tls_handshake_errors,
                cluster,
            ),
        }
    }

    pub fn listener(&self, listener: &str) -> ListenerMetrics {
        let l = &[listener];
        ListenerMetrics {
            connections_active: self.downstream_connections_active.with_label_values(l),
            connections: self.downstream_connections.with_label_values(l),
            requests: self.downstream_requests.with_label_values(l),
            tcp_connections: self.downstream_tcp_connections.with_label_values(l),
            tcp_bytes_received: self
                .downstream_tcp_bytes
                .with_label_values(&[listener, "received"]),
            tcp_bytes_sent: self
                .downstream_tcp_bytes
                .with_label_values(&[listener, "sent"]),
            detection_timeouts: self.protocol_detection_timeouts.with_label_values(l),
            local_replies: ResolvedCounters::new(&self.local_replies, listener),
            tls_handshakes: ResolvedCounters::new(&self.downstream_tls_handshakes, listener),
            access_denied: self.access_denied.clone(),
            name: listener.to_string(),
        }
    }

    pub fn identity(&self) -> IdentityMetrics {
        IdentityMetrics {
            expiry: self.identity_expiry.with_label_values(&[] as &[&str]),
            installed: self.identity_updates.with_label_values(&["installed"]),
            refused: self.identity_updates.with_label_values(&["refused"]),
        }
    }

    pub fn access_logs(&self) -> AccessLogMetrics {
        let result = |r: &str| self.access_log_entries.with_label_values(&[r]);
        AccessLogMetrics {
            written: result("written"),
            dropped: result("dropped"),
            failed: result("failed"),
        }
    }

    /// Drops every series of a cluster that left the config, so that xDS
    /// churn cannot grow `/metrics` without bound. Requests still in flight
    /// on the old cluster count into handles no longer exported.
    pub fn remove_cluster(&self, cluster: &str) {
        let label = ("cluster", cluster);
        remove_series(&self.upstream_requests, label);
        remove_series(&self.upstream_responses, label);
        remove_series(&self.upstream_response_headers, label);
        remove_series(&self.upstream_duration, label);
        remove_series(&self.upstream_retries, label);
        remove_series(&self.upstream_overflow, label);
        remove_series(&self.upstream_connects, label);
        remove_series(&self.upstream_connect_errors, label);
        remove_series(&self.upstream_connections_active, label);
        remove_series(&self.upstream_tls_handshake_errors, label);
    }

    /// Drops every series of a listener that left the config.
    pub fn remove_listener(&self, listener: &str) {
        let label = ("listener", listener);
        remove_series(&self.downstream_connections_active, label);
        remove_series(&self.downstream_connections, label);
        remove_series(&self.downstream_requests, label);
        remove_series(&self.downstream_tcp_connections, label);
        remove_series(&self.downstream_tcp_bytes, label);
        remove_series(&self.protocol_detection_timeouts, label);
        remove_series(&self.local_replies, label);
        remove_series(&self.downstream_tls_handshakes, label);
        remove_series(&self.access_denied, label);
    }

    pub fn encode(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&[self.registry.gather(), self.unprefixed.gather()].concat())
            .unwrap_or_else(|e| format!("# metrics encoding failed: {e}\n"))
    }
}

impl ClusterMetrics {
    pub fn response(&self, status: http::StatusCode, grpc_status: Option<u32>) {
        let grpc = match grpc_status {
            Some(code) if code <= 16 => code as u8,
            Some(_) => OTHER_GRPC,
            None => NO_GRPC,
        };
        self.responses
            .inc((status.as_u16(), grpc), |(status, grpc)| {
                vec![
                    status.to_string(),
                    GRPC_LABELS[usize::from(grpc)].to_string(),
                ]
            });
    }
}

impl<K: Copy + PartialEq> ResolvedCounters<K> {
    fn new(family: &IntCounterVec, owner: &str) -> Self {
        ResolvedCounters {
            family: family.clone(),
            owner: owner.to_string(),
            seen: ArcSwap::default(),
        }
    }

    /// Counts one for `key`; `labels` gives its other label values the
    /// first time it is seen.
    fn inc(&self, key: K, labels: impl FnOnce(K) -> Vec<String>) {
        if let Some((_, counter)) = self.seen.load().iter().find(|(k, _)| *k == key) {
            counter.inc();
            return;
        }
        let mut values = vec![self.owner.clone()];
        values.extend(labels(key));
        let counter = self.family.with_label_values(&values);
        self.seen.rcu(|seen| {
            let mut seen = Vec::clone(seen);
            if !seen.iter().any(|(k, _)| *k == key) {
                seen.push((key, counter.clone()));
            }
            seen
        });
        counter.inc();
    }
}

impl ListenerMetrics {
    pub fn local_reply(&self, reason: &'static str) {
        self.local_replies
            .inc(reason, |reason| vec![reason.to_string()]);
    }

    /// Counts a denied request. Denials are the exception, so the series is
    /// looked up when one happens rather than resolved ahead.
    pub fn access_denied(&self, policy: &str) {
        self.access_denied
            .with_label_values(&[self.name.as_str(), policy])
            .inc();
    }

    pub fn tls_handshake(&self, result: &'static str) {
        self.tls_handshakes
            .inc(result, |result| vec![result.to_string()]);
    }
}

impl ClusterMetrics {
    pub fn tls_handshake_error(&self, reason: &'static str) {
        self.tls_handshake_errors
            .inc(reason, |reason| vec![reason.to_string()]);
    }
}

/// Removes every series of `family` whose label `name` has `value`, whatever
/// its other labels (the prometheus crate removes only exact label sets).
/// Walks the family's series: for config changes, never per request.
fn remove_series<T: MetricVecBuilder>(family: &MetricVec<T>, (name, value): (&str, &str)) {
    for metric_family in family.collect() {
        for metric in metric_family.get_metric() {
            let labels: HashMap<&str, &str> = metric
                .get_label()
                .iter()
                .map(|pair| (pair.name(), pair.value()))
                .collect();
            if labels.get(name) == Some(&value) {
                // Already gone if a concurrent removal got there first.
                let _ = family.remove(&labels);
            }
        }
    }
}

/// The `grpc_status` label: the code 0-16, `other`, or empty (not gRPC).
const GRPC_LABELS: [&str; 19] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    "other", "",
];
const OTHER_GRPC: u8 = 17;
const NO_GRPC: u8 = 18;
