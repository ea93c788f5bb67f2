//! Signing X.509 SVIDs: the certificate authority's core, which the control
//! plane's CA service (CSR over gRPC) and the tests' certificate factories
//! share. An SVID here is what the SPIFFE X.509-SVID standard asks for: one
//! URI SAN (the SPIFFE ID), not a CA, digitalSignature key usage, and
//! usable as a TLS client and server certificate (a sidecar is both).

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::credentials::{Credentials, CredentialsError, TrustBundle};
use crate::spiffe::SpiffeId;

/// Issued certificates start this long before they were signed, so a peer
/// whose clock is a little behind accepts them at once.
const BACKDATE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot sign: {0}")]
    Sign(#[from] rcgen::Error),
    #[error("{0}")]
    Credentials(#[from] CredentialsError),
}

/// A CA key and certificate that sign SVIDs for one trust domain.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    certificate: CertificateDer<'static>,
    trust_domain: String,
}

impl Authority {
    /// A new self-signed root (local use, tests): an ECDSA P-256 key and a
    /// CA certificate valid for `lifetime`.
    pub fn self_signed(trust_domain: &str, lifetime: Duration) -> Result<Authority, CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, trust_domain);
        params.distinguished_name.push(
            DnType::CommonName,
            format!("gridmesh CA for {trust_domain}"),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names =
            vec![SanType::URI(format!("spiffe://{trust_domain}").try_into()?)];
        validity(&mut params, lifetime);
        let certificate = params.self_signed(&key)?.der().clone();
        Ok(Authority {
            issuer: Issuer::new(params, key),
            certificate,
            trust_domain: trust_domain.into(),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The CA's own certificate: the trust bundle's root for a self-signed CA.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.certificate
    }

    /// A bundle holding only this CA's certificate.
    pub fn bundle(&self) -> Result<TrustBundle, CaError> {
        Ok(TrustBundle::from_der(vec![self.certificate.clone()])?)
    }

    /// The parameters of an SVID for `id`, valid from now for `lifetime`,
    /// for callers that sign something unusual (tests of refusals).
    pub fn svid_params(id: &SpiffeId, lifetime: Duration) -> Result<CertificateParams, CaError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(id.as_str().try_into()?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, lifetime);
        Ok(params)
    }

    /// Signs `params` for the holder of `public_key`.
    pub fn sign(
        &self,
        params: &CertificateParams,
        public_key: &impl PublicKeyData,
    ) -> Result<CertificateDer<'static>, CaError> {
        Ok(params.signed_by(public_key, &self.issuer)?.der().clone())
    }

    /// The chain a workload presents for an SVID of `id` over `public_key`:
    /// the leaf, then this CA's certificate.
    pub fn issue(
        &self,
        id: &SpiffeId,
        public_key: &impl PublicKeyData,
        lifetime: Duration,
    ) -> Result<Vec<CertificateDer<'static>>, CaError> {
        let leaf = self.sign(&Authority::svid_params(id, lifetime)?, public_key)?;
        Ok(vec![leaf, self.certificate.clone()])
    }

    /// A new key and an SVID for it, checked as a workload would check
    /// them: for local use and tests (a sidecar makes its own key and sends
    /// a CSR instead).
    pub fn issue_with_key(
        &self,
        id: &SpiffeId,
        lifetime: Duration,
    ) -> Result<(Credentials, KeyPair), CaError> {
        let key = KeyPair::generate()?;
        let chain = self.issue(id, &key, lifetime)?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let credentials = Credentials::from_der(chain, der, &self.bundle()?)?;
        Ok((credentials, key))
    }
}

/// Valid from a little before now for `lifetime`.
pub fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = SystemTime::now();
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + lifetime).into();
}
