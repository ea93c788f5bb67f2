//! State-of-the-world xDS: full sets per type, versions, ACK/NACK.

use crate::fixtures;
use crate::harness::*;

async fn started() -> Harness {
    Harness::start(&fixtures::as_refs(&fixtures::base())).await
}

#[tokio::test]
async fn wildcard_gets_full_sets_in_push_order_and_full_state_updates() {
    let h = started().await;
    let mut client = h.sotw("node-1").await;
    for url in [R, L, E, C] {
        client.request(url, &[]);
    }
    let mut initial = Vec::new();
    for _ in 0..4 {
        let r = client.recv().await;
        client.ack(&r, &[]);
        initial.push(r);
    }
    let urls: Vec<&str> = initial.iter().map(|r| r.type_url.as_str()).collect();
    assert_eq!(urls, [C, E, L, R]);
    assert_eq!(sotw_names(&initial[0]), ["a", "b"]);
    assert_eq!(sotw_names(&initial[3]), ["outbound"]);
    h.settled("node-1").await;
    client.expect_quiet().await;

    h.write(
        "clusters.yaml",
        &fixtures::clusters_with_a_at("10.0.0.9:8080"),
    );
    let r = client.recv().await;
    assert_eq!(r.type_url, E, "only the changed type");
    assert_eq!(sotw_names(&r), ["a", "b"], "the whole set, not the change");
    assert_ne!(r.version_info, initial[1].version_info);
    client.ack(&r, &[]);
    let status = h
        .status_until("the ACK", |s| {
            type_view(client_view(s, "node-1"), "endpoints")
                .acked_version
                .as_ref()
                == Some(&r.version_info)
        })
        .await;
    client.expect_quiet().await;
    let view = client_view(&status, "node-1");
    assert_eq!(view.protocol, gridmesh_xds::Protocol::Sotw);
    assert_eq!(
        type_view(view, "cluster").acked_version.as_ref(),
        Some(&initial[0].version_info)
    );
}

#[tokio::test]
async fn a_named_subscription_gets_its_names_only() {
    let h = started().await;
    let mut client = h.sotw("node-1").await;
    client.request(C, &["b"]);
    let r = client.recv().await;
    assert_eq!(sotw_names(&r), ["b"]);
    client.ack(&r, &["b"]);
    h.write_and_wait_loaded("clusters.yaml", &fixtures::clusters_with_timeout("a", "2s"))
        .await;
    client.expect_quiet().await;
    h.write("clusters.yaml", &fixtures::clusters_with_timeout("b", "2s"));
    let r2 = client.recv().await;
    assert_eq!(sotw_names(&r2), ["b"]);
    assert_ne!(r2.version_info, r.version_info);
    client.ack(&r2, &["b"]);
    // Changing the subscription answers with the new set.
    client.ack(&r2, &["a", "b"]);
    let r3 = client.recv().await;
    assert_eq!(sotw_names(&r3), ["a", "b"]);
}

#[tokio::test]
async fn a_nack_is_recorded_and_not_pushed_again() {
    let h = started().await;
    let mut client = h.sotw("node-1").await;
    client.request(C, &[]);
    let first = client.recv().await;
    client.ack(&first, &[]);
    h.write("clusters.yaml", &fixtures::clusters_with_timeout("a", "2s"));
    let r = client.recv().await;
    client.nack(&r, &first.version_info, "bad cluster a");
    let status = h
        .status_until("the NACK", |s| {
            type_view(client_view(s, "node-1"), "cluster")
                .last_nack
                .is_some()
        })
        .await;
    client.expect_quiet().await;
    let c = type_view(client_view(&status, "node-1"), "cluster");
    assert_eq!(c.acked_version.as_ref(), Some(&first.version_info));
    let nack = c.last_nack.as_ref().expect("NACK");
    assert_eq!(
        (nack.nonce.as_str(), nack.message.as_str()),
        (r.nonce.as_str(), "bad cluster a")
    );
    assert!(c.rejected);
}

#[tokio::test]
async fn a_stale_nonce_is_not_an_ack() {
    let h = started().await;
    let mut client = h.sotw("node-1").await;
    client.request(C, &[]);
    let first = client.recv().await;
    h.write("clusters.yaml", &fixtures::clusters_with_timeout("a", "2s"));
    let second = client.recv().await;
    client.ack(&first, &[]);
    client.request(E, &[]);
    let e = client.recv().await;
    assert_eq!(e.type_url, E);
    let status = h.status().await;
    let c = type_view(client_view(&status, "node-1"), "cluster");
    assert_eq!(c.acked_version, None);
    assert_eq!(c.pending_nonce.as_ref(), Some(&second.nonce));
}
