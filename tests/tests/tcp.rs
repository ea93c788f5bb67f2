//! Opaque TCP through the real proxy in process: a TCP listener forwards
//! bytes both ways, half-closes pass through, idle connections are closed,
//! and an AUTO listener forwards what is not HTTP — including protocols
//! where the server speaks first, after a bounded detection timeout that is
//! counted — while still serving HTTP.

use std::net::SocketAddr;
use std::time::Duration;

use gridmesh_tests::harness::{self, TestProxy, http1_client, render, upstream, within};
use http::StatusCode;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// A raw TCP server: greets with `banner` (if any) as soon as a client
/// connects, then answers every line with `echo: <line>`, and on the
/// client's half-close writes `bye` and closes.
async fn line_server(banner: Option<&'static str>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                if let Some(banner) = banner {
                    write.write_all(banner.as_bytes()).await.unwrap();
                }
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    write
                        .write_all(format!("echo: {line}\n").as_bytes())
                        .await
                        .unwrap();
                }
                let _ = write.write_all(b"bye\n").await;
                let _ = write.shutdown().await;
            });
        }
    });
    addr
}

/// A proxy with listener `tcp` (protocol TCP) and listener `auto` (AUTO,
/// HTTP routed to `http_up`, the rest to the TCP server), a 0.2 s detection
/// timeout and a 0.3 s idle timeout.
async fn proxy(tcp_up: SocketAddr, http_up: SocketAddr, auto_tcp: bool) -> TestProxy {
    let auto_tcp = if auto_tcp { ", tcpCluster: lines" } else { "" };
    harness::proxy(&render(
        r#"
listeners:
  - { name: tcp, address: "127.0.0.1:0", protocol: TCP, tcpCluster: lines, idleTimeout: 0.3s }
  - { name: auto, address: "127.0.0.1:0", routeTable: rt, protocolDetectionTimeout: 0.2s${auto_tcp} }
routeTables:
  - name: rt
    virtualHosts: [{ name: all, domains: ["*"], routes: [{ name: all, route: { cluster: web } }] }]
clusters: [{ name: lines }, { name: web }]
endpoints:
  - { cluster: lines, endpoints: ${lines} }
  - { cluster: web, endpoints: ${web} }
"#,
        &[
            ("auto_tcp", &auto_tcp),
            ("lines", &harness::endpoints(&[tcp_up])),
            ("web", &harness::endpoints(&[http_up])),
        ],
    ))
    .await
}

async fn read_line(reader: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    within("a line", reader.read_line(&mut line)).await.unwrap();
    line
}

async fn metric(proxy: &TestProxy, name: &str, labels: &[(&str, &str)]) -> f64 {
    proxy
        .metric(name, labels)
        .await
        .unwrap_or_else(|| panic!("no {name} {labels:?}"))
}

#[tokio::test]
async fn a_tcp_listener_forwards_bytes_both_ways_with_the_servers_banner_first() {
    let lines = line_server(Some("220 ready\n")).await;
    let web = upstream("web").await;
    let proxy = proxy(lines, web.local_addr(), false).await;
    let client = TcpStream::connect(proxy.addr("tcp")).await.unwrap();
    let mut client = BufReader::new(client);
    // The server speaks first: nothing waits for the client.
    assert_eq!(read_line(&mut client).await, "220 ready\n");
    client.get_mut().write_all(b"hello\n").await.unwrap();
    assert_eq!(read_line(&mut client).await, "echo: hello\n");
    // A half-close reaches the server, whose answer still comes back.
    client.get_mut().shutdown().await.unwrap();
    assert_eq!(read_line(&mut client).await, "bye\n");
    let mut rest = Vec::new();
    within("the end", client.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(rest.is_empty());
    let tcp = [("listener", "tcp")];
    assert_eq!(
        metric(&proxy, "gridmesh_downstream_tcp_connections_total", &tcp).await,
        1.0
    );
    // Counted when the connection ends: wait for it.
    within("the byte counts", async {
        loop {
            let sent = proxy
                .metric(
                    "gridmesh_downstream_tcp_bytes_total",
                    &[("listener", "tcp"), ("direction", "sent")],
                )
                .await;
            if sent == Some((b"220 ready\n".len() + b"echo: hello\n".len() + b"bye\n".len()) as f64)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(
        metric(
            &proxy,
            "gridmesh_downstream_tcp_bytes_total",
            &[("listener", "tcp"), ("direction", "received")]
        )
        .await,
        b"hello\n".len() as f64
    );
}

#[tokio::test]
async fn an_idle_tcp_connection_is_closed_and_a_busy_one_is_not() {
    let lines = line_server(None).await;
    let web = upstream("web").await;
    let proxy = proxy(lines, web.local_addr(), false).await;
    // Busy: a line every 0.1 s for more than twice the 0.3 s idle timeout.
    let mut busy = BufReader::new(TcpStream::connect(proxy.addr("tcp")).await.unwrap());
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(800) {
        busy.get_mut().write_all(b"tick\n").await.unwrap();
        assert_eq!(read_line(&mut busy).await, "echo: tick\n");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Idle: closed after one to two idle periods.
    let mut idle = TcpStream::connect(proxy.addr("tcp")).await.unwrap();
    let idle_since = Instant::now();
    let mut rest = Vec::new();
    within("the idle connection to close", idle.read_to_end(&mut rest))
        .await
        .unwrap();
    let closed_after = idle_since.elapsed();
    assert!(
        closed_after >= Duration::from_millis(200) && closed_after < Duration::from_secs(2),
        "closed after {closed_after:?}; the idle timeout is 0.3 s"
    );
}

#[tokio::test]
async fn an_auto_listener_serves_http_and_forwards_everything_else() {
    let lines = line_server(Some("220 ready\n")).await;
    let web = upstream("web").await;
    let proxy = proxy(lines, web.local_addr(), true).await;
    let auto = proxy.addr("auto");

    // HTTP is served as HTTP.
    let reply = http1_client().get(auto, "web", "/echo").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.upstream(), Some("web"));

    // Bytes that cannot start a request are forwarded at once.
    let start = Instant::now();
    let mut binary = BufReader::new(TcpStream::connect(auto).await.unwrap());
    binary
        .get_mut()
        .write_all(b"\x16\x03 not http\n")
        .await
        .unwrap();
    assert_eq!(read_line(&mut binary).await, "220 ready\n");
    assert_eq!(read_line(&mut binary).await, "echo: \u{16}\u{3} not http\n");
    assert!(
        start.elapsed() < Duration::from_millis(200),
        "no detection wait"
    );

    // A client that waits for the server to speak gets it after the
    // detection timeout, which is counted.
    let auto_labels = [("listener", "auto")];
    let timeouts_before = metric(
        &proxy,
        "gridmesh_protocol_detection_timeouts_total",
        &auto_labels,
    )
    .await;
    let start = Instant::now();
    let mut silent = BufReader::new(TcpStream::connect(auto).await.unwrap());
    assert_eq!(read_line(&mut silent).await, "220 ready\n");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(150) && waited < Duration::from_secs(2),
        "banner after {waited:?}; the detection timeout is 0.2 s"
    );
    assert_eq!(
        metric(
            &proxy,
            "gridmesh_protocol_detection_timeouts_total",
            &auto_labels
        )
        .await,
        timeouts_before + 1.0
    );
    assert_eq!(
        metric(
            &proxy,
            "gridmesh_downstream_tcp_connections_total",
            &auto_labels
        )
        .await,
        2.0
    );
}

#[tokio::test]
async fn an_auto_listener_without_a_tcp_cluster_answers_garbage_as_http() {
    let lines = line_server(Some("220 ready\n")).await;
    let web = upstream("web").await;
    let proxy = proxy(lines, web.local_addr(), false).await;
    // No detection without somewhere to forward to: hyper says 400.
    let response = harness::raw_http1(proxy.addr("auto"), "\x16\x03 not http\r\n\r\n").await;
    assert_eq!(harness::raw_status(&response), Some(400), "{response:?}");
    assert_eq!(
        metric(
            &proxy,
            "gridmesh_downstream_tcp_connections_total",
            &[("listener", "auto")]
        )
        .await,
        0.0
    );
}
