//! The accept side: a listener's next connection, and what is known about
//! it from then on.

use std::net::SocketAddr;
use std::sync::Arc;

use gridmesh_identity::SpiffeId;
use gridmesh_net::AcceptBackoff;
use tokio::net::{TcpListener, TcpStream};

/// What the proxy knows about one downstream connection, fixed when it is
/// accepted (and, with TLS, when the handshake ends). Every request of the
/// connection carries it in its extensions, so routing, authorization,
/// filters, logs and metrics all read one source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionContext {
    /// The listener that accepted it.
    pub listener: Arc<str>,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// Where the client was going when its traffic was intercepted
    /// (`SO_ORIGINAL_DST`); `None` for traffic addressed to the listener.
    pub original_dst: Option<SocketAddr>,
    /// The peer's verified identity when it presented a certificate over
    /// mTLS; `None` over plaintext.
    pub peer_identity: Option<SpiffeId>,
    /// The protocol TLS negotiated (ALPN), if any.
    pub alpn: Option<Arc<[u8]>>,
}

/// A connection just accepted.
pub struct Accepted {
    pub stream: TcpStream,
    pub context: Arc<ConnectionContext>,
}

/// The next connection on `listener` (see [`gridmesh_net::accept`]: errors
/// are waited out, TCP_NODELAY is set), with its context.
pub async fn accept(
    listener: &TcpListener,
    backoff: &mut AcceptBackoff,
    listener_name: &Arc<str>,
) -> Accepted {
    let (stream, peer) = gridmesh_net::accept(listener, backoff, listener_name).await;
    // The accepted socket's own address; the listener's if the kernel
    // cannot say (it always can for a connected socket).
    let local = stream
        .local_addr()
        .or_else(|_| listener.local_addr())
        .unwrap_or(peer);
    Accepted {
        stream,
        context: Arc::new(ConnectionContext {
            listener: listener_name.clone(),
            peer,
            local,
            original_dst: None,
            peer_identity: None,
            alpn: None,
        }),
    }
}
