//! Incremental xDS: what is sent, when, and in which order.

use std::collections::{HashMap, HashSet};

use gridmesh_proto::discovery::DeltaDiscoveryResponse;

use gridmesh_proto::discovery::DeltaDiscoveryRequest;

use crate::fixtures::{self, CLUSTERS};
use crate::harness::*;

async fn started() -> Harness {
    Harness::start(&fixtures::as_refs(&fixtures::base())).await
}

#[tokio::test]
async fn wildcard_initial_push_goes_in_push_order() {
    let h = started().await;
    let mut client = h.delta("node-1").await;
    // Subscribed in reverse: the control plane still sends C, E, L, R.
    for url in [R, L, E, C] {
        client.subscribe(url, &[]);
    }
    let responses = client.recv_acked(4).await;
    let urls: Vec<&str> = responses.iter().map(|r| r.type_url.as_str()).collect();
    assert_eq!(urls, [C, E, L, R]);
    assert_eq!(names(&responses[0]), ["a", "b"]);
    assert_eq!(names(&responses[1]), ["a", "b"]);
    assert_eq!(names(&responses[2]), ["outbound"]);
    assert_eq!(names(&responses[3]), ["outbound"]);
    let version = h.status().await.config.version;
    for r in &responses {
        assert_eq!(r.system_version_info, version);
        assert!(r.removed_resources.is_empty());
        assert!(r.resources.iter().all(|r| r.version.len() == 16));
    }
}

#[tokio::test]
async fn nothing_is_pushed_again_without_a_change() {
    let h = started().await;
    let mut client = h.delta("node-1").await;
    client.subscribe_all();
    client.recv_acked(4).await;
    h.settled("node-1").await;
    client.expect_quiet().await;
    // Rewriting the same bytes, or only a comment, changes no resource.
    // The reload of the comment proves both writes were read.
    h.write("clusters.yaml", CLUSTERS);
    let status = h
        .write_and_wait_loaded(
            "routes.yaml",
            &format!("# a comment\n{}", fixtures::routes("a")),
        )
        .await;
    assert_eq!(status.config.files.len(), 2);
    client.expect_quiet().await;
    let status = h.status().await;
    let c = type_view(client_view(&status, "node-1"), "cluster");
    assert_eq!(
        (c.held, c.acked, c.pending_nonce.as_ref()),
        (Some(2), Some(2), None)
    );
}

#[tokio::test]
async fn a_change_pushes_only_the_changed_resources() {
    let h = started().await;
    let mut client = h.delta("node-1").await;
    client.subscribe_all();
    let initial = client.recv_acked(4).await;
    h.write(
        "clusters.yaml",
        &fixtures::clusters_with_a_at("10.0.0.9:8080"),
    );
    let r = client.recv().await;
    assert_eq!((r.type_url.as_str(), names(&r)), (E, vec!["a"]));
    assert!(r.removed_resources.is_empty());
    let old = initial[1]
        .resources
        .iter()
        .find(|r| r.name == "a")
        .map(|r| &r.version);
    assert_ne!(Some(&r.resources[0].version), old);
    client.ack(&r);
    h.settled("node-1").await;
    client.expect_quiet().await;
}

#[tokio::test]
async fn removals_follow_upserts_in_reverse_push_order() {
    let all = |clusters: &str, extra_listener: bool, cluster: &str| {
        let mut text = clusters.to_string() + &fixtures::routes(cluster);
        if extra_listener {
            text = text.replace(
                "routeTables:",
                "  - name: extra\n    address: 0.0.0.0:15002\n    direction: INBOUND\n    routeTable: outbound\nrouteTables:",
            );
        }
        text
    };
    let h = Harness::start(&[("all.yaml", &all(CLUSTERS, true, "b"))]).await;
    let mut client = h.delta("node-1").await;
    client.subscribe_all();
    client.recv_acked(4).await;
    // Cluster b goes, c comes, the route moves from b to c, and the extra
    // listener goes: a client applying in order never routes to a cluster
    // it lacks.
    let clusters = CLUSTERS
        .replace("name: b", "name: c")
        .replace("cluster: b", "cluster: c");
    h.write("all.yaml", &all(&clusters, false, "c"));
    let mut sequence = Vec::new();
    for r in client.recv_acked(6).await {
        let change = if r.removed_resources.is_empty() {
            format!("+{}", names(&r).join(","))
        } else {
            assert!(
                r.resources.is_empty(),
                "upserts and removals in one response: {r:?}"
            );
            format!("-{}", removed(&r).join(","))
        };
        sequence.push((r.type_url.clone(), change));
    }
    let expected = [
        (C, "+c"),
        (E, "+c"),
        (R, "+outbound"),
        (L, "-extra"),
        (E, "-b"),
        (C, "-b"),
    ]
    .map(|(t, c)| (t.to_string(), c.to_string()));
    assert_eq!(sequence, expected);
    h.settled("node-1").await;
    client.expect_quiet().await;
}

#[tokio::test]
async fn a_named_subscription_gets_only_its_names_and_absent_ones_as_removed() {
    let h = started().await;
    let mut client = h.delta("node-1").await;
    client.subscribe(C, &["a", "nope"]);
    // Upserts and removals travel in separate responses, removals last.
    let r = client.recv_acked(2).await;
    assert_eq!((names(&r[0]), removed(&r[0])), (vec!["a"], vec![]));
    assert_eq!((names(&r[1]), removed(&r[1])), (vec![], vec!["nope"]));
    // b is not subscribed; "nope" was already answered.
    h.write_and_wait_loaded("clusters.yaml", &fixtures::clusters_with_timeout("b", "2s"))
        .await;
    client.expect_quiet().await;
    h.write("clusters.yaml", &fixtures::clusters_with_timeout("a", "2s"));
    let r = client.recv().await;
    assert_eq!((names(&r), removed(&r)), (vec!["a"], vec![]));
}

#[tokio::test]
async fn subscriptions_change_mid_stream() {
    let h = started().await;
    let mut client = h.delta("node-1").await;
    client.subscribe(C, &["a"]);
    let r = client.recv().await;
    assert_eq!(names(&r), ["a"]);
    client.ack(&r);
    client.subscribe(C, &["b"]);
    let r = client.recv().await;
    assert_eq!(names(&r), ["b"], "only the newly subscribed resource");
    client.ack(&r);
    client.unsubscribe(C, &["a"]);
    h.status_until("the unsubscription", |s| {
        type_view(client_view(s, "node-1"), "cluster")
            .subscribed
            .names
            == ["b"]
    })
    .await;
    h.write_and_wait_loaded("clusters.yaml", &fixtures::clusters_with_timeout("a", "2s"))
        .await;
    client.expect_quiet().await;
    h.write("clusters.yaml", &fixtures::clusters_with_timeout("b", "2s"));
    let r = client.recv().await;
    assert_eq!(names(&r), ["b"]);
    let status = h.status().await;
    let c = type_view(client_view(&status, "node-1"), "cluster");
    assert_eq!(
        (c.subscribed.wildcard, c.subscribed.names.clone()),
        (false, vec!["b".to_string()])
    );
}

#[tokio::test]
async fn a_nack_is_recorded_shown_and_not_pushed_again() {
    let h = started().await;
    let mut client = h.delta("node-1").await;
    client.subscribe_all();
    client.recv_acked(4).await;
    h.write("clusters.yaml", &fixtures::clusters_with_timeout("a", "2s"));
    let r = client.recv().await;
    assert_eq!((r.type_url.as_str(), names(&r)), (C, vec!["a"]));
    client.nack(&r, "cluster a: connect timeout too long");
    let status = h
        .status_until("the NACK", |s| {
            type_view(client_view(s, "node-1"), "cluster")
                .last_nack
                .is_some()
        })
        .await;
    client.expect_quiet().await;
    let c = type_view(client_view(&status, "node-1"), "cluster");
    let nack = c.last_nack.as_ref().expect("NACK");
    assert_eq!((nack.nonce.as_str(), nack.code), (r.nonce.as_str(), 3));
    assert_eq!(nack.message, "cluster a: connect timeout too long");
    assert!(c.rejected && c.pending_nonce.is_none());
    let (_, metrics) = http_get(h.control.admin_addr(), "/metrics").await;
    assert!(
        metrics.contains("gridmesh_control_nacks_total{type=\"cluster\"} 1"),
        "{metrics}"
    );
    // The next change is pushed again.
    h.write("clusters.yaml", &fixtures::clusters_with_timeout("a", "3s"));
    let r = client.recv().await;
    assert_eq!(names(&r), ["a"]);
    client.ack(&r);
    let status = h
        .status_until("the ACK", |s| {
            type_view(client_view(s, "node-1"), "cluster")
                .pending_nonce
                .is_none()
        })
        .await;
    assert!(!type_view(client_view(&status, "node-1"), "cluster").rejected);
}

#[tokio::test]
async fn a_stale_nonce_neither_acks_nor_nacks() {
    let h = started().await;
    let mut client = h.delta("node-1").await;
    client.subscribe(C, &[]);
    let first = client.recv().await;
    client.ack(&first);
    h.write("clusters.yaml", &fixtures::clusters_with_timeout("a", "2s"));
    let second = client.recv().await;
    // Answered already, never sent, not a nonce of this stream's.
    let stream = second.nonce.split_once('-').expect("nonce").0;
    client.nack(&first, "answered already");
    client.nack_nonce(C, &format!("{stream}-999"), "never sent");
    client.nack_nonce(C, "nonsense", "not a nonce");
    // Requests are handled in order: once E is answered, so were those.
    client.subscribe(E, &[]);
    let e = client.recv().await;
    assert_eq!(e.type_url, E);
    let status = h.status().await;
    let c = type_view(client_view(&status, "node-1"), "cluster");
    assert_eq!(c.pending_nonce.as_ref(), Some(&second.nonce));
    assert_eq!(c.last_nack, None);
    assert!(!c.rejected);
    assert_eq!(c.acked, Some(2), "as of the ACK of the first response");
    let (_, metrics) = http_get(h.control.admin_addr(), "/metrics").await;
    assert!(
        !metrics.contains("gridmesh_control_nacks_total"),
        "{metrics}"
    );
    client.ack(&second);
    let status = h
        .status_until("the ACK", |s| {
            type_view(client_view(s, "node-1"), "cluster")
                .pending_nonce
                .is_none()
        })
        .await;
    assert_eq!(
        type_view(client_view(&status, "node-1"), "cluster").acked,
        Some(2)
    );
}

/// Receives responses of one type, unanswered, until they carry `n`
/// resources in all.
async fn recv_resources(client: &mut DeltaClient, n: usize) -> Vec<DeltaDiscoveryResponse> {
    let mut responses = Vec::new();
    let mut got = 0;
    while got < n {
        let r = client.recv().await;
        got += r.resources.len();
        responses.push(r);
    }
    responses
}

const BIG: usize = 6000;
const CLUSTERS_IN_MANY: usize = 60;

async fn started_large() -> Harness {
    let yaml = fixtures::many_endpoints(CLUSTERS_IN_MANY, 60, BIG);
    Harness::start(&[("clusters.yaml", &yaml)]).await
}

#[tokio::test]
async fn a_large_type_arrives_in_bounded_responses() {
    use prost::Message as _;
    let h = started_large().await;
    let mut client = h.delta("node-1").await;
    client.subscribe(E, &[]);
    let responses = recv_resources(&mut client, CLUSTERS_IN_MANY + 1).await;
    for r in &responses {
        client.ack(r);
    }
    h.settled("node-1").await;
    client.expect_quiet().await;
    assert!(responses.len() >= 3, "{} responses", responses.len());
    let mut seen = HashSet::new();
    let mut nonces = HashSet::new();
    for r in &responses {
        assert_eq!(r.type_url, E);
        assert!(r.removed_resources.is_empty());
        assert!(nonces.insert(r.nonce.clone()), "nonce {} twice", r.nonce);
        for resource in &r.resources {
            assert!(
                seen.insert(resource.name.clone()),
                "{} twice",
                resource.name
            );
        }
        let bytes: usize = r.resources.iter().map(|x| x.encoded_len()).sum();
        if r.resources.iter().any(|x| x.name == "big") {
            assert_eq!(names(r), ["big"], "a resource over the bound goes alone");
            assert!(bytes > 32 * 1024);
        } else {
            assert!(bytes <= 32 * 1024, "{bytes} bytes in one response");
        }
    }
    assert_eq!(seen.len(), CLUSTERS_IN_MANY + 1);
    let status = h
        .status_until("every ACK", |s| {
            type_view(client_view(s, "node-1"), "endpoints")
                .pending_nonce
                .is_none()
        })
        .await;
    let e = type_view(client_view(&status, "node-1"), "endpoints");
    assert_eq!(
        (e.held, e.acked, e.last_nonce_sent.as_ref()),
        (
            Some(CLUSTERS_IN_MANY + 1),
            Some(CLUSTERS_IN_MANY + 1),
            responses.last().map(|r| &r.nonce)
        )
    );
}

#[tokio::test]
async fn a_nack_of_an_earlier_response_is_recorded() {
    let h = started_large().await;
    let mut client = h.delta("node-1").await;
    client.subscribe(E, &[]);
    let responses = recv_resources(&mut client, CLUSTERS_IN_MANY + 1).await;
    assert!(responses.len() >= 2);
    // The first response is rejected, the later ones accepted.
    client.nack(&responses[0], "endpoints: bad address");
    for r in &responses[1..] {
        client.ack(r);
    }
    let status = h
        .status_until("the answers", |s| {
            type_view(client_view(s, "node-1"), "endpoints")
                .pending_nonce
                .is_none()
        })
        .await;
    let e = type_view(client_view(&status, "node-1"), "endpoints");
    let nack = e.last_nack.as_ref().expect("the NACK is recorded");
    assert_eq!(
        (nack.nonce.as_str(), nack.message.as_str()),
        (responses[0].nonce.as_str(), "endpoints: bad address")
    );
    assert!(
        e.rejected,
        "later responses of the same push do not clear it"
    );
    let (_, metrics) = http_get(h.control.admin_addr(), "/metrics").await;
    assert!(
        metrics.contains("gridmesh_control_nacks_total{type=\"endpoints\"} 1"),
        "{metrics}"
    );
    // What was sent counts as held: nothing is sent again...
    client.expect_quiet().await;
    // ...until a change, whose ACK clears the rejection.
    let yaml = fixtures::many_endpoints(CLUSTERS_IN_MANY, 60, BIG)
        .replace("10.0.0.1:8080", "10.0.0.1:9090");
    h.write("clusters.yaml", &yaml);
    let r = client.recv().await;
    assert_eq!(names(&r), ["c-0"]);
    client.ack(&r);
    let status = h
        .status_until("the ACK", |s| {
            !type_view(client_view(s, "node-1"), "endpoints").rejected
        })
        .await;
    let e = type_view(client_view(&status, "node-1"), "endpoints");
    assert_eq!(
        e.last_nack.as_ref().map(|n| n.nonce.as_str()),
        Some(responses[0].nonce.as_str()),
        "kept as history"
    );
}

#[tokio::test]
async fn a_reconnecting_client_gets_only_what_changed() {
    let h = started().await;
    let mut first = h.delta("node-1").await;
    first.subscribe_all();
    let initial = first.recv_acked(4).await;
    drop(first);
    let held: Vec<HashMap<String, String>> = initial
        .iter()
        .map(|r| {
            r.resources
                .iter()
                .map(|r| (r.name.clone(), r.version.clone()))
                .collect()
        })
        .collect();
    let reconnect = |client: &mut DeltaClient| {
        for (url, versions) in [C, E, L, R].into_iter().zip(&held) {
            client.send(DeltaDiscoveryRequest {
                type_url: url.into(),
                initial_resource_versions: versions.clone(),
                ..Default::default()
            });
        }
    };

    // Same config: nothing resent, one empty response per type.
    let mut same = h.delta("node-2").await;
    reconnect(&mut same);
    for r in same.recv_acked(4).await {
        assert!(
            r.resources.is_empty() && r.removed_resources.is_empty(),
            "{r:?}"
        );
    }
    h.settled("node-2").await;
    same.expect_quiet().await;

    // a changed, b is gone (routes use a only).
    let clusters = "clusters:\n  - name: a\n    connectTimeout: 2s\nendpoints:\n  - cluster: a\n    endpoints: [{ address: 10.0.0.1:8080 }]\n";
    h.write("clusters.yaml", clusters);
    h.status_until("the new config", |s| s.config.resources["cluster"] == 1)
        .await;
    let mut changed = h.delta("node-3").await;
    reconnect(&mut changed);
    let got: Vec<(String, Vec<String>, Vec<String>)> = changed
        .recv_acked(5)
        .await
        .iter()
        .map(|r| {
            let n = names(r).iter().map(|s| s.to_string()).collect();
            let d = removed(r).iter().map(|s| s.to_string()).collect();
            (r.type_url.clone(), n, d)
        })
        .collect();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        got,
        [
            (C.to_string(), s(&["a"]), s(&[])),
            (L.to_string(), s(&[]), s(&[])),
            (R.to_string(), s(&[]), s(&[])),
            (E.to_string(), s(&[]), s(&["b"])),
            (C.to_string(), s(&[]), s(&["b"])),
        ]
    );
    h.settled("node-3").await;
    changed.expect_quiet().await;
}

#[tokio::test]
async fn an_unknown_type_is_ignored_and_shown() {
    let h = started().await;
    let mut client = h.delta("node-1").await;
    client.subscribe("type.googleapis.com/gridmesh.v1.NoSuchThing", &[]);
    client.subscribe(C, &[]);
    let r = client.recv().await;
    assert_eq!(r.type_url, C, "the stream stays up and serves known types");
    client.ack(&r);
    h.settled("node-1").await;
    client.expect_quiet().await;
    let status = h.status().await;
    let view = client_view(&status, "node-1");
    assert_eq!(
        view.unknown_types,
        ["type.googleapis.com/gridmesh.v1.NoSuchThing"]
    );
    assert_eq!(view.types.len(), 1);
}

#[tokio::test]
async fn each_client_has_its_own_state() {
    let h = started().await;
    let mut all = h.delta("node-all").await;
    all.subscribe_all();
    all.recv_acked(4).await;
    let mut only_b = h.delta("node-b").await;
    only_b.subscribe(C, &["b"]);
    let r = only_b.recv().await;
    only_b.nack(&r, "no thanks");

    h.write("clusters.yaml", &fixtures::clusters_with_timeout("a", "2s"));
    let r = all.recv().await;
    assert_eq!(names(&r), ["a"]);
    only_b.expect_quiet().await;

    let status = h
        .status_until("both clients", |s| {
            type_view(client_view(s, "node-b"), "cluster")
                .last_nack
                .is_some()
        })
        .await;
    let a = client_view(&status, "node-all");
    let b = client_view(&status, "node-b");
    assert_eq!(
        (a.protocol, b.protocol),
        (gridmesh_xds::Protocol::Delta, gridmesh_xds::Protocol::Delta)
    );
    assert_eq!(a.types.len(), 4);
    assert_eq!(
        type_view(a, "cluster").pending_nonce.as_ref(),
        Some(&r.nonce)
    );
    assert_eq!(type_view(a, "cluster").last_nack, None);
    assert_eq!(b.types.len(), 1);
    assert_eq!(type_view(b, "cluster").held, Some(1));
    assert_eq!(
        type_view(b, "cluster")
            .last_nack
            .as_ref()
            .map(|n| n.message.as_str()),
        Some("no thanks")
    );
    assert_eq!(a.cluster, "blocks");
    assert!(
        a.peer
            .as_deref()
            .is_some_and(|p| p.starts_with("127.0.0.1:"))
    );
}
