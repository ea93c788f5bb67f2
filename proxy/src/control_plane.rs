//! Connections to the control plane, where xDS and the CA share one port:
//! plaintext h2c, or TLS 1.3 accepting only the control plane's SPIFFE ID
//! (verified against the identity store's bundle) and presenting the
//! workload's own SVID once the store holds one.

use std::sync::Arc;
use std::time::Duration;

use gridmesh_identity::{ALPN_H2, IdentityStore, SpiffeId};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tonic::transport::{Channel, Endpoint};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 PINGs on the connection, so a control plane that hangs or
/// vanishes without closing it (a node lost, a partition) is noticed and
/// the sidecar reconnects instead of waiting on a dead stream forever.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// TLS to the control plane.
#[derive(Clone)]
pub struct ControlPlaneTls {
    pub store: Arc<IdentityStore>,
    /// The control plane's SPIFFE ID.
    pub expected: SpiffeId,
}

/// A channel to the control plane at `address` (`host:port`, optionally
/// `http://`).
pub async fn connect(address: &str, tls: Option<&ControlPlaneTls>) -> Result<Channel, String> {
    let authority = address.strip_prefix("http://").unwrap_or(address);
    let endpoint = Endpoint::from_shared(format!("http://{authority}"))
        .map_err(|e| format!("bad control plane address: {e}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    let Some(tls) = tls else {
        return endpoint
            .connect()
            .await
            .map_err(|e| format!("cannot connect: {e}"));
    };
    let config = tls.store.client_config(tls.expected.clone(), &[ALPN_H2]);
    let authority = authority.to_string();
    let connector = tower::service_fn(move |_| {
        let (config, authority) = (config.clone(), authority.clone());
        async move {
            let tcp = tokio::time::timeout(
                CONNECT_TIMEOUT,
                tokio::net::TcpStream::connect(authority.as_str()),
            )
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
            tcp.set_nodelay(true)?;
            let peer = tcp.peer_addr()?;
            // The control plane is verified by SPIFFE ID, not by name.
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(ServerName::IpAddress(peer.ip().into()), tcp)
                .await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| format!("cannot connect over TLS: {e:?}"))
}
