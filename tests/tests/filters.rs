//! The request pipeline's seams, through the real proxy in process with
//! test filters: the connection's context reaches filters and requests,
//! filters answer locally, change heads both ways, pause, and see body
//! chunks of a streaming request as they pass, without buffering; an
//! endpoint's load reports reach its load state from response headers and
//! from trailers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use gridmesh_proxy::{Body, BoxError, ConnectionContext, Decision, FilterFactory, HttpFilter};
use gridmesh_tests::harness::{
    self, collect, forward_all, http1_client, streaming_body, upstream, within,
};
use http::{HeaderValue, Request, Response, StatusCode, request, response};
use http_body_util::BodyExt;
use parking_lot::Mutex;
use tokio::sync::oneshot;

/// How a test filter makes its instance for one request.
type MakeFilter = Box<dyn Fn(&Arc<ConnectionContext>) -> Box<dyn HttpFilter> + Send + Sync>;

/// A filter built from a closure, one instance per request.
struct TestFilter {
    name: &'static str,
    make: MakeFilter,
}

impl FilterFactory for TestFilter {
    fn name(&self) -> &str {
        self.name
    }

    fn for_request(&self, connection: &Arc<ConnectionContext>) -> Box<dyn HttpFilter> {
        (self.make)(connection)
    }
}

fn factory(
    name: &'static str,
    make: impl Fn(&Arc<ConnectionContext>) -> Box<dyn HttpFilter> + Send + Sync + 'static,
) -> Arc<dyn FilterFactory> {
    Arc::new(TestFilter {
        name,
        make: Box::new(make),
    })
}

fn local_reply(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut reply = Response::new(
        http_body_util::Full::new(Bytes::from_static(text.as_bytes()))
            .map_err(|never| -> BoxError { match never {} })
            .boxed_unsync(),
    );
    *reply.status_mut() = status;
    reply
}

/// Records what a request's filter saw of its connection.
struct SeesConnection {
    from_factory: Arc<ConnectionContext>,
    seen: Arc<Mutex<Vec<(ConnectionContext, bool)>>>,
}

impl HttpFilter for SeesConnection {
    fn on_request_headers(&mut self, request: &mut request::Parts) -> Decision {
        let in_extensions = request
            .extensions
            .get::<Arc<ConnectionContext>>()
            .is_some_and(|c| **c == *self.from_factory);
        self.seen
            .lock()
            .push(((*self.from_factory).clone(), in_extensions));
        Decision::Continue
    }
}

#[tokio::test]
async fn the_connections_context_reaches_filters_and_request_extensions() {
    let up = upstream("a").await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let filter = factory("sees-connection", {
        let seen = seen.clone();
        move |connection| {
            Box::new(SeesConnection {
                from_factory: connection.clone(),
                seen: seen.clone(),
            })
        }
    });
    let proxy = harness::proxy_with_filters(&forward_all(&[up.local_addr()]), vec![filter]).await;
    let addr = proxy.addr("in");
    let mut conn = http1_client().connect(addr).await;
    for _ in 0..2 {
        let reply = collect(conn.send(harness::get("svc", "/echo")).await.unwrap())
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK);
    }
    let seen = seen.lock().clone();
    assert_eq!(seen.len(), 2, "one filter instance per request");
    for (context, in_extensions) in &seen {
        assert!(in_extensions, "the request's extensions carry the context");
        assert_eq!(&*context.listener, "in");
        assert_eq!(context.local, addr);
        assert!(context.peer.ip().is_loopback() && context.peer.port() != addr.port());
        assert_eq!(context.original_dst, None, "not intercepted");
        assert_eq!(context.peer_identity, None, "plaintext");
    }
    assert_eq!(seen[0].0.peer, seen[1].0.peer, "one connection");
}

struct Deny;

impl HttpFilter for Deny {
    fn on_request_headers(&mut self, request: &mut request::Parts) -> Decision {
        if request.headers.contains_key("x-deny") {
            Decision::Reply(local_reply(StatusCode::FORBIDDEN, "denied by a filter\n"))
        } else {
            Decision::Continue
        }
    }
}

#[tokio::test]
async fn a_filter_answers_locally_and_the_cluster_never_sees_the_request() {
    let up = upstream("a").await;
    let deny = factory("deny", |_| Box::new(Deny));
    let proxy = harness::proxy_with_filters(&forward_all(&[up.local_addr()]), vec![deny]).await;
    let mut denied = harness::get("svc", "/echo");
    denied
        .headers_mut()
        .insert("x-deny", HeaderValue::from_static("1"));
    let reply = http1_client().request(proxy.addr("in"), denied).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.text(), "denied by a filter\n");
    assert_eq!(up.stats().requests(), 0, "the upstream saw the request");
    let allowed = http1_client().get(proxy.addr("in"), "svc", "/echo").await;
    assert_eq!(allowed.status, StatusCode::OK);
    assert_eq!(up.stats().requests(), 1);
}

/// Adds a header each way, and counts how often it ran.
struct Tag(&'static str);

impl HttpFilter for Tag {
    fn on_request_headers(&mut self, request: &mut request::Parts) -> Decision {
        request
            .headers
            .append("x-filtered", HeaderValue::from_static(self.0));
        Decision::Continue
    }

    fn on_response_headers(&mut self, response: &mut response::Parts) -> Decision {
        response
            .headers
            .append("x-filtered-response", HeaderValue::from_static(self.0));
        Decision::Continue
    }
}

#[tokio::test]
async fn filters_change_heads_both_ways_in_order_then_in_reverse() {
    let up = upstream("a").await;
    let first = factory("first", |_| Box::new(Tag("first")));
    let second = factory("second", |_| Box::new(Tag("second")));
    let proxy =
        harness::proxy_with_filters(&forward_all(&[up.local_addr()]), vec![first, second]).await;
    let reply = http1_client().get(proxy.addr("in"), "svc", "/echo").await;
    assert_eq!(reply.status, StatusCode::OK);
    // The sample upstream echoes x-* request headers as x-echo-x-*.
    let upstream_saw: Vec<&str> = reply
        .headers
        .get_all("x-echo-x-filtered")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(
        upstream_saw.join(","),
        "first,second",
        "{:?}",
        reply.headers
    );
    let client_saw: Vec<&str> = reply
        .headers
        .get_all("x-filtered-response")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(client_saw, ["second", "first"], "responses run in reverse");
}

/// Upper-cases the request body chunk by chunk, recording each chunk when
/// it passes.
struct Shout {
    chunks: Arc<Mutex<Vec<(String, bool)>>>,
}

impl HttpFilter for Shout {
    fn on_request_body(&mut self, chunk: &mut Bytes, end_of_stream: bool) {
        self.chunks
            .lock()
            .push((String::from_utf8_lossy(chunk).into_owned(), end_of_stream));
        *chunk = Bytes::from(chunk.to_ascii_uppercase());
    }
}

#[tokio::test]
async fn a_filter_sees_a_streaming_request_chunk_by_chunk_without_buffering() {
    let up = upstream("a").await;
    let chunks = Arc::new(Mutex::new(Vec::new()));
    let shout = factory("shout", {
        let chunks = chunks.clone();
        move |_| {
            Box::new(Shout {
                chunks: chunks.clone(),
            })
        }
    });
    let proxy = harness::proxy_with_filters(&forward_all(&[up.local_addr()]), vec![shout]).await;
    let (mut sender, body) = streaming_body();
    let request = Request::post("/echo")
        .header("host", "svc")
        .body(body)
        .unwrap();
    let mut conn = harness::h2c_client().connect(proxy.addr("in")).await;
    let response = tokio::spawn(async move {
        let response = conn.send(request).await.expect("response headers");
        collect(response).await.expect("the whole body")
    });
    for (i, word) in ["one ", "two ", "three"].into_iter().enumerate() {
        sender
            .send_data(Bytes::from_static(word.as_bytes()))
            .await
            .unwrap();
        // The filter has seen this chunk before the next one is even sent:
        // nothing waits for the whole body.
        within("the filter to see the chunk", async {
            while chunks.lock().len() <= i {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }
    drop(sender);
    let reply = within("the echo", response).await.unwrap();
    assert_eq!(reply.text(), "ONE TWO THREE");
    let seen = chunks.lock().clone();
    // The end may come as an empty last chunk (HTTP/2's END_STREAM).
    let texts: Vec<&str> = seen
        .iter()
        .map(|(t, _)| t.as_str())
        .filter(|t| !t.is_empty())
        .collect();
    assert_eq!(texts, ["one ", "two ", "three"]);
    assert_eq!(
        seen.iter().filter(|(_, end)| *end).count(),
        1,
        "the last chunk, and only it, says end of stream: {seen:?}"
    );
    assert!(seen.last().is_some_and(|(_, end)| *end), "{seen:?}");
}

/// Holds every request until its gate opens.
struct Gate {
    gate: Arc<Mutex<Option<oneshot::Receiver<()>>>>,
    paused: Arc<AtomicUsize>,
}

impl HttpFilter for Gate {
    fn on_request_headers(&mut self, _request: &mut request::Parts) -> Decision {
        let Some(opened) = self.gate.lock().take() else {
            return Decision::Continue;
        };
        self.paused.fetch_add(1, Ordering::SeqCst);
        Decision::Pause(Box::pin(async move {
            let _ = opened.await;
            Decision::Continue
        }))
    }
}

#[tokio::test]
async fn a_paused_request_goes_on_when_its_filter_says_so() {
    let up = upstream("a").await;
    let (open, opened) = oneshot::channel();
    let gate = Arc::new(Mutex::new(Some(opened)));
    let paused = Arc::new(AtomicUsize::new(0));
    let filter = factory("gate", {
        let (gate, paused) = (gate.clone(), paused.clone());
        move |_| {
            Box::new(Gate {
                gate: gate.clone(),
                paused: paused.clone(),
            })
        }
    });
    let proxy = harness::proxy_with_filters(&forward_all(&[up.local_addr()]), vec![filter]).await;
    let addr = proxy.addr("in");
    let held = tokio::spawn(async move { http1_client().get(addr, "svc", "/echo").await });
    within("the request to pause", async {
        while paused.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    // Another request passes meanwhile; the paused one is not upstream.
    assert_eq!(
        http1_client().get(addr, "svc", "/echo").await.status,
        StatusCode::OK
    );
    assert_eq!(up.stats().requests(), 1);
    open.send(()).unwrap();
    let reply = within("the paused request", held).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(up.stats().requests(), 2);
}

/// An upstream (h2c) that reports its load in a response header and, for
/// `/trailers`, again in the trailers, as a model server reporting ORCA
/// load would.
async fn reporting_upstream() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let trailers = req.uri().path() == "/trailers";
                    let frames: Vec<Result<http_body::Frame<Bytes>, std::convert::Infallible>> =
                        if trailers {
                            let mut t = http::HeaderMap::new();
                            t.insert(
                                "endpoint-load-metrics",
                                HeaderValue::from_static("TEXT named_metrics.queue=7"),
                            );
                            vec![
                                Ok(http_body::Frame::data(Bytes::from_static(b"ok"))),
                                Ok(http_body::Frame::trailers(t)),
                            ]
                        } else {
                            vec![Ok(http_body::Frame::data(Bytes::from_static(b"ok")))]
                        };
                    let mut response = Response::new(http_body_util::StreamBody::new(
                        futures_util::stream::iter(frames),
                    ));
                    response.headers_mut().insert(
                        "endpoint-load-metrics",
                        HeaderValue::from_static("TEXT named_metrics.queue=1"),
                    );
                    Ok::<_, std::convert::Infallible>(response)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, task)
}

async fn load_report(proxy: &harness::TestProxy) -> String {
    let (_, clusters) = proxy.admin_get("/clusters").await;
    let clusters: serde_json::Value = serde_json::from_str(&clusters).unwrap();
    clusters[0]["endpoints"][0]["loadReport"]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no load report in {clusters:#}"))
        .to_string()
}

#[tokio::test]
async fn load_reports_reach_the_endpoint_from_headers_and_trailers() {
    let (up, _server) = reporting_upstream().await;
    let proxy = harness::proxy(
        &forward_all(&[up]).replace("connectTimeout: 1s", "connectTimeout: 1s, protocol: HTTP2"),
    )
    .await;
    let h2 = harness::h2c_client();
    let reply = h2.get(proxy.addr("in"), "svc", "/headers").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(load_report(&proxy).await, "TEXT named_metrics.queue=1");
    let reply = h2.get(proxy.addr("in"), "svc", "/trailers").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        load_report(&proxy).await,
        "TEXT named_metrics.queue=7",
        "the trailers' report came after the headers'"
    );
}
