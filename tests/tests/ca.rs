//! Sidecar processes that get their certificates from the control plane's
//! CA (a real `gridmesh-control serve --ca-dir`): a bootstrap token from
//! `gridmesh-control token`, xDS over TLS once certified, rotation under
//! steady traffic with short-lived certificates, and a CA outage across a
//! renewal.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use gridmesh_tests::harness::upstream;
use gridmesh_tests::load::Load;
use gridmesh_tests::ports::ReservedPort;
use gridmesh_tests::process::{
    self, GRIDMESH_CONTROL, GRIDMESH_PROXY, ManagedProcess, ProxyConfig, ProxyProcess,
};
use gridmesh_tests::prometheus;

const TRUST_DOMAIN: &str = "gridmesh.test";
const CONTROL_ID: &str = "spiffe://gridmesh.test/ns/gridmesh-system/sa/gridmesh-control";
const READY_WITHIN: Duration = Duration::from_secs(30);

/// A control plane with a CA on reserved ports (a restart binds them again).
struct Control {
    config: tempfile::TempDir,
    ca_dir: PathBuf,
    xds: SocketAddr,
    admin: SocketAddr,
    _ports: [ReservedPort; 2],
    process: ManagedProcess,
}

impl Control {
    async fn start() -> Control {
        let config = tempfile::tempdir().unwrap();
        let ca_dir = config.path().join(".ca");
        let ports = [ReservedPort::new(), ReservedPort::new()];
        let process =
            Control::spawn(config.path(), &ca_dir, ports[0].addr(), ports[1].addr()).await;
        Control {
            xds: ports[0].addr(),
            admin: ports[1].addr(),
            config,
            ca_dir,
            _ports: ports,
            process,
        }
    }

    async fn spawn(
        dir: &Path,
        ca_dir: &Path,
        xds: SocketAddr,
        admin: SocketAddr,
    ) -> ManagedProcess {
        let ca = ca_dir.display().to_string();
        let args = ["--ca-dir", &ca, "--trust-domain", TRUST_DOMAIN];
        process::start_control_plane_with(dir, xds, admin, &args)
            .await
            .0
    }

    async fn restart(&mut self) {
        self.process = Control::spawn(self.config.path(), &self.ca_dir, self.xds, self.admin).await;
    }

    /// A bootstrap token for `test/<service_account>`, from the real CLI,
    /// written where a sidecar reads it.
    fn token_file(&self, service_account: &str) -> PathBuf {
        let binary = process::binary(GRIDMESH_CONTROL).unwrap();
        let id = gridmesh_identity::SpiffeId::parse(&id(service_account)).unwrap();
        let token = process::bootstrap_token(&binary, &self.ca_dir, &id).unwrap();
        let path = self.config.path().join(format!(".token-{service_account}"));
        std::fs::write(&path, token).unwrap();
        path
    }
}

fn id(service_account: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/test/sa/{service_account}")
}

/// A sidecar certified by `control` as `test/<name>`, with `resources`.
async fn sidecar(control: &Control, name: &str, lifetime: &str, resources: &str) -> ProxyProcess {
    let yaml = format!(
        r#"admin: {{ address: "127.0.0.1:0" }}
drainTimeout: 2s
xds: {{ address: "{xds}", identity: "{CONTROL_ID}" }}
identity:
  controlPlane:
    spiffeId: "{id}"
    tokenFile: "{token}"
    trustBundle: "{bundle}"
    lifetime: {lifetime}
{resources}"#,
        xds = control.xds,
        id = id(name),
        token = control.token_file(name).display(),
        bundle = control.ca_dir.join("ca-cert.pem").display(),
    );
    let binary = process::binary(GRIDMESH_PROXY).unwrap();
    ProxyProcess::start(&binary, name, ProxyConfig::Yaml(yaml), READY_WITHIN)
        .await
        .unwrap_or_else(|e| panic!("{name}: {e:#}"))
}

/// The block's sidecar (STRICT) and a client's, over mTLS between them.
async fn mesh(
    control: &Control,
    lifetime: &str,
    block: SocketAddr,
) -> (ProxyProcess, ProxyProcess) {
    let route = |cluster: &str| {
        format!(
            r#"routeTables:
  - name: rt
    virtualHosts: [{{ name: all, domains: ["*"], routes: [{{ name: all, route: {{ cluster: {cluster} }} }}] }}]"#
        )
    };
    let inbound = sidecar(
        control,
        "block",
        lifetime,
        &format!(
            r#"listeners: [{{ name: in, address: "127.0.0.1:0", routeTable: rt, tlsMode: STRICT }}]
{}
clusters: [{{ name: local }}]
endpoints: [{{ cluster: local, endpoints: [{{ address: "{block}" }}] }}]
"#,
            route("local")
        ),
    )
    .await;
    let outbound = sidecar(
        control,
        "client",
        lifetime,
        &format!(
            r#"listeners: [{{ name: out, address: "127.0.0.1:0", routeTable: rt }}]
{}
clusters: [{{ name: block, identity: "{}" }}]
endpoints: [{{ cluster: block, endpoints: [{{ address: "{}" }}] }}]
"#,
            route("block"),
            id("block"),
            inbound.listener_address("in").unwrap()
        ),
    )
    .await;
    (inbound, outbound)
}

async fn metric(proxy: &ProxyProcess, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = proxy.admin_get("/metrics").await.unwrap().body;
    prometheus::value(&text, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?}"))
}

async fn installed(proxy: &ProxyProcess) -> f64 {
    metric(
        proxy,
        "gridmesh_identity_updates_total",
        &[("result", "installed")],
    )
    .await
}

async fn until(what: &str, limit: Duration, mut done: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !done().await {
        assert!(start.elapsed() < limit, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_from_the_ca_rotate_under_load_with_no_failed_request() {
    let block = upstream("block").await;
    let control = Control::start().await;
    // Six-second certificates: renewed every 3-4.2 s.
    let (inbound, outbound) = mesh(&control, "6s", block.local_addr()).await;
    let dump = inbound.admin_get("/config_dump").await.unwrap().body;
    assert!(
        dump.contains(&format!("\"spiffeId\": \"{}\"", id("block"))),
        "{dump}"
    );

    let load = Load::start(outbound.listener_address("out").unwrap());
    let (before_in, before_out) = (installed(&inbound).await, installed(&outbound).await);
    let rotating = Instant::now();
    until(
        "two rotations on each side",
        Duration::from_secs(30),
        async || {
            installed(&inbound).await >= before_in + 2.0
                && installed(&outbound).await >= before_out + 2.0
        },
    )
    .await;
    // Renewed after 50-70% of what is left: no faster than every 3 s with
    // 6 s certificates (a schedule counted from the backdated notBefore
    // renewed without pause).
    let most = 3.0 + rotating.elapsed().as_secs_f64() / 2.0;
    for (sidecar, before) in [(&inbound, before_in), (&outbound, before_out)] {
        let renewals = installed(sidecar).await - before;
        assert!(
            renewals <= most,
            "{renewals} renewals in {:?}",
            rotating.elapsed()
        );
    }
    // Traffic goes on after the last rotation too.
    let served = load.ok.load(Ordering::Relaxed);
    until(
        "requests after the rotations",
        Duration::from_secs(15),
        async || load.ok.load(Ordering::Relaxed) >= served + 20,
    )
    .await;
    load.finish_without_failures(20).await;
    // The listener saw mTLS handshakes (new connections under new
    // certificates) and refused none.
    let ok = metric(
        &inbound,
        "gridmesh_downstream_tls_handshakes_total",
        &[("listener", "in"), ("result", "ok")],
    )
    .await;
    assert!(ok >= 1.0);
    let text = inbound.admin_get("/metrics").await.unwrap().body;
    let refused = prometheus::sum(
        &text,
        "gridmesh_downstream_tls_handshakes_total",
        &[("listener", "in")],
    )
    .unwrap()
        - ok;
    assert_eq!(refused, 0.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_outage_across_a_renewal_leaves_the_sidecar_serving_on_its_certificate() {
    let block = upstream("block").await;
    let mut control = Control::start().await;
    let (inbound, outbound) = mesh(&control, "8s", block.local_addr()).await;
    let load = Load::start(outbound.listener_address("out").unwrap());
    let refused = async |proxy: &ProxyProcess| {
        metric(
            proxy,
            "gridmesh_identity_updates_total",
            &[("result", "refused")],
        )
        .await
    };
    let before = installed(&inbound).await;

    control.process.kill().await;
    until(
        "a renewal fails while the CA is down",
        Duration::from_secs(15),
        async || refused(&inbound).await >= 1.0,
    )
    .await;
    // Still ready and serving on the certificate it holds.
    assert_eq!(inbound.admin_get("/ready").await.unwrap().status, 200);
    let served = load.ok.load(Ordering::Relaxed);
    until(
        "requests keep succeeding",
        Duration::from_secs(5),
        async || load.ok.load(Ordering::Relaxed) >= served + 20,
    )
    .await;

    control.restart().await;
    until(
        "renewed once the CA is back",
        Duration::from_secs(15),
        async || installed(&inbound).await > before,
    )
    .await;
    load.finish_without_failures(20).await;
}

/// Authorization policies written to the control plane's directory reach
/// the block's sidecar over xDS and apply to the next request, without a
/// restart; removing them lifts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_policies_from_the_control_plane_apply_without_a_restart() {
    let block = upstream("block").await;
    let control = Control::start().await;
    let (inbound, outbound) = mesh(&control, "3600s", block.local_addr()).await;
    let out = outbound.listener_address("out").unwrap();
    let status = async |path: &str| {
        let mut conn = gridmesh_tests::harness::http1_client().connect(out).await;
        let reply = conn.send(gridmesh_tests::harness::get("block", path)).await;
        reply.map(|r| r.status().as_u16()).unwrap_or(0)
    };
    let write = |text: &str| {
        let aside = control.config.path().join(".policies.yaml.new");
        std::fs::write(&aside, text).unwrap();
        std::fs::rename(&aside, control.config.path().join("policies.yaml")).unwrap();
    };
    assert_eq!(status("/admin/reset").await, 200);

    let deny = format!(
        r#"authorizationPolicies:
  - name: deny-admin
    listeners: [in]
    action: DENY
    rules: [{{ peers: [{{ exact: "{}" }}], requests: [{{ prefix: /admin }}] }}]
"#,
        id("client")
    );
    write(&deny);
    until(
        "the DENY policy applies",
        Duration::from_secs(10),
        async || status("/admin/reset").await == 403,
    )
    .await;
    assert_eq!(status("/models").await, 200, "only /admin is denied");
    let denied = [("listener", "in"), ("policy", "deny-admin")];
    assert!(metric(&inbound, "gridmesh_authorization_denied_total", &denied).await >= 1.0);

    // An ALLOW policy for another caller: everything else is denied too.
    write(&format!(
        r#"{deny}  - name: only-other
    listeners: [in]
    rules: [{{ peers: [{{ exact: "{}" }}] }}]
"#,
        id("other")
    ));
    until(
        "the ALLOW policy applies",
        Duration::from_secs(10),
        async || status("/models").await == 403,
    )
    .await;

    std::fs::remove_file(control.config.path().join("policies.yaml")).unwrap();
    until(
        "the policies are lifted",
        Duration::from_secs(10),
        async || status("/admin/reset").await == 200,
    )
    .await;
    assert_eq!(status("/models").await, 200);
}
