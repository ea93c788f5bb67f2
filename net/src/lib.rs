//! Socket plumbing every gridmesh server shares (the sidecar's listeners and
//! admin server, the control plane's xDS and admin servers, the block
//! server): one accept loop, so that the lessons it encodes are learnt once.
//!
//! - An accept error never ends a server. Errors about one connection (the
//!   peer reset it while it waited in the backlog) are skipped at once.
//!   Anything else — out of file descriptors (EMFILE/ENFILE), out of
//!   memory — fails again immediately while the condition lasts, so retrying
//!   at once would spin a core; [`accept`] waits out a pause that starts at
//!   5 ms and doubles to 1 s (grpc-go's schedule), reset by the next success.
//!   tonic's own incoming stream retries EMFILE in a busy loop.
//! - Accepted sockets get TCP_NODELAY: small responses (gRPC replies, xDS
//!   pushes, admin answers) must not wait for the peer's delayed ACK.
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used)]

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::Stream;
use tokio::net::{TcpListener, TcpStream};

const FIRST_PAUSE: Duration = Duration::from_millis(5);
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// How long the next failed accept waits before trying again.
#[derive(Debug, Clone)]
pub struct AcceptBackoff {
    next: Duration,
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        AcceptBackoff { next: FIRST_PAUSE }
    }
}

impl AcceptBackoff {
    fn succeeded(&mut self) {
        self.next = FIRST_PAUSE;
    }

    fn failed(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(MAX_PAUSE);
        pause
    }
}

/// The next connection on `listener`, with TCP_NODELAY set; waits out
/// errors as the module says. `server` names the listener in logs.
pub async fn accept(
    listener: &TcpListener,
    backoff: &mut AcceptBackoff,
    server: &str,
) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                backoff.succeeded();
                if let Err(error) = stream.set_nodelay(true) {
                    tracing::debug!(server, %peer, %error, "TCP_NODELAY not set");
                }
                return (stream, peer);
            }
            Err(error) if is_connection_error(&error) => {
                tracing::debug!(server, %error, "a connection failed before it was accepted");
            }
            Err(error) => {
                let pause = backoff.failed();
                tracing::warn!(server, %error, ?pause, "cannot accept connections; retrying after a pause");
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// [`accept`] as a stream that never fails nor ends, for tonic's
/// `serve_with_incoming*` (which ignore the builder's TCP settings).
pub fn incoming(
    listener: TcpListener,
    server: &'static str,
) -> impl Stream<Item = io::Result<TcpStream>> + Send + 'static {
    futures_util::stream::unfold(
        (listener, AcceptBackoff::default()),
        move |(listener, mut backoff)| async move {
            let (stream, _) = accept(&listener, &mut backoff, server).await;
            Some((Ok(stream), (listener, backoff)))
        },
    )
}

/// Errors that concern only the connection being accepted.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_a_second_and_reset_on_success() {
        let mut backoff = AcceptBackoff::default();
        let pauses: Vec<u128> = (0..10).map(|_| backoff.failed().as_millis()).collect();
        assert_eq!(pauses, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        backoff.succeeded();
        assert_eq!(backoff.failed(), FIRST_PAUSE);
    }

    #[tokio::test]
    async fn accepted_sockets_have_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(TcpStream::connect(addr));
        let (stream, _) = accept(&listener, &mut AcceptBackoff::default(), "test").await;
        assert!(stream.nodelay().unwrap());
        client.await.unwrap().unwrap();
    }
}
