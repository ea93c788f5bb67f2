//! Keeps the addresses behind a `hostname:port` endpoint current.
//!
//! One task per name resolves it, publishes the addresses through a
//! `tokio::sync::watch` channel when (and only when) they change, and resolves
//! again when the shortest record TTL runs out, but never sooner than the
//! cluster's `dns_min_refresh`: a TTL of 0 must not become a query loop. The
//! cluster rebuilds its balancer from each new set.
//!
//! A failed lookup keeps the last good addresses and is retried with a
//! jittered exponential backoff. An answer with no addresses (NXDOMAIN,
//! NODATA) counts as a failure too: a DNS outage or a briefly empty headless
//! service would otherwise empty the cluster, while keeping addresses that
//! have really gone costs only connection errors that health checking and
//! retries already handle.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::TokioResolver;
use hickory_resolver::lookup_ip::LookupIp;
use hickory_resolver::net::NetError;
use rand::RngExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

/// The addresses a name resolves to, sorted and without duplicates, so that
/// the same records in another order (DNS servers rotate them) are no change.
pub type Addresses = Arc<[SocketAddr]>;

/// Resolution frequency limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DnsRefresh {
    /// Soonest re-resolution after a success, whatever the TTL (the cluster's
    /// `dns_min_refresh`), and the first retry delay after a failure.
    pub min_refresh: Duration,
    /// Longest delay between retries while lookups keep failing.
    pub max_backoff: Duration,
}

impl Default for DnsRefresh {
    fn default() -> Self {
        DnsRefresh {
            min_refresh: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// Below this a `min_refresh` of zero and a TTL of zero would spin.
const REFRESH_FLOOR: Duration = Duration::from_millis(10);

/// A resolver configured from the system (`/etc/resolv.conf`, with the
/// search domains and `ndots` that Kubernetes service names rely on, and
/// `/etc/hosts`). Share one between all watches: they then share its cache.
pub fn system_resolver() -> Result<TokioResolver, NetError> {
    TokioResolver::builder_tokio()?.build()
}

/// Starts resolving `host` and returns its addresses with `port`, as they
/// change, plus the task doing it. The set starts empty; the first successful
/// lookup marks the receiver changed. The task ends once every receiver is
/// dropped. Must be called within a tokio runtime.
pub fn watch_host(
    resolver: TokioResolver,
    host: String,
    port: u16,
    refresh: DnsRefresh,
) -> (watch::Receiver<Addresses>, JoinHandle<()>) {
    let (publish, addresses) = watch::channel(Addresses::from([]));
    let task = tokio::spawn(keep_resolving(resolver, host, port, refresh, publish));
    (addresses, task)
}

async fn keep_resolving(
    resolver: TokioResolver,
    host: String,
    port: u16,
    refresh: DnsRefresh,
    publish: watch::Sender<Addresses>,
) {
    let min_refresh = refresh.min_refresh.max(REFRESH_FLOOR);
    let mut backoff = min_refresh;
    loop {
        let lookup = tokio::select! {
            () = publish.closed() => return,
            lookup = resolver.lookup_ip(host.as_str()) => lookup,
        };
        let wait = match answer(lookup, port) {
            Ok((addresses, valid_until)) => {
                backoff = min_refresh;
                publish_if_changed(&publish, &host, addresses);
                valid_until
                    .saturating_duration_since(Instant::now())
                    .max(min_refresh)
            }
            Err(error) => {
                let wait = jittered(backoff);
                warn!(%host, %error, retry_in = ?wait, "DNS lookup failed; keeping the last addresses");
                backoff = backoff
                    .saturating_mul(2)
                    .min(refresh.max_backoff.max(min_refresh));
                wait
            }
        };
        tokio::select! {
            () = publish.closed() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// The addresses a lookup found, sorted and unique, and until when they may
/// be cached; or why there are none.
fn answer(
    lookup: Result<LookupIp, NetError>,
    port: u16,
) -> Result<(Vec<SocketAddr>, Instant), String> {
    let lookup = lookup.map_err(|e| e.to_string())?;
    let mut addresses: Vec<SocketAddr> =
        lookup.iter().map(|ip| SocketAddr::new(ip, port)).collect();
    addresses.sort_unstable();
    addresses.dedup();
    if addresses.is_empty() {
        return Err("the answer has no addresses".to_string());
    }
    Ok((addresses, lookup.valid_until()))
}

fn publish_if_changed(publish: &watch::Sender<Addresses>, host: &str, addresses: Vec<SocketAddr>) {
    publish.send_if_modified(|current| {
        if **current == *addresses {
            return false;
        }
        debug!(%host, ?addresses, "DNS addresses changed");
        *current = addresses.into();
        true
    });
}

/// Between `delay` and 1.5 × `delay`, so that sidecars which failed together
/// do not retry together.
fn jittered(delay: Duration) -> Duration {
    let spread = u64::try_from(delay.as_millis() / 2).unwrap_or(u64::MAX);
    delay.saturating_add(Duration::from_millis(rand::rng().random_range(0..=spread)))
}

#[cfg(test)]
mod tests;
