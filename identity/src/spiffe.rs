//! SPIFFE IDs (`spiffe://<trust-domain>/<path>`), validated as the SPIFFE ID
//! standard says, and the one a certificate carries (an X.509 SVID has
//! exactly one URI SAN, and it is the workload's SPIFFE ID).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

const SCHEME: &str = "spiffe://";
/// The standard's limit on a whole SPIFFE ID (URI SAN length in practice).
const MAX_LEN: usize = 2048;
/// The standard's limit on a trust domain name.
const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// A valid SPIFFE ID. Cheap to clone: the text is shared.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId(Arc<str>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("{0:?} is not a SPIFFE ID: it must start with \"spiffe://\"")]
    Scheme(String),
    #[error("{0:?} is not a SPIFFE ID: it has no trust domain")]
    NoTrustDomain(String),
    #[error(
        "{0:?} is not a SPIFFE ID: a trust domain has lower-case letters, digits, '.', '-' and '_' only (no port, no user)"
    )]
    TrustDomain(String),
    #[error(
        "{0:?} is not a SPIFFE ID: path segments are non-empty, not '.' or '..', of letters, digits, '.', '-' and '_'"
    )]
    Path(String),
    #[error("a SPIFFE ID is at most {MAX_LEN} bytes; this one is {0}")]
    TooLong(usize),
}

impl SpiffeId {
    pub fn parse(text: &str) -> Result<SpiffeId, SpiffeIdError> {
        if text.len() > MAX_LEN {
            return Err(SpiffeIdError::TooLong(text.len()));
        }
        let Some(rest) = text.strip_prefix(SCHEME) else {
            return Err(SpiffeIdError::Scheme(text.into()));
        };
        let (trust_domain, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if trust_domain.is_empty() {
            return Err(SpiffeIdError::NoTrustDomain(text.into()));
        }
        if !valid_trust_domain(trust_domain) {
            return Err(SpiffeIdError::TrustDomain(text.into()));
        }
        // "spiffe://td" names the trust domain itself; a trailing '/' or an
        // empty segment is not allowed.
        if !path.is_empty() && !path[1..].split('/').all(valid_segment) {
            return Err(SpiffeIdError::Path(text.into()));
        }
        Ok(SpiffeId(text.into()))
    }

    /// The ID Kubernetes workloads get: `spiffe://<td>/ns/<ns>/sa/<sa>`.
    pub fn for_workload(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<SpiffeId, SpiffeIdError> {
        SpiffeId::parse(&format!(
            "{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}"
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared text, for contexts that keep it (connection context, logs).
    pub fn as_arc(&self) -> &Arc<str> {
        &self.0
    }

    pub fn trust_domain(&self) -> &str {
        let rest = &self.0[SCHEME.len()..];
        &rest[..rest.find('/').unwrap_or(rest.len())]
    }

    /// The path, with its leading '/' ("" for a trust domain's own ID).
    pub fn path(&self) -> &str {
        &self.0[SCHEME.len() + self.trust_domain().len()..]
    }
}

fn valid_trust_domain(td: &str) -> bool {
    td.len() <= MAX_TRUST_DOMAIN_LEN
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
}

fn valid_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment != "."
        && segment != ".."
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids_parse_and_split() {
        let id = SpiffeId::parse("spiffe://gridmesh.local/ns/blocks/sa/classifier").unwrap();
        assert_eq!(id.trust_domain(), "gridmesh.local");
        assert_eq!(id.path(), "/ns/blocks/sa/classifier");
        let td = SpiffeId::parse("spiffe://example.org").unwrap();
        assert_eq!(td.path(), "");
        assert_eq!(
            SpiffeId::for_workload("td", "ns1", "sa-1").unwrap().as_str(),
            "spiffe://td/ns/ns1/sa/sa-1"
        );
    }

    #[test]
    fn invalid_ids_are_refused_with_the_reason() {
        for (text, want) in [
            ("https://td/ns/a", "must start with"),
            ("spiffe://", "no trust domain"),
            ("spiffe:///ns/a", "no trust domain"),
            ("spiffe://Upper.Case/a", "lower-case"),
            ("spiffe://td:8443/a", "no port"),
            ("spiffe://user@td/a", "no port"),
            ("spiffe://td/", "path segments"),
            ("spiffe://td/a//b", "path segments"),
            ("spiffe://td/a/../b", "path segments"),
            ("spiffe://td/a?q=1", "path segments"),
            ("spiffe://td/a#f", "path segments"),
        ] {
            let error = SpiffeId::parse(text).unwrap_err().to_string();
            assert!(error.contains(want), "{text}: {error}");
        }
        let long = format!("spiffe://td/{}", "a".repeat(MAX_LEN));
        assert!(matches!(
            SpiffeId::parse(&long),
            Err(SpiffeIdError::TooLong(_))
        ));
    }
}
