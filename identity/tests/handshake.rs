//! Real TLS 1.3 handshakes (rustls on both ends, over an in-memory pipe)
//! between stores holding SVIDs from a real CA: what each side accepts and
//! refuses, and why.

use std::sync::Arc;
use std::time::Duration;

use gridmesh_identity::{
    ALPN_H2, ALPN_HTTP11, Authority, ClientAuth, Credentials, CredentialsError, IdentityStore,
    SpiffeId,
};
use rcgen::KeyPair;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const DAY: Duration = Duration::from_secs(86_400);

fn id(text: &str) -> SpiffeId {
    SpiffeId::parse(text).unwrap()
}

fn store(ca: &Authority, who: &str) -> Arc<IdentityStore> {
    let (credentials, _) = ca.issue_with_key(&id(who), DAY).unwrap();
    let store = IdentityStore::new();
    store.install(credentials, ca.bundle().unwrap());
    store
}

/// Handshakes `client` (expecting `expected`) with `server`; the server's
/// view of the client, or each side's error.
async fn handshake(
    client: &Arc<IdentityStore>,
    expected: &str,
    server: &Arc<IdentityStore>,
) -> Result<(String, Option<Vec<u8>>), String> {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let acceptor =
        TlsAcceptor::from(server.server_config(&[ALPN_H2, ALPN_HTTP11], ClientAuth::Required));
    let connector = TlsConnector::from(client.client_config(id(expected), &[ALPN_H2]));
    let name = ServerName::try_from("gridmesh.invalid").unwrap();
    let (accepted, connected) = tokio::join!(acceptor.accept(b), connector.connect(name, a));
    let accepted = match (accepted, connected) {
        (Ok(accepted), Ok(_)) => accepted,
        (accepted, connected) => {
            let text = |e: Option<std::io::Error>| {
                e.map(
                    |e| match e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
                        Some(tls) => gridmesh_identity::verify::describe(tls),
                        None => e.to_string(),
                    },
                )
                .unwrap_or_default()
            };
            return Err(format!(
                "client: {}; server: {}",
                text(connected.err()),
                text(accepted.err())
            ));
        }
    };
    let (_, session) = accepted.get_ref();
    let peer = session.peer_certificates().unwrap()[0].clone();
    let peer = gridmesh_identity::SvidInfo::of_leaf(&peer).unwrap().id;
    Ok((
        peer.to_string(),
        session.alpn_protocol().map(<[u8]>::to_vec),
    ))
}

#[tokio::test]
async fn both_sides_learn_the_other_s_spiffe_id_and_agree_on_alpn() {
    let ca = Authority::self_signed("gridmesh.test", DAY).unwrap();
    let a = store(&ca, "spiffe://gridmesh.test/ns/blocks/sa/a");
    let b = store(&ca, "spiffe://gridmesh.test/ns/blocks/sa/b");
    let (peer, alpn) = handshake(&a, "spiffe://gridmesh.test/ns/blocks/sa/b", &b)
        .await
        .unwrap();
    assert_eq!(peer, "spiffe://gridmesh.test/ns/blocks/sa/a");
    assert_eq!(alpn.as_deref(), Some(ALPN_H2));
}

#[tokio::test]
async fn a_server_with_another_identity_is_refused_by_the_client() {
    let ca = Authority::self_signed("gridmesh.test", DAY).unwrap();
    let a = store(&ca, "spiffe://gridmesh.test/ns/blocks/sa/a");
    let b = store(&ca, "spiffe://gridmesh.test/ns/blocks/sa/b");
    let error = handshake(&a, "spiffe://gridmesh.test/ns/blocks/sa/c", &b)
        .await
        .unwrap_err();
    assert!(
        error.contains("peer is spiffe://gridmesh.test/ns/blocks/sa/b, expected spiffe://gridmesh.test/ns/blocks/sa/c"),
        "{error}"
    );
}

#[tokio::test]
async fn a_peer_from_another_ca_is_refused_both_ways() {
    let ours = Authority::self_signed("gridmesh.test", DAY).unwrap();
    let theirs = Authority::self_signed("gridmesh.test", DAY).unwrap();
    let a = store(&ours, "spiffe://gridmesh.test/ns/blocks/sa/a");
    let b = store(&theirs, "spiffe://gridmesh.test/ns/blocks/sa/b");
    let error = handshake(&a, "spiffe://gridmesh.test/ns/blocks/sa/b", &b)
        .await
        .unwrap_err();
    // Both CAs have the same name, so the chain is found and its signature fails.
    assert!(error.contains("BadSignature"), "{error}");
    // The server refuses the client too (the client here trusts it).
    let b_trusting_ours = IdentityStore::new();
    b_trusting_ours.install(
        b.credentials().map(|c| clone(&c)).unwrap(),
        gridmesh_identity::TrustBundle::from_der(vec![
            ours.certificate().clone(),
            theirs.certificate().clone(),
        ])
        .unwrap(),
    );
    let error = handshake(
        &b_trusting_ours,
        "spiffe://gridmesh.test/ns/blocks/sa/a",
        &a,
    )
    .await
    .unwrap_err();
    assert!(error.contains("server: BadSignature"), "{error}");
}

fn clone(c: &Credentials) -> Credentials {
    Credentials {
        certified: c.certified.clone(),
        svid: c.svid.clone(),
    }
}

#[tokio::test]
async fn a_bundle_with_two_roots_accepts_both_during_a_root_rotation() {
    let old = Authority::self_signed("gridmesh.test", DAY).unwrap();
    let new = Authority::self_signed("gridmesh.test", DAY).unwrap();
    let overlap = || {
        gridmesh_identity::TrustBundle::from_der(vec![
            old.certificate().clone(),
            new.certificate().clone(),
        ])
        .unwrap()
    };
    let (a, _) = old
        .issue_with_key(&id("spiffe://gridmesh.test/a"), DAY)
        .unwrap();
    let (b, _) = new
        .issue_with_key(&id("spiffe://gridmesh.test/b"), DAY)
        .unwrap();
    let (sa, sb) = (IdentityStore::new(), IdentityStore::new());
    sa.install(a, overlap());
    sb.install(b, overlap());
    handshake(&sa, "spiffe://gridmesh.test/b", &sb)
        .await
        .unwrap();
    handshake(&sb, "spiffe://gridmesh.test/a", &sa)
        .await
        .unwrap();
}

#[tokio::test]
async fn expired_and_not_yet_valid_certificates_are_refused() {
    let ca = Authority::self_signed("gridmesh.test", DAY).unwrap();
    let server = store(&ca, "spiffe://gridmesh.test/server");
    for (shift, want) in [
        (-2 * DAY.as_secs() as i64, "Expired"),
        (DAY.as_secs() as i64, "NotValidYet"),
    ] {
        let mut params = Authority::svid_params(&id("spiffe://gridmesh.test/client"), DAY).unwrap();
        params.not_before += time::Duration::seconds(shift);
        params.not_after += time::Duration::seconds(shift);
        let key = KeyPair::generate().unwrap();
        let leaf = ca.sign(&params, &key).unwrap();
        // Credentials refuse it outright...
        let refused = Credentials::from_der(
            vec![leaf.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            &ca.bundle().unwrap(),
        )
        .unwrap_err();
        assert!(
            matches!(refused, CredentialsError::Untrusted(_)),
            "{refused}"
        );
        // ...and a peer presenting it is refused by the other side.
        let certified = rustls::sign::CertifiedKey::from_der(
            vec![leaf.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            &rustls::crypto::ring::default_provider(),
        )
        .unwrap();
        let client = IdentityStore::new();
        client.install(
            Credentials {
                certified: Arc::new(certified),
                svid: gridmesh_identity::SvidInfo::of_leaf(&leaf).unwrap(),
            },
            ca.bundle().unwrap(),
        );
        let error = handshake(&client, "spiffe://gridmesh.test/server", &server)
            .await
            .unwrap_err();
        assert!(error.contains(want), "{want}: {error}");
    }
}

#[test]
fn certificates_that_are_not_svids_and_mismatched_keys_are_refused() {
    let ca = Authority::self_signed("gridmesh.test", DAY).unwrap();
    let bundle = ca.bundle().unwrap();
    let key = KeyPair::generate().unwrap();
    let der = || PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));

    let mut no_san = Authority::svid_params(&id("spiffe://gridmesh.test/x"), DAY).unwrap();
    no_san.subject_alt_names = vec![rcgen::SanType::DnsName("x.example".try_into().unwrap())];
    let leaf = ca.sign(&no_san, &key).unwrap();
    let error = Credentials::from_der(vec![leaf], der(), &bundle).unwrap_err();
    assert!(error.to_string().contains("no SPIFFE ID"), "{error}");

    let mut two = Authority::svid_params(&id("spiffe://gridmesh.test/x"), DAY).unwrap();
    two.subject_alt_names.push(rcgen::SanType::URI(
        "spiffe://gridmesh.test/y".try_into().unwrap(),
    ));
    let leaf = ca.sign(&two, &key).unwrap();
    let error = Credentials::from_der(vec![leaf], der(), &bundle).unwrap_err();
    assert!(error.to_string().contains("2 URI SANs"), "{error}");

    let other = KeyPair::generate().unwrap();
    let chain = ca
        .issue(&id("spiffe://gridmesh.test/x"), &other, DAY)
        .unwrap();
    let error = Credentials::from_der(chain, der(), &bundle).unwrap_err();
    assert_eq!(error, CredentialsError::KeyMismatch);

    let error = Credentials::from_pem(b"garbage", b"garbage", &bundle).unwrap_err();
    assert_eq!(error, CredentialsError::NoCertificate, "{error}");
    let error = gridmesh_identity::TrustBundle::from_pem(b"").unwrap_err();
    assert_eq!(error, CredentialsError::EmptyBundle);
}
