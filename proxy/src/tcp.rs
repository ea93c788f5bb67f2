//! Opaque TCP: a connection that is not HTTP, copied as bytes both ways to
//! an endpoint of a cluster its balancer picks. A half-close passes through
//! (a client that shuts its write side still gets the rest of the answer);
//! a connection idle both ways for the listener's idle timeout is closed; a
//! draining listener closes it at the drain deadline (bytes carry no way to
//! ask for a graceful end). Counted per listener: connections, and bytes
//! each way.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::cluster::Cluster;
use crate::downstream::{Activity, ListenerContext, idle_together, watched};
use crate::transport::Io;

/// Forwards `downstream` to `cluster` until either side is done.
pub async fn forward(
    downstream: Io,
    cluster: &Cluster,
    listener: &ListenerContext,
    idle: Duration,
) {
    listener.metrics.tcp_connections.inc();
    let upstream = match cluster.connect_tcp().await {
        Ok(upstream) => upstream,
        Err(error) => {
            // Bytes carry no error reply: the client sees the close.
            listener.metrics.local_reply(error.reason());
            return;
        }
    };
    let (received, sent) = (Arc::new(Activity::default()), Arc::new(Activity::default()));
    let mut client = watched(downstream, received.clone());
    let mut server = watched(upstream.stream, sent.clone());
    let both: [&Activity; 2] = [&received, &sent];
    tokio::select! {
        done = tokio::io::copy_bidirectional(&mut client, &mut server) => {
            if let Err(error) = done {
                tracing::debug!(listener = %listener.name, %error, "TCP connection ended with an error");
            }
        }
        () = idle_together(&both, idle) => {
            tracing::debug!(listener = %listener.name, "TCP connection idle: closed");
        }
        () = listener.drain.expired() => {}
    }
    let metrics = &listener.metrics;
    metrics
        .tcp_bytes_received
        .inc_by(received.bytes_read.load(Ordering::Relaxed));
    metrics
        .tcp_bytes_sent
        .inc_by(sent.bytes_read.load(Ordering::Relaxed));
}
