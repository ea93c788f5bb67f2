//! Connections to one endpoint: a stack of idle HTTP/1.1 keep-alive
//! connections and one multiplexed HTTP/2 connection, under the cluster's
//! connection and pending-request caps.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::limits::{ConnectionSlot, Limits};
use crate::body::Body;
use crate::metrics::ClusterMetrics;
use crate::transport::{ConnectError, Connector};

/// Why a request could not be sent. Everything here happened before any
/// response byte, so it is safe to retry when the policy allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    ConnectFailure,
    ConnectTimeout,
    /// `max_pending_requests` reached while waiting for a connection.
    PendingOverflow,
    /// The connection failed or the stream was reset before response headers.
    Reset,
}

/// HTTP/2 flow-control windows sized for streaming model output: the
/// defaults (64 KiB) throttle a single fast stream on any real RTT.
const H2_STREAM_WINDOW: u32 = 1 << 20;
const H2_CONNECTION_WINDOW: u32 = 4 << 20;
const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

enum Capacity<T> {
    Slot(ConnectionSlot),
    Reuse(T),
}

pub struct Pool {
    addr: SocketAddr,
    connector: Connector,
    idle_timeout: Duration,
    limits: Arc<Limits>,
    http1_idle: Mutex<Vec<(http1::SendRequest<Body>, Instant)>>,
    http2: Mutex<Option<http2::SendRequest<Body>>>,
    /// One HTTP/2 connect at a time: concurrent first requests share it.
    /// Holds the last failed connect, which requests queued behind it share.
    http2_connect: tokio::sync::Mutex<Option<(Instant, SendError)>>,
}

impl Pool {
    pub fn new(
        addr: SocketAddr,
        connect_timeout: Duration,
        idle_timeout: Duration,
        limits: Arc<Limits>,
    ) -> Self {
        Pool {
            addr,
            connector: Connector::new(connect_timeout),
            idle_timeout,
            limits,
            http1_idle: Mutex::new(Vec::new()),
            http2: Mutex::new(None),
            http2_connect: tokio::sync::Mutex::new(None),
        }
    }

    pub fn idle_http1_connections(&self) -> usize {
        self.http1_idle.lock().len()
    }

    /// Sends on a pooled or new connection; the connection is lent to the
    /// exchange with the returned [`Lease`].
    pub async fn send_http1(
        self: &Arc<Self>,
        req: Request<Body>,
        metrics: &ClusterMetrics,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        let (mut sender, reused) = self.acquire_http1(metrics).await?;
        match sender.try_send_request(req).await {
            Ok(rsp) => Ok((rsp, self.lease(sender))),
            Err(mut e) => match e.take_message() {
                // A pooled connection the server had already closed: the
                // request never left, so it goes out again on a fresh one.
                Some(req) if reused => {
                    let mut sender = self
                        .connect_http1(self.slot(metrics).await?, metrics)
                        .await?;
                    let rsp = sender
                        .send_request(req)
                        .await
                        .map_err(|_| SendError::Reset)?;
                    Ok((rsp, self.lease(sender)))
                }
                _ => Err(SendError::Reset),
            },
        }
    }

    fn lease(self: &Arc<Self>, sender: http1::SendRequest<Body>) -> Lease {
        Lease(Some((sender, Arc::downgrade(self))))
    }

    pub async fn send_http2(
        self: &Arc<Self>,
        req: Request<Body>,
        metrics: &ClusterMetrics,
    ) -> Result<Response<Incoming>, SendError> {
        let mut sender = self.acquire_http2(metrics).await?;
        match sender.try_send_request(req).await {
            Ok(rsp) => Ok(rsp),
            Err(mut e) => match e.take_message() {
                // The connection went away (GOAWAY, close) before this stream
                // was opened: retry once on a new connection.
                Some(req) => {
                    self.forget_http2(&sender);
                    let mut sender = self.acquire_http2(metrics).await?;
                    sender.send_request(req).await.map_err(|_| SendError::Reset)
                }
                None => Err(SendError::Reset),
            },
        }
    }

    async fn acquire_http1(
        self: &Arc<Self>,
        metrics: &ClusterMetrics,
    ) -> Result<(http1::SendRequest<Body>, bool), SendError> {
        if let Some(sender) = self.pop_idle_http1() {
            return Ok((sender, true));
        }
        match self.capacity(metrics, || self.pop_idle_http1()).await? {
            Capacity::Reuse(sender) => Ok((sender, true)),
            Capacity::Slot(slot) => Ok((self.connect_http1(slot, metrics).await?, false)),
        }
    }

    fn pop_idle_http1(&self) -> Option<http1::SendRequest<Body>> {
        let mut idle = self.http1_idle.lock();
        while let Some((sender, since)) = idle.pop() {
            if sender.is_ready() && since.elapsed() < self.idle_timeout {
                return Some(sender);
            }
        }
        None
    }

    /// Puts a connection whose exchange is over back on the idle stack.
    fn put_idle(&self, sender: http1::SendRequest<Body>) {
        let now = Instant::now();
        let mut idle = self.http1_idle.lock();
        // Connections idle past the timeout sit at the bottom: drop them.
        idle.retain(|(_, since)| now.duration_since(*since) < self.idle_timeout);
        idle.push((sender, now));
        drop(idle);
        self.limits.connection_freed.notify_waiters();
    }

    async fn acquire_http2(
        self: &Arc<Self>,
        metrics: &ClusterMetrics,
    ) -> Result<http2::SendRequest<Body>, SendError> {
        if let Some(sender) = self.live_http2() {
            return Ok(sender);
        }
        let queued_at = Instant::now();
        let mut last_failure = self.http2_connect.lock().await;
        if let Some(sender) = self.live_http2() {
            return Ok(sender);
        }
        // The connect this request queued behind failed: share its outcome
        // instead of trying again, so that requests piled up behind an
        // unreachable endpoint fail within one connect timeout, not one each.
        if let Some((failed_at, error)) = *last_failure
            && failed_at >= queued_at
        {
            return Err(error);
        }
        let connected = match self.slot(metrics).await {
            Ok(slot) => self.connect_http2(slot, metrics).await,
            Err(e) => Err(e),
        };
        match connected {
            Ok(sender) => {
                *last_failure = None;
                *self.http2.lock() = Some(sender.clone());
                Ok(sender)
            }
            Err(error) => {
                *last_failure = Some((Instant::now(), error));
                Err(error)
            }
        }
    }

    fn live_http2(&self) -> Option<http2::SendRequest<Body>> {
        let mut shared = self.http2.lock();
        match shared.as_ref() {
            Some(sender) if sender.is_ready() => Some(sender.clone()),
            Some(_) => {
                *shared = None;
                None
            }
            None => None,
        }
    }

    fn forget_http2(&self, dead: &http2::SendRequest<Body>) {
        let mut shared = self.http2.lock();
        if shared
            .as_ref()
            .is_some_and(|s| !s.is_ready() || dead.is_closed())
        {
            *shared = None;
        }
    }

    /// A connection slot for a new connection.
    async fn slot(&self, metrics: &ClusterMetrics) -> Result<ConnectionSlot, SendError> {
        match self
            .capacity(metrics, || None::<std::convert::Infallible>)
            .await?
        {
            Capacity::Slot(slot) => Ok(slot),
            Capacity::Reuse(never) => match never {},
        }
    }

    /// Room for a request: a slot for a new connection or, when the cluster
    /// is at its connection cap, whatever `reuse` finds once a connection
    /// is freed. Waits as a pending request, up to the connect timeout.
    async fn capacity<T>(
        &self,
        metrics: &ClusterMetrics,
        reuse: impl Fn() -> Option<T>,
    ) -> Result<Capacity<T>, SendError> {
        let deadline = Instant::now() + self.connector.timeout();
        loop {
            if let Some(slot) = self.limits.open_connection(metrics) {
                return Ok(Capacity::Slot(slot));
            }
            let _pending = self.enter_pending(metrics)?;
            let freed = self.limits.connection_freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(found) = reuse() {
                return Ok(Capacity::Reuse(found));
            }
            if self.limits.connection_cap_reached()
                && tokio::time::timeout_at(deadline, freed).await.is_err()
            {
                return Err(SendError::ConnectTimeout);
            }
        }
    }

    /// A plain connection for opaque TCP forwarding, under the cluster's
    /// connection cap (a forwarded connection is never shared, so there is
    /// nothing to wait for: at the cap it is refused).
    pub async fn connect_tcp(
        &self,
        metrics: &ClusterMetrics,
    ) -> Result<(TcpStream, ConnectionSlot), SendError> {
        let slot = self.limits.open_connection(metrics).ok_or_else(|| {
            metrics.overflow_pending.inc();
            SendError::PendingOverflow
        })?;
        let stream = self.connect(metrics).await?.into_inner();
        Ok((stream, slot))
    }

    fn enter_pending(&self, metrics: &ClusterMetrics) -> Result<super::limits::Permit, SendError> {
        self.limits.enter_pending().ok_or_else(|| {
            metrics.overflow_pending.inc();
            SendError::PendingOverflow
        })
    }

    async fn connect(&self, metrics: &ClusterMetrics) -> Result<TokioIo<TcpStream>, SendError> {
        match self.connector.connect(self.addr).await {
            Ok(stream) => {
                metrics.connects.inc();
                Ok(TokioIo::new(stream))
            }
            Err(ConnectError::Failed(error)) => {
                metrics.connect_errors.inc();
                tracing::debug!(addr = %self.addr, %error, "upstream connect failed");
                Err(SendError::ConnectFailure)
            }
            Err(ConnectError::TimedOut) => {
                metrics.connect_errors.inc();
                Err(SendError::ConnectTimeout)
            }
        }
    }

    async fn connect_http1(
        &self,
        slot: ConnectionSlot,
        metrics: &ClusterMetrics,
    ) -> Result<http1::SendRequest<Body>, SendError> {
        let io = self.connect(metrics).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|_| SendError::ConnectFailure)?;
        drive(conn, slot, "HTTP/1.1");
        Ok(sender)
    }

    async fn connect_http2(
        &self,
        slot: ConnectionSlot,
        metrics: &ClusterMetrics,
    ) -> Result<http2::SendRequest<Body>, SendError> {
        let io = self.connect(metrics).await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONNECTION_WINDOW)
            .keep_alive_interval(H2_KEEPALIVE_INTERVAL)
            .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT)
            .handshake(io)
            .await
            .map_err(|_| SendError::ConnectFailure)?;
        drive(conn, slot, "HTTP/2");
        Ok(sender)
    }
}

/// An HTTP/1.1 connection lent to one exchange, which holds it until its
/// response stream is over. Dropped then, it goes back to the pool if the
/// response was read to the end — hyper reports the connection ready again
/// as soon as it has read the last byte, before the body hands it on — and
/// is closed otherwise (a response left unread cannot be skipped). The
/// exchange's end does this; no task waits on the connection.
pub struct Lease(Option<(http1::SendRequest<Body>, Weak<Pool>)>);

impl Lease {
    /// An HTTP/2 stream's: the connection is shared, nothing to give back.
    pub fn shared() -> Lease {
        Lease(None)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some((sender, pool)) = self.0.take()
            && sender.is_ready()
            && let Some(pool) = pool.upgrade()
        {
            pool.put_idle(sender);
        }
    }
}

/// Runs a connection's I/O until it closes; its slot under the cluster's
/// connection cap is released then.
fn drive<C>(conn: C, slot: ConnectionSlot, protocol: &'static str)
where
    C: std::future::Future<Output = Result<(), hyper::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        let _slot = slot;
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, protocol, "upstream connection ended with an error");
        }
    });
}
