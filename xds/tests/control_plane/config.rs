//! The config directory: merged files, rejected changes, startup.

use gridmesh_tests::ports::RefusingPort;

use crate::fixtures::{self, CLUSTERS};
use crate::harness::*;

/// Waits for a rejection and returns its problems as
/// (file, resource, field, message).
async fn rejected(h: &Harness) -> Vec<(String, String, String, String)> {
    let status = h
        .status_until("a rejected change", |s| s.config.last_error.is_some())
        .await;
    let problems = status.config.last_error.expect("error").problems;
    problems
        .into_iter()
        .map(|p| (p.file, p.resource, p.field, p.message))
        .collect()
}

/// The served config is still the base one: a new client gets it.
async fn still_serves_base(h: &Harness, version: &str, node: &str) {
    assert_eq!(h.status().await.config.version, version);
    let mut client = h.delta(node).await;
    client.subscribe_all();
    let r = client.recv_acked(4).await;
    assert_eq!(names(&r[0]), ["a", "b"]);
    assert_eq!(r[3].system_version_info, version);
}

#[tokio::test]
async fn invalid_changes_are_reported_and_the_last_good_config_keeps_serving() {
    let h = Harness::start(&fixtures::as_refs(&fixtures::base())).await;
    let version = h.status().await.config.version;
    let mut watching = h.delta("watching").await;
    watching.subscribe_all();
    watching.recv_acked(4).await;

    // A bad regex.
    h.write(
        "routes.yaml",
        &fixtures::routes("a").replace("prefix: /", "regex: \"/a(\""),
    );
    let p = rejected(&h).await;
    assert_eq!(p.len(), 1, "{p:?}");
    let (file, resource, field, message) = &p[0];
    assert_eq!(
        (file.as_str(), resource.as_str()),
        ("routes.yaml", "routeTable \"outbound\"")
    );
    assert_eq!(field, "virtualHosts[0].routes[0].match.regex");
    assert!(message.contains("invalid regex"), "{message}");
    watching.expect_quiet().await;
    still_serves_base(&h, &version, "new-1").await;

    // A route to a cluster that does not exist.
    h.write("routes.yaml", &fixtures::routes("a"));
    h.status_until("the fix", |s| s.config.last_error.is_none())
        .await;
    h.write("routes.yaml", &fixtures::routes("missing"));
    let p = rejected(&h).await;
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(
        (p[0].0.as_str(), p[0].1.as_str()),
        ("routes.yaml", "routeTable \"outbound\"")
    );
    assert_eq!(p[0].2, "virtualHosts[0].routes[0].route.cluster");
    assert!(p[0].3.contains("missing"), "{p:?}");
    h.write("routes.yaml", &fixtures::routes("a"));
    h.status_until("the fix", |s| s.config.last_error.is_none())
        .await;

    // The same cluster in two files: blamed on the second, naming the first.
    h.write("more.yaml", "clusters:\n  - name: b\n");
    let p = rejected(&h).await;
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(
        (p[0].0.as_str(), p[0].1.as_str(), p[0].2.as_str()),
        ("more.yaml", "cluster \"b\"", "name")
    );
    assert!(
        p[0].3.contains("duplicate") && p[0].3.contains("clusters.yaml"),
        "{p:?}"
    );
    h.remove("more.yaml");
    h.status_until("the fix", |s| s.config.last_error.is_none())
        .await;

    // Malformed YAML, and an unknown field.
    h.write("broken.yaml", "clusters: [\n");
    h.write("typo.json", "{\"clusterz\": []}");
    let p = rejected(&h).await;
    let files: Vec<&str> = p.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(files, ["broken.yaml", "typo.json"], "{p:?}");
    assert!(
        p.iter().all(|p| p.1 == "file" && p.2.starts_with("line ")),
        "{p:?}"
    );
    assert!(p[1].3.contains("clusterz"), "{p:?}");
    still_serves_base(&h, &version, "new-2").await;
    watching.expect_quiet().await;

    let (_, metrics) = http_get(h.control.admin_addr(), "/metrics").await;
    assert!(
        metrics.contains("gridmesh_control_config_reloads_total{result=\"failed\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gridmesh_control_config_problems 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "gridmesh_control_config_info{{version=\"{version}\"}} 1"
        )),
        "{metrics}"
    );

    // Fixed: served again.
    h.remove("broken.yaml");
    h.remove("typo.json");
    h.write("clusters.yaml", &fixtures::clusters_with_timeout("a", "2s"));
    let r = watching.recv().await;
    assert_eq!(names(&r), ["a"]);
    let status = h.status().await;
    assert!(status.config.last_error.is_none());
    assert_ne!(status.config.version, version);
}

#[tokio::test]
async fn an_empty_directory_serves_empty_sets() {
    let h = Harness::start(&[]).await;
    let mut client = h.delta("node-1").await;
    client.subscribe_all();
    for r in client.recv_acked(4).await {
        assert!(r.resources.is_empty() && r.removed_resources.is_empty());
    }
    h.write("clusters.yaml", CLUSTERS);
    let c = client.recv().await;
    let e = client.recv().await;
    assert_eq!((c.type_url.as_str(), names(&c)), (C, vec!["a", "b"]));
    assert_eq!((e.type_url.as_str(), names(&e)), (E, vec!["a", "b"]));
}

#[tokio::test]
async fn an_invalid_directory_fails_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "routes.yaml", &fixtures::routes("missing"));
    // Held ports: binding before validating would fail with "in use" instead.
    let (xds, admin) = (RefusingPort::new(), RefusingPort::new());
    let options = gridmesh_xds::Options {
        xds_addr: xds.addr(),
        admin_addr: admin.addr(),
        ..options(dir.path())
    };
    let Err(e) = gridmesh_xds::ControlPlane::start(options).await else {
        panic!("started with an invalid directory");
    };
    let text = e.to_string();
    assert!(
        text.contains(
            "routes.yaml: routeTable \"outbound\": virtualHosts[0].routes[0].route.cluster"
        ),
        "{text}"
    );
}

/// A Kubernetes ConfigMap mount: visible files are symlinks into `..data`,
/// itself a symlink swapped atomically to a new timestamped directory.
#[tokio::test]
async fn a_configmap_style_mount_is_followed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let generation = |name: &str, clusters: &str| {
        let path = root.join(name);
        std::fs::create_dir(&path).expect("mkdir");
        std::fs::write(path.join("clusters.yaml"), clusters).expect("write");
    };
    generation("..2026_01", CLUSTERS);
    std::os::unix::fs::symlink("..2026_01", root.join("..data")).expect("symlink");
    std::os::unix::fs::symlink("..data/clusters.yaml", root.join("clusters.yaml"))
        .expect("symlink");
    let control = gridmesh_xds::ControlPlane::start(options(root))
        .await
        .expect("starts");
    let mut client = DeltaClient::connect(control.xds_addr(), "node-1").await;
    client.subscribe(C, &[]);
    let r = client.recv().await;
    assert_eq!(names(&r), ["a", "b"]);
    client.ack(&r);

    generation("..2026_02", "clusters:\n  - name: a\n");
    std::os::unix::fs::symlink("..2026_02", root.join("..data_tmp")).expect("symlink");
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).expect("swap");
    let r = client.recv().await;
    assert_eq!(removed(&r), ["b"]);
}

#[tokio::test]
async fn authorization_policies_are_served_as_their_own_kind_and_a_bad_one_is_blamed_on_its_file() {
    use gridmesh_proto::config::AuthorizationPolicy;
    use gridmesh_proto::resource::Kind;
    use prost::Message;

    const POLICY: &str = r#"
authorizationPolicies:
  - name: deny-admin
    listeners: [block-a-inbound]
    action: DENY
    rules: [{ requests: [{ prefix: /admin }] }]
"#;
    let h = Harness::start(&[("policies.yaml", POLICY)]).await;
    let version = h.status().await.config.version;
    let mut client = h.delta("node-1").await;
    let url = Kind::AuthorizationPolicy.type_url();
    client.subscribe(url, &[]);
    let r = client.recv_acked(1).await.remove(0);
    assert_eq!(r.type_url, url);
    assert_eq!(names(&r), ["deny-admin"]);
    let any = r.resources[0].resource.as_ref().expect("a resource");
    assert_eq!(any.type_url, url);
    let policy = AuthorizationPolicy::decode(any.value.as_ref()).unwrap();
    assert_eq!(policy.listeners, ["block-a-inbound"]);
    assert_eq!(policy.rules.len(), 1);

    // A peer that is not a SPIFFE ID: refused, located, nothing pushed.
    h.write(
        "policies.yaml",
        &POLICY.replace("requests:", "peers: [{ exact: \"block-b\" }], requests:"),
    );
    let p = rejected(&h).await;
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(
        (p[0].0.as_str(), p[0].1.as_str(), p[0].2.as_str()),
        (
            "policies.yaml",
            "authorizationPolicy \"deny-admin\"",
            "rules[0].peers[0].exact"
        )
    );
    client.expect_quiet().await;
    assert_eq!(h.status().await.config.version, version);

    // Removed: the removal is pushed.
    h.remove("policies.yaml");
    let r = client.recv().await;
    assert_eq!(r.removed_resources, ["deny-admin"]);
}
