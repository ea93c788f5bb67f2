//! HTTP/1.1 and h2c through the real proxy (in-process), one and two hops:
//! protocol detection, streaming in both directions, large bodies, trailers,
//! malformed requests, the proxy's own error replies and hop-by-hop headers.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use gridmesh_tests::harness::{
    self, HttpClient, Protocol, Reply, chain, collect, endpoints, forward_all, full, get,
    h2c_client, http1_client, proxy, raw_http1, raw_http1_until_close, raw_status,
    recording_upstream, render, streaming_body, upstream, within,
};
use gridmesh_tests::ports::RefusingPort;
use gridmesh_tests::prometheus;
use http::{Request, StatusCode, Version};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const CLIENTS: [HttpClient; 2] = [
    HttpClient {
        protocol: Protocol::Http1,
    },
    HttpClient {
        protocol: Protocol::H2c,
    },
];

fn expected_version(client: HttpClient) -> Version {
    match client.protocol {
        Protocol::Http1 => Version::HTTP_11,
        Protocol::H2c => Version::HTTP_2,
    }
}

fn post(path: &str, body: impl Into<Bytes>) -> Request<harness::Body> {
    Request::post(path)
        .header("host", "echo.test")
        .header("content-type", "application/octet-stream")
        .body(full(body))
        .unwrap()
}

/// GET, POST with a body and `x-*` headers, all echoed back by the upstream.
async fn check_echo(client: HttpClient, entry: SocketAddr, upstream_name: &str) {
    let reply = client.get(entry, "echo.test", "/echo").await;
    assert_eq!(reply.status, StatusCode::OK, "{client:?}: {reply:?}");
    assert_eq!(reply.version, expected_version(client));
    assert_eq!(reply.upstream(), Some(upstream_name));
    assert!(reply.body.is_empty());

    let mut req = post("/echo?q=1", "hello through the mesh");
    req.headers_mut()
        .insert("x-tenant", "blue".parse().unwrap());
    let reply = client.request(entry, req).await;
    assert_eq!(reply.status, StatusCode::OK, "{client:?}: {reply:?}");
    assert_eq!(reply.text(), "hello through the mesh");
    assert_eq!(reply.header("x-echo-x-tenant"), Some("blue"));
    assert_eq!(
        reply.header("content-type"),
        Some("application/octet-stream")
    );
    assert_eq!(reply.error(), None);

    let reply = client.get(entry, "echo.test", "/status/418").await;
    assert_eq!(reply.status, StatusCode::IM_A_TEAPOT);
    assert_eq!(
        reply.error(),
        None,
        "an upstream status is not a proxy error"
    );
}

#[tokio::test]
async fn http1_and_h2c_through_one_proxy() {
    let up = upstream("a").await;
    let p = proxy(&forward_all(&[up.local_addr()])).await;
    for client in CLIENTS {
        check_echo(client, p.addr("in"), "a").await;
    }
}

#[tokio::test]
async fn http1_and_h2c_through_two_proxies() {
    let up = upstream("a").await;
    let mesh = chain(up.local_addr()).await;
    for client in CLIENTS {
        check_echo(client, mesh.entry(), "a").await;
    }
    // Both hops really carried every request (3 per client).
    for (p, listener) in [(&mesh.outbound, "out"), (&mesh.inbound, "in")] {
        let requests = p
            .metric(
                "gridmesh_downstream_requests_total",
                &[("listener", listener)],
            )
            .await;
        assert_eq!(requests, Some(6.0), "requests seen by listener {listener}");
    }
}

#[tokio::test]
async fn the_upstream_protocol_follows_the_downstream_one_across_hops() {
    let up = recording_upstream().await;
    let mesh = chain(up.local_addr()).await;
    for client in CLIENTS {
        let reply = client.get(mesh.entry(), "echo.test:8080", "/where").await;
        assert_eq!(reply.status, StatusCode::OK);
        let seen = up.last();
        assert_eq!(seen.version, expected_version(client), "{client:?}");
        // The authority survives both hops, whatever the protocol carries it in.
        let authority = seen
            .uri
            .authority()
            .map(|a| a.to_string())
            .or_else(|| Some(seen.headers.get("host")?.to_str().ok()?.to_string()));
        assert_eq!(authority.as_deref(), Some("echo.test:8080"), "{client:?}");
        assert_eq!(seen.uri.path(), "/where");
    }
}

// ------------------------------------------------------- protocol detection

fn listener_config(protocol: &str, upstream: SocketAddr) -> String {
    render(
        r#"
listeners:
  - { name: in, address: "127.0.0.1:0", routeTable: rt, protocol: ${protocol} }
routeTables:
  - name: rt
    virtualHosts:
      - { name: all, domains: ["*"], routes: [{ name: all, route: { cluster: up } }] }
clusters: [{ name: up }]
endpoints: [{ cluster: up, endpoints: ${up} }]
"#,
        &[("protocol", &protocol), ("up", &endpoints(&[upstream]))],
    )
}

#[tokio::test]
async fn auto_listener_serves_http1_and_h2c_on_one_port() {
    let up = upstream("a").await;
    let p = proxy(&listener_config("AUTO", up.local_addr())).await;
    // Alternate protocols on fresh connections to the same port.
    for client in [CLIENTS, CLIENTS].concat() {
        let reply = client.get(p.addr("in"), "echo.test", "/echo").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.version, expected_version(client));
    }
    // Several requests on one connection of each kind.
    for client in CLIENTS {
        let mut conn = client.connect(p.addr("in")).await;
        for _ in 0..3 {
            let rsp = conn.send(get("echo.test", "/echo")).await.unwrap();
            let reply = collect(rsp).await.unwrap();
            assert_eq!(reply.status, StatusCode::OK);
        }
    }
}

#[tokio::test]
async fn http1_only_listener_refuses_h2c() {
    let up = upstream("a").await;
    let p = proxy(&listener_config("HTTP1", up.local_addr())).await;
    let reply = http1_client().get(p.addr("in"), "echo.test", "/echo").await;
    assert_eq!(reply.status, StatusCode::OK);

    let result = async {
        let mut conn = h2c_client().try_connect(p.addr("in")).await?;
        conn.send(get("echo.test", "/echo")).await
    }
    .await;
    assert!(
        result.is_err(),
        "h2c must not be served on an HTTP1 listener: {result:?}"
    );
    assert_eq!(
        up.stats().requests(),
        1,
        "only the HTTP/1.1 request arrived"
    );
}

#[tokio::test]
async fn http2_only_listener_refuses_http1() {
    let up = upstream("a").await;
    let p = proxy(&listener_config("HTTP2", up.local_addr())).await;
    let reply = h2c_client().get(p.addr("in"), "echo.test", "/echo").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.version, Version::HTTP_2);

    let result = http1_client()
        .send(p.addr("in"), get("echo.test", "/echo"))
        .await;
    assert!(
        result.is_err(),
        "HTTP/1.1 must not be served on an HTTP2 listener: {result:?}"
    );
    let raw = raw_http1_until_close(p.addr("in"), "GET /echo HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(!raw.starts_with("HTTP/1.1 200"), "{raw:?}");
    assert_eq!(up.stats().requests(), 1, "only the h2c request arrived");
}

// ---------------------------------------------------------------- streaming

/// Server-sent events arrive one by one, as the upstream sends them.
#[tokio::test]
async fn server_sent_events_stream_without_buffering() {
    const COUNT: usize = 4;
    const INTERVAL: Duration = Duration::from_millis(150);
    let up = upstream("a").await;
    let mesh = chain(up.local_addr()).await;
    for client in CLIENTS {
        let path = format!("/sse?count={COUNT}&interval_ms={}", INTERVAL.as_millis());
        let rsp = client
            .send(mesh.entry(), get("echo.test", &path))
            .await
            .unwrap();
        assert_eq!(rsp.status(), StatusCode::OK);
        assert_eq!(
            rsp.headers().get("content-type").unwrap(),
            "text/event-stream"
        );
        let mut body = rsp.into_body();
        let mut text = String::new();
        let mut arrivals = Vec::new();
        while let Some(frame) = within("next SSE frame", body.frame()).await {
            let frame = frame.unwrap();
            if let Some(data) = frame.data_ref() {
                text.push_str(std::str::from_utf8(data).unwrap());
                while arrivals.len() < text.matches("\n\n").count() {
                    arrivals.push(Instant::now());
                }
            }
        }
        let expected: String = (0..COUNT)
            .map(|i| format!("id: {i}\ndata: event {i}\n\n"))
            .collect();
        assert_eq!(text, expected, "{client:?}");
        assert_eq!(arrivals.len(), COUNT);
        for pair in arrivals.windows(2) {
            let gap = pair[1] - pair[0];
            // Buffering would deliver events together at the end.
            assert!(
                gap >= INTERVAL * 2 / 3,
                "{client:?}: events arrived {gap:?} apart, expected about {INTERVAL:?}"
            );
        }
    }
}

/// A request body is forwarded while the client is still sending it, and the
/// echoed response streams back at the same time (full duplex).
#[tokio::test]
async fn request_body_streams_while_it_is_being_sent() {
    let up = upstream("a").await;
    let mesh = chain(up.local_addr()).await;
    for client in CLIENTS {
        let (mut tx, body) = streaming_body();
        let req = Request::post("/echo")
            .header("host", "echo.test")
            .body(body)
            .unwrap();
        tx.send_data(Bytes::from_static(b"first;")).await.unwrap();
        // Response headers come before the request body is complete.
        let rsp = client.send(mesh.entry(), req).await.unwrap();
        assert_eq!(rsp.status(), StatusCode::OK);
        let mut body = rsp.into_body();
        let mut received = Vec::new();
        for chunk in ["first;", "second;", "third;"] {
            if chunk != "first;" {
                tx.send_data(Bytes::from(chunk)).await.unwrap();
            }
            // Each chunk makes it to the upstream and back before the next
            // one is even written.
            let mut got = Vec::new();
            while got.len() < chunk.len() {
                let frame = within(&format!("{client:?}: echo of {chunk}"), body.frame())
                    .await
                    .expect("body ended early")
                    .unwrap();
                if let Some(data) = frame.data_ref() {
                    got.extend_from_slice(data);
                }
            }
            assert_eq!(got, chunk.as_bytes(), "{client:?}");
            received.extend(got);
        }
        drop(tx);
        while let Some(frame) = within("end of echo", body.frame()).await {
            received.extend(frame.unwrap().into_data().unwrap_or_default());
        }
        assert_eq!(received, b"first;second;third;");
    }
}

fn pattern(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

#[tokio::test]
async fn large_bodies_arrive_intact() {
    const LEN: usize = 8 << 20;
    let up = upstream("a").await;
    let mesh = chain(up.local_addr()).await;
    let data = pattern(LEN);
    for client in CLIENTS {
        let reply = client
            .request(mesh.entry(), post("/echo", data.clone()))
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body.len(), LEN, "{client:?}");
        assert!(reply.body == data, "{client:?}: echoed body differs");

        let reply = client
            .get(mesh.entry(), "echo.test", &format!("/bytes/{LEN}"))
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body.len(), LEN, "{client:?}");
        assert!(reply.body.iter().all(|b| *b == 0));
    }
}

/// HTTP/2 trailers survive both hops. (HTTP/1.1 is not covered: hyper only
/// writes HTTP/1.1 trailers that the response announces in a `Trailer`
/// header, and the sample upstream announces none.)
#[tokio::test]
async fn http2_trailers_are_preserved() {
    let up = upstream("a").await;
    let mesh = chain(up.local_addr()).await;
    let reply = h2c_client()
        .get(mesh.entry(), "echo.test", "/trailers")
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "trailers follow\n");
    let trailers = reply
        .trailers
        .as_ref()
        .unwrap_or_else(|| panic!("no trailers: {reply:?}"));
    assert_eq!(trailers.get("x-trailer").unwrap(), "present");
    assert_eq!(trailers.get("x-upstream").unwrap(), "a");
}

// ------------------------------------------------------- malformed requests

#[tokio::test]
async fn garbage_request_line_gets_400() {
    let up = upstream("a").await;
    let p = proxy(&forward_all(&[up.local_addr()])).await;
    for garbage in [
        "this is not http\r\n\r\n",
        "GET /echo HTTP/9.9.9\r\nhost: x\r\n\r\n",
        "GET\r\n\r\n",
        "GET /echo HTTP/1.1\r\nbad header line\r\n\r\n",
    ] {
        let response = raw_http1(p.addr("in"), garbage).await;
        assert_eq!(
            raw_status(&response),
            Some(400),
            "{garbage:?} -> {response:?}"
        );
    }
    assert_eq!(up.stats().requests(), 0);
}

#[tokio::test]
async fn oversized_request_head_gets_431() {
    let up = upstream("a").await;
    let yaml = render(
        r#"
listeners:
  - { name: in, address: "127.0.0.1:0", routeTable: rt, maxRequestHeadersBytes: 8192 }
routeTables:
  - name: rt
    virtualHosts:
      - { name: all, domains: ["*"], routes: [{ name: all, route: { cluster: up } }] }
clusters: [{ name: up }]
endpoints: [{ cluster: up, endpoints: ${up} }]
"#,
        &[("up", &endpoints(&[up.local_addr()]))],
    );
    let p = proxy(&yaml).await;
    // Just under the limit passes.
    let small = "v".repeat(4096);
    let response = raw_http1(
        p.addr("in"),
        format!("GET /echo HTTP/1.1\r\nhost: x\r\nx-big: {small}\r\n\r\n"),
    )
    .await;
    assert_eq!(raw_status(&response), Some(200), "{response:?}");
    // Over it does not.
    let big = "v".repeat(16 * 1024);
    let response = raw_http1(
        p.addr("in"),
        format!("GET /echo HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n"),
    )
    .await;
    assert_eq!(raw_status(&response), Some(431), "{response:?}");
    assert_eq!(up.stats().http_requests(), 1);

    // HTTP/2: the header list limit applies too; the connection survives.
    let mut conn = h2c_client().connect(p.addr("in")).await;
    let mut req = get("echo.test", "/echo");
    req.headers_mut().insert("x-big", big.parse().unwrap());
    match conn.send(req).await {
        Ok(rsp) => assert_eq!(rsp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        Err(e) => panic!("expected 431 for an oversized HTTP/2 header list, got {e}"),
    }
    assert_eq!(up.stats().http_requests(), 1);
}

/// The classic request smuggling shape (CL.TE): a front end that trusted
/// Content-Length would see one request, one that trusted chunked framing a
/// second, smuggled one. RFC 9112 6.1 lets a server either reject such a
/// message or process it by Transfer-Encoding alone, with Content-Length
/// removed before forwarding, and close the connection after responding.
/// Either way the smuggled request must never be forwarded.
#[tokio::test]
async fn content_length_with_transfer_encoding_cannot_smuggle_a_request() {
    let up = recording_upstream().await;
    let p = proxy(&forward_all(&[up.local_addr()])).await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n";
    let body = format!("0\r\n\r\n{smuggled}");
    for attack in [
        format!(
            "POST /first HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\ntransfer-encoding: chunked\r\n\r\n{body}",
            body.len()
        ),
        // Transfer-Encoding first, then Content-Length.
        format!(
            "POST /first HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        ),
    ] {
        let before = up.count();
        // Reads until the proxy closes the connection: it must.
        let response = raw_http1_until_close(p.addr("in"), &attack).await;
        assert_eq!(
            response.matches("HTTP/1.1 ").count(),
            1,
            "exactly one response on the connection: {response:?}"
        );
        let seen = up.seen()[before..].to_vec();
        assert!(
            seen.iter().all(|s| s.uri.path() != "/smuggled"),
            "the smuggled request was forwarded: {seen:?}"
        );
        match raw_status(&response) {
            Some(400) => assert!(seen.is_empty(), "a rejected request was forwarded"),
            Some(200) => {
                // Processed by Transfer-Encoding alone: an empty chunked body,
                // the connection closed, no Content-Length forwarded.
                assert!(
                    response.to_ascii_lowercase().contains("connection: close"),
                    "{response:?}"
                );
                assert_eq!(seen.len(), 1, "{seen:?}");
                assert_eq!(seen[0].uri.path(), "/first");
                assert!(seen[0].body.is_empty(), "{:?}", seen[0].body);
                assert_ne!(
                    seen[0].headers.get("content-length").map(|v| v.as_bytes()),
                    Some(body.len().to_string().as_bytes()),
                    "the conflicting Content-Length was forwarded"
                );
            }
            other => panic!("unexpected status {other:?}: {response:?}"),
        }
    }
}

#[tokio::test]
async fn two_different_content_lengths_get_400() {
    let up = upstream("a").await;
    let p = proxy(&forward_all(&[up.local_addr()])).await;
    for request in [
        "POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ncontent-length: 5\r\n\r\nabcde",
        "POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 3, 5\r\n\r\nabcde",
        "POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: -1\r\n\r\nabcde",
        "POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip\r\n\r\nabcde",
    ] {
        let response = raw_http1_until_close(p.addr("in"), request).await;
        assert_eq!(
            raw_status(&response),
            Some(400),
            "{request:?} -> {response:?}"
        );
    }
    assert_eq!(up.stats().http_requests(), 0);
}

// ------------------------------------------------------ HTTP/2 stream errors

/// Encodes one HTTP/2 frame.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut frame = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    frame.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// An HPACK header block of literals without indexing (no Huffman): enough
/// to send headers a well-behaved client library would refuse to.
fn hpack(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in headers {
        assert!(name.len() < 127 && value.len() < 127);
        block.push(0x00);
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    block
}

const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// A malformed HTTP/2 request (a connection-specific header, forbidden in
/// HTTP/2) resets that stream only; another stream on the same connection,
/// sent right after it, is answered.
#[tokio::test]
async fn malformed_http2_stream_is_reset_alone() {
    let up = upstream("a").await;
    let p = proxy(&forward_all(&[up.local_addr()])).await;
    let mut stream = TcpStream::connect(p.addr("in")).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(SETTINGS, 0, 0, &[]));
    let request = |extra: &[(&'static str, &'static str)]| {
        let mut headers = vec![
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/echo"),
            (":authority", "echo.test"),
        ];
        headers.extend_from_slice(extra);
        hpack(&headers)
    };
    out.extend(h2_frame(
        HEADERS,
        END_STREAM | END_HEADERS,
        1,
        &request(&[("connection", "keep-alive")]),
    ));
    out.extend(h2_frame(
        HEADERS,
        END_STREAM | END_HEADERS,
        3,
        &request(&[]),
    ));
    stream.write_all(&out).await.unwrap();

    // Read frames until stream 3 has its response headers.
    let mut buf = Vec::new();
    let mut reset_1 = false;
    let mut answered_3 = false;
    within("frames for streams 1 and 3", async {
        while !(reset_1 && answered_3) {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "connection closed; reset_1={reset_1} answered_3={answered_3}"
            );
            buf.extend_from_slice(&chunk[..n]);
            while buf.len() >= 9 {
                let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
                if buf.len() < 9 + len {
                    break;
                }
                let kind = buf[3];
                let flags = buf[4];
                let id = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
                match (kind, id) {
                    (SETTINGS, 0) if flags & 0x1 == 0 => {
                        stream
                            .write_all(&h2_frame(SETTINGS, 0x1, 0, &[]))
                            .await
                            .unwrap();
                    }
                    (RST_STREAM, 1) => reset_1 = true,
                    (HEADERS, 1) => panic!("the malformed stream got a response"),
                    (HEADERS, 3) => answered_3 = true,
                    (GOAWAY, _) => panic!("the whole connection was closed (GOAWAY)"),
                    (RST_STREAM, 3) => panic!("the well-formed stream was reset"),
                    _ => {}
                }
                buf.drain(..9 + len);
            }
        }
    })
    .await;
    assert_eq!(up.stats().http_requests(), 1, "only stream 3 went upstream");
}

/// A client resetting one stream mid-upload does not disturb its other
/// streams on the connection.
#[tokio::test]
async fn client_reset_of_one_stream_leaves_others_alone() {
    let up = upstream("a").await;
    let mesh = chain(up.local_addr()).await;
    let mut conn = h2c_client().connect(mesh.entry()).await;
    let mut other = conn.stream();

    let (mut tx, body) = streaming_body();
    let req = Request::post("/echo")
        .header("host", "echo.test")
        .body(body)
        .unwrap();
    tx.send_data(Bytes::from_static(b"partial")).await.unwrap();
    let doomed = conn.send(req).await.unwrap();
    assert_eq!(doomed.status(), StatusCode::OK);
    // The client aborts the upload: hyper resets the stream.
    tx.abort("client gave up".into());
    let mut doomed_body = doomed.into_body();
    let ended = within("the reset stream to end", async {
        loop {
            match doomed_body.frame().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            }
        }
    })
    .await;
    assert!(ended.is_err(), "the aborted stream ended cleanly");

    // The connection still works for another stream, with a body.
    let rsp = other.send(post("/echo", "still here")).await.unwrap();
    let reply = collect(rsp).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "still here");
}

// ------------------------------------------------------ proxy-made errors

fn assert_proxy_error(reply: &Reply, status: StatusCode, reason: &str) {
    assert_eq!(reply.status, status, "{reply:?}");
    assert_eq!(reply.error(), Some(reason), "{reply:?}");
    assert!(
        !reply.body.is_empty(),
        "errors explain themselves: {reply:?}"
    );
}

#[tokio::test]
async fn proxy_errors_carry_status_and_reason() {
    let up = upstream("a").await;
    let refused = RefusingPort::new();
    let yaml = render(
        r#"
listeners:
  - { name: in, address: "127.0.0.1:0", routeTable: rt }
routeTables:
  - name: rt
    virtualHosts:
      - name: known
        domains: ["echo.test"]
        routes:
          - { name: ok, match: { prefix: /ok }, route: { cluster: up } }
          - { name: empty, match: { prefix: /empty }, route: { cluster: empty } }
          - { name: refused, match: { prefix: /refused }, route: { cluster: refused } }
clusters:
  - { name: up }
  - { name: empty }
  - { name: refused, connectTimeout: 1s }
endpoints:
  - { cluster: up, endpoints: ${up} }
  - { cluster: refused, endpoints: ${closed} }
"#,
        &[
            ("up", &endpoints(&[up.local_addr()])),
            ("closed", &endpoints(&[refused.addr()])),
        ],
    );
    let p = proxy(&yaml).await;
    for client in CLIENTS {
        let entry = p.addr("in");
        let reply = client.get(entry, "echo.test", "/ok").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.error(), None);

        let reply = client.get(entry, "echo.test", "/nowhere").await;
        assert_proxy_error(&reply, StatusCode::NOT_FOUND, "route_not_found");
        let reply = client.get(entry, "unknown.test", "/ok").await;
        assert_proxy_error(&reply, StatusCode::NOT_FOUND, "route_not_found");

        let reply = client.get(entry, "echo.test", "/empty").await;
        assert_proxy_error(
            &reply,
            StatusCode::SERVICE_UNAVAILABLE,
            "no_healthy_upstream",
        );

        let reply = client.get(entry, "echo.test", "/refused").await;
        assert_proxy_error(
            &reply,
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_connect_failure",
        );
    }
    assert_eq!(up.stats().requests(), 2);
    // The proxy counts its own replies by reason.
    let metrics = p.metrics().await;
    for reason in [
        "route_not_found",
        "no_healthy_upstream",
        "upstream_connect_failure",
    ] {
        assert!(
            prometheus::value(
                &metrics,
                "gridmesh_local_replies_total",
                &[("reason", reason)]
            )
            .is_some_and(|n| n >= 1.0),
            "{reason} not counted in:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn upstream_reset_becomes_502() {
    let up = upstream("a").await;
    let p = proxy(&forward_all(&[up.local_addr()])).await;
    for client in CLIENTS {
        let reply = client.get(p.addr("in"), "echo.test", "/reset").await;
        assert_proxy_error(&reply, StatusCode::BAD_GATEWAY, "upstream_reset");
        // The proxy is fine afterwards.
        let reply = client.get(p.addr("in"), "echo.test", "/echo").await;
        assert_eq!(reply.status, StatusCode::OK);
    }
}

// -------------------------------------------------------- hop-by-hop headers

#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded() {
    let up = recording_upstream().await;
    let p = proxy(&forward_all(&[up.local_addr()])).await;
    let request = "GET /hop HTTP/1.1\r\n\
         host: echo.test\r\n\
         connection: keep-alive, x-connection-scoped\r\n\
         x-connection-scoped: secret\r\n\
         keep-alive: timeout=5\r\n\
         proxy-connection: keep-alive\r\n\
         x-end-to-end: kept\r\n\
         \r\n";
    let response = raw_http1(p.addr("in"), request).await;
    assert_eq!(raw_status(&response), Some(200), "{response:?}");
    let seen = up.last();
    for name in [
        "connection",
        "x-connection-scoped",
        "keep-alive",
        "proxy-connection",
    ] {
        assert!(
            !seen.headers.contains_key(name),
            "{name} was forwarded: {:?}",
            seen.headers
        );
    }
    assert_eq!(seen.headers.get("x-end-to-end").unwrap(), "kept");

    // Same over HTTP/2 for the headers an HTTP/2 client may send.
    let mut req = get("echo.test", "/hop2");
    req.headers_mut()
        .insert("x-end-to-end", "kept".parse().unwrap());
    let reply = h2c_client().request(p.addr("in"), req).await;
    assert_eq!(reply.status, StatusCode::OK);
    let seen = up.last();
    assert_eq!(seen.uri.path(), "/hop2");
    assert_eq!(seen.headers.get("x-end-to-end").unwrap(), "kept");
}
