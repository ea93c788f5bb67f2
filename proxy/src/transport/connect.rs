//! The connect side: the one place upstream sockets are opened, so that
//! what every upstream connection needs (TCP_NODELAY; mTLS to meshed
//! endpoints; later a socket mark to exempt the proxy's own traffic from
//! interception) is set in one place.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use super::Io;
use super::tls::{Alpn, HandshakeError, Origination};

/// Why no connection was made.
#[derive(Debug)]
pub enum ConnectError {
    Failed(io::Error),
    TimedOut,
    /// Connected, but the TLS handshake failed (the endpoint's certificate
    /// was refused, or it refused ours).
    Handshake(HandshakeError),
}

/// Opens connections to endpoints, with a cluster's connect timeout, and
/// mTLS when the endpoint is meshed.
#[derive(Debug, Clone)]
pub struct Connector {
    timeout: Duration,
    tls: Option<Arc<Origination>>,
}

impl Connector {
    pub fn new(timeout: Duration, tls: Option<Arc<Origination>>) -> Self {
        Connector { timeout, tls }
    }

    /// How long a connect may take; also how long a request waits for a
    /// connection when the cluster is at its connection cap.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A connection to `addr`: TCP within the connect timeout, then, for a
    /// meshed endpoint, the TLS handshake (bounded on its own).
    pub async fn connect(&self, addr: SocketAddr, alpn: Alpn) -> Result<Io, ConnectError> {
        let stream = match tokio::time::timeout(self.timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return Err(ConnectError::Failed(error)),
            Err(_) => return Err(ConnectError::TimedOut),
        };
        // Small request/response exchanges must not wait for Nagle.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%addr, %error, "TCP_NODELAY not set");
        }
        match &self.tls {
            None => Ok(Io::Plain(stream)),
            Some(tls) => tls
                .originate(stream, alpn)
                .await
                .map_err(ConnectError::Handshake),
        }
    }
}
