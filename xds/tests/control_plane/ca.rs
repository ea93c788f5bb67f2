//! The certificate authority on the xDS port, through real TLS with a real
//! gRPC client: a bootstrap token gets a first certificate for its own
//! identity only, a certificate renews itself, and every other caller is
//! refused with the right status and counted. xDS then needs a certificate.

use std::sync::Arc;
use std::time::Duration;

use gridmesh_identity::ca::certificate_request;
use gridmesh_identity::credentials::pem;
use gridmesh_identity::{Credentials, IdentityStore, SpiffeId, TrustBundle};
use gridmesh_proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use gridmesh_proto::gridmesh::v1::SignRequest;
use gridmesh_proto::gridmesh::v1::certificate_authority_client::CertificateAuthorityClient;
use gridmesh_xds::ControlPlane;
use gridmesh_xds::ca::tokens::Grant;
use gridmesh_xds::ca::{Ca, CaOptions};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use crate::fixtures;
use crate::harness::{http_get, options, write};

const TRUST_DOMAIN: &str = "gridmesh.test";

fn ca_options(dir: &std::path::Path) -> CaOptions {
    CaOptions {
        dir: dir.to_owned(),
        trust_domain: TRUST_DOMAIN.into(),
        default_lifetime: Duration::from_secs(3600),
        max_lifetime: Duration::from_secs(7200),
    }
}

fn control_id() -> SpiffeId {
    SpiffeId::for_workload(TRUST_DOMAIN, "gridmesh-system", "gridmesh-control").unwrap()
}

/// A gRPC channel to `control` over TLS: verifying the control plane's
/// SVID against `store`'s bundle, presenting `store`'s SVID if it holds one.
async fn channel(control: &ControlPlane, store: &Arc<IdentityStore>) -> Channel {
    let config = store.client_config(control_id(), &[b"h2"]);
    let addr = control.xds_addr();
    Endpoint::from_static("http://gridmesh-control")
        .connect_with_connector(tower::service_fn(move |_| {
            let config = config.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(ServerName::IpAddress(addr.ip().into()), tcp)
                    .await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await
        .expect("TLS to the control plane")
}

fn bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn sign_request(id: &SpiffeId) -> (rcgen::KeyPair, SignRequest) {
    let (key, csr) = certificate_request(id).unwrap();
    (
        key,
        SignRequest {
            csr,
            lifetime: Some(pbjson_types::Duration {
                seconds: 600,
                nanos: 0,
            }),
        },
    )
}

#[tokio::test]
async fn a_token_gets_its_own_identity_signed_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in fixtures::base() {
        write(dir.path(), name, &text);
    }
    let ca_dir = dir.path().join("ca");
    let control = ControlPlane::start(gridmesh_xds::Options {
        ca: Some(ca_options(&ca_dir)),
        ..options(dir.path())
    })
    .await
    .unwrap();
    // The workload knows the root (as a sidecar's bootstrap names it) and a
    // token for its namespace and service account.
    let root = std::fs::read(ca_dir.join("ca-cert.pem")).unwrap();
    let bundle = || TrustBundle::from_pem(&root).unwrap();
    let token = Ca::open(ca_options(&ca_dir))
        .unwrap()
        .tokens
        .issue(
            &Grant {
                namespace: "blocks".into(),
                service_account: "classifier".into(),
            },
            Duration::from_secs(600),
        )
        .unwrap();
    let me = SpiffeId::for_workload(TRUST_DOMAIN, "blocks", "classifier").unwrap();
    let store = IdentityStore::new();
    store.install_bundle(bundle());
    let mut ca = CertificateAuthorityClient::new(channel(&control, &store).await);

    // No credential, a forged one, another identity, a malformed CSR.
    let (_, request) = sign_request(&me);
    let refused = ca.sign(request.clone()).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    let forged = token.replace(".classifier.", ".admin.");
    let refused = ca.sign(bearer(request.clone(), &forged)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("not issued by this control plane")
    );
    let admin = SpiffeId::for_workload(TRUST_DOMAIN, "blocks", "admin").unwrap();
    let (_, theirs) = sign_request(&admin);
    let refused = ca.sign(bearer(theirs, &token)).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("the caller is spiffe://gridmesh.test/ns/blocks/sa/classifier")
    );
    let garbled = SignRequest {
        csr: "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
            .into(),
        lifetime: None,
    };
    let refused = ca.sign(bearer(garbled, &token)).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");

    // Its own identity: signed, usable, and as long as asked.
    let (key, request) = sign_request(&me);
    let signed = ca.sign(bearer(request, &token)).await.unwrap().into_inner();
    let chain = signed.certificate_chain.concat();
    let key_pem = pem("PRIVATE KEY", &key.serialize_der());
    let credentials =
        Credentials::from_pem(chain.as_bytes(), key_pem.as_bytes(), &bundle()).unwrap();
    assert_eq!(credentials.id(), &me);
    let lifetime = credentials
        .svid
        .not_after
        .duration_since(credentials.svid.not_before)
        .unwrap();
    assert!(lifetime <= Duration::from_secs(660), "{lifetime:?}");
    assert_eq!(signed.trust_bundle.concat().as_bytes(), root.as_slice());

    // Without a certificate, xDS is refused; with it, a stream opens.
    let mut ads = AggregatedDiscoveryServiceClient::new(channel(&control, &store).await);
    let refused = ads
        .delta_aggregated_resources(tokio_stream::iter(Vec::new()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    store.install(credentials, bundle());
    let mut ads = AggregatedDiscoveryServiceClient::new(channel(&control, &store).await);
    ads.delta_aggregated_resources(tokio_stream::iter(Vec::new()))
        .await
        .expect("a stream for a workload with a certificate");

    // Renewal: the certificate is the credential, no token needed.
    let mut ca = CertificateAuthorityClient::new(channel(&control, &store).await);
    let (_, request) = sign_request(&me);
    ca.sign(request)
        .await
        .expect("renewed with the certificate");

    let (_, metrics) = http_get(control.admin_addr(), "/metrics").await;
    for (result, count) in [
        ("signed", 2),
        ("unauthenticated", 2),
        ("not_yours", 1),
        ("malformed", 1),
    ] {
        let line = format!("gridmesh_control_ca_requests_total{{result=\"{result}\"}} {count}");
        assert!(metrics.contains(&line), "{line} not in\n{metrics}");
    }
    control.shutdown();
    control.stopped().await;
}

#[tokio::test]
async fn a_half_present_ca_directory_fails_the_start_and_says_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in fixtures::base() {
        write(dir.path(), name, &text);
    }
    let ca_dir = dir.path().join("ca");
    std::fs::create_dir_all(&ca_dir).unwrap();
    std::fs::write(ca_dir.join("ca-cert.pem"), "x").unwrap();
    let error = ControlPlane::start(gridmesh_xds::Options {
        ca: Some(ca_options(&ca_dir)),
        ..options(dir.path())
    })
    .await
    .err()
    .unwrap();
    assert!(
        error
            .to_string()
            .contains("has ca-cert.pem but not ca-key.pem"),
        "{error}"
    );
}
