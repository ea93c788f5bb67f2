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
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateSigningRequestDer, PrivateKeyDer, PrivatePkcs8KeyDer,
};

use crate::credentials::{Credentials, CredentialsError, TrustBundle, pem};
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
    #[error("the CA certificate or key is unusable: {0}")]
    Authority(String),
    #[error("malformed CSR: {0}")]
    MalformedCsr(String),
    #[error("the CSR asks for {asked}, but the caller is {granted}")]
    NotYours { asked: String, granted: SpiffeId },
}

/// A CA key and certificate that sign SVIDs for one trust domain.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    certificate: CertificateDer<'static>,
    /// Certificates between the CA's and the root, sent with every SVID.
    intermediates: Vec<CertificateDer<'static>>,
    /// The roots workloads verify peers against.
    roots: Vec<CertificateDer<'static>>,
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
            roots: vec![certificate.clone()],
            certificate,
            intermediates: Vec::new(),
            trust_domain: trust_domain.into(),
        })
    }

    /// An operator's CA: `chain_pem` holds the CA certificate first (often
    /// an intermediate under the operator's root), then any certificates
    /// above it short of the root; `key_pem` its key; `roots_pem` the roots
    /// workloads are to trust (several while a root is rotated). The CA
    /// certificate must verify against those roots.
    pub fn from_pem(
        trust_domain: &str,
        chain_pem: &str,
        key_pem: &str,
        roots_pem: &str,
    ) -> Result<Authority, CaError> {
        let unusable = |e: &dyn std::fmt::Display| CaError::Authority(e.to_string());
        let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| unusable(&e))?;
        let Some((certificate, intermediates)) = chain.split_first() else {
            return Err(CaError::Authority("no certificate in the CA chain".into()));
        };
        let key = PrivatePkcs8KeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| unusable(&e))
            .and_then(|der| KeyPair::try_from(&der).map_err(|e| unusable(&e)))?;
        let issuer = Issuer::from_ca_cert_der(certificate, key).map_err(|e| unusable(&e))?;
        let roots = TrustBundle::from_pem(roots_pem.as_bytes())?;
        let authority = Authority {
            issuer,
            certificate: certificate.clone(),
            intermediates: intermediates.to_vec(),
            roots: roots.roots().to_vec(),
            trust_domain: trust_domain.into(),
        };
        // What it signs must verify against the roots it hands out: checked
        // once, on a throwaway SVID, the way every workload will check.
        let probe = SpiffeId::parse(&format!("spiffe://{trust_domain}/gridmesh/ca-check"))
            .map_err(|e| unusable(&e))?;
        authority
            .issue_with_key(&probe, Duration::from_secs(60))
            .map_err(|e| CaError::Authority(format!("its certificates would not verify: {e}")))?;
        Ok(authority)
    }

    /// The CA's private key as PEM (PKCS#8), to keep a self-signed CA
    /// across restarts.
    pub fn key_pem(&self) -> String {
        pem("PRIVATE KEY", &self.issuer.key().serialize_der())
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The CA's own certificate: the trust bundle's root for a self-signed CA.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.certificate
    }

    /// The roots workloads verify peers with.
    pub fn bundle(&self) -> Result<TrustBundle, CaError> {
        Ok(TrustBundle::from_der(self.roots.clone())?)
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
        let mut chain = vec![leaf, self.certificate.clone()];
        chain.extend(self.intermediates.iter().cloned());
        // A self-signed CA is the root itself; workloads have it already.
        if self.roots.first() == Some(&self.certificate) && self.intermediates.is_empty() {
            chain.truncate(1);
        }
        Ok(chain)
    }

    /// Signs a PEM CSR for `granted`, the identity the caller proved. The
    /// CSR's signature must verify and its one URI SAN must be `granted`;
    /// only its public key is used — every other field of the certificate
    /// is the CA's choice.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        granted: &SpiffeId,
        lifetime: Duration,
    ) -> Result<Vec<CertificateDer<'static>>, CaError> {
        let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
            .map_err(|e| CaError::MalformedCsr(e.to_string()))?;
        let csr = rcgen::CertificateSigningRequestParams::from_der(&der)
            .map_err(|e| CaError::MalformedCsr(e.to_string()))?;
        let uris: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .filter_map(|san| match san {
                SanType::URI(uri) => Some(uri.as_str().to_string()),
                _ => None,
            })
            .collect();
        match uris.as_slice() {
            [uri] if uri == granted.as_str() => {}
            [uri] => {
                return Err(CaError::NotYours {
                    asked: uri.clone(),
                    granted: granted.clone(),
                });
            }
            other => {
                return Err(CaError::MalformedCsr(format!(
                    "it must name exactly one SPIFFE ID (URI SAN); it names {}",
                    other.len()
                )));
            }
        }
        self.issue(granted, &csr.public_key, lifetime)
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

/// A new key and a PEM CSR for `id`: what a workload sends the CA.
pub fn certificate_request(id: &SpiffeId) -> Result<(KeyPair, String), CaError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(id.as_str().try_into()?)];
    let csr = params.serialize_request(&key)?;
    Ok((key, pem("CERTIFICATE REQUEST", csr.der())))
}

/// Valid from a little before now for `lifetime`.
pub fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = SystemTime::now();
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + lifetime).into();
}
