//! The connect side: the one place upstream sockets are opened, so that
//! what every upstream connection needs (TCP_NODELAY now; a socket mark to
//! exempt the proxy's own traffic from interception, TLS origination to
//! meshed endpoints, later) is set in one place.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

/// Why no connection was made.
#[derive(Debug)]
pub enum ConnectError {
    Failed(io::Error),
    TimedOut,
}

/// Opens connections to endpoints, with a cluster's connect timeout.
#[derive(Debug, Clone)]
pub struct Connector {
    timeout: Duration,
}

impl Connector {
    pub fn new(timeout: Duration) -> Self {
        Connector { timeout }
    }

    /// How long a connect may take; also how long a request waits for a
    /// connection when the cluster is at its connection cap.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A connection to `addr`, within the connect timeout.
    pub async fn connect(&self, addr: SocketAddr) -> Result<TcpStream, ConnectError> {
        let stream = match tokio::time::timeout(self.timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return Err(ConnectError::Failed(error)),
            Err(_) => return Err(ConnectError::TimedOut),
        };
        // Small request/response exchanges must not wait for Nagle.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%addr, %error, "TCP_NODELAY not set");
        }
        Ok(stream)
    }
}
