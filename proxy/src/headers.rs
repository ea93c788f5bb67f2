//! Header hygiene between hops.

use http::header::{CONNECTION, HeaderName, TE, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderValue};

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
/// Envoy's and Istio's name for who the mTLS client was.
pub static FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// Tells the block who called: `x-forwarded-client-cert: URI=<SPIFFE ID>`
/// when the request came over mTLS, nothing otherwise. Whatever the client
/// sent under that name is dropped first — only this sidecar's own
/// handshake can vouch for a caller (Envoy's SANITIZE_SET).
pub fn set_forwarded_client_cert(
    headers: &mut HeaderMap,
    peer: Option<&gridmesh_identity::SpiffeId>,
) {
    headers.remove(&FORWARDED_CLIENT_CERT);
    // A SPIFFE ID is URI characters only, so always a valid header value.
    if let Some(value) = peer.and_then(|id| HeaderValue::try_from(format!("URI={id}")).ok()) {
        headers.insert(FORWARDED_CLIENT_CERT.clone(), value);
    }
}

/// Removes headers that describe one connection rather than the message
/// (RFC 9110 7.6.1), including those the `Connection` header names. `te:
/// trailers` survives: gRPC requires it end to end.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if let Some(connection) = headers.remove(CONNECTION) {
        let named: Vec<HeaderName> = connection
            .to_str()
            .unwrap_or_default()
            .split(',')
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for name in named {
            if name != TE {
                headers.remove(name);
            }
        }
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(TRANSFER_ENCODING);
    headers.remove(UPGRADE);
    if headers
        .get(TE)
        .is_some_and(|te| !te.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        headers.remove(TE);
    }
}
