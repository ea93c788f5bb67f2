//! What a workload holds: its SVID (certificate chain and private key) and
//! the trust bundle it verifies peers against, read from PEM and checked
//! as a whole before anything serves with them.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, TrustAnchor, UnixTime};
use rustls::sign::CertifiedKey;

use crate::spiffe::SpiffeId;
use crate::svid::{SvidError, SvidInfo};
use crate::verify::{self, Usage};

/// Why credentials or a bundle were not taken. Each says which part is
/// wrong, so the log line is the whole diagnosis.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    #[error("the certificate file has no PEM certificate")]
    NoCertificate,
    #[error("the certificate file is not valid PEM: {0}")]
    CertificatePem(String),
    #[error("the private key is unreadable: {0}")]
    Key(String),
    #[error("the private key does not belong to the certificate")]
    KeyMismatch,
    #[error("the certificate is not an SVID: {0}")]
    NotAnSvid(#[from] SvidError),
    #[error("the trust bundle has no PEM certificate")]
    EmptyBundle,
    #[error("the trust bundle is not valid PEM: {0}")]
    BundlePem(String),
    #[error("trust bundle certificate {index} cannot be a trust anchor: {reason}")]
    BadRoot { index: usize, reason: String },
    #[error("the certificate does not verify against the trust bundle: {0}")]
    Untrusted(String),
}

/// The roots peers' certificates must chain to. Several roots are normal
/// while a root is being rotated: certificates from the old and the new one
/// are both accepted until the old one is dropped from the bundle.
#[derive(Debug)]
pub struct TrustBundle {
    roots: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
}

impl TrustBundle {
    pub fn from_pem(pem: &[u8]) -> Result<TrustBundle, CredentialsError> {
        let roots = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CredentialsError::BundlePem(e.to_string()))?;
        TrustBundle::from_der(roots)
    }

    pub fn from_der(roots: Vec<CertificateDer<'static>>) -> Result<TrustBundle, CredentialsError> {
        if roots.is_empty() {
            return Err(CredentialsError::EmptyBundle);
        }
        let anchors = roots
            .iter()
            .enumerate()
            .map(|(index, root)| {
                webpki::anchor_from_trusted_cert(root)
                    .map(|anchor| anchor.to_owned())
                    .map_err(|e| CredentialsError::BadRoot {
                        index,
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TrustBundle { roots, anchors })
    }

    pub fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }

    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The bundle as PEM, as it is handed to workloads and tools.
    pub fn to_pem(&self) -> String {
        self.roots
            .iter()
            .map(|der| pem("CERTIFICATE", der))
            .collect()
    }
}

/// A workload's SVID with its key, ready to present.
#[derive(Debug)]
pub struct Credentials {
    pub certified: Arc<CertifiedKey>,
    pub svid: SvidInfo,
}

impl Credentials {
    /// Reads a PEM chain (leaf first, then any intermediates) and a PEM
    /// private key (PKCS#8, SEC1 or PKCS#1), and checks that they belong
    /// together, that the leaf is an SVID, and that the chain verifies
    /// against `bundle` now (a workload must not start presenting a
    /// certificate its peers will refuse).
    pub fn from_pem(
        chain: &[u8],
        key: &[u8],
        bundle: &TrustBundle,
    ) -> Result<Credentials, CredentialsError> {
        let chain = CertificateDer::pem_slice_iter(chain)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CredentialsError::CertificatePem(e.to_string()))?;
        if chain.is_empty() {
            return Err(CredentialsError::NoCertificate);
        }
        let key =
            PrivateKeyDer::from_pem_slice(key).map_err(|e| CredentialsError::Key(e.to_string()))?;
        Credentials::from_der(chain, key, bundle)
    }

    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        bundle: &TrustBundle,
    ) -> Result<Credentials, CredentialsError> {
        let Some(leaf) = chain.first() else {
            return Err(CredentialsError::NoCertificate);
        };
        let svid = SvidInfo::of_leaf(leaf)?;
        let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => CredentialsError::KeyMismatch,
            other => CredentialsError::Key(other.to_string()),
        })?;
        verify::chain(
            &certified.cert[0],
            &certified.cert[1..],
            bundle,
            Usage::Either,
            UnixTime::now(),
        )
        .map_err(|e| CredentialsError::Untrusted(e.to_string()))?;
        Ok(Credentials {
            certified: Arc::new(certified),
            svid,
        })
    }

    pub fn id(&self) -> &SpiffeId {
        &self.svid.id
    }

    /// The chain as PEM, leaf first.
    pub fn chain_pem(&self) -> String {
        self.certified
            .cert
            .iter()
            .map(|der| pem("CERTIFICATE", der))
            .collect()
    }
}

/// The one crypto provider gridmesh uses (ring).
pub fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// PEM text of one DER object (RFC 7468: base64 in lines of 64).
pub fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let mut text = format!("-----BEGIN {label}-----\n");
    for line in encoded.as_bytes().chunks(64) {
        // Base64 is ASCII, so every chunk is valid UTF-8.
        text.push_str(&String::from_utf8_lossy(line));
        text.push('\n');
    }
    text.push_str(&format!("-----END {label}-----\n"));
    text
}
