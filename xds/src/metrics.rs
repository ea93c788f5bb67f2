//! The control plane's Prometheus metrics (`GET /metrics` on the admin port).

use gridmesh_proto::resource::Kind;
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::clients::Protocol;

pub struct Metrics {
    registry: Registry,
    clients: IntGaugeVec,
    responses: IntCounterVec,
    acks: IntCounterVec,
    nacks: IntCounterVec,
    reloads: IntCounterVec,
    config: IntGaugeVec,
    problems: IntGauge,
    certificates: IntCounterVec,
    handshakes: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let registry = Registry::new();
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let m = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(m.clone()))
                .expect("unique metric");
            m
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let m = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(m.clone()))
                .expect("unique metric");
            m
        };
        let problems = IntGauge::new(
            "gridmesh_control_config_problems",
            "Problems in the config directory's current contents (0 when they are served)",
        )
        .expect("valid metric");
        registry
            .register(Box::new(problems.clone()))
            .expect("unique metric");
        Metrics {
            clients: gauge_vec(
                "gridmesh_control_clients",
                "Connected xDS streams",
                &["protocol"],
            ),
            responses: counter_vec(
                "gridmesh_control_responses_total",
                "Discovery responses sent",
                &["type"],
            ),
            acks: counter_vec(
                "gridmesh_control_acks_total",
                "Responses acknowledged",
                &["type"],
            ),
            nacks: counter_vec(
                "gridmesh_control_nacks_total",
                "Responses rejected by a client (NACK)",
                &["type"],
            ),
            reloads: counter_vec(
                "gridmesh_control_config_reloads_total",
                "Changed config directory contents read, by result (ok: now served; failed: rejected)",
                &["result"],
            ),
            config: gauge_vec(
                "gridmesh_control_config_info",
                "The served config's version (the gauge is 1)",
                &["version"],
            ),
            certificates: counter_vec(
                "gridmesh_control_ca_requests_total",
                "Certificate requests by result: signed, or why refused (unauthenticated, not_yours, malformed, internal)",
                &["result"],
            ),
            handshakes: counter_vec(
                "gridmesh_control_tls_handshake_errors_total",
                "Failed TLS handshakes on the xDS/CA port, by reason",
                &["reason"],
            ),
            problems,
            registry,
        }
    }
}

impl Metrics {
    pub fn client_connected(&self, protocol: Protocol) {
        self.clients.with_label_values(&[protocol.label()]).inc();
    }

    pub fn client_gone(&self, protocol: Protocol) {
        self.clients.with_label_values(&[protocol.label()]).dec();
    }

    pub fn response(&self, kind: Kind) {
        self.responses.with_label_values(&[kind.label()]).inc();
    }

    pub fn ack(&self, kind: Kind) {
        self.acks.with_label_values(&[kind.label()]).inc();
    }

    pub fn nack(&self, kind: Kind) {
        self.nacks.with_label_values(&[kind.label()]).inc();
    }

    pub fn config_served(&self, version: &str) {
        self.config.reset();
        self.config.with_label_values(&[version]).set(1);
        self.problems.set(0);
    }

    pub fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.reloads.with_label_values(&[result]).inc();
    }

    pub fn config_rejected(&self, problems: usize) {
        self.problems
            .set(i64::try_from(problems).unwrap_or(i64::MAX));
    }

    pub fn ca_signed(&self) {
        self.certificates.with_label_values(&["signed"]).inc();
    }

    pub fn ca_refused(&self, reason: &str) {
        self.certificates.with_label_values(&[reason]).inc();
    }

    pub fn tls_handshake_failed(&self, reason: &str) {
        self.handshakes.with_label_values(&[reason]).inc();
    }

    pub fn encode(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
    }
}
