//! Connections to one endpoint: a stack of idle HTTP/1.1 keep-alive
//! connections and multiplexed HTTP/2 connections — another one whenever
//! those open are at the peer's stream limit — under the cluster's
//! connection and pending-request caps.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::time::Instant;

use super::limits::{ConnectionSlot, Limits};
use super::peer_settings::{StreamLimit, watch_settings};
use crate::body::Body;
use crate::metrics::ClusterMetrics;
use crate::transport::{Alpn, ConnectError, Connector, Io, Origination};

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
    http2: Mutex<Vec<Http2Connection>>,
    /// One HTTP/2 connect at a time: concurrent requests that find no room
    /// share it.
    /// Holds the last failed connect, which requests queued behind it share.
    http2_connect: tokio::sync::Mutex<Option<(Instant, SendError)>>,
}

impl Pool {
    /// A pool for the endpoint at `addr`; `tls` when it is meshed.
    pub fn new(
        addr: SocketAddr,
        connect_timeout: Duration,
        idle_timeout: Duration,
        limits: Arc<Limits>,
        tls: Option<Arc<Origination>>,
    ) -> Self {
        Pool {
            addr,
            connector: Connector::new(connect_timeout, tls),
            idle_timeout,
            limits,
            http1_idle: Mutex::new(Vec::new()),
            http2: Mutex::new(Vec::new()),
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
        Lease(Some(Leased::Http1 {
            sender,
            pool: Arc::downgrade(self),
        }))
    }

    /// Sends as a stream on a connection with room for it; the stream is
    /// counted open until the returned [`Lease`] is dropped.
    pub async fn send_http2(
        self: &Arc<Self>,
        req: Request<Body>,
        metrics: &ClusterMetrics,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        let (mut sender, stream) = self.acquire_http2(metrics).await?;
        match sender.try_send_request(req).await {
            Ok(rsp) => Ok((rsp, Lease(Some(Leased::Http2 { _stream: stream })))),
            Err(mut e) => match e.take_message() {
                // The connection went away (GOAWAY, close) before this stream
                // was opened: retry once on a new connection.
                Some(req) => {
                    drop(stream);
                    self.forget_closed_http2();
                    let (mut sender, stream) = self.acquire_http2(metrics).await?;
                    let rsp = sender
                        .send_request(req)
                        .await
                        .map_err(|_| SendError::Reset)?;
                    Ok((rsp, Lease(Some(Leased::Http2 { _stream: stream }))))
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
    ) -> Result<(http2::SendRequest<Body>, OpenStream), SendError> {
        if let Some(stream) = self.open_http2_stream(Room::Needed) {
            return Ok(stream);
        }
        let queued_at = Instant::now();
        let mut last_failure = self.http2_connect.lock().await;
        if let Some(stream) = self.open_http2_stream(Room::Needed) {
            return Ok(stream);
        }
        // The connect this request queued behind failed: share its outcome
        // instead of trying again, so that requests piled up behind an
        // unreachable endpoint fail within one connect timeout, not one each.
        if let Some((failed_at, error)) = *last_failure
            && failed_at >= queued_at
        {
            return Err(error);
        }
        // Every open connection is at the peer's limit: another one if the
        // cluster's cap allows; at the cap, the least busy one, where the
        // stream waits for another to end (as it would on any client).
        let slot = match self.limits.open_connection(metrics) {
            Some(slot) => Ok(slot),
            None => match self.open_http2_stream(Room::Optional) {
                Some(stream) => return Ok(stream),
                None => self.slot(metrics).await,
            },
        };
        let connected = match slot {
            Ok(slot) => self.connect_http2(slot, metrics).await,
            Err(e) => Err(e),
        };
        match connected {
            Ok(connection) => {
                *last_failure = None;
                let stream = connection.open_stream();
                self.http2.lock().push(connection);
                Ok(stream)
            }
            Err(error) => {
                *last_failure = Some((Instant::now(), error));
                Err(error)
            }
        }
    }

    /// A stream on a live connection: the first with room for it, or with
    /// [`Room::Optional`] the least busy.
    fn open_http2_stream(&self, room: Room) -> Option<(http2::SendRequest<Body>, OpenStream)> {
        let mut connections = self.http2.lock();
        connections.retain(|c| c.sender.is_ready());
        let connection = match room {
            Room::Needed => connections.iter().find(|c| c.has_room()),
            Room::Optional => connections.iter().min_by_key(|c| c.open_streams()),
        };
        connection.map(Http2Connection::open_stream)
    }

    fn forget_closed_http2(&self) {
        self.http2
            .lock()
            .retain(|c| c.sender.is_ready() && !c.sender.is_closed());
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
    ) -> Result<(Io, ConnectionSlot), SendError> {
        let slot = self.limits.open_connection(metrics).ok_or_else(|| {
            metrics.overflow_pending.inc();
            SendError::PendingOverflow
        })?;
        let stream = self.connect(metrics, Alpn::None).await?;
        Ok((stream, slot))
    }

    fn enter_pending(&self, metrics: &ClusterMetrics) -> Result<super::limits::Permit, SendError> {
        self.limits.enter_pending().ok_or_else(|| {
            metrics.overflow_pending.inc();
            SendError::PendingOverflow
        })
    }

    async fn connect(&self, metrics: &ClusterMetrics, alpn: Alpn) -> Result<Io, SendError> {
        match self.connector.connect(self.addr, alpn).await {
            Ok(stream) => {
                metrics.connects.inc();
                Ok(stream)
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
            Err(ConnectError::Handshake(error)) => {
                metrics.connect_errors.inc();
                metrics.tls_handshake_error(error.reason);
                tracing::warn!(
                    addr = %self.addr,
                    reason = %error.reason,
                    error = %error.detail,
                    "TLS handshake with the upstream failed"
                );
                Err(SendError::ConnectFailure)
            }
        }
    }

    async fn connect_http1(
        &self,
        slot: ConnectionSlot,
        metrics: &ClusterMetrics,
    ) -> Result<http1::SendRequest<Body>, SendError> {
        let io = TokioIo::new(self.connect(metrics, Alpn::Http1).await?);
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
    ) -> Result<Http2Connection, SendError> {
        let (io, limit) = watch_settings(self.connect(metrics, Alpn::Http2).await?);
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONNECTION_WINDOW)
            .keep_alive_interval(H2_KEEPALIVE_INTERVAL)
            .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|_| SendError::ConnectFailure)?;
        drive(conn, slot, "HTTP/2");
        // Used once the peer has said how many streams it takes.
        match tokio::time::timeout(self.connector.timeout(), limit.announced()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(SendError::ConnectFailure),
            Err(_) => return Err(SendError::ConnectTimeout),
        }
        Ok(Http2Connection {
            sender,
            streams: Arc::new(AtomicU32::new(0)),
            limit,
        })
    }
}

/// Whether a stream may go on a connection at the peer's limit.
#[derive(Clone, Copy)]
enum Room {
    Needed,
    Optional,
}

/// One HTTP/2 connection and the streams open on it.
struct Http2Connection {
    sender: http2::SendRequest<Body>,
    /// Counted by the exchanges' [`OpenStream`]s.
    streams: Arc<AtomicU32>,
    /// How many the peer allows at once.
    limit: StreamLimit,
}

impl Http2Connection {
    fn open_streams(&self) -> u32 {
        self.streams.load(Ordering::Relaxed)
    }

    fn has_room(&self) -> bool {
        self.open_streams() < self.limit.get()
    }

    /// Counts a stream open (under the pool's lock, so two requests cannot
    /// both take the last room).
    fn open_stream(&self) -> (http2::SendRequest<Body>, OpenStream) {
        self.streams.fetch_add(1, Ordering::Relaxed);
        (self.sender.clone(), OpenStream(Arc::clone(&self.streams)))
    }
}

/// A stream counted open on its connection until dropped.
struct OpenStream(Arc<AtomicU32>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An HTTP/1.1 connection lent to one exchange, which holds it until its
/// response stream is over. Dropped then, it goes back to the pool if the
/// response was read to the end — hyper reports the connection ready again
/// as soon as it has read the last byte, before the body hands it on — and
/// is closed otherwise (a response left unread cannot be skipped). The
/// exchange's end does this; no task waits on the connection.
/// An HTTP/2 exchange's lease counts its stream open on the shared
/// connection, which is how the pool knows when that connection is full.
pub struct Lease(Option<Leased>);

enum Leased {
    Http1 {
        sender: http1::SendRequest<Body>,
        pool: Weak<Pool>,
    },
    /// Held for its drop, which counts the stream closed.
    Http2 { _stream: OpenStream },
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(Leased::Http1 { sender, pool }) = self.0.take()
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
