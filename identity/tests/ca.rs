//! The CA's core: CSRs are signed only for the identity the caller proved,
//! malformed ones are refused with the reason, and an operator's
//! intermediate CA issues SVIDs that verify against the operator's root.

use std::time::Duration;

use gridmesh_identity::ca::{CaError, certificate_request};
use gridmesh_identity::credentials::pem;
use gridmesh_identity::{Authority, Credentials, SpiffeId, SvidInfo};
use rcgen::{BasicConstraints, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

const HOUR: Duration = Duration::from_secs(3600);

fn id(text: &str) -> SpiffeId {
    SpiffeId::parse(text).unwrap()
}

fn key_der(key: &KeyPair) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()))
}

#[test]
fn a_csr_for_the_callers_own_identity_becomes_an_svid_it_can_use() {
    let ca = Authority::self_signed("gridmesh.test", HOUR).unwrap();
    let me = id("spiffe://gridmesh.test/ns/blocks/sa/classifier");
    let (key, csr) = certificate_request(&me).unwrap();
    assert!(
        csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"),
        "{csr}"
    );
    let chain = ca.sign_csr(&csr, &me, 10 * HOUR).unwrap();
    let svid = SvidInfo::of_leaf(&chain[0]).unwrap();
    assert_eq!(svid.id, me);
    // Valid for what was asked, from a minute before signing.
    let lifetime = svid.not_after.duration_since(svid.not_before).unwrap();
    assert!(
        lifetime > 10 * HOUR && lifetime <= 10 * HOUR + Duration::from_secs(120),
        "{lifetime:?}"
    );
    Credentials::from_der(chain, key_der(&key), &ca.bundle().unwrap()).unwrap();
}

#[test]
fn a_csr_for_another_identity_is_refused_and_says_whose() {
    let ca = Authority::self_signed("gridmesh.test", HOUR).unwrap();
    let (_, csr) = certificate_request(&id("spiffe://gridmesh.test/ns/blocks/sa/admin")).unwrap();
    let granted = id("spiffe://gridmesh.test/ns/blocks/sa/classifier");
    let error = ca.sign_csr(&csr, &granted, HOUR).unwrap_err();
    assert!(matches!(error, CaError::NotYours { .. }), "{error}");
    assert_eq!(
        error.to_string(),
        "the CSR asks for spiffe://gridmesh.test/ns/blocks/sa/admin, but the caller is spiffe://gridmesh.test/ns/blocks/sa/classifier"
    );
}

#[test]
fn malformed_csrs_are_refused_with_the_reason() {
    let ca = Authority::self_signed("gridmesh.test", HOUR).unwrap();
    let me = id("spiffe://gridmesh.test/ns/a/sa/b");
    let (_, good) = certificate_request(&me).unwrap();
    // A changed character in the base64 body breaks the encoding or the
    // signature.
    let body = good.find('\n').unwrap() + 100;
    let mut tampered = good.clone().into_bytes();
    tampered[body] = if tampered[body] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let mut no_san = rcgen::CertificateParams::default();
    no_san.distinguished_name = rcgen::DistinguishedName::new();
    let key = KeyPair::generate().unwrap();
    let no_san = pem(
        "CERTIFICATE REQUEST",
        no_san.serialize_request(&key).unwrap().der(),
    );
    for (csr, want) in [
        ("", "malformed CSR"),
        ("not a pem at all", "malformed CSR"),
        (tampered.as_str(), "malformed CSR"),
        (no_san.as_str(), "exactly one SPIFFE ID"),
    ] {
        let error = ca.sign_csr(csr, &me, HOUR).unwrap_err().to_string();
        assert!(error.contains(want), "{csr:?}: {error}");
    }
}

#[test]
fn an_operator_intermediate_issues_svids_that_verify_against_the_operator_root() {
    let root = Authority::self_signed("gridmesh.test", 10 * HOUR).unwrap();
    let intermediate_key = KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "gridmesh intermediate");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    gridmesh_identity::ca::validity(&mut params, 5 * HOUR);
    let intermediate = root.sign(&params, &intermediate_key).unwrap();
    let ca = Authority::from_pem(
        "gridmesh.test",
        &pem("CERTIFICATE", &intermediate),
        &pem("PRIVATE KEY", &intermediate_key.serialize_der()),
        &pem("CERTIFICATE", root.certificate()),
    )
    .unwrap();
    let (credentials, _) = ca
        .issue_with_key(&id("spiffe://gridmesh.test/w"), HOUR)
        .unwrap();
    // Leaf, then the intermediate; the root stays out of the chain.
    assert_eq!(credentials.certified.cert.len(), 2);
    assert_eq!(ca.bundle().unwrap().roots(), &[root.certificate().clone()]);

    // A CA certificate that does not chain to the roots it would hand out.
    let stranger = Authority::self_signed("gridmesh.test", HOUR).unwrap();
    let error = Authority::from_pem(
        "gridmesh.test",
        &pem("CERTIFICATE", &intermediate),
        &pem("PRIVATE KEY", &intermediate_key.serialize_der()),
        &pem("CERTIFICATE", stranger.certificate()),
    )
    .err()
    .unwrap();
    assert!(error.to_string().contains("would not verify"), "{error}");
    // A key that is not the CA certificate's.
    let error = Authority::from_pem(
        "gridmesh.test",
        &pem("CERTIFICATE", &intermediate),
        &pem("PRIVATE KEY", &KeyPair::generate().unwrap().serialize_der()),
        &pem("CERTIFICATE", root.certificate()),
    )
    .err()
    .unwrap();
    assert!(error.to_string().contains("would not verify"), "{error}");
}
