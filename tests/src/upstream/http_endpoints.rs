//! The plain HTTP endpoints of the sample upstream.
//!
//! | path | answer |
//! |---|---|
//! | `/status/<code>` | that status, empty body |
//! | `/delay/<ms>` | waits, then answers like `/echo` |
//! | `/sse?count=N&interval_ms=M` | N server-sent events, M ms apart (defaults 10 and 100) |
//! | `/bytes/<n>` | 200 with an n-byte body |
//! | `/trailers` | 200 with a short body and trailers (`x-upstream`, `x-trailer`) |
//! | `/reset` | no answer: the connection (HTTP/1.1) or stream (HTTP/2) is aborted |
//! | `/echo`, anything else | 200 echoing the request body as it streams in, the content-type, and each `x-*` request header as `x-echo-x-*` |
//!
//! Every answer carries `x-upstream: <name>`. Malformed parameters get a 400
//! with the reason in the body.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri};
use http_body::{Frame, SizeHint};
use http_body_util::StreamBody;
use hyper::body::Incoming;
use tonic::body::Body;

use super::server::AbortWithoutResponse;

const X_UPSTREAM: HeaderName = HeaderName::from_static("x-upstream");
const X_TRAILER: HeaderName = HeaderName::from_static("x-trailer");
const ECHOED_HEADER_PREFIX: &str = "x-echo-";
const DEFAULT_SSE_COUNT: u32 = 10;
const DEFAULT_SSE_INTERVAL: Duration = Duration::from_millis(100);

pub(super) async fn handle(
    request: Request<Incoming>,
    name: &HeaderValue,
) -> Result<Response<Body>, AbortWithoutResponse> {
    let endpoint = match Endpoint::parse(request.uri()) {
        Ok(endpoint) => endpoint,
        Err(reason) => return Ok(bad_request(reason, name)),
    };
    let response = match endpoint {
        Endpoint::Echo => echo(request, name),
        Endpoint::Delay(delay) => {
            tokio::time::sleep(delay).await;
            echo(request, name)
        }
        Endpoint::Status(status) => respond(status, name, Body::empty()),
        Endpoint::Bytes(len) => respond(StatusCode::OK, name, Body::new(ZeroBody::new(len))),
        Endpoint::Sse { count, interval } => server_sent_events(count, interval, name),
        Endpoint::Trailers => with_trailers(name),
        Endpoint::Reset => return Err(AbortWithoutResponse),
    };
    Ok(response)
}

#[derive(Debug, PartialEq)]
enum Endpoint {
    Echo,
    Status(StatusCode),
    Delay(Duration),
    Sse { count: u32, interval: Duration },
    Bytes(u64),
    Trailers,
    Reset,
}

impl Endpoint {
    fn parse(uri: &Uri) -> Result<Self, String> {
        let path = uri.path();
        if let Some(code) = path.strip_prefix("/status/") {
            let code = parse_number(code, "status code")?;
            StatusCode::from_u16(code)
                .map(Endpoint::Status)
                .map_err(|_| format!("{code} is not an HTTP status code"))
        } else if let Some(ms) = path.strip_prefix("/delay/") {
            Ok(Endpoint::Delay(Duration::from_millis(parse_number(
                ms,
                "delay in ms",
            )?)))
        } else if let Some(len) = path.strip_prefix("/bytes/") {
            Ok(Endpoint::Bytes(parse_number(len, "byte count")?))
        } else {
            match path {
                "/sse" => parse_sse_query(uri.query().unwrap_or_default()),
                "/trailers" => Ok(Endpoint::Trailers),
                "/reset" => Ok(Endpoint::Reset),
                _ => Ok(Endpoint::Echo),
            }
        }
    }
}

fn parse_sse_query(query: &str) -> Result<Endpoint, String> {
    let mut count = DEFAULT_SSE_COUNT;
    let mut interval = DEFAULT_SSE_INTERVAL;
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        match pair.split_once('=') {
            Some(("count", value)) => count = parse_number(value, "count")?,
            Some(("interval_ms", value)) => {
                interval = Duration::from_millis(parse_number(value, "interval_ms")?)
            }
            _ => {
                return Err(format!(
                    "unknown query parameter {pair:?}; use count and interval_ms"
                ));
            }
        }
    }
    Ok(Endpoint::Sse { count, interval })
}

fn parse_number<T: std::str::FromStr>(text: &str, what: &str) -> Result<T, String> {
    text.parse()
        .map_err(|_| format!("{what} must be a non-negative integer, got {text:?}"))
}

fn respond(status: StatusCode, name: &HeaderValue, body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(X_UPSTREAM, name.clone());
    response
}

fn bad_request(reason: String, name: &HeaderValue) -> Response<Body> {
    respond(StatusCode::BAD_REQUEST, name, Body::new(reason))
}

/// Streams the request body straight back: nothing is buffered, so a slow or
/// endless upload is answered as it arrives.
fn echo(request: Request<Incoming>, name: &HeaderValue) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let mut response = respond(StatusCode::OK, name, Body::new(body));
    let headers = response.headers_mut();
    if let Some(content_type) = parts.headers.get(CONTENT_TYPE) {
        headers.insert(CONTENT_TYPE, content_type.clone());
    }
    for (header, value) in &parts.headers {
        if header.as_str().starts_with("x-") {
            let echoed = format!("{ECHOED_HEADER_PREFIX}{header}");
            // Request header names are valid, so the prefixed name is too.
            if let Ok(echoed) = HeaderName::try_from(echoed) {
                headers.append(echoed, value.clone());
            }
        }
    }
    response
}

fn server_sent_events(count: u32, interval: Duration, name: &HeaderValue) -> Response<Body> {
    let events = stream::unfold(0, move |sent| async move {
        if sent == count {
            return None;
        }
        if sent > 0 {
            tokio::time::sleep(interval).await;
        }
        let event = format!("id: {sent}\ndata: event {sent}\n\n");
        Some((
            Ok::<_, Infallible>(Frame::data(Bytes::from(event))),
            sent + 1,
        ))
    });
    let mut response = respond(StatusCode::OK, name, Body::new(StreamBody::new(events)));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Trailers travel on HTTP/2 always, and on HTTP/1.1 only when the client
/// sent `TE: trailers` (hyper drops them otherwise).
fn with_trailers(name: &HeaderValue) -> Response<Body> {
    let mut trailers = HeaderMap::new();
    trailers.insert(X_UPSTREAM, name.clone());
    trailers.insert(X_TRAILER, HeaderValue::from_static("present"));
    let frames = stream::iter([
        Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"trailers follow\n"))),
        Ok(Frame::trailers(trailers)),
    ]);
    respond(StatusCode::OK, name, Body::new(StreamBody::new(frames)))
}

/// A body of `len` zero bytes served from one static buffer, so that large
/// responses cost neither allocation nor copying.
struct ZeroBody {
    remaining: u64,
}

static ZEROS: [u8; 16 * 1024] = [0; 16 * 1024];

impl ZeroBody {
    fn new(len: u64) -> Self {
        Self { remaining: len }
    }
}

impl http_body::Body for ZeroBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let chunk = self.remaining.min(ZEROS.len() as u64) as usize;
        self.remaining -= chunk as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&ZEROS[..chunk])))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(uri: &'static str) -> Result<Endpoint, String> {
        Endpoint::parse(&Uri::from_static(uri))
    }

    #[test]
    fn parses_every_endpoint() {
        assert_eq!(parse("/echo"), Ok(Endpoint::Echo));
        assert_eq!(parse("/any/other/path?x=1"), Ok(Endpoint::Echo));
        assert_eq!(
            parse("/status/503"),
            Ok(Endpoint::Status(StatusCode::SERVICE_UNAVAILABLE))
        );
        assert_eq!(
            parse("/delay/250"),
            Ok(Endpoint::Delay(Duration::from_millis(250)))
        );
        assert_eq!(parse("/bytes/1048576"), Ok(Endpoint::Bytes(1 << 20)));
        assert_eq!(parse("/trailers"), Ok(Endpoint::Trailers));
        assert_eq!(parse("/reset"), Ok(Endpoint::Reset));
        assert_eq!(
            parse("/sse?count=3&interval_ms=5"),
            Ok(Endpoint::Sse {
                count: 3,
                interval: Duration::from_millis(5)
            })
        );
        assert_eq!(
            parse("/sse"),
            Ok(Endpoint::Sse {
                count: DEFAULT_SSE_COUNT,
                interval: DEFAULT_SSE_INTERVAL
            })
        );
    }

    #[test]
    fn rejects_malformed_parameters() {
        assert!(parse("/status/abc").is_err());
        assert!(parse("/status/1000").is_err());
        assert!(parse("/delay/-1").is_err());
        assert!(parse("/bytes/").is_err());
        assert!(parse("/sse?count=many").is_err());
        assert!(parse("/sse?burst=1").is_err());
    }
}
