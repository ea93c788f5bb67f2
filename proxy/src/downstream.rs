//! The downstream side's shared state: what a listener's connections and
//! requests share ([`ListenerContext`]), and what the idle watchdog and the
//! drain need to know about one connection ([`Activity`]). The accept loop
//! (`server`) creates them; the request pipeline reads them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::drain::Drain;
use crate::filter::Filters;
use crate::metrics::ListenerMetrics;

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
    pub reads: AtomicU64,
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
        let mut ticks = tokio::time::interval(period);
        ticks.tick().await;
        let mut reads = self.reads.load(Ordering::Relaxed);
        loop {
            ticks.tick().await;
            let now = self.reads.load(Ordering::Relaxed);
            if now == reads && self.requests.load(Ordering::Relaxed) == 0 {
                return;
            }
            reads = now;
        }
    }
}

/// Held by the request path while a request (and its response stream) is open.
pub struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::Relaxed);
    }
}
