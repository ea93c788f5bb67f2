//! Mutual TLS on both sides of the proxy, with the workload's SVID from the
//! identity store (gridmesh-identity): terminating it on listeners with a
//! TLS mode, and originating it to endpoints the config says are meshed.
//! A failed handshake is reported with a short reason for metrics and the
//! words for the log line; it never ends anything but its own connection.

use std::sync::Arc;
use std::time::Duration;

use gridmesh_config::{Protocol, TlsMode};
use gridmesh_identity::verify::{describe, reason};
use gridmesh_identity::{ALPN_H2, ALPN_HTTP11, ClientAuth, IdentityStore, SpiffeId, SvidInfo};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};

use super::Io;

/// How long a handshake may take, either side. A peer that opens a
/// connection and stalls mid-handshake holds a slot no longer than this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The first byte of a TLS record carrying a handshake message (a
/// ClientHello): how PERMISSIVE tells TLS from plaintext.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Why a handshake failed.
#[derive(Debug, Clone)]
pub struct HandshakeError {
    /// A fixed label for metrics (`untrusted`, `wrong_identity`, `not_tls`, ...).
    pub reason: &'static str,
    /// The whole story, for the log line.
    pub detail: String,
}

impl HandshakeError {
    fn from_io(error: std::io::Error) -> HandshakeError {
        match error
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        {
            Some(tls) => HandshakeError {
                reason: reason(tls),
                detail: describe(tls),
            },
            None => HandshakeError {
                reason: match error.kind() {
                    std::io::ErrorKind::UnexpectedEof => "closed",
                    _ => "io",
                },
                detail: error.to_string(),
            },
        }
    }

    fn timed_out() -> HandshakeError {
        HandshakeError {
            reason: "timeout",
            detail: format!("no complete handshake within {HANDSHAKE_TIMEOUT:?}"),
        }
    }
}

/// The accept side of one listener: its TLS mode and the server config
/// (built once per listener; it reads the current SVID per handshake).
pub struct Terminator {
    mode: TlsMode,
    acceptor: Option<TlsAcceptor>,
    /// PERMISSIVE: how long to wait for the first byte before taking the
    /// connection as plaintext (the listener's protocol detection timeout,
    /// so a protocol where the server speaks first is not held longer).
    first_byte: Duration,
}

/// A connection after the accept side's TLS step.
pub struct Terminated {
    pub io: Io,
    /// The client's SPIFFE ID, over mTLS.
    pub peer_identity: Option<SpiffeId>,
    pub alpn: Option<Vec<u8>>,
}

impl Terminator {
    /// For a listener with `mode` serving `protocol`. `identity` is there
    /// whenever the mode is not DISABLE (config validation requires it).
    pub fn new(
        mode: TlsMode,
        protocol: Protocol,
        first_byte: Duration,
        identity: Option<&Arc<IdentityStore>>,
    ) -> Self {
        let acceptor = match (mode, identity) {
            (TlsMode::Disable, _) | (_, None) => None,
            (_, Some(store)) => {
                let alpn: &[&[u8]] = match protocol {
                    Protocol::Auto => &[ALPN_H2, ALPN_HTTP11],
                    Protocol::Http1 => &[ALPN_HTTP11],
                    Protocol::Http2 => &[ALPN_H2],
                    Protocol::Tcp => &[],
                };
                Some(TlsAcceptor::from(
                    store.server_config(alpn, ClientAuth::Required),
                ))
            }
        };
        Terminator {
            mode,
            acceptor,
            first_byte,
        }
    }

    /// Whether this listener terminates TLS at all.
    pub fn is_enabled(&self) -> bool {
        self.acceptor.is_some()
    }

    /// STRICT: a handshake, whatever the first bytes. PERMISSIVE: a
    /// handshake when the first byte starts a TLS handshake record, the
    /// plain stream otherwise (also when the client closes before sending
    /// anything). DISABLE: the plain stream.
    pub async fn terminate(&self, stream: TcpStream) -> Result<Terminated, HandshakeError> {
        let plain = |stream| Terminated {
            io: Io::Plain(stream),
            peer_identity: None,
            alpn: None,
        };
        let Some(acceptor) = &self.acceptor else {
            return Ok(plain(stream));
        };
        if self.mode == TlsMode::Permissive {
            let mut first = [0u8; 1];
            let peeked = tokio::time::timeout(self.first_byte, stream.peek(&mut first)).await;
            if !matches!(peeked, Ok(Ok(1))) || first[0] != TLS_HANDSHAKE_RECORD {
                return Ok(plain(stream));
            }
        }
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
            .await
            .map_err(|_| HandshakeError::timed_out())?
            .map_err(HandshakeError::from_io)?;
        let (_, session) = tls.get_ref();
        let peer_identity = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| SvidInfo::of_leaf(leaf).ok())
            .map(|svid| svid.id);
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        Ok(Terminated {
            io: Io::Tls(Box::new(TlsStream::Server(tls))),
            peer_identity,
            alpn,
        })
    }
}

/// What a connection to an endpoint carries, for ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    Http1,
    Http2,
    /// Bytes (opaque TCP): no ALPN offered.
    None,
}

/// Originating mTLS to endpoints that present one identity: a client
/// config per ALPN, each accepting only that identity's SVID. Its session
/// cache lets the pool's later connections to an endpoint resume instead
/// of doing a full handshake.
pub struct Origination {
    expected: SpiffeId,
    http1: Arc<ClientConfig>,
    http2: Arc<ClientConfig>,
    opaque: Arc<ClientConfig>,
}

impl std::fmt::Debug for Origination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Origination")
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

impl Origination {
    pub fn new(store: &Arc<IdentityStore>, expected: SpiffeId) -> Origination {
        Origination {
            http1: store.client_config(expected.clone(), &[ALPN_HTTP11]),
            http2: store.client_config(expected.clone(), &[ALPN_H2]),
            opaque: store.client_config(expected.clone(), &[]),
            expected,
        }
    }

    /// Runs the client handshake on a connected `stream`.
    pub async fn originate(&self, stream: TcpStream, alpn: Alpn) -> Result<Io, HandshakeError> {
        let config = match alpn {
            Alpn::Http1 => &self.http1,
            Alpn::Http2 => &self.http2,
            Alpn::None => &self.opaque,
        };
        // SVIDs are verified by SPIFFE ID, not by name; an IP address as the
        // server name also keeps SNI out of the ClientHello.
        let name = match stream.peer_addr() {
            Ok(addr) => ServerName::IpAddress(addr.ip().into()),
            Err(error) => {
                return Err(HandshakeError {
                    reason: "io",
                    detail: error.to_string(),
                });
            }
        };
        let connector = TlsConnector::from(Arc::clone(config));
        let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, stream))
            .await
            .map_err(|_| HandshakeError::timed_out())?
            .map_err(HandshakeError::from_io)?;
        Ok(Io::Tls(Box::new(TlsStream::Client(tls))))
    }
}
