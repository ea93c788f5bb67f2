//! Route tables compiled from `gridmesh.v1.RouteTable`: which route a request
//! takes, and what the route says to do with it. Matching never allocates.

use std::collections::HashMap;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, request::Parts};
use rand::RngExt;
use regex::Regex;

/// Whether a request is gRPC (what a route's `grpc` match matches, and what
/// the sidecar answers with trailers-only errors): a content type of
/// `application/grpc`, with or without a `+format` suffix.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"))
}

#[derive(Debug, Clone)]
pub struct RouteTable {
    pub name: String,
    pub virtual_hosts: Vec<VirtualHost>,
    /// Domain lookup, most specific first: exact names, then the longest
    /// `*.suffix` / `prefix.*` wildcard, then `*`.
    pub(crate) exact: HashMap<String, usize>,
    pub(crate) suffixes: Vec<(String, usize)>,
    pub(crate) prefixes: Vec<(String, usize)>,
    pub(crate) any: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct VirtualHost {
    pub name: String,
    pub routes: Vec<Route>,
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub matcher: RouteMatcher,
    pub action: RouteAction,
    pub request_headers: HeaderMutation,
    pub response_headers: HeaderMutation,
}

#[derive(Debug, Clone)]
pub struct RouteMatcher {
    pub path: PathMatch,
    pub grpc: Option<GrpcMatch>,
    pub headers: Vec<HeaderMatcher>,
}

#[derive(Debug, Clone)]
pub enum PathMatch {
    Any,
    Prefix(String),
    Exact(String),
    /// Anchored at both ends when compiled.
    Regex(Regex),
}

#[derive(Debug, Clone)]
pub struct GrpcMatch {
    pub service: String,
    pub method: Option<String>,
}

#[derive(Debug, Clone)]
pub struct HeaderMatcher {
    pub name: HeaderName,
    pub kind: HeaderMatchKind,
    pub invert: bool,
}

#[derive(Debug, Clone)]
pub enum HeaderMatchKind {
    Exact(String),
    Prefix(String),
    Regex(Regex),
    Present(bool),
}

#[derive(Debug, Clone)]
pub struct RouteAction {
    pub target: Target,
    pub timeouts: Timeouts,
    pub retry: Option<RetryPolicy>,
}

/// Clusters are referred to by index into the snapshot's cluster list, so a
/// request resolves its cluster without a name lookup.
#[derive(Debug, Clone)]
pub enum Target {
    Cluster(usize),
    /// A vDAG request: `<name>` or `<name>:<version>`.
    VDag(String),
    Weighted {
        clusters: Vec<(usize, u32)>,
        total: u32,
    },
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Timeouts {
    pub response_headers: Option<Duration>,
    pub idle: Option<Duration>,
    pub max_duration: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub on_connect_failure: bool,
    pub on_reset: bool,
    pub on_503: bool,
    pub on_grpc_unavailable: bool,
    pub max_replay_body_bytes: usize,
    pub backoff: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct HeaderMutation {
    pub set: Vec<(HeaderName, HeaderValue, bool)>,
    pub remove: Vec<HeaderName>,
}

impl RouteTable {
    /// The indices of the clusters its routes send to.
    pub fn cluster_indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.virtual_hosts
            .iter()
            .flat_map(|h| &h.routes)
            .flat_map(|r| r.action.target.cluster_indices())
    }

    /// The same table with every cluster index `i` replaced by `map(i)`:
    /// how a table survives clusters being added or removed around the ones
    /// it uses without being compiled again. `None` when `map` has no
    /// replacement for one of them (a cluster it uses is gone).
    pub(crate) fn relinked(&self, map: impl Fn(usize) -> Option<usize>) -> Option<RouteTable> {
        let mut table = self.clone();
        for route in table.virtual_hosts.iter_mut().flat_map(|h| &mut h.routes) {
            match &mut route.action.target {
                Target::Cluster(index) => *index = map(*index)?,
                Target::Weighted { clusters, .. } => {
                    for (index, _) in clusters {
                        *index = map(*index)?;
                    }
                }
                Target::VDag(_) => {}
            }
        }
        Some(table)
    }

    /// The route for a request, or `None` when no virtual host or route matches.
    pub fn route(&self, parts: &Parts) -> Option<&Route> {
        let host = self.virtual_host(authority(parts)?)?;
        let is_grpc = is_grpc(&parts.headers);
        host.routes
            .iter()
            .find(|r| r.matcher.matches(parts.uri.path(), is_grpc, &parts.headers))
    }

    fn virtual_host(&self, authority: &str) -> Option<&VirtualHost> {
        // Host names are case-insensitive (RFC 9110 4.2.3) and domains are
        // configured lower-cased, so the request's authority is lower-cased
        // too: on the stack for any real host name, to keep matching
        // allocation-free.
        let mut buf = [0u8; 256];
        let owned: String;
        let authority = if !authority.bytes().any(|b| b.is_ascii_uppercase()) {
            authority
        } else if let Some(lower) = buf.get_mut(..authority.len()) {
            lower.copy_from_slice(authority.as_bytes());
            lower.make_ascii_lowercase();
            std::str::from_utf8(lower).expect("ASCII lower-casing keeps UTF-8 valid")
        } else {
            owned = authority.to_ascii_lowercase();
            &owned
        };
        let host = strip_port(authority);
        let index = self
            .exact
            .get(authority)
            .or_else(|| self.exact.get(host))
            .copied()
            .or_else(|| {
                self.suffixes
                    .iter()
                    .find(|(suffix, _)| {
                        host.len() > suffix.len() && host.ends_with(suffix.as_str())
                    })
                    .map(|(_, i)| *i)
            })
            .or_else(|| {
                self.prefixes
                    .iter()
                    .find(|(prefix, _)| {
                        host.len() > prefix.len() && host.starts_with(prefix.as_str())
                    })
                    .map(|(_, i)| *i)
            })
            .or(self.any)?;
        self.virtual_hosts.get(index)
    }
}

/// The request's authority: the URI's (HTTP/2, absolute-form HTTP/1) or the
/// Host header's, as the client sent it (hyper keeps its case); validation
/// lower-cases configured domains and `virtual_host` lower-cases this.
fn authority(parts: &Parts) -> Option<&str> {
    parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| parts.headers.get(http::header::HOST)?.to_str().ok())
}

fn strip_port(authority: &str) -> &str {
    match authority.rsplit_once(':') {
        // An IPv6 literal's colons sit inside brackets.
        Some((host, port)) if !port.contains(']') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => authority,
    }
}

impl RouteMatcher {
    pub(crate) fn matches(&self, path: &str, is_grpc: bool, headers: &HeaderMap) -> bool {
        let path_ok = match &self.path {
            PathMatch::Any => true,
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Exact(p) => path == p,
            PathMatch::Regex(r) => r.is_match(path),
        };
        path_ok
            && self
                .grpc
                .as_ref()
                .is_none_or(|g| is_grpc && g.matches(path))
            && self.headers.iter().all(|h| h.matches(headers))
    }
}

impl GrpcMatch {
    fn matches(&self, path: &str) -> bool {
        let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
            return false;
        };
        service == self.service && self.method.as_deref().is_none_or(|m| m == method)
    }
}

impl HeaderMatcher {
    fn matches(&self, headers: &HeaderMap) -> bool {
        let value = headers.get(&self.name);
        // A value that is not visible ASCII can only satisfy `present`.
        let text = value.and_then(|v| v.to_str().ok());
        let hit = match &self.kind {
            HeaderMatchKind::Present(want) => value.is_some() == *want,
            HeaderMatchKind::Exact(e) => text == Some(e.as_str()),
            HeaderMatchKind::Prefix(p) => text.is_some_and(|v| v.starts_with(p.as_str())),
            HeaderMatchKind::Regex(r) => text.is_some_and(|v| r.is_match(v)),
        };
        hit != self.invert
    }
}

impl Target {
    fn cluster_indices(&self) -> impl Iterator<Item = usize> + '_ {
        let (single, weighted) = match self {
            Target::Cluster(index) => (Some(*index), &[][..]),
            Target::Weighted { clusters, .. } => (None, &clusters[..]),
            Target::VDag(_) => (None, &[][..]),
        };
        single
            .into_iter()
            .chain(weighted.iter().map(|(index, _)| *index))
    }

    /// The cluster index for one request; weighted targets draw at random.
    /// `None`: the route calls a vDAG.
    pub fn pick(&self) -> Option<usize> {
        Some(match self {
            Target::Cluster(c) => *c,
            Target::VDag(_) => return None,
            Target::Weighted { clusters, total } => {
                let mut draw = rand::rng().random_range(0..*total);
                for (cluster, weight) in clusters {
                    if draw < *weight {
                        return Some(*cluster);
                    }
                    draw -= weight;
                }
                // Validation guarantees total == sum of weights > 0.
                clusters[clusters.len() - 1].0
            }
        })
    }

    /// The vDAG the route calls, `<name>` or `<name>:<version>`.
    pub fn vdag(&self) -> Option<&str> {
        match self {
            Target::VDag(named) => Some(named),
            _ => None,
        }
    }
}

impl HeaderMutation {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value, append) in &self.set {
            if *append {
                headers.append(name.clone(), value.clone());
            } else {
                headers.insert(name.clone(), value.clone());
            }
        }
    }
}
