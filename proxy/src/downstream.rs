//! The downstream side's shared state: what a listener's connections and
//! requests share ([`ListenerContext`]), and what the idle watchdog and the
//! drain need to know about one connection ([`Activity`]). The accept loop
//! (`server`) creates them; the request pipeline reads them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;

use crate::access_log::AccessLog;
use crate::drain::Drain;
use crate::filter::Filters;
use crate::istio::ListenerIstio;
use crate::metrics::ListenerMetrics;
use crate::transport::{Observed, ReadObserver};
use crate::vdag::VDags;
use gridmesh_telemetry::Tracing;

/// What every connection and request of one listener shares.
pub struct ListenerContext {
    pub name: Arc<str>,
    pub metrics: ListenerMetrics,
    /// Started when this listener is removed or replaced, or the proxy
    /// drains: stop accepting, close connections gracefully.
    pub drain: Drain,
    /// Set before `drain` starts when a config change, not a shutdown,
    /// drains this listener: its clients keep talking to this proxy, so
    /// HTTP/1.1 connections get a hand-off grace (see `server::HANDOFF_GRACE`).
    pub replaced: AtomicBool,
    /// The filters every request of this listener passes through.
    pub filters: Filters,
    /// Spans of its requests, when it or the bootstrap configures tracing
    /// (changes without the listener being replaced).
    pub tracing: ArcSwapOption<Tracing>,
    /// Its request log, when its config asks for one (changes without the
    /// listener being replaced).
    pub access_log: ArcSwapOption<AccessLog>,
    /// Istio's request metrics, reported from this listener's side.
    pub istio: Arc<ListenerIstio>,
    /// In front of the local block: takes vDAG hops and deliveries from
    /// other sidecars.
    pub inbound: bool,
    /// The vDAG requests this proxy is origin of or forwarding.
    pub vdags: Arc<VDags>,
}

impl ListenerContext {
    /// Whether responses on this listener should close HTTP/1.1 connections.
    pub fn closing(&self) -> bool {
        self.drain.is_draining()
    }
}

/// What a connection's watchdog needs to tell idle from busy.
#[derive(Default)]
pub struct Activity {
    /// Bytes read from the connection so far.
    pub bytes_read: AtomicU64,
    requests: AtomicUsize,
    /// The connection speaks HTTP/2 (it can be told to go away).
    pub http2: AtomicBool,
}

impl Activity {
    /// Counts a request until the returned guard is dropped, which the
    /// request path does when the response stream ends.
    pub fn request(self: &Arc<Self>) -> RequestGuard {
        self.requests.fetch_add(1, Ordering::Relaxed);
        RequestGuard(self.clone())
    }

    /// Resolves once a whole `period` passed with no request in flight and
    /// nothing read. A connection that stalls mid-request-head (slowloris)
    /// or sits idle in keep-alive is closed this way. One timer per
    /// connection per period, instead of hyper's per-request header timer,
    /// which cost an extra runtime wake-up on every request.
    pub async fn idle(&self, period: Duration) {
        idle_together(&[self], period).await
    }
}

/// Resolves once a whole `period` passed in which none of `activities` had
/// a request in flight or read anything: for a forwarded TCP connection,
/// both of its sides.
pub async fn idle_together(activities: &[&Activity], period: Duration) {
    let read = || -> u64 {
        activities
            .iter()
            .map(|a| a.bytes_read.load(Ordering::Relaxed))
            .sum()
    };
    let busy = || {
        activities
            .iter()
            .any(|a| a.requests.load(Ordering::Relaxed) > 0)
    };
    let mut ticks = tokio::time::interval(period);
    ticks.tick().await;
    let mut before = read();
    loop {
        ticks.tick().await;
        let now = read();
        if now == before && !busy() {
            return;
        }
        before = now;
    }
}

/// Held by the request path while a request (and its response stream) is open.
pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A socket that counts the bytes read from it, for the idle watchdog
/// (and, for TCP forwarding, the byte counts).
pub type Watched<T> = Observed<T, CountReads>;

/// Counts a connection's bytes read into its [`Activity`].
pub struct CountReads(Arc<Activity>);

impl ReadObserver for CountReads {
    fn read(&mut self, bytes: &[u8]) {
        self.0
            .bytes_read
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
    }
}

/// `io`, counting what it reads into `activity`.
pub fn watched<T>(io: T, activity: Arc<Activity>) -> Watched<T> {
    Observed::new(io, CountReads(activity))
}
