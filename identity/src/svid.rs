//! The SPIFFE ID an X.509 certificate carries: an X.509 SVID has exactly
//! one URI SAN, and it is the workload's SPIFFE ID.

use std::time::{Duration, SystemTime};

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::spiffe::{SCHEME, SpiffeId, SpiffeIdError};

/// Why a certificate is not an X.509 SVID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    #[error("not a DER X.509 certificate: {0}")]
    Encoding(String),
    #[error("the certificate has no SPIFFE ID (no spiffe:// URI SAN)")]
    NoSpiffeId,
    #[error("the certificate has {0} URI SANs; an SVID has exactly one")]
    SeveralUris(usize),
    #[error("the certificate's URI SAN is not a valid SPIFFE ID: {0}")]
    InvalidId(#[from] SpiffeIdError),
    #[error("the certificate is a CA certificate, which an SVID leaf may not be")]
    IsCa,
}

/// What gridmesh reads off an SVID leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvidInfo {
    pub id: SpiffeId,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl SvidInfo {
    /// Reads a leaf certificate. Its signature and chain are not checked
    /// here (see [`crate::verify`]).
    pub fn of_leaf(der: &[u8]) -> Result<SvidInfo, SvidError> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| SvidError::Encoding(e.to_string()))?;
        if cert.is_ca() {
            return Err(SvidError::IsCa);
        }
        let san = cert
            .subject_alternative_name()
            .map_err(|e| SvidError::Encoding(e.to_string()))?;
        let uris: Vec<&str> = san
            .iter()
            .flat_map(|san| san.value.general_names.iter())
            .filter_map(|name| match name {
                GeneralName::URI(uri) => Some(*uri),
                _ => None,
            })
            .collect();
        let id = match uris.as_slice() {
            [] => return Err(SvidError::NoSpiffeId),
            [uri] if !uri.starts_with(SCHEME) => return Err(SvidError::NoSpiffeId),
            [uri] => SpiffeId::parse(uri)?,
            several => return Err(SvidError::SeveralUris(several.len())),
        };
        let time = |t: x509_parser::time::ASN1Time| {
            let secs = t.timestamp();
            if secs >= 0 {
                SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
            } else {
                SystemTime::UNIX_EPOCH
            }
        };
        Ok(SvidInfo {
            id,
            not_before: time(cert.validity().not_before),
            not_after: time(cert.validity().not_after),
        })
    }
}
