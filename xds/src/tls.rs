//! The xDS/CA port's connections: plaintext, or (with a CA) TLS 1.3 with
//! the control plane's own SVID, a client SVID verified when presented
//! (the first CSR comes with a bootstrap token instead). Handshakes run on
//! their own tasks, so one slow or hostile client holds up no one; a
//! failed one is logged and counted and closes only itself. What the
//! handshake proved reaches every request as the [`PeerIdentity`]
//! extension.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use gridmesh_identity::verify::{describe, reason};
use gridmesh_identity::{ALPN_H2, ClientAuth, IdentityStore, SpiffeId, SvidInfo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::Shared;

/// How long a client has to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the gRPC server to take them.
const READY_QUEUE: usize = 64;

/// The SPIFFE ID a client proved with its certificate (`None` without
/// one), and where it connected from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity(pub Option<SpiffeId>, pub Option<std::net::SocketAddr>);

pub enum ControlIo {
    Plain(TcpStream),
    Tls {
        stream: Box<TlsStream<TcpStream>>,
        peer: Option<SpiffeId>,
    },
}

impl Connected for ControlIo {
    type ConnectInfo = PeerIdentity;

    fn connect_info(&self) -> PeerIdentity {
        match self {
            ControlIo::Plain(stream) => PeerIdentity(None, stream.peer_addr().ok()),
            ControlIo::Tls { stream, peer } => {
                PeerIdentity(peer.clone(), stream.get_ref().0.peer_addr().ok())
            }
        }
    }
}

/// Plaintext connections accepted on `listener`.
pub fn plain(listener: TcpListener) -> impl Stream<Item = io::Result<ControlIo>> {
    gridmesh_net::incoming(listener, "xDS").map(|s| s.map(ControlIo::Plain))
}

/// TLS connections accepted on `listener`, presenting `store`'s SVID.
pub fn secured(
    listener: TcpListener,
    store: Arc<IdentityStore>,
    shared: Arc<Shared>,
) -> impl Stream<Item = io::Result<ControlIo>> {
    let acceptor = TlsAcceptor::from(store.server_config(&[ALPN_H2], ClientAuth::Optional));
    let (ready, queue) = mpsc::channel(READY_QUEUE);
    let mut backoff = gridmesh_net::AcceptBackoff::default();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = gridmesh_net::accept(&listener, &mut backoff, "xDS") => accepted,
                () = ready.closed() => return,
            };
            let (stream, peer_addr) = accepted;
            let (acceptor, ready, shared) = (acceptor.clone(), ready.clone(), shared.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let peer = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|chain| chain.first())
                            .and_then(|leaf| SvidInfo::of_leaf(leaf).ok())
                            .map(|svid| svid.id);
                        let _ = ready
                            .send(Ok(ControlIo::Tls {
                                stream: Box::new(tls),
                                peer,
                            }))
                            .await;
                    }
                    Ok(Err(error)) => {
                        let tls = error
                            .get_ref()
                            .and_then(|e| e.downcast_ref::<rustls::Error>());
                        let (why, detail) = match tls {
                            Some(tls) => (reason(tls), describe(tls)),
                            None => ("io", error.to_string()),
                        };
                        shared.metrics.tls_handshake_failed(why);
                        tracing::warn!(peer = %peer_addr, reason = %why, error = %detail, "TLS handshake failed");
                    }
                    Err(_) => {
                        shared.metrics.tls_handshake_failed("timeout");
                        tracing::warn!(peer = %peer_addr, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    ReceiverStream::new(queue)
}

impl AsyncRead for ControlIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ControlIo::Plain(io) => Pin::new(io).poll_read(cx, buf),
            ControlIo::Tls { stream, .. } => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ControlIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ControlIo::Plain(io) => Pin::new(io).poll_write(cx, buf),
            ControlIo::Tls { stream, .. } => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ControlIo::Plain(io) => Pin::new(io).poll_flush(cx),
            ControlIo::Tls { stream, .. } => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ControlIo::Plain(io) => Pin::new(io).poll_shutdown(cx),
            ControlIo::Tls { stream, .. } => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}
