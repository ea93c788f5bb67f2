//! Circuit breakers: hard caps that shed load with a fast, explicit error
//! instead of letting requests queue without bound in front of a slow cluster.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::sync::Notify;

use crate::metrics::ClusterMetrics;

pub struct Limits {
    requests: Gate,
    pending: Gate,
    connections: Gate,
    /// Woken when a connection closes or goes back to an idle pool, so a
    /// request waiting at the connection cap can look again.
    pub connection_freed: Notify,
}

/// A counter with a ceiling.
struct Gate {
    current: AtomicU32,
    max: u32,
}

impl Gate {
    fn new(max: u32) -> Self {
        Gate {
            current: AtomicU32::new(0),
            max,
        }
    }

    fn try_enter(&self) -> bool {
        self.current
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    fn leave(&self) {
        self.current.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Limits {
    pub fn new(max_requests: u32, max_pending: u32, max_connections: u32) -> Self {
        Limits {
            requests: Gate::new(max_requests),
            pending: Gate::new(max_pending),
            connections: Gate::new(max_connections),
            connection_freed: Notify::new(),
        }
    }

    pub fn requests_in_flight(&self) -> u32 {
        self.requests.current.load(Ordering::Relaxed)
    }

    /// Requests waiting for a connection (at the connection cap).
    pub fn pending_requests(&self) -> u32 {
        self.pending.current.load(Ordering::Relaxed)
    }

    pub fn open_connections(&self) -> u32 {
        self.connections.current.load(Ordering::Relaxed)
    }

    pub fn connection_cap_reached(&self) -> bool {
        self.open_connections() >= self.connections.max
    }

    /// Admits a request to the cluster, or `None` at `max_requests`.
    pub fn admit_request(self: &Arc<Self>) -> Option<Permit> {
        self.requests.try_enter().then(|| Permit {
            limits: self.clone(),
            kind: Kind::Request,
        })
    }

    /// Registers a request waiting for a connection, or `None` at `max_pending_requests`.
    pub fn enter_pending(self: &Arc<Self>) -> Option<Permit> {
        self.pending.try_enter().then(|| Permit {
            limits: self.clone(),
            kind: Kind::Pending,
        })
    }

    /// Reserves a connection slot, or `None` at `max_connections`.
    pub fn open_connection(self: &Arc<Self>, metrics: &ClusterMetrics) -> Option<ConnectionSlot> {
        self.connections.try_enter().then(|| {
            metrics.connections_active.inc();
            ConnectionSlot {
                limits: self.clone(),
                active: metrics.connections_active.clone(),
            }
        })
    }
}

enum Kind {
    Request,
    Pending,
}

/// Held while a request is in flight (or waiting); released on drop.
pub struct Permit {
    limits: Arc<Limits>,
    kind: Kind,
}

impl Drop for Permit {
    fn drop(&mut self) {
        match self.kind {
            Kind::Request => self.limits.requests.leave(),
            Kind::Pending => self.limits.pending.leave(),
        }
    }
}

/// Held by a connection's task for the connection's whole life.
pub struct ConnectionSlot {
    limits: Arc<Limits>,
    active: prometheus::IntGauge,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.limits.connections.leave();
        self.active.dec();
        self.limits.connection_freed.notify_waiters();
    }
}
