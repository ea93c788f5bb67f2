//! SPIFFE IDs (`spiffe://<trust-domain>/<path>`), validated as the SPIFFE ID
//! standard says.

use std::fmt;
use std::sync::Arc;
pub(crate) const SCHEME: &str = "spiffe://";
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

    /// The namespace and service account of a `.../ns/<ns>/sa/<sa>` ID
    /// (the inverse of [`SpiffeId::for_workload`]).
    pub fn workload(&self) -> Option<(&str, &str)> {
        let rest = self.path().strip_prefix("/ns/")?;
        let (namespace, rest) = rest.split_once('/')?;
        let service_account = rest.strip_prefix("sa/")?;
        (!service_account.contains('/')).then_some((namespace, service_account))
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
        let workload = SpiffeId::for_workload("td", "ns1", "sa-1").unwrap();
        assert_eq!(workload.as_str(), "spiffe://td/ns/ns1/sa/sa-1");
        assert_eq!(workload.workload(), Some(("ns1", "sa-1")));
        assert_eq!(id.workload(), Some(("blocks", "classifier")));
        assert_eq!(td.workload(), None);
        let deeper = SpiffeId::parse("spiffe://td/ns/a/sa/b/c").unwrap();
        assert_eq!(deeper.workload(), None);
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
