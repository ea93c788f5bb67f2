//! Mutual TLS between real sidecar processes, with identities from a real CA
//! in files (tests/src/pki.rs), and third-party clients (openssl s_client,
//! curl) on the same ports: who may connect, what each side learns of the
//! other, and that every refusal is counted and leaves the listener serving.

use std::net::SocketAddr;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use gridmesh_identity::{Credentials, IdentityStore, SpiffeId, SvidInfo, TrustBundle};
use gridmesh_tests::harness::{
    self, RecordingUpstream, h2c_client, http1_client, recording_upstream,
};
use gridmesh_tests::load::Load;
use gridmesh_tests::pki::{TestPki, WorkloadFiles, with_dns_name};
use gridmesh_tests::process::{self, GRIDMESH_PROXY, ProxyConfig, ProxyProcess};
use gridmesh_tests::prometheus;
use rcgen::KeyPair;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;

const START_TIMEOUT: Duration = Duration::from_secs(30);
const TOOL_TIMEOUT: Duration = Duration::from_secs(20);
/// A name only curl and openssl use, through a DNS SAN on the block's SVID
/// (they verify host names; sidecars verify SPIFFE IDs).
const BLOCK_HOST: &str = "block.gridmesh.test";

/// A sidecar process from bootstrap YAML (admin on a free port).
async fn sidecar(name: &str, yaml: String) -> ProxyProcess {
    let binary = process::binary(GRIDMESH_PROXY).unwrap();
    let yaml = format!("admin: {{ address: \"127.0.0.1:0\" }}\n{yaml}");
    ProxyProcess::start(&binary, name, ProxyConfig::Yaml(yaml), START_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{name} did not start: {e:#}"))
}

/// The block's inbound sidecar: listener `in` with `mode`, to `upstream`.
async fn inbound(files: &WorkloadFiles, mode: &str, upstream: SocketAddr) -> ProxyProcess {
    inbound_with(files, mode, upstream, "").await
}

/// [`inbound`] with more bootstrap (authorization policies).
async fn inbound_with(
    files: &WorkloadFiles,
    mode: &str,
    upstream: SocketAddr,
    more: &str,
) -> ProxyProcess {
    sidecar(
        "inbound",
        format!(
            r#"{identity}{more}
listeners:
  - {{ name: in, address: "127.0.0.1:0", direction: INBOUND, routeTable: rt, tlsMode: {mode} }}
routeTables:
  - name: rt
    virtualHosts: [{{ name: all, domains: ["*"], routes: [{{ name: all, route: {{ cluster: block }} }}] }}]
clusters: [{{ name: block }}]
endpoints: [{{ cluster: block, endpoints: [{{ address: "{upstream}" }}] }}]
"#,
            identity = files.yaml()
        ),
    )
    .await
}

/// A block (the recording upstream) behind its STRICT sidecar.
struct StrictBlock {
    block: RecordingUpstream,
    inbound: ProxyProcess,
    port: SocketAddr,
}

async fn strict_block(files: &WorkloadFiles) -> StrictBlock {
    let block = recording_upstream().await;
    let inbound = inbound(files, "STRICT", block.local_addr()).await;
    let port = inbound.listener_address("in").unwrap();
    StrictBlock {
        block,
        inbound,
        port,
    }
}

/// A caller's outbound sidecar: listener `out`, to `target` expecting it to
/// be `expected`.
async fn outbound(files: &WorkloadFiles, target: SocketAddr, expected: &SpiffeId) -> ProxyProcess {
    sidecar(
        "outbound",
        format!(
            r#"{identity}
listeners:
  - {{ name: out, address: "127.0.0.1:0", direction: OUTBOUND, routeTable: rt }}
routeTables:
  - name: rt
    virtualHosts: [{{ name: all, domains: ["*"], routes: [{{ name: all, route: {{ cluster: peer }} }}] }}]
clusters: [{{ name: peer, identity: "{expected}" }}]
endpoints: [{{ cluster: peer, endpoints: [{{ address: "{target}" }}] }}]
"#,
            identity = files.yaml()
        ),
    )
    .await
}

async fn metric(proxy: &ProxyProcess, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let metrics = proxy.admin_get("/metrics").await.unwrap();
    prometheus::value(&metrics.body, name, labels)
}

/// Waits until the sample reads `want`: how a test knows a refusal was
/// seen and counted, rather than assuming it.
async fn wait_metric(proxy: &ProxyProcess, name: &str, labels: &[(&str, &str)], want: f64) {
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if metric(proxy, name, labels).await == Some(want) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    if waited.await.is_err() {
        let text = proxy.admin_get("/metrics").await.unwrap().body;
        let samples: Vec<&str> = text.lines().filter(|l| l.starts_with(name)).collect();
        panic!(
            "no {name} {labels:?} = {want} within 10s; samples:\n{}",
            samples.join("\n")
        );
    }
}

/// Waits until the proxy's log (read as it is written, colours stripped)
/// holds `text`.
async fn wait_logged(proxy: &ProxyProcess, text: &str) {
    let waited = harness::within_for(Duration::from_secs(10), text, async {
        while !process::strip_ansi(&proxy.output()).contains(text) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    waited.await;
}

fn handshakes(result: &str) -> [(&str, &str); 2] {
    [("listener", "in"), ("result", result)]
}

const HANDSHAKES: &str = "gridmesh_downstream_tls_handshakes_total";

// ------------------------------------------------------------------ paths

#[tokio::test]
async fn sidecars_speak_mtls_and_the_block_learns_who_called() {
    let pki = TestPki::new();
    let (a, b) = (pki.workload("a"), pki.workload("b"));
    let block = recording_upstream().await;
    let inbound = inbound(&b, "STRICT", block.local_addr()).await;
    let outbound = outbound(&a, inbound.listener_address("in").unwrap(), &b.id).await;
    let entry = outbound.listener_address("out").unwrap();

    // HTTP/1.1 from the app, and HTTP/2 (the sidecars then negotiate h2 by ALPN).
    for client in [http1_client(), h2c_client()] {
        let mut req = harness::get("block", "/who");
        // A caller cannot claim an identity by header.
        req.headers_mut().insert(
            "x-forwarded-client-cert",
            "URI=spiffe://gridmesh.test/ns/test/sa/admin"
                .parse()
                .unwrap(),
        );
        let reply = client.request(entry, req).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let seen = block.last();
        assert_eq!(
            seen.headers.get("x-forwarded-client-cert").unwrap(),
            &format!("URI={}", a.id),
        );
    }
    // Both requests went over mTLS handshakes the inbound side accepted
    // (pooled: one per protocol).
    wait_metric(&inbound, HANDSHAKES, &handshakes("ok"), 2.0).await;

    // Istio's request metrics, reported from each side with the identities
    // each sidecar verified.
    let (a_id, b_id) = (a.id.to_string(), b.id.to_string());
    let common = [
        ("source_principal", a_id.as_str()),
        ("source_workload_namespace", "test"),
        ("destination_principal", b_id.as_str()),
        ("destination_workload_namespace", "test"),
        ("request_protocol", "http"),
        ("response_code", "200"),
        ("grpc_response_status", ""),
        ("response_flags", "-"),
    ];
    let destination = [
        &common[..],
        &[
            ("reporter", "destination"),
            ("destination_service", "block"),
            ("connection_security_policy", "mutual_tls"),
        ],
    ]
    .concat();
    let source = [
        &common[..],
        &[
            ("reporter", "source"),
            ("destination_service", "peer"),
            ("connection_security_policy", "unknown"),
        ],
    ]
    .concat();
    wait_metric(&inbound, "istio_requests_total", &destination, 2.0).await;
    wait_metric(&outbound, "istio_requests_total", &source, 2.0).await;
    let histogram = "istio_request_duration_milliseconds_count";
    assert_eq!(metric(&inbound, histogram, &destination).await, Some(2.0));
    assert_eq!(metric(&outbound, histogram, &source).await, Some(2.0));
    // The block answers "ok" to each.
    let sizes = "istio_response_bytes_sum";
    assert_eq!(metric(&outbound, sizes, &source).await, Some(4.0));

    // The identity and its expiry are shown.
    let dump = inbound.admin_get("/config_dump").await.unwrap().body;
    assert!(
        dump.contains(&format!("\"spiffeId\": \"{}\"", b.id)),
        "{dump}"
    );
    let expiry = metric(
        &inbound,
        "gridmesh_identity_certificate_expiry_timestamp_seconds",
        &[],
    )
    .await
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        expiry > now && expiry <= now + 86_400.0,
        "expiry {expiry}, now {now}"
    );
}

#[tokio::test]
async fn a_caller_refuses_an_upstream_that_is_not_who_it_expects() {
    let pki = TestPki::new();
    let (a, b) = (pki.workload("a"), pki.workload("b"));
    let block = recording_upstream().await;
    let inbound = inbound(&b, "STRICT", block.local_addr()).await;
    let expected = TestPki::id("c");
    let outbound = outbound(&a, inbound.listener_address("in").unwrap(), &expected).await;

    let reply = http1_client()
        .get(outbound.listener_address("out").unwrap(), "block", "/")
        .await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(reply.error(), Some("upstream_connect_failure"));
    let wrong = [("cluster", "peer"), ("reason", "wrong_identity")];
    wait_metric(
        &outbound,
        "gridmesh_upstream_tls_handshake_errors_total",
        &wrong,
        1.0,
    )
    .await;
    assert_eq!(block.count(), 0, "nothing reached the block");
    // The log says who was found instead.
    wait_logged(&outbound, &format!("peer is {}, expected {expected}", b.id)).await;
}

#[tokio::test]
async fn permissive_takes_mtls_and_plaintext_and_only_mtls_names_a_caller() {
    let pki = TestPki::new();
    let (a, b) = (pki.workload("a"), pki.workload("b"));
    let block = recording_upstream().await;
    let inbound = inbound(&b, "PERMISSIVE", block.local_addr()).await;
    let port = inbound.listener_address("in").unwrap();

    let mut plain = harness::get("block", "/plain");
    plain.headers_mut().insert(
        "x-forwarded-client-cert",
        "URI=spiffe://gridmesh.test/ns/test/sa/a".parse().unwrap(),
    );
    let reply = http1_client().request(port, plain).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(block.last().headers.get("x-forwarded-client-cert"), None);

    let outbound = outbound(&a, port, &b.id).await;
    let reply = http1_client()
        .get(outbound.listener_address("out").unwrap(), "block", "/mtls")
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        block.last().headers.get("x-forwarded-client-cert").unwrap(),
        &format!("URI={}", a.id)
    );
    wait_metric(&inbound, HANDSHAKES, &handshakes("ok"), 1.0).await;
}

// ------------------------------------------------------------ refusals

/// A TLS client presenting `credentials` (checked or not) and trusting
/// `bundle`; the handshake's outcome as the client sees it.
async fn tls_client(
    bundle: TrustBundle,
    credentials: Credentials,
    server: SocketAddr,
    expected: &SpiffeId,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let store = IdentityStore::new();
    store.install(credentials, bundle);
    let config = store.client_config(expected.clone(), &[b"http/1.1"]);
    let stream = TcpStream::connect(server).await?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let mut tls = connector
        .connect(ServerName::IpAddress(server.ip().into()), stream)
        .await?;
    // TLS 1.3: the server judges the client's certificate after the
    // client's side is done; its verdict arrives with the first read.
    tls.write_all(b"GET / HTTP/1.1\r\nhost: block\r\n\r\n")
        .await?;
    let mut buf = [0u8; 64];
    if tls.read(&mut buf).await? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed without an answer",
        ));
    }
    Ok(tls)
}

/// Credentials exactly as signed, without the checks a sidecar makes
/// before presenting its own (which would refuse these).
fn unchecked(pki: &TestPki, params: rcgen::CertificateParams) -> Credentials {
    let key = KeyPair::generate().unwrap();
    let leaf = pki.ca.sign(&params, &key).unwrap();
    let certified = rustls::sign::CertifiedKey::from_der(
        vec![leaf.clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        &rustls::crypto::ring::default_provider(),
    )
    .unwrap();
    Credentials {
        certified: Arc::new(certified),
        svid: SvidInfo::of_leaf(&leaf).unwrap_or_else(|_| SvidInfo {
            id: TestPki::id("none"),
            not_before: std::time::SystemTime::now(),
            not_after: std::time::SystemTime::now(),
        }),
    }
}

fn svid_params(name: &str) -> rcgen::CertificateParams {
    gridmesh_identity::Authority::svid_params(&TestPki::id(name), Duration::from_secs(3600))
        .unwrap()
}

#[tokio::test]
async fn strict_refuses_every_bad_client_with_a_reason_and_serves_the_rest() {
    let pki = TestPki::new();
    let b = pki.workload("b");
    let StrictBlock {
        block,
        inbound,
        port,
    } = strict_block(&b).await;

    // Plaintext HTTP where a ClientHello is expected, and garbage.
    for (bytes, count) in [
        (&b"GET / HTTP/1.1\r\nhost: block\r\n\r\n"[..], 1.0),
        (b"\x00\x01garbage\xff\r\n\r\n", 2.0),
    ] {
        let mut stream = TcpStream::connect(port).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        let mut answer = Vec::new();
        // Closed without an HTTP answer (at most a TLS alert).
        let _ = stream.read_to_end(&mut answer).await;
        assert!(
            !answer.starts_with(b"HTTP"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        wait_metric(&inbound, HANDSHAKES, &handshakes("not_tls"), count).await;
    }

    // A handshake cut short: the first half of a real ClientHello.
    let hello = client_hello(&pki).await;
    let mut stream = TcpStream::connect(port).await.unwrap();
    stream.write_all(&hello[..hello.len() / 2]).await.unwrap();
    drop(stream);
    wait_metric(&inbound, HANDSHAKES, &handshakes("closed"), 1.0).await;

    // Certificates the server must refuse, each for its own reason.
    let expired = {
        let mut p = svid_params("expired");
        p.not_before -= time::Duration::days(3);
        p.not_after -= time::Duration::days(2);
        p
    };
    let not_yet = {
        let mut p = svid_params("future");
        p.not_before += time::Duration::days(2);
        p.not_after += time::Duration::days(3);
        p
    };
    let no_spiffe_id = {
        let mut p = svid_params("anonymous");
        p.subject_alt_names = vec![rcgen::SanType::DnsName(
            "anonymous.test".try_into().unwrap(),
        )];
        p
    };
    let other_ca = {
        let other = TestPki::new();
        other
            .ca
            .issue_with_key(&TestPki::id("stranger"), Duration::from_secs(3600))
            .unwrap()
            .0
    };
    let cases = [
        (unchecked(&pki, expired), "expired"),
        (unchecked(&pki, not_yet), "not_yet_valid"),
        (unchecked(&pki, no_spiffe_id), "not_an_svid"),
        (other_ca, "untrusted"),
    ];
    for (credentials, reason) in cases {
        let attempt = tls_client(pki.ca.bundle().unwrap(), credentials, port, &b.id).await;
        assert!(attempt.is_err(), "{reason}: the handshake was accepted");
        wait_metric(&inbound, HANDSHAKES, &handshakes(reason), 1.0).await;
        wait_logged(&inbound, &format!("reason={reason}")).await;
    }

    // No client certificate at all (openssl without -cert).
    let hello = openssl_s_client(port, &pki, None).await;
    assert!(
        !hello.status.success() || !text(&hello).contains("HTTP/1.1 200"),
        "{}",
        text(&hello)
    );
    wait_metric(
        &inbound,
        HANDSHAKES,
        &handshakes("no_client_certificate"),
        1.0,
    )
    .await;

    // Through all of it the listener kept serving a good client.
    let (good, _) = pki
        .ca
        .issue_with_key(&TestPki::id("a"), Duration::from_secs(3600))
        .unwrap();
    // tls_client read the start of the answer, so the block has the request.
    tls_client(pki.ca.bundle().unwrap(), good, port, &b.id)
        .await
        .unwrap();
    assert_eq!(
        block.count(),
        1,
        "the good client's request reached the block"
    );
    wait_metric(&inbound, HANDSHAKES, &handshakes("ok"), 1.0).await;
}

/// The bytes of a real ClientHello (rustls's, captured off a socket).
async fn client_hello(pki: &TestPki) -> Vec<u8> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (credentials, _) = pki
        .ca
        .issue_with_key(&TestPki::id("probe"), Duration::from_secs(60))
        .unwrap();
    let client = tokio::spawn({
        let bundle = pki.ca.bundle().unwrap();
        async move {
            let store = IdentityStore::new();
            store.install(credentials, bundle);
            let config = store.client_config(TestPki::id("x"), &[]);
            let stream = TcpStream::connect(addr).await.unwrap();
            let _ = tokio_rustls::TlsConnector::from(config)
                .connect(ServerName::IpAddress(addr.ip().into()), stream)
                .await;
        }
    });
    let (mut server, _) = listener.accept().await.unwrap();
    let mut hello = vec![0u8; 4096];
    let n = server.read(&mut hello).await.unwrap();
    hello.truncate(n);
    drop(server);
    let _ = client.await;
    assert_eq!(hello[0], 0x16, "a TLS handshake record");
    hello
}

// ------------------------------------------------------ third-party tools

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

async fn run(mut command: Command) -> Output {
    let what = format!("{command:?}");
    command.kill_on_drop(true);
    harness::within_for(TOOL_TIMEOUT, &what, command.output())
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// `openssl s_client` to `port`, presenting `client` if given, verifying the
/// server against the test CA; sends one HTTP/1.1 request.
async fn openssl_s_client(
    port: SocketAddr,
    pki: &TestPki,
    client: Option<&WorkloadFiles>,
) -> Output {
    let bundle = pki.dir().join("openssl-bundle.pem");
    std::fs::write(&bundle, pki.bundle_pem()).unwrap();
    let mut command = Command::new("openssl");
    command
        .args([
            "s_client",
            "-connect",
            &port.to_string(),
            "-tls1_3",
            "-alpn",
            "http/1.1",
        ])
        .args([
            "-CAfile",
            &bundle.display().to_string(),
            "-verify_return_error",
            "-ign_eof",
        ])
        .args(["-showcerts"]);
    if let Some(files) = client {
        command
            .arg("-cert")
            .arg(&files.certificate)
            .arg("-key")
            .arg(&files.private_key);
    }
    command.stdin(std::process::Stdio::piped());
    command.stdout(std::process::Stdio::piped());
    command.stderr(std::process::Stdio::piped());
    command.kill_on_drop(true);
    let mut child = command.spawn().expect("openssl runs");
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"GET /openssl HTTP/1.1\r\nhost: block\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    drop(stdin);
    harness::within_for(TOOL_TIMEOUT, "openssl s_client", child.wait_with_output())
        .await
        .unwrap()
}

#[tokio::test]
async fn openssl_verifies_the_spiffe_id_the_sidecar_presents() {
    let pki = TestPki::new();
    let b = pki.workload("b");
    let client = pki.workload("client");
    let StrictBlock {
        block,
        inbound: _sidecar,
        port,
    } = strict_block(&b).await;

    let output = openssl_s_client(port, &pki, Some(&client)).await;
    let said = text(&output);
    assert!(said.contains("Verify return code: 0 (ok)"), "{said}");
    assert!(said.contains("TLSv1.3"), "{said}");
    assert!(said.contains("HTTP/1.1 200"), "{said}");
    // The certificate the sidecar presented carries its SPIFFE ID.
    let presented = leaf_pem(&said);
    assert!(
        !presented.is_empty(),
        "-showcerts printed the chain: {said}"
    );
    let leaf = pki.dir().join("presented.pem");
    std::fs::write(
        &leaf,
        format!("-----BEGIN CERTIFICATE-----{presented}-----END CERTIFICATE-----\n"),
    )
    .unwrap();
    let mut x509 = Command::new("openssl");
    x509.args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(&leaf);
    let san = text(&run(x509).await);
    assert!(san.contains(&format!("URI:{}", b.id)), "{san}");
    assert_eq!(
        block.last().headers.get("x-forwarded-client-cert").unwrap(),
        &format!("URI={}", client.id)
    );
}

#[tokio::test]
async fn curl_with_a_client_certificate_gets_through_and_without_one_does_not() {
    let pki = TestPki::new();
    let b = pki.workload_with("b", with_dns_name(BLOCK_HOST));
    let client = pki.workload("client");
    let block = recording_upstream().await;
    let inbound = inbound(&b, "STRICT", block.local_addr()).await;
    let port = inbound.listener_address("in").unwrap().port();

    let curl = |cert: Option<&WorkloadFiles>, http2: bool| {
        let mut command = Command::new("curl");
        command
            .args(["--silent", "--show-error", "--max-time", "10"])
            .args(["--resolve", &format!("{BLOCK_HOST}:{port}:127.0.0.1")])
            .arg("--cacert")
            .arg(&b.trust_bundle)
            .arg(if http2 { "--http2" } else { "--http1.1" })
            .args(["--write-out", "\n%{http_version} %{http_code}"]);
        if let Some(files) = cert {
            command
                .arg("--cert")
                .arg(&files.certificate)
                .arg("--key")
                .arg(&files.private_key);
        }
        command.arg(format!("https://{BLOCK_HOST}:{port}/curl"));
        command
    };
    for (http2, version) in [(false, "1.1"), (true, "2")] {
        let output = run(curl(Some(&client), http2)).await;
        assert!(output.status.success(), "{}", text(&output));
        assert!(
            text(&output).ends_with(&format!("{version} 200")),
            "{}",
            text(&output)
        );
        assert_eq!(
            block.last().headers.get("x-forwarded-client-cert").unwrap(),
            &format!("URI={}", client.id)
        );
    }
    let refused = run(curl(None, false)).await;
    assert!(!refused.status.success(), "{}", text(&refused));
    wait_metric(
        &inbound,
        HANDSHAKES,
        &handshakes("no_client_certificate"),
        1.0,
    )
    .await;
    assert_eq!(block.count(), 2);
}

// ------------------------------------------------------------ identity files

#[tokio::test]
async fn without_a_usable_certificate_the_sidecar_is_not_ready_and_says_why() {
    let pki = TestPki::new();
    // The key belongs to another certificate.
    let good = pki.workload("b");
    let wrong_key = KeyPair::generate().unwrap();
    let leaf = std::fs::read(&good.certificate).unwrap();
    let der = CertificateDer::from_pem_slice(&leaf);
    let mismatched = pki.write(
        "mismatched",
        good.id.clone(),
        &[der.unwrap().as_ref()],
        &wrong_key,
        &pki.bundle_pem(),
    );
    let block = recording_upstream().await;
    let binary = process::binary(GRIDMESH_PROXY).unwrap();
    let yaml = format!(
        "admin: {{ address: \"127.0.0.1:0\" }}\n{}listeners:\n  - {{ name: in, address: \"127.0.0.1:0\", routeTable: rt, tlsMode: STRICT }}\nrouteTables:\n  - name: rt\n    virtualHosts: [{{ name: all, domains: [\"*\"], routes: [{{ name: all, route: {{ cluster: block }} }}] }}]\nclusters: [{{ name: block }}]\nendpoints: [{{ cluster: block, endpoints: [{{ address: \"{}\" }}] }}]\n",
        mismatched.yaml(),
        block.local_addr()
    );
    let mut proxy = ProxyProcess::spawn(&binary, "unready", ProxyConfig::Yaml(yaml)).unwrap();
    proxy
        .wait_for_line("identity files not taken", START_TIMEOUT)
        .await
        .unwrap();
    proxy.wait_serving(START_TIMEOUT).await.unwrap();
    let ready = proxy.admin_get("/ready").await.unwrap();
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(
        ready.body.contains("waiting for the workload certificate"),
        "{}",
        ready.body
    );
    wait_logged(&proxy, "the private key does not belong to the certificate").await;
    let refused = [("result", "refused")];
    assert_eq!(
        metric(&proxy, "gridmesh_identity_updates_total", &refused).await,
        Some(1.0)
    );

    // The right key arrives (as cert-manager would write it): ready.
    std::fs::copy(&good.private_key, &mismatched.private_key).unwrap();
    proxy.wait_ready(START_TIMEOUT).await.unwrap();
    let installed = [("result", "installed")];
    assert_eq!(
        metric(&proxy, "gridmesh_identity_updates_total", &installed).await,
        Some(1.0)
    );
}

#[tokio::test]
async fn rewritten_identity_files_are_presented_to_the_next_connection() {
    let pki = TestPki::new();
    let b = pki.workload("b");
    let StrictBlock {
        block,
        inbound,
        port,
    } = strict_block(&b).await;
    let client = pki.workload("client");
    let before = leaf_pem(&text(&openssl_s_client(port, &pki, Some(&client)).await));

    pki.renew(&b);
    let installed = [("result", "installed")];
    wait_metric(&inbound, "gridmesh_identity_updates_total", &installed, 2.0).await;
    let after = leaf_pem(&text(&openssl_s_client(port, &pki, Some(&client)).await));
    assert!(!before.is_empty() && !after.is_empty());
    assert_ne!(before, after, "the renewed certificate is presented");
    assert_eq!(block.count(), 2, "both connections were served");
}

/// How many certificate sets the sidecar has installed.
async fn installed(proxy: &ProxyProcess) -> f64 {
    let installed = [("result", "installed")];
    metric(proxy, "gridmesh_identity_updates_total", &installed)
        .await
        .unwrap_or_else(|| panic!("no identity updates metric"))
}

/// Waits until the sidecar has installed a certificate set after the
/// `before`th (whatever refusals a half-written rotation caused).
async fn wait_installed(proxy: &ProxyProcess, before: f64) {
    let waited = harness::within_for(Duration::from_secs(10), "an installed update", async {
        while installed(proxy).await <= before {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    waited.await;
}

/// Credentials read from a workload's files, as a third-party client.
fn credentials(files: &WorkloadFiles, bundle: &TrustBundle) -> Credentials {
    let chain = std::fs::read(&files.certificate).unwrap();
    let key = std::fs::read(&files.private_key).unwrap();
    Credentials::from_pem(&chain, &key, bundle).unwrap()
}

/// A root rotation as operators do it: both roots trusted everywhere
/// first, then each workload moved to the new root, then the old root
/// dropped. Traffic through the mesh never fails; fresh handshakes work in
/// the mixed state (a caller on the old root, the block on the new) and,
/// at the end, only the new root is trusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_rotation_with_overlap_fails_no_request() {
    let (old, new) = (TestPki::new(), TestPki::new());
    let (b, caller) = (old.workload("b"), old.workload("client"));
    // A third party's certificate from the old root, in files the
    // rotation leaves alone.
    let caller_then = old.workload("third-party");
    let StrictBlock {
        block: _block,
        inbound,
        port,
    } = strict_block(&b).await;
    let first = outbound(&caller, port, &b.id).await;
    let load = Load::start(first.listener_address("out").unwrap());
    let new_only = || new.ca.bundle().unwrap();

    let both = old.bundle_pem() + &new.bundle_pem();
    for (proxy, files) in [(&inbound, &b), (&first, &caller)] {
        let before = installed(proxy).await;
        TestPki::replace_bundle(files, &both);
        wait_installed(proxy, before).await;
    }

    // The block moves first: callers still on the old root reach it.
    let before = installed(&inbound).await;
    new.renew(&b);
    wait_installed(&inbound, before).await;
    let both_bundle = TrustBundle::from_pem(both.as_bytes()).unwrap();
    let old_caller = || credentials(&caller_then, &both_bundle);
    tls_client(new_only(), old_caller(), port, &b.id)
        .await
        .expect("a caller on the old root, the block on the new");
    let fresh = outbound(&caller, port, &b.id).await;
    let reply = harness::http1_client()
        .connect(fresh.listener_address("out").unwrap())
        .await
        .send(harness::get("block", "/mixed"))
        .await
        .unwrap();
    assert_eq!(
        reply.status(),
        200,
        "a sidecar handshake in the mixed state"
    );

    // Then the caller, then the old root goes.
    let before = installed(&first).await;
    new.renew(&caller);
    wait_installed(&first, before).await;
    let only_new = new.bundle_pem();
    for (proxy, files) in [(&inbound, &b), (&first, &caller)] {
        let before = installed(proxy).await;
        TestPki::replace_bundle(files, &only_new);
        wait_installed(proxy, before).await;
    }
    let refused = tls_client(new_only(), old_caller(), port, &b.id).await;
    assert!(refused.is_err(), "the old root is no longer trusted");
    tls_client(new_only(), credentials(&caller, &new_only()), port, &b.id)
        .await
        .expect("a caller on the new root");
    load.finish_without_failures(20).await;
}

/// The first certificate `openssl s_client -showcerts` printed.
fn leaf_pem(said: &str) -> String {
    said.split("-----BEGIN CERTIFICATE-----")
        .nth(1)
        .and_then(|rest| rest.split("-----END CERTIFICATE-----").next())
        .unwrap_or_default()
        .to_string()
}

// ------------------------------------------------------------ authorization

const POLICIES: &str = r#"
authorizationPolicies:
  - name: deny-admin-to-b
    action: DENY
    rules: [{ peers: [{ exact: "spiffe://gridmesh.test/ns/test/sa/b" }], requests: [{ prefix: /admin }] }]
  - name: deny-unload
    action: DENY
    rules: [{ requests: [{ grpc: { service: inference.GRPCInferenceService, method: RepositoryModelUnload } }] }]
  - name: mesh-callers
    action: ALLOW
    listeners: [in]
    rules:
      - peers: [{ trustDomain: gridmesh.test }]
        requests:
          - { prefix: /public, methods: [GET, HEAD] }
          - { prefix: /admin }
          - { grpc: { service: inference.GRPCInferenceService } }
  - name: probes
    action: ALLOW
    rules: [{ peers: [{ authenticated: false }], requests: [{ path: /health }] }]
"#;

/// A gRPC-shaped request (the recording block answers grpc-status 0).
fn grpc(method: &str) -> http::Request<gridmesh_tests::harness::Body> {
    let mut req = harness::get(
        "block",
        &format!("/inference.GRPCInferenceService/{method}"),
    );
    *req.method_mut() = http::Method::POST;
    let headers = req.headers_mut();
    headers.insert("content-type", "application/grpc".parse().unwrap());
    headers.insert("te", "trailers".parse().unwrap());
    req
}

#[tokio::test]
async fn authorization_matrix_of_identity_method_and_deny_allow() {
    let pki = TestPki::new();
    let (a, b, block_files) = (pki.workload("a"), pki.workload("b"), pki.workload("block"));
    let block = recording_upstream().await;
    let inbound = inbound_with(&block_files, "PERMISSIVE", block.local_addr(), POLICIES).await;
    let port = inbound.listener_address("in").unwrap();
    let via_a = outbound(&a, port, &block_files.id).await;
    let via_b = outbound(&b, port, &block_files.id).await;
    let (a_out, b_out) = (
        via_a.listener_address("out").unwrap(),
        via_b.listener_address("out").unwrap(),
    );

    let http = |method: &str, path: &str| {
        let mut req = harness::get("block", path);
        *req.method_mut() = method.parse().unwrap();
        req
    };
    // (who, request, expected status)
    let cases = [
        ("a", a_out, http("GET", "/public/x"), 200),
        ("a", a_out, http("POST", "/public/x"), 403),
        ("a", a_out, http("GET", "/admin"), 200),
        ("b", b_out, http("GET", "/admin"), 403),
        ("b", b_out, http("HEAD", "/public/x"), 200),
        ("a", a_out, http("GET", "/health"), 403),
        ("plaintext", port, http("GET", "/health"), 200),
        ("plaintext", port, http("GET", "/public/x"), 403),
        ("a", a_out, http("GET", "/elsewhere"), 403),
    ];
    let mut allowed = 0;
    for (who, entry, req, want) in cases {
        let what = format!("{who} {} {}", req.method(), req.uri());
        let reply = http1_client().request(entry, req).await;
        assert_eq!(reply.status, want, "{what}: {}", reply.text());
        if want == 403 {
            assert_eq!(reply.error(), Some("access_denied"), "{what}");
            // Neither the policy nor the reason reaches the caller.
            assert_eq!(reply.text(), "access denied\n", "{what}");
        } else {
            allowed += 1;
        }
    }
    assert_eq!(
        block.count(),
        allowed,
        "denied requests never reach the block"
    );

    // gRPC: allowed by the mesh policy, except the method DENY names.
    let ok = h2c_client().request(a_out, grpc("ModelInfer")).await;
    assert_eq!(ok.header("grpc-status"), Some("0"), "{:?}", ok.headers);
    let denied = h2c_client()
        .request(a_out, grpc("RepositoryModelUnload"))
        .await;
    assert_eq!(denied.status, 200, "trailers-only gRPC error");
    assert_eq!(
        denied.header("grpc-status"),
        Some("7"),
        "{:?}",
        denied.headers
    );
    assert_eq!(denied.error(), Some("access_denied"));

    let denials = |policy: &'static str| [("listener", "in"), ("policy", policy)];
    let count = "gridmesh_authorization_denied_total";
    assert_eq!(
        metric(&inbound, count, &denials("deny-admin-to-b")).await,
        Some(1.0)
    );
    assert_eq!(
        metric(&inbound, count, &denials("deny-unload")).await,
        Some(1.0)
    );
    assert_eq!(metric(&inbound, count, &denials("")).await, Some(4.0));
    wait_logged(&inbound, "policy=deny-admin-to-b").await;
    wait_logged(&inbound, "peer=spiffe://gridmesh.test/ns/test/sa/b").await;
}

#[tokio::test]
async fn bad_authorization_policies_are_refused_with_their_field() {
    let binary = process::binary(GRIDMESH_PROXY).unwrap();
    let yaml = r#"
admin: { address: "127.0.0.1:0" }
listeners: [{ name: in, address: "127.0.0.1:0", routeTable: rt }]
routeTables: [{ name: rt, virtualHosts: [{ name: all, domains: ["*"], routes: [{ name: all, route: { cluster: c } }] }] }]
clusters: [{ name: c }]
authorizationPolicies:
  - name: p
    rules:
      - peers: [{ exact: "https://not-spiffe" }, { prefix: "gridmesh.test/" }, {}]
        requests: [{ methods: ["GE T"], grpc: { service: "" } }]
  - name: p
"#;
    let mut proxy =
        ProxyProcess::spawn(&binary, "bad-policy", ProxyConfig::Yaml(yaml.into())).unwrap();
    let status = proxy.wait_exit(START_TIMEOUT).await.unwrap();
    assert_eq!(status.code(), Some(64));
    let said = process::strip_ansi(&proxy.output());
    for expected in [
        "authorizationPolicy \"p\": rules[0].peers[0].exact",
        "must start with \"spiffe://\"",
        "rules[0].peers[1].prefix: must start with \"spiffe://\"",
        "rules[0].peers[2]: names no peer",
        "rules[0].requests[0].methods[0]: \"GE T\" is not an HTTP method",
        "rules[0].requests[0].grpc.service: must not be empty",
        "duplicate name \"p\"",
    ] {
        assert!(said.contains(expected), "{expected:?} not in\n{said}");
    }
}

/// A PERMISSIVE AUTO listener waits for a client's first byte only as long
/// as its protocol detection timeout (not the 10 s handshake timeout): a
/// protocol where the server speaks first gets its banner promptly.
#[tokio::test]
async fn permissive_forwards_a_server_speaks_first_protocol_promptly() {
    let pki = TestPki::new();
    let b = pki.workload("b");
    let banner_server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let banner_addr = banner_server.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = banner_server.accept().await {
            let _ = stream.write_all(b"220 ready\r\n").await;
        }
    });
    let sidecar = sidecar(
        "permissive-tcp",
        format!(
            r#"{identity}
listeners:
  - {{ name: in, address: "127.0.0.1:0", routeTable: rt, tlsMode: PERMISSIVE, tcpCluster: tcp, protocolDetectionTimeout: 0.2s }}
routeTables:
  - name: rt
    virtualHosts: [{{ name: all, domains: ["*"], routes: [{{ name: all, route: {{ cluster: tcp }} }}] }}]
clusters: [{{ name: tcp }}]
endpoints: [{{ cluster: tcp, endpoints: [{{ address: "{banner_addr}" }}] }}]
"#,
            identity = b.yaml()
        ),
    )
    .await;
    let mut client = TcpStream::connect(sidecar.listener_address("in").unwrap())
        .await
        .unwrap();
    let mut banner = [0u8; 11];
    // Well under the 10 s handshake timeout: 0.2 s for the first byte, 0.2 s
    // for protocol detection, then the banner.
    harness::within_for(
        Duration::from_secs(5),
        "the banner",
        client.read_exact(&mut banner),
    )
    .await
    .unwrap();
    assert_eq!(&banner, b"220 ready\r\n");
}
