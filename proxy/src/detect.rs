//! Telling HTTP from anything else by a connection's first bytes, for AUTO
//! listeners. The bytes are peeked, not read: whatever serves the
//! connection next sees them all. A client that sends nothing within the
//! detection timeout is taken as not HTTP — a protocol where the server
//! speaks first (SMTP, MySQL, Redis replicas) — so it is forwarded instead
//! of stalling; the timeout is bounded (at most 5 s, default 0.5 s) and
//! counted.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

/// What a connection's first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// An HTTP/1.x request line or the HTTP/2 connection preface.
    Http,
    /// Bytes that are neither.
    Other,
    /// Nothing (or too little to tell) within the timeout.
    TimedOut,
    /// The client closed before sending enough to tell.
    Closed,
}

/// The HTTP/2 prior-knowledge connection preface (RFC 9113 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The longest method token accepted: longer than any registered method.
const MAX_METHOD: usize = 20;
/// While a partial request line is all there is, peek again this often
/// (peeking returns at once while any bytes wait, so it must not spin).
const PARTIAL_RETRY: Duration = Duration::from_millis(1);

/// Waits (at most `timeout`) until the first bytes of `stream` say
/// whether it carries HTTP.
pub async fn detect(stream: &TcpStream, timeout: Duration) -> Detected {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        let peeked = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Err(_) => return Detected::TimedOut,
            Ok(Err(_)) | Ok(Ok(0)) => return Detected::Closed,
            Ok(Ok(n)) => n,
        };
        match classify(&buf[..peeked]) {
            Some(true) => return Detected::Http,
            Some(false) => return Detected::Other,
            None if Instant::now() + PARTIAL_RETRY >= deadline => return Detected::TimedOut,
            None => tokio::time::sleep(PARTIAL_RETRY).await,
        }
    }
}

/// `Some(true)` for the start of an HTTP request, `Some(false)` for bytes
/// that cannot start one, `None` while they might.
///
/// An HTTP/1.x request line starts with a method token (upper-case letters,
/// as every registered method is), a space, and a request target: `/`,
/// `*` or an absolute URI (`h`ttp). HTTP/2 prior knowledge starts with its
/// preface, which the same rule would take for a `PRI` request anyway.
pub fn classify(bytes: &[u8]) -> Option<bool> {
    if bytes.is_empty() {
        return None;
    }
    let method_len = bytes
        .iter()
        .take_while(|b| b.is_ascii_uppercase() || **b == b'-' || **b == b'_')
        .count();
    if method_len == 0 || method_len > MAX_METHOD {
        return Some(false);
    }
    match bytes.get(method_len) {
        None => None,
        Some(b' ') => match bytes.get(method_len + 1) {
            None => None,
            Some(b'/' | b'*' | b'h' | b'H') => Some(true),
            Some(_) => Some(false),
        },
        Some(_) => Some(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_and_the_h2_preface_are_http() {
        for http in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST /v2/models/cnn/infer HTTP/1.1",
            b"OPTIONS * HTTP/1.1",
            b"CONNECT host:443",
            b"GET http://block/ HTTP/1.1",
            b"M-SEARCH * HTTP/1.1",
            H2_PREFACE,
        ] {
            assert_eq!(
                classify(http),
                Some(true),
                "{:?}",
                String::from_utf8_lossy(http)
            );
        }
    }

    #[test]
    fn anything_else_is_not() {
        for other in [
            &b"\x16\x03\x01\x02\x00"[..], // a TLS ClientHello
            b"*3\r\n$3\r\nSET",           // Redis
            b"get / HTTP/1.1",            // methods are upper case
            b"GET\t/",                    // not a space
            b"HELLO world",               // not a request target
            b"\0\0\0\x0bINFO",            // length-prefixed binary
            b"SSH-2.0-OpenSSH_9.6\r\n",   // a token, then no space
        ] {
            assert_eq!(
                classify(other),
                Some(false),
                "{:?}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[test]
    fn a_partial_request_line_waits_for_more() {
        for partial in [&b"G"[..], b"GET", b"GET ", b"PRI", b"DELETE"] {
            assert_eq!(
                classify(partial),
                None,
                "{:?}",
                String::from_utf8_lossy(partial)
            );
        }
        assert_eq!(classify(&[b'A'; MAX_METHOD + 1]), Some(false));
    }
}
