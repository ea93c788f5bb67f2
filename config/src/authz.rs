//! Authorization policies as the request path reads them: for each
//! listener, its DENY policies and, when any ALLOW policy selects it, its
//! ALLOW policies (Istio's semantics: DENY first; with ALLOW policies,
//! default deny). Compiled once per snapshot; a request only walks the
//! policies of its own listener.

use gridmesh_identity::SpiffeId;
use http::Method;
use http::request::Parts;

use crate::route::{RouteMatcher, is_grpc};

/// The policies that apply to one listener.
#[derive(Debug, Clone, Default)]
pub struct ListenerAuthz {
    pub deny: Vec<Policy>,
    /// `None`: no ALLOW policy selects the listener, so what is not denied
    /// is allowed. `Some`: a request must match one of these.
    pub allow: Option<Vec<Policy>>,
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pub rules: Vec<Rule>,
}

/// Matches when the caller matches one of `peers` (none: anyone) and the
/// request one of `requests` (none: anything).
#[derive(Debug, Clone)]
pub struct Rule {
    pub peers: Vec<PeerMatcher>,
    pub requests: Vec<RequestMatcher>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerMatcher {
    Exact(SpiffeId),
    Prefix(String),
    TrustDomain(String),
    /// Whether the caller presented a certificate.
    Authenticated(bool),
}

#[derive(Debug, Clone)]
pub struct RequestMatcher {
    /// Path, gRPC service and method, headers: as in routes.
    pub matcher: RouteMatcher,
    /// Empty: any method.
    pub methods: Vec<Method>,
}

/// Why a request was refused: the log line and the metric's `policy` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial<'a> {
    /// A DENY policy matched.
    Denied { policy: &'a str },
    /// ALLOW policies select the listener and none matched.
    NotAllowed,
}

impl ListenerAuthz {
    /// Whether `peer` (its SPIFFE ID over mTLS, `None` over plaintext) may
    /// make the request `parts`.
    pub fn check(&self, parts: &Parts, peer: Option<&SpiffeId>) -> Result<(), Denial<'_>> {
        let request = Request {
            parts,
            grpc: is_grpc(&parts.headers),
            peer,
        };
        if let Some(policy) = self.deny.iter().find(|p| p.matches(&request)) {
            return Err(Denial::Denied {
                policy: &policy.name,
            });
        }
        match &self.allow {
            Some(allow) if !allow.iter().any(|p| p.matches(&request)) => Err(Denial::NotAllowed),
            _ => Ok(()),
        }
    }
}

struct Request<'a> {
    parts: &'a Parts,
    grpc: bool,
    peer: Option<&'a SpiffeId>,
}

impl Policy {
    fn matches(&self, request: &Request) -> bool {
        self.rules.iter().any(|rule| rule.matches(request))
    }
}

impl Rule {
    fn matches(&self, request: &Request) -> bool {
        (self.peers.is_empty() || self.peers.iter().any(|p| p.matches(request.peer)))
            && (self.requests.is_empty() || self.requests.iter().any(|r| r.matches(request)))
    }
}

impl PeerMatcher {
    fn matches(&self, peer: Option<&SpiffeId>) -> bool {
        match (self, peer) {
            (PeerMatcher::Authenticated(want), peer) => peer.is_some() == *want,
            (_, None) => false,
            (PeerMatcher::Exact(id), Some(peer)) => id == peer,
            (PeerMatcher::Prefix(prefix), Some(peer)) => peer.as_str().starts_with(prefix),
            (PeerMatcher::TrustDomain(td), Some(peer)) => peer.trust_domain() == td,
        }
    }
}

impl RequestMatcher {
    fn matches(&self, request: &Request) -> bool {
        let parts = request.parts;
        (self.methods.is_empty() || self.methods.contains(&parts.method))
            && self
                .matcher
                .matches(parts.uri.path(), request.grpc, &parts.headers)
    }
}
