//! Bootstrap configuration through the real `gridmesh-proxy` binary: an
//! invalid file makes the proxy exit with status 64 before it binds
//! anything, naming the file, the resource and the field of every problem;
//! the shipped examples load and serve.

use std::ffi::OsStr;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use gridmesh_proto::config::identity::Source;
use gridmesh_tests::ports::{RefusingPort, ReservedPort};
use gridmesh_tests::process::{
    self, GRIDMESH_CONTROL, GRIDMESH_PROXY, ManagedProcess, ProxyConfig, ProxyProcess,
};

/// The status the proxy exits with on invalid configuration (EX_USAGE).
const EXIT_INVALID_CONFIG: i32 = 64;
const EXIT_WITHIN: Duration = Duration::from_secs(20);
const READY_WITHIN: Duration = Duration::from_secs(30);

/// A bootstrap with one listener, route table, cluster and endpoint; each
/// case breaks one thing with `edit`. `{admin}` and `{listen}` are filled
/// in with ports.
const BASE: &str = r#"
admin: { address: "{admin}" }
drainTimeout: 1s
listeners:
  - name: in
    address: "{listen}"
    routeTable: t
routeTables:
  - name: t
    virtualHosts:
      - name: all
        domains: ["*"]
        routes:
          - name: r
            match: { prefix: / }
            route: { cluster: c }
clusters:
  - name: c
    connectTimeout: 0.25s
endpoints:
  - cluster: c
    endpoints: [{ address: "127.0.0.1:9" }]
"#;

struct Rejected {
    output: String,
    path: PathBuf,
}

/// Runs the proxy on `yaml`, expects it to exit with status 64, and checks
/// it bound nothing first: its ports are held by the test (bound, without
/// SO_REUSEADDR), so a proxy that tried to bind before validating would
/// fail to bind and exit otherwise, naming the port in use.
async fn rejected(yaml: &str) -> Rejected {
    let (admin, listen) = (RefusingPort::new(), RefusingPort::new());
    let yaml = yaml
        .replace("{admin}", &admin.addr().to_string())
        .replace("{listen}", &listen.addr().to_string());
    let binary = process::binary(GRIDMESH_PROXY).expect("the proxy builds");
    let mut proxy =
        ProxyProcess::spawn(&binary, "invalid-config", ProxyConfig::Yaml(yaml.clone())).unwrap();
    let status = proxy.wait_exit(EXIT_WITHIN).await.unwrap();
    let output = proxy.output();
    assert_eq!(
        status.code(),
        Some(EXIT_INVALID_CONFIG),
        "expected exit status 64 for:\n{yaml}\noutput:\n{output}"
    );
    assert!(
        !output.contains("in use"),
        "the proxy tried to bind before validating:\n{output}"
    );
    let path = proxy.config_path().to_owned();
    let path_text = path.display().to_string();
    assert!(
        output.contains(&format!("invalid configuration in {path_text}")),
        "the error names no file:\n{output}"
    );
    Rejected { output, path }
}

impl Rejected {
    /// One problem line, `<file>: <resource>: <field>: <message...>`.
    fn names(&self, resource: &str, field: &str, message: &str) -> &Self {
        let prefix = format!("{}: {resource}: {field}: ", self.path.display());
        assert!(
            self.output
                .lines()
                .any(|line| line.trim_start().starts_with(&prefix) && line.contains(message)),
            "no line starting with {prefix:?} and containing {message:?} in:\n{}",
            self.output
        );
        self
    }

    /// For parse errors, which name the file and the position: the
    /// offending text must appear too.
    fn mentions(&self, words: &[&str]) -> &Self {
        for word in words {
            assert!(
                self.output.contains(word),
                "{word:?} is not mentioned in:\n{}",
                self.output
            );
        }
        self
    }
}

#[tokio::test]
async fn the_unmodified_base_is_valid() {
    // Guards the cases below: each must fail because of its own edit.
    let listen = ReservedPort::new();
    let yaml = BASE
        .replace("{admin}", "127.0.0.1:0")
        .replace("{listen}", &listen.addr().to_string());
    let binary = process::binary(GRIDMESH_PROXY).unwrap();
    let mut proxy = ProxyProcess::start(&binary, "base", ProxyConfig::Yaml(yaml), READY_WITHIN)
        .await
        .unwrap();
    assert!(TcpStream::connect(listen.addr()).is_ok());
    let status = proxy.terminate(Duration::from_secs(10)).await.unwrap();
    assert_eq!(status.code(), Some(0), "{}", proxy.output());
}

#[tokio::test]
async fn unknown_field() {
    let yaml = BASE.replace("connectTimeout: 0.25s", "conectTimeout: 0.25s");
    rejected(&yaml)
        .await
        .mentions(&["clusters[0]", "unknown field `conectTimeout`", "line 19"]);
}

#[tokio::test]
async fn bad_duration() {
    let yaml = BASE.replace("connectTimeout: 0.25s", "connectTimeout: 250ms");
    rejected(&yaml)
        .await
        .mentions(&["clusters[0].connectTimeout", "0.25s", "line 19"]);
}

#[tokio::test]
async fn negative_duration() {
    let yaml = BASE.replace("connectTimeout: 0.25s", "connectTimeout: -1s");
    rejected(&yaml)
        .await
        .names("cluster \"c\"", "connectTimeout", "negative");
}

#[tokio::test]
async fn zero_timeout_on_a_route() {
    let yaml = BASE.replace(
        "route: { cluster: c }",
        "route: { cluster: c, timeouts: { idle: 0s } }",
    );
    rejected(&yaml).await.names(
        "routeTable \"t\"",
        "virtualHosts[0].routes[0].route.timeouts.idle",
        "greater than zero",
    );
}

/// A duration the YAML parser takes but no deadline can hold (it would
/// overflow `Instant + d` on the request path).
#[tokio::test]
async fn duration_beyond_the_proto_range() {
    let yaml = BASE.replace(
        "route: { cluster: c }",
        "route: { cluster: c, timeouts: { maxDuration: 9223372036854775807s } }",
    );
    rejected(&yaml).await.names(
        "routeTable \"t\"",
        "virtualHosts[0].routes[0].route.timeouts.maxDuration",
        "at most",
    );
}

#[tokio::test]
async fn unknown_enum() {
    let yaml = BASE.replace("connectTimeout: 0.25s", "lbPolicy: FASTEST");
    rejected(&yaml)
        .await
        .mentions(&["clusters[0].lbPolicy", "FASTEST", "line 19"]);
}

#[tokio::test]
async fn duplicate_names() {
    let yaml = BASE.replace(
        "clusters:\n  - name: c\n",
        "clusters:\n  - name: c\n  - name: d\n  - name: c\n",
    );
    rejected(&yaml)
        .await
        .names("cluster[2]", "name", "duplicate cluster name \"c\"");
}

#[tokio::test]
async fn listener_refers_to_a_missing_route_table() {
    let yaml = BASE.replace("routeTable: t", "routeTable: nope");
    rejected(&yaml).await.names(
        "listener \"in\"",
        "routeTable",
        "no route table named \"nope\"",
    );
}

#[tokio::test]
async fn route_to_a_missing_cluster() {
    let yaml = BASE.replace("route: { cluster: c }", "route: { cluster: nope }");
    rejected(&yaml).await.names(
        "routeTable \"t\"",
        "virtualHosts[0].routes[0].route.cluster",
        "no cluster named \"nope\"",
    );
}

#[tokio::test]
async fn invalid_regex() {
    let yaml = BASE.replace("match: { prefix: / }", "match: { regex: \"/v[0-9+\" }");
    rejected(&yaml).await.names(
        "routeTable \"t\"",
        "virtualHosts[0].routes[0].match.regex",
        "invalid regex",
    );
}

#[tokio::test]
async fn weights_all_zero() {
    let yaml = BASE.replace(
        "route: { cluster: c }",
        "route: { weightedClusters: { clusters: [{ name: c, weight: 0 }, { name: c }] } }",
    );
    rejected(&yaml).await.names(
        "routeTable \"t\"",
        "virtualHosts[0].routes[0].route.weightedClusters.clusters",
        "all be zero",
    );
}

#[tokio::test]
async fn ring_hash_without_a_header() {
    let yaml = BASE.replace("connectTimeout: 0.25s", "lbPolicy: RING_HASH");
    rejected(&yaml)
        .await
        .names("cluster \"c\"", "ringHash.header", "required");
}

#[tokio::test]
async fn bad_endpoint_address() {
    let yaml = BASE.replace("127.0.0.1:9", "127.0.0.1");
    rejected(&yaml)
        .await
        .names("endpoints \"c\"", "endpoints[0].address", "port");
    let yaml = BASE.replace("127.0.0.1:9", "not_a host:80");
    rejected(&yaml)
        .await
        .names("endpoints \"c\"", "endpoints[0].address", "not_a host");
}

#[tokio::test]
async fn duplicate_listener_address() {
    let yaml = BASE.replace(
        "listeners:\n",
        "listeners:\n  - { name: in2, address: \"{listen}\", routeTable: t }\n",
    );
    rejected(&yaml)
        .await
        .names("listener \"in\"", "address", "already used");
}

#[tokio::test]
async fn listener_on_the_admin_address() {
    let yaml = BASE.replace("address: \"{listen}\"", "address: \"{admin}\"");
    rejected(&yaml)
        .await
        .names("listener \"in\"", "address", "already used");
}

#[tokio::test]
async fn every_problem_is_reported_at_once() {
    let yaml = BASE
        .replace("routeTable: t", "routeTable: nope")
        .replace("connectTimeout: 0.25s", "connectTimeout: -2s")
        .replace("route: { cluster: c }", "route: { cluster: gone }");
    rejected(&yaml)
        .await
        .names("listener \"in\"", "routeTable", "nope")
        .names("cluster \"c\"", "connectTimeout", "negative")
        .names(
            "routeTable \"t\"",
            "virtualHosts[0].routes[0].route.cluster",
            "gone",
        );
}

#[tokio::test]
async fn not_yaml_at_all() {
    rejected("listeners: [ {name: in\n")
        .await
        .mentions(&["line "]);
}

#[tokio::test]
async fn missing_file() {
    let binary = process::binary(GRIDMESH_PROXY).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.yaml");
    let mut proxy = ManagedProcess::spawn(
        "missing-file",
        &binary,
        [OsStr::new("--config"), path.as_os_str()],
    )
    .unwrap();
    let status = proxy.wait_exit(EXIT_WITHIN).await.unwrap();
    assert_eq!(status.code(), Some(EXIT_INVALID_CONFIG));
    assert!(proxy.output().contains(&path.display().to_string()));
}

/// The examples run as written: `gridmesh-control` serves `examples/mesh/`
/// with its CA, and every example sidecar gets its certificate, gets ready,
/// binds the listener it asks for, and dumps the resources it got over xDS.
/// Fixed ports are moved to free ones and the demo's token and bundle
/// paths to a directory of the test's own (the examples share both with
/// the demo); nothing else changes.
#[tokio::test]
async fn examples_load_and_serve() {
    let examples = process::workspace_root().join("examples");
    let served = tempfile::tempdir().unwrap();
    let mut moved = std::collections::HashMap::new();
    let mut reserved = Vec::new();
    for entry in std::fs::read_dir(examples.join("mesh")).unwrap() {
        let path = entry.unwrap().path();
        let mut resources = process::parse_bootstrap(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        for listener in &mut resources.listeners {
            let port = ReservedPort::new();
            let addr = port.addr();
            reserved.push(port);
            listener.address = addr.to_string();
            moved.insert(listener.name.clone(), addr);
        }
        // JSON is YAML: the proto3 JSON mapping serialises back.
        let yaml = serde_json::to_string_pretty(&resources).unwrap();
        std::fs::write(served.path().join(path.file_name().unwrap()), yaml).unwrap();
    }
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let ca_dir = served.path().join(".ca");
    let ca = ca_dir.display().to_string();
    let args = ["--ca-dir", &ca, "--trust-domain", "gridmesh.local"];
    let (mut control, xds, _) =
        process::start_control_plane_with(served.path(), any, any, &args).await;
    let control_binary = process::binary(GRIDMESH_CONTROL).unwrap();

    let mut files: Vec<PathBuf> = std::fs::read_dir(&examples)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no examples in {}", examples.display());
    let binary = process::binary(GRIDMESH_PROXY).unwrap();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut bootstrap =
            process::parse_bootstrap(&text).unwrap_or_else(|e| panic!("{}: {e:#}", file.display()));
        bootstrap.admin.get_or_insert_default().address = "127.0.0.1:0".into();
        let source = bootstrap
            .xds
            .as_mut()
            .expect("example sidecars follow the control plane");
        source.address = xds.to_string();
        let wanted = source.listeners.clone();
        let name = file.file_stem().unwrap().to_string_lossy().into_owned();
        let Some(Source::ControlPlane(cp)) =
            bootstrap.identity.as_mut().and_then(|i| i.source.as_mut())
        else {
            panic!("{name}: example sidecars get their identity from the CA");
        };
        // The token the demo would write: for the identity's namespace and
        // service account.
        let id = gridmesh_identity::SpiffeId::parse(&cp.spiffe_id).unwrap();
        let token = served.path().join(format!(".{name}.token"));
        let text = process::bootstrap_token(&control_binary, &ca_dir, &id).unwrap();
        std::fs::write(&token, text).unwrap();
        cp.token_file = token.display().to_string();
        cp.trust_bundle = ca_dir.join("ca-cert.pem").display().to_string();
        let yaml = serde_json::to_string_pretty(&bootstrap).unwrap();
        let mut proxy =
            ProxyProcess::start(&binary, name.clone(), ProxyConfig::Yaml(yaml), READY_WITHIN)
                .await
                .unwrap_or_else(|e| panic!("{}: {e:#}", file.display()));
        for listener in &wanted {
            let addr = moved[listener];
            assert!(
                TcpStream::connect(addr).is_ok(),
                "{name}: {listener} on {addr} not bound"
            );
        }
        let dump = proxy.admin_get("/config_dump").await.unwrap();
        assert_eq!(dump.status, 200);
        let dump: serde_json::Value = serde_json::from_str(&dump.body).unwrap();
        let served_listeners: Vec<&str> = dump["resources"]["listener"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                assert_eq!(l["source"], format!("xds:{xds}"), "{name}: {l}");
                l["name"].as_str().unwrap()
            })
            .collect();
        let mut served_listeners = served_listeners;
        served_listeners.sort_unstable();
        let mut wanted = wanted;
        wanted.sort_unstable();
        assert_eq!(served_listeners, wanted, "{name}");
        let status = proxy.terminate(Duration::from_secs(15)).await.unwrap();
        assert_eq!(status.code(), Some(0), "{name}: {}", proxy.output());
    }
    control.terminate(Duration::from_secs(15)).await.unwrap();
}
