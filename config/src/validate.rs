//! Validation and conversion of gridmesh.v1 resources into a [`Snapshot`].
//!
//! Every problem is collected (not just the first) with the resource and the
//! field it concerns, named as they are written in the file.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gridmesh_proto::config::{
    self as pb, Bootstrap, cluster::LbPolicy, cluster::UpstreamProtocol, header_match,
    listener::Direction, retry_policy::RetryOn, route_action::ClusterSpecifier,
    route_match::PathSpecifier,
};
use http::header::{HeaderName, HeaderValue};
use regex::Regex;

use gridmesh_proto::resource::Kind;

use super::{ConfigError, Origin, Problem, ResourceAt};
use crate::authz::{ListenerAuthz, PeerMatcher, Policy, RequestMatcher, Rule};
use crate::route::{
    GrpcMatch, HeaderMatchKind, HeaderMatcher, HeaderMutation, PathMatch, RetryPolicy, Route,
    RouteAction, RouteMatcher, RouteTable, Target, Timeouts, VirtualHost,
};
use crate::vdag::{self, VDagSpec};

use gridmesh_identity::{IdentityFiles, SpiffeId};
pub use gridmesh_proto::config::listener::DownstreamProtocol as Protocol;
pub use gridmesh_proto::config::listener::TlsMode;
use gridmesh_telemetry::settings::{
    self, DEFAULT_EXPORT_TIMEOUT, DEFAULT_MAX_QUEUE, DEFAULT_SAMPLING_RATIO, OtlpProtocol,
    TraceSettings,
};

const DEFAULT_ADMIN: &str = "127.0.0.1:15000";
const DEFAULT_DRAIN: Duration = Duration::from_secs(30);
const DEFAULT_MAX_HEADERS: u32 = 64 * 1024;
const DEFAULT_LISTENER_IDLE: Duration = Duration::from_secs(60);
/// Long enough for a client's first write on a loaded machine, short
/// enough that a server-speaks-first protocol is not kept waiting long.
const DEFAULT_PROTOCOL_DETECTION: Duration = Duration::from_millis(500);
const MAX_PROTOCOL_DETECTION: Duration = Duration::from_secs(5);
/// hyper's HTTP/1 parser needs at least 8 KiB of buffer.
const MIN_MAX_HEADERS: u32 = 8 * 1024;
const MAX_MAX_HEADERS: u32 = 1024 * 1024;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Below the listeners' default idle timeout, so that between gridmesh hops
/// the pool, not the server, closes idle connections.
const DEFAULT_IDLE_CONNECTION: Duration = Duration::from_secs(30);
const DEFAULT_DNS_MIN_REFRESH: Duration = Duration::from_secs(1);
const DEFAULT_SVID_LIFETIME: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_CIRCUIT_LIMIT: u32 = 1024;
const DEFAULT_RETRY_PERCENT: u32 = 20;
const DEFAULT_MIN_RETRIES_PER_SECOND: u32 = 10;
const DEFAULT_REPLAY_BYTES: u32 = 64 * 1024;
const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_millis(25);
const DEFAULT_RING_REPLICAS: u32 = 64;
/// More retries than this only multiply load on a failing upstream.
pub(crate) const MAX_RETRIES: u32 = 10;
/// Weights are relative; this bound keeps weighted schedules small.
const MAX_ENDPOINT_WEIGHT: u32 = 10_000;
/// google.protobuf.Duration's range: about 10,000 years, nanos below one second.
const MAX_DURATION_SECONDS: u64 = 315_576_000_000;
const MAX_DURATION_NANOS: i32 = 999_999_999;

/// A complete, validated configuration. Immutable: a change builds a new one.
#[derive(Debug)]
pub struct Snapshot {
    /// Where it came from (a file path), for `/config_dump`.
    pub source: String,
    /// The resources as given, for `/config_dump`.
    pub bootstrap: Bootstrap,
    /// Where resources that did not come from `source` came from (the xDS
    /// client fills this in), by kind and name.
    pub origins: HashMap<(Kind, String), Origin>,
    pub admin_addr: SocketAddr,
    pub drain_timeout: Duration,
    pub listeners: Vec<ListenerSpec>,
    pub route_tables: Vec<Arc<RouteTable>>,
    pub clusters: Vec<Arc<ClusterSpec>>,
    /// The authorization policies of each listener that any policy selects.
    pub authorization: HashMap<String, Arc<ListenerAuthz>>,
    /// Where this workload's certificate comes from; `None`: plaintext only.
    pub identity: Option<IdentitySource>,
    /// Where spans go; `None`: no spans (trace context still forwarded).
    pub tracing: Option<TraceSettings>,
    /// The vDAGs this sidecar originates and forwards, by name.
    pub vdags: HashMap<String, Arc<VDagSpec>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySource {
    Files(IdentityFiles),
    ControlPlane(ControlPlaneIdentity),
}

/// A certificate from the control plane's CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlaneIdentity {
    pub id: SpiffeId,
    pub token_file: std::path::PathBuf,
    pub trust_bundle: std::path::PathBuf,
    pub lifetime: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSpec {
    pub name: String,
    pub addr: SocketAddr,
    pub direction: Direction,
    /// The route table of its HTTP requests; `None` for a TCP listener.
    pub route_table: Option<usize>,
    pub protocol: Protocol,
    pub max_request_headers_bytes: usize,
    pub idle_timeout: Duration,
    /// Where its connections that are not HTTP go (a cluster index).
    pub tcp_cluster: Option<usize>,
    pub protocol_detection_timeout: Duration,
    pub tls_mode: TlsMode,
    pub access_log: Option<AccessLogSpec>,
    /// Its own tracing, instead of the bootstrap's.
    pub tracing: Option<TraceSettings>,
}

/// Where a listener's request log goes, and how much of it.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLogSpec {
    pub destination: LogDestination,
    pub sampling_ratio: f64,
}

/// The ratio is checked to be within 0..=1, never NaN.
impl Eq for AccessLogSpec {}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LogDestination {
    Stdout,
    /// An absolute path, appended to.
    File(std::path::PathBuf),
}

impl std::fmt::Display for LogDestination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogDestination::Stdout => f.write_str("stdout"),
            LogDestination::File(path) => write!(f, "{}", path.display()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSpec {
    pub name: String,
    pub protocol: UpstreamProtocol,
    pub lb_policy: LbPolicy,
    pub ring_hash_header: Option<HeaderName>,
    pub ring_replicas_per_weight: u32,
    pub connect_timeout: Duration,
    pub idle_connection_timeout: Duration,
    pub dns_min_refresh: Duration,
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub retry_percent: u32,
    pub min_retries_per_second: u32,
    /// The SPIFFE ID its endpoints present (mTLS to them), unless an
    /// endpoint names its own.
    pub identity: Option<SpiffeId>,
    pub endpoints: Vec<EndpointSpec>,
}

impl ClusterSpec {
    /// Whether `other` differs from this spec in nothing but its endpoints
    /// (a cluster can then take it and keep its pools and load).
    pub fn same_settings(&self, other: &ClusterSpec) -> bool {
        // Destructured, so that a new field cannot be left out.
        let ClusterSpec {
            name,
            protocol,
            lb_policy,
            ring_hash_header,
            ring_replicas_per_weight,
            connect_timeout,
            idle_connection_timeout,
            dns_min_refresh,
            max_connections,
            max_pending_requests,
            max_requests,
            retry_percent,
            min_retries_per_second,
            identity,
            endpoints: _,
        } = self;
        *name == other.name
            && *protocol == other.protocol
            && *lb_policy == other.lb_policy
            && *ring_hash_header == other.ring_hash_header
            && *ring_replicas_per_weight == other.ring_replicas_per_weight
            && *connect_timeout == other.connect_timeout
            && *idle_connection_timeout == other.idle_connection_timeout
            && *dns_min_refresh == other.dns_min_refresh
            && *max_connections == other.max_connections
            && *max_pending_requests == other.max_pending_requests
            && *max_requests == other.max_requests
            && *retry_percent == other.retry_percent
            && *min_retries_per_second == other.min_retries_per_second
            && *identity == other.identity
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    pub address: EndpointAddress,
    pub weight: u32,
    /// Its own expected SPIFFE ID, overriding the cluster's.
    pub identity: Option<SpiffeId>,
}

impl ClusterSpec {
    /// An HTTP/2 cluster of one endpoint with every other setting at its
    /// default: for calls a proxy makes on its own account to an address no
    /// config names (a vDAG tail's output, to the request's origin).
    pub fn single_endpoint(name: &str, address: SocketAddr, identity: Option<SpiffeId>) -> Self {
        let mut checker = Checker {
            problems: Vec::new(),
            resource: name.into(),
            at: None,
        };
        let settings = pb::Cluster {
            name: name.into(),
            protocol: UpstreamProtocol::Http2 as i32,
            ..Default::default()
        };
        let endpoint = EndpointSpec {
            address: EndpointAddress::Socket(address),
            weight: 1,
            identity: None,
        };
        let mut spec = cluster(&mut checker, &settings, vec![endpoint], false);
        debug_assert!(checker.problems.is_empty(), "defaults are valid");
        spec.identity = identity;
        spec
    }

    /// The identity `endpoint` must present; `None`: plaintext.
    pub fn identity_of<'a>(&'a self, endpoint: &'a EndpointSpec) -> Option<&'a SpiffeId> {
        endpoint.identity.as_ref().or(self.identity.as_ref())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointAddress {
    Socket(SocketAddr),
    /// Resolved through DNS; every address becomes an endpoint.
    Dns {
        host: String,
        port: u16,
    },
}

/// Collects problems against the resource currently being checked.
pub(crate) struct Checker {
    problems: Vec<Problem>,
    resource: String,
    at: Option<ResourceAt>,
}

impl Checker {
    /// Starts checking the `index`th resource of `kind`, named in messages
    /// by its name or, without one, by its position.
    pub(crate) fn enter(&mut self, kind: Kind, index: usize, name: &str) {
        self.resource = if name.is_empty() {
            format!("{kind}[{index}]")
        } else {
            format!("{kind} {name:?}")
        };
        self.at = Some(ResourceAt { kind, index });
    }

    pub(crate) fn problem_count(&self) -> usize {
        self.problems.len()
    }

    pub(crate) fn problem(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            resource: self.resource.clone(),
            at: self.at,
            field: field.into(),
            message: message.into(),
        });
    }

    fn duration(&mut self, field: &str, d: Option<&pbjson_types::Duration>) -> Option<Duration> {
        let d = d?;
        // The proto's own limits. Beyond them a value is not a Duration,
        // and a huge one would overflow deadlines (`Instant + d` panics)
        // on the request path instead of failing here.
        if !(-MAX_DURATION_NANOS..=MAX_DURATION_NANOS).contains(&d.nanos) {
            self.problem(
                field,
                format!(
                    "nanos {} is out of range (-{MAX_DURATION_NANOS} to {MAX_DURATION_NANOS})",
                    d.nanos
                ),
            );
            return None;
        }
        if d.seconds.unsigned_abs() > MAX_DURATION_SECONDS {
            self.problem(
                field,
                format!("must be at most {MAX_DURATION_SECONDS}s (10,000 years)"),
            );
            return None;
        }
        match Duration::try_from(*d) {
            Ok(d) => Some(d),
            Err(_) => {
                self.problem(field, "must not be negative");
                None
            }
        }
    }

    /// A duration that must be positive when set.
    pub(crate) fn positive(
        &mut self,
        field: &str,
        d: Option<&pbjson_types::Duration>,
    ) -> Option<Duration> {
        let d = self.duration(field, d)?;
        if d.is_zero() {
            self.problem(field, "must be greater than zero when set");
            return None;
        }
        Some(d)
    }

    fn regex(&mut self, field: &str, pattern: &str) -> Option<Regex> {
        // The pattern must stand on its own: `/a)|(/b` only balances once
        // wrapped, and would then escape the anchors (`^(?:/a)|(/b)$`).
        if let Err(e) = regex::RegexBuilder::new(pattern)
            .size_limit(1 << 20)
            .build()
        {
            self.problem(field, format!("invalid regex: {e}"));
            return None;
        }
        // Anchored: a route regex describes the whole path or value.
        match regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
            .size_limit(1 << 20)
            .build()
        {
            Ok(r) => Some(r),
            Err(e) => {
                self.problem(field, format!("invalid regex: {e}"));
                None
            }
        }
    }

    fn header_name(&mut self, field: &str, name: &str) -> Option<HeaderName> {
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(n) => Some(n),
            Err(_) => {
                self.problem(field, format!("{name:?} is not a valid header name"));
                None
            }
        }
    }

    fn unique(&mut self, seen: &mut HashSet<String>, field: &str, name: &str) {
        if name.is_empty() {
            self.problem(field, "must not be empty");
        } else if !seen.insert(name.to_string()) {
            self.problem(field, format!("duplicate name {name:?}"));
        }
    }
}

/// Validates a whole bootstrap and converts it. Either every resource is good
/// and a snapshot comes back, or nothing is built.
pub fn build_snapshot(bootstrap: Bootstrap, source: &str) -> Result<Snapshot, ConfigError> {
    build(bootstrap, source, Scope::Sidecar, None)
}

/// What a rebuild may take over from the snapshot being served: the
/// converted form of every resource a change does not carry. One xDS
/// response carries one kind of resource, so the change is named by kind.
pub struct Carryover<'a> {
    /// The snapshot built from the same resources, less this change.
    pub previous: &'a Snapshot,
    pub kind: Kind,
    /// The resources of `kind` the change upserts or removes.
    pub changed: &'a HashSet<&'a str>,
}

impl Carryover<'_> {
    fn touches(&self, kind: Kind, name: &str) -> bool {
        self.kind == kind && self.changed.contains(name)
    }

    /// The previous snapshot's clusters that the change touches neither
    /// through their Cluster nor their Endpoints resource.
    fn clusters(&self) -> HashMap<&str, &Arc<ClusterSpec>> {
        self.previous
            .clusters
            .iter()
            .filter(|c| !self.touches(Kind::Cluster, &c.name))
            .filter(|c| !self.touches(Kind::Endpoints, &c.name))
            .map(|c| (c.name.as_str(), c))
            .collect()
    }

    /// The previous snapshot's route tables that the change does not touch.
    fn route_tables(&self) -> HashMap<&str, &Arc<RouteTable>> {
        self.previous
            .route_tables
            .iter()
            .filter(|t| !self.touches(Kind::RouteTable, &t.name))
            .map(|t| (t.name.as_str(), t))
            .collect()
    }

    /// A carried route table pointed at the clusters' new positions; `None`
    /// when a cluster it uses is gone (it is then converted again, and the
    /// conversion reports that precisely).
    fn relink(
        &self,
        table: &Arc<RouteTable>,
        clusters: &HashMap<&str, usize>,
    ) -> Option<Arc<RouteTable>> {
        let moved_to = |old: usize| {
            let cluster = self.previous.clusters.get(old)?;
            clusters.get(cluster.name.as_str()).copied()
        };
        if table.cluster_indices().all(|i| moved_to(i) == Some(i)) {
            return Some(Arc::clone(table));
        }
        table.relinked(moved_to).map(Arc::new)
    }
}

/// [`build_snapshot`] for a bootstrap that differs from the one `carryover`
/// was built from only in the resources it names: those are validated and
/// converted, every other cluster and route table is taken over as it is
/// (the cross-references between resources are still checked). Applying an
/// update costs what it carries, not what the sidecar holds.
pub fn rebuild_snapshot(
    bootstrap: Bootstrap,
    source: &str,
    carryover: &Carryover,
) -> Result<Snapshot, ConfigError> {
    build(bootstrap, source, Scope::Sidecar, Some(carryover))
}

/// Validates a set of resources a control plane serves to many sidecars:
/// every check a sidecar makes, except that listeners may share an address
/// (each sidecar binds its own, so every block's inbound listener can be
/// `0.0.0.0:15006`), and settings that belong to one sidecar (admin, drain
/// timeout, xds) are refused.
pub fn validate_served(resources: Bootstrap, source: &str) -> Result<Snapshot, ConfigError> {
    build(resources, source, Scope::ControlPlane, None)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    Sidecar,
    ControlPlane,
}

fn build(
    bootstrap: Bootstrap,
    source: &str,
    scope: Scope,
    carryover: Option<&Carryover>,
) -> Result<Snapshot, ConfigError> {
    let mut c = Checker {
        problems: Vec::new(),
        resource: "bootstrap".into(),
        at: None,
    };
    if scope == Scope::ControlPlane {
        let local = [
            ("admin", bootstrap.admin.is_some()),
            ("drainTimeout", bootstrap.drain_timeout.is_some()),
            ("xds", bootstrap.xds.is_some()),
            ("identity", bootstrap.identity.is_some()),
            ("tracing", bootstrap.tracing.is_some()),
        ];
        for (field, _) in local.iter().filter(|(_, set)| *set) {
            c.problem(
                *field,
                "belongs in a sidecar's own bootstrap, not in what the control plane serves",
            );
        }
    }

    let admin = bootstrap
        .admin
        .as_ref()
        .map(|a| a.address.as_str())
        .filter(|a| !a.is_empty())
        .unwrap_or(DEFAULT_ADMIN);
    let admin_addr = parse_socket_addr(&mut c, "admin.address", admin);
    let drain_timeout = c
        .duration("drainTimeout", bootstrap.drain_timeout.as_ref())
        .unwrap_or(DEFAULT_DRAIN);
    if let Some(xds) = &bootstrap.xds {
        xds_address(&mut c, &xds.address);
    }
    let identity = bootstrap
        .identity
        .as_ref()
        .and_then(|i| identity(&mut c, i, bootstrap.xds.as_ref()));
    if let Some(xds) = &bootstrap.xds
        && !xds.identity.is_empty()
    {
        if bootstrap.identity.is_none() {
            c.problem("xds.identity", NEEDS_IDENTITY);
        }
        if let Err(e) = SpiffeId::parse(&xds.identity) {
            c.problem("xds.identity", e.to_string());
        }
    }
    // What the control plane serves is checked without a sidecar's
    // bootstrap: whether that sidecar has an identity is its own check.
    let has_identity = scope == Scope::ControlPlane || identity.is_some();

    let cluster_index = index_names(
        &mut c,
        Kind::Cluster,
        bootstrap.clusters.iter().map(|x| &x.name),
    );
    let table_index = index_names(
        &mut c,
        Kind::RouteTable,
        bootstrap.route_tables.iter().map(|x| &x.name),
    );

    let carried = carryover.map(Carryover::clusters).unwrap_or_default();
    let mut endpoints = endpoints_by_cluster(
        &mut c,
        &bootstrap.endpoints,
        &cluster_index,
        &carried,
        has_identity,
    );
    let clusters = bootstrap
        .clusters
        .iter()
        .enumerate()
        .map(|(i, cl)| match carried.get(cl.name.as_str()) {
            Some(spec) => Arc::clone(spec),
            None => {
                let eps = endpoints.remove(cl.name.as_str()).unwrap_or_default();
                c.enter(Kind::Cluster, i, &cl.name);
                Arc::new(cluster(&mut c, cl, eps, has_identity))
            }
        })
        .collect();
    let carried_tables = carryover.map(Carryover::route_tables).unwrap_or_default();
    let route_tables: Vec<Arc<RouteTable>> = bootstrap
        .route_tables
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let carried = carryover
                .zip(carried_tables.get(t.name.as_str()))
                .and_then(|(co, table)| co.relink(table, &cluster_index));
            carried.unwrap_or_else(|| {
                c.enter(Kind::RouteTable, i, &t.name);
                Arc::new(route_table(&mut c, t, &cluster_index))
            })
        })
        .collect();
    let exclusive_addrs = match scope {
        Scope::Sidecar => Some(admin_addr.into_iter().collect()),
        Scope::ControlPlane => None,
    };
    let listeners = listeners(
        &mut c,
        &bootstrap.listeners,
        &table_index,
        &cluster_index,
        exclusive_addrs,
        has_identity,
    );

    let authorization = authorization(&mut c, &bootstrap.authorization_policies, &listeners);
    let vdags: HashMap<String, Arc<VDagSpec>> = (bootstrap.vdags.iter().enumerate())
        .filter_map(|(i, v)| vdag::vdag(&mut c, i, v, &cluster_index))
        .map(|v| (v.name.clone(), Arc::new(v)))
        .collect();
    index_names(&mut c, Kind::VDag, bootstrap.vdags.iter().map(|v| &v.name));
    vdag_routes(&mut c, &route_tables, &vdags);
    let tracing = bootstrap.tracing.as_ref().and_then(|t| tracing(&mut c, t));

    if !c.problems.is_empty() {
        return Err(ConfigError {
            source: source.to_string(),
            problems: c.problems,
        });
    }
    Ok(Snapshot {
        source: source.to_string(),
        bootstrap,
        origins: HashMap::new(),
        admin_addr: admin_addr.expect("no problems, so the address parsed"),
        drain_timeout,
        listeners,
        route_tables,
        clusters,
        authorization,
        vdags,
        identity,
        tracing,
    })
}

/// Every route that calls a vDAG names one that exists (at the version it
/// names, if any): removing a vDAG a route uses is refused.
fn vdag_routes(
    c: &mut Checker,
    tables: &[Arc<RouteTable>],
    vdags: &HashMap<String, Arc<VDagSpec>>,
) {
    for (t, table) in tables.iter().enumerate() {
        for (h, host) in table.virtual_hosts.iter().enumerate() {
            for (r, route) in host.routes.iter().enumerate() {
                let Some(named) = route.action.target.vdag() else {
                    continue;
                };
                let (name, version) = match named.split_once(':') {
                    Some((name, version)) => (name, Some(version)),
                    None => (named, None),
                };
                let problem = match vdags.get(name) {
                    None => format!("no vDAG named {name:?}"),
                    Some(v) if version.is_some_and(|w| w != v.version) => {
                        format!("vDAG {name} is at version {:?}", v.version)
                    }
                    Some(_) => continue,
                };
                c.enter(Kind::RouteTable, t, &table.name);
                c.problem(format!("virtualHosts[{h}].routes[{r}].route.vdag"), problem);
            }
        }
    }
}

/// A `tracing` section (the bootstrap's, or a listener's).
fn tracing(c: &mut Checker, t: &pb::Tracing) -> Option<TraceSettings> {
    use pb::tracing::Protocol;
    let protocol = match Protocol::try_from(t.protocol) {
        Ok(Protocol::Grpc) => OtlpProtocol::Grpc,
        Ok(Protocol::HttpProtobuf) => OtlpProtocol::HttpProtobuf,
        Err(_) => {
            c.problem("tracing.protocol", format!("unknown value {}", t.protocol));
            return None;
        }
    };
    if let Err(problem) = settings::check_endpoint(&t.endpoint) {
        c.problem("tracing.endpoint", problem);
    }
    let sampling_ratio = t.sampling_ratio.unwrap_or(DEFAULT_SAMPLING_RATIO);
    if let Err(problem) = settings::check_sampling_ratio(sampling_ratio) {
        c.problem("tracing.samplingRatio", problem);
    }
    for (name, value) in &t.headers {
        let valid = http::HeaderName::from_bytes(name.as_bytes()).is_ok()
            && http::HeaderValue::from_str(value).is_ok();
        if !valid || name.bytes().any(|b| b.is_ascii_uppercase()) {
            c.problem(
                format!("tracing.headers.{name}"),
                "not a valid lower-case header name and value",
            );
        }
    }
    let export_timeout = c
        .positive("tracing.exportTimeout", t.export_timeout.as_ref())
        .unwrap_or(DEFAULT_EXPORT_TIMEOUT);
    Some(TraceSettings {
        endpoint: t.endpoint.clone(),
        protocol,
        headers: t.headers.clone().into_iter().collect(),
        sampling_ratio,
        resource: t.resource_attributes.clone().into_iter().collect(),
        max_queue: match t.max_queue_size {
            0 => DEFAULT_MAX_QUEUE,
            n => n as usize,
        },
        export_timeout,
    })
}

/// Each listener's policies, DENY and ALLOW apart. A policy naming a
/// listener that does not exist (yet: over xDS it may come later) applies
/// to nothing until it does.
fn authorization(
    c: &mut Checker,
    policies: &[pb::AuthorizationPolicy],
    listeners: &[ListenerSpec],
) -> HashMap<String, Arc<ListenerAuthz>> {
    use pb::authorization_policy::Action;
    let mut names = HashSet::new();
    let mut compiled = Vec::new();
    for (i, p) in policies.iter().enumerate() {
        c.enter(Kind::AuthorizationPolicy, i, &p.name);
        c.unique(&mut names, "name", &p.name);
        let Ok(action) = Action::try_from(p.action) else {
            c.problem("action", format!("unknown value {}", p.action));
            continue;
        };
        let rules = p
            .rules
            .iter()
            .enumerate()
            .map(|(r, rule)| authorization_rule(c, &format!("rules[{r}]"), rule))
            .collect();
        compiled.push((
            p,
            action,
            Policy {
                name: p.name.clone(),
                rules,
            },
        ));
    }
    let mut by_listener = HashMap::new();
    for listener in listeners {
        let mut authz = ListenerAuthz::default();
        for (p, action, policy) in &compiled {
            if !p.listeners.is_empty() && !p.listeners.contains(&listener.name) {
                continue;
            }
            match action {
                Action::Deny => authz.deny.push(policy.clone()),
                Action::Allow => authz
                    .allow
                    .get_or_insert_with(Vec::new)
                    .push(policy.clone()),
            }
        }
        if !authz.deny.is_empty() || authz.allow.is_some() {
            by_listener.insert(listener.name.clone(), Arc::new(authz));
        }
    }
    by_listener
}

fn authorization_rule(c: &mut Checker, field: &str, rule: &pb::AuthorizationRule) -> Rule {
    use pb::peer_match::Peer;
    let peers = rule
        .peers
        .iter()
        .enumerate()
        .filter_map(|(i, peer)| {
            let field = format!("{field}.peers[{i}]");
            match &peer.peer {
                None => {
                    c.problem(
                        field,
                        "names no peer (exact, prefix, trustDomain or authenticated)",
                    );
                    None
                }
                Some(Peer::Exact(id)) => match SpiffeId::parse(id) {
                    Ok(id) => Some(PeerMatcher::Exact(id)),
                    Err(e) => {
                        c.problem(format!("{field}.exact"), e.to_string());
                        None
                    }
                },
                Some(Peer::Prefix(prefix)) if !prefix.starts_with("spiffe://") => {
                    c.problem(format!("{field}.prefix"), "must start with \"spiffe://\"");
                    None
                }
                Some(Peer::Prefix(prefix)) => Some(PeerMatcher::Prefix(prefix.clone())),
                Some(Peer::TrustDomain(td)) => match SpiffeId::parse(&format!("spiffe://{td}")) {
                    Ok(_) if !td.contains('/') => Some(PeerMatcher::TrustDomain(td.clone())),
                    _ => {
                        c.problem(
                            format!("{field}.trustDomain"),
                            format!("{td:?} is not a trust domain name"),
                        );
                        None
                    }
                },
                Some(Peer::Authenticated(want)) => Some(PeerMatcher::Authenticated(*want)),
            }
        })
        .collect();
    let requests = rule
        .requests
        .iter()
        .enumerate()
        .filter_map(|(i, r)| request_matcher(c, &format!("{field}.requests[{i}]"), r))
        .collect();
    Rule { peers, requests }
}

fn request_matcher(c: &mut Checker, field: &str, r: &pb::RequestMatch) -> Option<RequestMatcher> {
    use pb::request_match::PathSpecifier as RequestPath;
    let path = match &r.path_specifier {
        None => PathMatch::Any,
        Some(RequestPath::Prefix(p)) => PathMatch::Prefix(p.clone()),
        Some(RequestPath::Path(p)) => PathMatch::Exact(p.clone()),
    };
    let grpc = r.grpc.as_ref().map(|g| GrpcMatch {
        service: g.service.clone(),
        method: Some(g.method.clone()).filter(|m| !m.is_empty()),
    });
    if grpc.as_ref().is_some_and(|g| g.service.is_empty()) {
        c.problem(format!("{field}.grpc.service"), "must not be empty");
    }
    let headers = r
        .headers
        .iter()
        .enumerate()
        .filter_map(|(i, h)| header_matcher(c, &format!("{field}.headers[{i}]"), h))
        .collect();
    let methods = r
        .methods
        .iter()
        .enumerate()
        .filter_map(|(i, m)| match http::Method::from_bytes(m.as_bytes()) {
            Ok(method) => Some(method),
            Err(_) => {
                c.problem(
                    format!("{field}.methods[{i}]"),
                    format!("{m:?} is not an HTTP method"),
                );
                None
            }
        })
        .collect();
    Some(RequestMatcher {
        matcher: RouteMatcher {
            path,
            grpc,
            headers,
        },
        methods,
    })
}

/// Why a TLS setting cannot be honoured without an identity.
const NEEDS_IDENTITY: &str =
    "needs the sidecar's own identity (bootstrap `identity`), which is not configured";

fn identity(
    c: &mut Checker,
    identity: &pb::Identity,
    xds: Option<&pb::Xds>,
) -> Option<IdentitySource> {
    use pb::identity::Source;
    match &identity.source {
        None => {
            c.problem("identity", "names no source (e.g. `files`)");
            None
        }
        Some(Source::Files(files)) => {
            let mut path = |field: &str, value: &str| {
                if value.is_empty() {
                    c.problem(format!("identity.files.{field}"), "must name a file");
                }
                std::path::PathBuf::from(value)
            };
            Some(IdentitySource::Files(IdentityFiles {
                certificate: path("certificate", &files.certificate),
                private_key: path("privateKey", &files.private_key),
                trust_bundle: path("trustBundle", &files.trust_bundle),
            }))
        }
        Some(Source::ControlPlane(cp)) => {
            if xds.is_none_or(|x| x.identity.is_empty()) {
                c.problem(
                    "identity.controlPlane",
                    "needs `xds` with the control plane's `identity` (the CA is reached over TLS on the xDS address)",
                );
            }
            for (field, value) in [
                ("tokenFile", &cp.token_file),
                ("trustBundle", &cp.trust_bundle),
            ] {
                if value.is_empty() {
                    c.problem(format!("identity.controlPlane.{field}"), "must name a file");
                }
            }
            let lifetime = c
                .positive("identity.controlPlane.lifetime", cp.lifetime.as_ref())
                .unwrap_or(DEFAULT_SVID_LIFETIME);
            let id = match SpiffeId::parse(&cp.spiffe_id) {
                Ok(id) => id,
                Err(e) => {
                    c.problem("identity.controlPlane.spiffeId", e.to_string());
                    return None;
                }
            };
            Some(IdentitySource::ControlPlane(ControlPlaneIdentity {
                id,
                token_file: cp.token_file.clone().into(),
                trust_bundle: cp.trust_bundle.clone().into(),
                lifetime,
            }))
        }
    }
}

/// An optional SPIFFE ID field.
fn spiffe_id(
    c: &mut Checker,
    field: impl Fn() -> String,
    value: &str,
    has_identity: bool,
) -> Option<SpiffeId> {
    if value.is_empty() {
        return None;
    }
    if !has_identity {
        c.problem(field(), NEEDS_IDENTITY);
    }
    match SpiffeId::parse(value) {
        Ok(id) => Some(id),
        Err(e) => {
            c.problem(field(), e.to_string());
            None
        }
    }
}

/// The control plane's address: `host:port`, optionally with `http://`.
fn xds_address(c: &mut Checker, value: &str) {
    let authority = value.strip_prefix("http://").unwrap_or(value);
    let valid = authority
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !valid {
        c.problem(
            "xds.address",
            format!("{value:?} is not a host:port address (e.g. \"gridmesh-control:15012\")"),
        );
    }
}

fn parse_socket_addr(c: &mut Checker, field: &str, value: &str) -> Option<SocketAddr> {
    match value.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            c.problem(field, format!("{value:?} is not an ip:port address"));
            None
        }
    }
}

/// Name -> position for one resource kind, reporting empty and duplicate names.
fn index_names<'a>(
    c: &mut Checker,
    kind: Kind,
    names: impl Iterator<Item = &'a String>,
) -> HashMap<&'a str, usize> {
    let mut index = HashMap::new();
    for (i, name) in names.enumerate() {
        c.enter(kind, i, "");
        if name.is_empty() {
            c.problem("name", "must not be empty");
        } else if index.insert(name.as_str(), i).is_some() {
            c.problem("name", format!("duplicate {kind} name {name:?}"));
        }
    }
    index
}

fn listeners(
    c: &mut Checker,
    listeners: &[pb::Listener],
    tables: &HashMap<&str, usize>,
    clusters: &HashMap<&str, usize>,
    // Addresses taken so far (admin's), when listeners must not share one.
    mut exclusive_addrs: Option<HashSet<SocketAddr>>,
    has_identity: bool,
) -> Vec<ListenerSpec> {
    let mut names = HashSet::new();
    let mut specs = Vec::new();
    for (i, l) in listeners.iter().enumerate() {
        c.enter(Kind::Listener, i, &l.name);
        c.unique(&mut names, "name", &l.name);
        let addr = parse_socket_addr(c, "address", &l.address);
        if let (Some(a), Some(taken)) = (addr, exclusive_addrs.as_mut())
            && a.port() != 0
            && !taken.insert(a)
        {
            c.problem(
                "address",
                format!("{a} is already used by another listener or admin"),
            );
        }
        let direction = Direction::try_from(l.direction).unwrap_or_else(|_| {
            c.problem("direction", format!("unknown value {}", l.direction));
            Direction::Unspecified
        });
        let protocol = Protocol::try_from(l.protocol).unwrap_or_else(|_| {
            c.problem("protocol", format!("unknown value {}", l.protocol));
            Protocol::Auto
        });
        // A TCP listener routes no HTTP: a route table is neither needed
        // nor allowed (it would never be used).
        let table = match (protocol, l.route_table.as_str()) {
            (Protocol::Tcp, "") => Some(None),
            (Protocol::Tcp, _) => {
                c.problem("routeTable", "a TCP listener routes no HTTP requests");
                None
            }
            (_, name) => match tables.get(name) {
                Some(index) => Some(Some(*index)),
                None => {
                    c.problem("routeTable", format!("no route table named {name:?}"));
                    None
                }
            },
        };
        let tcp_cluster = match l.tcp_cluster.as_str() {
            "" if protocol == Protocol::Tcp => {
                c.problem("tcpCluster", "required for a TCP listener");
                None
            }
            "" => None,
            name => {
                let index = clusters.get(name).copied();
                if index.is_none() {
                    c.problem("tcpCluster", format!("no cluster named {name:?}"));
                }
                index
            }
        };
        let protocol_detection_timeout = c
            .positive(
                "protocolDetectionTimeout",
                l.protocol_detection_timeout.as_ref(),
            )
            .unwrap_or(DEFAULT_PROTOCOL_DETECTION);
        if protocol_detection_timeout > MAX_PROTOCOL_DETECTION {
            c.problem(
                "protocolDetectionTimeout",
                format!("at most {MAX_PROTOCOL_DETECTION:?}: HTTP clients would wait that long"),
            );
        }
        let max_headers = match l.max_request_headers_bytes {
            0 => DEFAULT_MAX_HEADERS,
            n if !(MIN_MAX_HEADERS..=MAX_MAX_HEADERS).contains(&n) => {
                c.problem(
                    "maxRequestHeadersBytes",
                    format!("must be between {MIN_MAX_HEADERS} and {MAX_MAX_HEADERS}"),
                );
                DEFAULT_MAX_HEADERS
            }
            n => n,
        };
        let idle_timeout = c
            .positive("idleTimeout", l.idle_timeout.as_ref())
            .unwrap_or(DEFAULT_LISTENER_IDLE);
        let tls_mode = TlsMode::try_from(l.tls_mode).unwrap_or_else(|_| {
            c.problem("tlsMode", format!("unknown value {}", l.tls_mode));
            TlsMode::Disable
        });
        if tls_mode != TlsMode::Disable && !has_identity {
            c.problem("tlsMode", NEEDS_IDENTITY);
        }
        let access_log = l.access_log.as_ref().and_then(|log| access_log(c, log));
        let tracing = l.tracing.as_ref().and_then(|t| tracing(c, t));
        if let (Some(addr), Some(route_table)) = (addr, table) {
            specs.push(ListenerSpec {
                name: l.name.clone(),
                addr,
                direction,
                route_table,
                protocol,
                max_request_headers_bytes: max_headers as usize,
                idle_timeout,
                tcp_cluster,
                protocol_detection_timeout,
                tls_mode,
                access_log,
                tracing,
            });
        }
    }
    specs
}

fn access_log(c: &mut Checker, log: &pb::AccessLog) -> Option<AccessLogSpec> {
    let destination = match log.path.as_str() {
        "stdout" => Some(LogDestination::Stdout),
        path if std::path::Path::new(path).is_absolute() => Some(LogDestination::File(path.into())),
        path => {
            c.problem(
                "accessLog.path",
                format!("{path:?} is neither \"stdout\" nor an absolute file path"),
            );
            None
        }
    };
    let sampling_ratio = log.sampling_ratio.unwrap_or(1.0);
    if let Err(problem) = settings::check_sampling_ratio(sampling_ratio) {
        c.problem("accessLog.samplingRatio", problem);
    }
    Some(AccessLogSpec {
        destination: destination?,
        sampling_ratio,
    })
}

/// The endpoints of each cluster, converted, except those of `carried`
/// clusters (only checked to belong to a cluster and to be given once).
fn endpoints_by_cluster<'a>(
    c: &mut Checker,
    resources: &'a [pb::Endpoints],
    clusters: &HashMap<&str, usize>,
    carried: &HashMap<&str, &Arc<ClusterSpec>>,
    has_identity: bool,
) -> HashMap<&'a str, Vec<EndpointSpec>> {
    let mut by_cluster = HashMap::new();
    let mut given = HashSet::new();
    for (i, res) in resources.iter().enumerate() {
        c.enter(Kind::Endpoints, i, &res.cluster);
        if !clusters.contains_key(res.cluster.as_str()) {
            c.problem("cluster", format!("no cluster named {:?}", res.cluster));
        }
        if !given.insert(res.cluster.as_str()) {
            c.problem("cluster", "endpoints for this cluster are given twice");
        }
        if carried.contains_key(res.cluster.as_str()) {
            continue;
        }
        let mut seen = HashSet::new();
        let specs: Vec<EndpointSpec> = res
            .endpoints
            .iter()
            .enumerate()
            .filter_map(|(i, ep)| {
                // Field names are spelled out only for a problem: a large
                // endpoint list is converted on every update.
                let address_field = || format!("endpoints[{i}].address");
                if !seen.insert(ep.address.as_str()) {
                    c.problem(
                        address_field(),
                        format!("duplicate endpoint {:?}", ep.address),
                    );
                }
                let weight = match ep.weight {
                    0 => 1,
                    w if w > MAX_ENDPOINT_WEIGHT => {
                        c.problem(
                            format!("endpoints[{i}].weight"),
                            format!("must be at most {MAX_ENDPOINT_WEIGHT}"),
                        );
                        1
                    }
                    w => w,
                };
                let identity = spiffe_id(
                    c,
                    || format!("endpoints[{i}].identity"),
                    &ep.identity,
                    has_identity,
                );
                let address = endpoint_address(c, address_field, &ep.address)?;
                Some(EndpointSpec {
                    address,
                    weight,
                    identity,
                })
            })
            .collect();
        by_cluster.insert(res.cluster.as_str(), specs);
    }
    by_cluster
}

fn endpoint_address(
    c: &mut Checker,
    field: impl Fn() -> String,
    value: &str,
) -> Option<EndpointAddress> {
    if let Ok(addr) = value.parse::<SocketAddr>() {
        if addr.port() == 0 || addr.ip().is_unspecified() {
            c.problem(field(), format!("{value:?} is not a routable address"));
            return None;
        }
        return Some(EndpointAddress::Socket(addr));
    }
    let Some((host, port)) = value.rsplit_once(':') else {
        c.problem(
            field(),
            format!("{value:?} has no port (expected host:port)"),
        );
        return None;
    };
    let port = match port.parse::<u16>() {
        Ok(p) if p != 0 => p,
        _ => {
            c.problem(field(), format!("{port:?} is not a port number"));
            return None;
        }
    };
    let valid_host = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if !valid_host {
        c.problem(
            field(),
            format!("{host:?} is neither an IP address nor a DNS name"),
        );
        return None;
    }
    Some(EndpointAddress::Dns {
        host: host.to_ascii_lowercase(),
        port,
    })
}

fn cluster(
    c: &mut Checker,
    cl: &pb::Cluster,
    endpoints: Vec<EndpointSpec>,
    has_identity: bool,
) -> ClusterSpec {
    let protocol = UpstreamProtocol::try_from(cl.protocol).unwrap_or_else(|_| {
        c.problem("protocol", format!("unknown value {}", cl.protocol));
        UpstreamProtocol::UseDownstream
    });
    let lb_policy = LbPolicy::try_from(cl.lb_policy).unwrap_or_else(|_| {
        c.problem("lbPolicy", format!("unknown value {}", cl.lb_policy));
        LbPolicy::RoundRobin
    });
    let ring_hash_header = match (lb_policy, &cl.ring_hash) {
        (LbPolicy::RingHash, Some(r)) if !r.header.is_empty() => {
            c.header_name("ringHash.header", &r.header)
        }
        (LbPolicy::RingHash, _) => {
            c.problem("ringHash.header", "is required when lbPolicy is RING_HASH");
            None
        }
        (_, Some(_)) => {
            c.problem("ringHash", "is only meaningful when lbPolicy is RING_HASH");
            None
        }
        (_, None) => None,
    };
    let ring_replicas_per_weight = match cl.ring_hash.as_ref().map_or(0, |r| r.replicas_per_weight)
    {
        0 => DEFAULT_RING_REPLICAS,
        n if n > 1024 => {
            c.problem("ringHash.replicasPerWeight", "must be at most 1024");
            DEFAULT_RING_REPLICAS
        }
        n => n,
    };
    let breakers = cl.circuit_breakers.unwrap_or_default();
    let limit = |v: u32| if v == 0 { DEFAULT_CIRCUIT_LIMIT } else { v };
    let budget = cl.retry_budget.unwrap_or_default();
    if budget.retry_percent > 1000 {
        c.problem("retryBudget.retryPercent", "must be at most 1000");
    }
    ClusterSpec {
        name: cl.name.clone(),
        protocol,
        lb_policy,
        ring_hash_header,
        ring_replicas_per_weight,
        connect_timeout: c
            .positive("connectTimeout", cl.connect_timeout.as_ref())
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT),
        idle_connection_timeout: c
            .positive("idleConnectionTimeout", cl.idle_connection_timeout.as_ref())
            .unwrap_or(DEFAULT_IDLE_CONNECTION),
        dns_min_refresh: c
            .positive("dnsMinRefresh", cl.dns_min_refresh.as_ref())
            .unwrap_or(DEFAULT_DNS_MIN_REFRESH),
        max_connections: limit(breakers.max_connections),
        max_pending_requests: limit(breakers.max_pending_requests),
        max_requests: limit(breakers.max_requests),
        retry_percent: if budget.retry_percent == 0 {
            DEFAULT_RETRY_PERCENT
        } else {
            budget.retry_percent
        },
        min_retries_per_second: if budget.min_retries_per_second == 0 {
            DEFAULT_MIN_RETRIES_PER_SECOND
        } else {
            budget.min_retries_per_second
        },
        identity: spiffe_id(c, || "identity".into(), &cl.identity, has_identity),
        endpoints,
    }
}

fn route_table(c: &mut Checker, t: &pb::RouteTable, clusters: &HashMap<&str, usize>) -> RouteTable {
    let mut table = RouteTable {
        name: t.name.clone(),
        virtual_hosts: Vec::new(),
        exact: HashMap::new(),
        suffixes: Vec::new(),
        prefixes: Vec::new(),
        any: None,
    };
    let mut host_names = HashSet::new();
    let mut domains_seen = HashSet::new();
    for (h, vh) in t.virtual_hosts.iter().enumerate() {
        let prefix = format!("virtualHosts[{h}]");
        c.unique(&mut host_names, &format!("{prefix}.name"), &vh.name);
        if vh.domains.is_empty() {
            c.problem(
                format!("{prefix}.domains"),
                "must list at least one domain (\"*\" for any)",
            );
        }
        for (d, domain) in vh.domains.iter().enumerate() {
            let field = format!("{prefix}.domains[{d}]");
            let domain = domain.to_ascii_lowercase();
            if !domains_seen.insert(domain.clone()) {
                c.problem(
                    &field,
                    format!("{domain:?} is already claimed by another virtual host"),
                );
                continue;
            }
            if domain == "*" {
                table.any = Some(h);
            } else if let Some(suffix) = domain.strip_prefix('*') {
                table.suffixes.push((suffix.to_string(), h));
            } else if let Some(prefix) = domain.strip_suffix('*') {
                table.prefixes.push((prefix.to_string(), h));
            } else if domain.is_empty() || domain.contains('*') {
                c.problem(&field, "a wildcard may only stand first or last");
            } else {
                table.exact.insert(domain, h);
            }
        }
        let routes = vh
            .routes
            .iter()
            .enumerate()
            .filter_map(|(r, route)| {
                self::route(c, &format!("{prefix}.routes[{r}]"), route, clusters)
            })
            .collect();
        table.virtual_hosts.push(VirtualHost {
            name: vh.name.clone(),
            routes,
        });
    }
    // Longest wildcard first: the most specific match wins.
    table
        .suffixes
        .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
    table
        .prefixes
        .sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    table
}

fn route(
    c: &mut Checker,
    field: &str,
    route: &pb::Route,
    clusters: &HashMap<&str, usize>,
) -> Option<Route> {
    let default_match = pb::RouteMatch::default();
    let m = route.r#match.as_ref().unwrap_or(&default_match);
    let path = match &m.path_specifier {
        None => PathMatch::Any,
        Some(PathSpecifier::Prefix(p)) => PathMatch::Prefix(p.clone()),
        Some(PathSpecifier::Path(p)) => PathMatch::Exact(p.clone()),
        Some(PathSpecifier::Regex(r)) => {
            PathMatch::Regex(c.regex(&format!("{field}.match.regex"), r)?)
        }
    };
    let grpc = m.grpc.as_ref().map(|g| GrpcMatch {
        service: g.service.clone(),
        method: Some(g.method.clone()).filter(|m| !m.is_empty()),
    });
    if grpc.as_ref().is_some_and(|g| g.service.is_empty()) {
        c.problem(format!("{field}.match.grpc.service"), "must not be empty");
    }
    let headers = m
        .headers
        .iter()
        .enumerate()
        .filter_map(|(i, h)| header_matcher(c, &format!("{field}.match.headers[{i}]"), h))
        .collect();
    let Some(action) = route.route.as_ref() else {
        c.problem(format!("{field}.route"), "is required");
        return None;
    };
    let action = route_action(c, &format!("{field}.route"), action, clusters)?;
    Some(Route {
        name: route.name.clone(),
        matcher: RouteMatcher {
            path,
            grpc,
            headers,
        },
        action,
        request_headers: header_mutation(
            c,
            &format!("{field}.requestHeaders"),
            &route.request_headers,
        ),
        response_headers: header_mutation(
            c,
            &format!("{field}.responseHeaders"),
            &route.response_headers,
        ),
    })
}

fn header_matcher(c: &mut Checker, field: &str, h: &pb::HeaderMatch) -> Option<HeaderMatcher> {
    let name = c.header_name(&format!("{field}.name"), &h.name)?;
    let kind = match &h.matcher {
        None => HeaderMatchKind::Present(true),
        Some(header_match::Matcher::Exact(v)) => HeaderMatchKind::Exact(v.clone()),
        Some(header_match::Matcher::Prefix(v)) => HeaderMatchKind::Prefix(v.clone()),
        Some(header_match::Matcher::Regex(r)) => {
            HeaderMatchKind::Regex(c.regex(&format!("{field}.regex"), r)?)
        }
        Some(header_match::Matcher::Present(p)) => HeaderMatchKind::Present(*p),
    };
    Some(HeaderMatcher {
        name,
        kind,
        invert: h.invert,
    })
}

fn route_action(
    c: &mut Checker,
    field: &str,
    a: &pb::RouteAction,
    clusters: &HashMap<&str, usize>,
) -> Option<RouteAction> {
    let cluster = |c: &mut Checker, f: String, name: &str| -> Option<usize> {
        let found = clusters.get(name).copied();
        if found.is_none() {
            c.problem(f, format!("no cluster named {name:?}"));
        }
        found
    };
    let target = match &a.cluster_specifier {
        None => {
            c.problem(
                format!("{field}.cluster"),
                "a cluster or weightedClusters is required",
            );
            return None;
        }
        Some(ClusterSpecifier::Cluster(name)) => {
            Target::Cluster(cluster(c, format!("{field}.cluster"), name)?)
        }
        // That the vDAG exists is checked once every vDAG is known
        // (`vdag_routes`), for carried-over route tables too.
        Some(ClusterSpecifier::Vdag(named)) => {
            if named.is_empty() || http::HeaderValue::from_str(named).is_err() {
                c.problem(
                    format!("{field}.vdag"),
                    format!("{named:?} is not a vDAG name"),
                );
                return None;
            }
            Target::VDag(named.clone())
        }
        Some(ClusterSpecifier::WeightedClusters(w)) => {
            let f = format!("{field}.weightedClusters");
            let mut total: u64 = 0;
            let mut picked = Vec::new();
            for (i, cw) in w.clusters.iter().enumerate() {
                if let Some(idx) = cluster(c, format!("{f}.clusters[{i}].name"), &cw.name) {
                    picked.push((idx, cw.weight));
                }
                total += u64::from(cw.weight);
            }
            if w.clusters.is_empty() {
                c.problem(format!("{f}.clusters"), "must not be empty");
                return None;
            }
            let total = match u32::try_from(total) {
                Ok(0) => {
                    c.problem(format!("{f}.clusters"), "weights must not all be zero");
                    return None;
                }
                Ok(t) => t,
                Err(_) => {
                    c.problem(
                        format!("{f}.clusters"),
                        "weights add up to more than 2^32-1",
                    );
                    return None;
                }
            };
            Target::Weighted {
                clusters: picked,
                total,
            }
        }
    };
    let t = a.timeouts.unwrap_or_default();
    let timeouts = Timeouts {
        response_headers: c.positive(
            &format!("{field}.timeouts.responseHeaders"),
            t.response_headers.as_ref(),
        ),
        idle: c.positive(&format!("{field}.timeouts.idle"), t.idle.as_ref()),
        max_duration: c.positive(
            &format!("{field}.timeouts.maxDuration"),
            t.max_duration.as_ref(),
        ),
    };
    let retry = a
        .retry_policy
        .as_ref()
        .and_then(|r| retry_policy(c, &format!("{field}.retryPolicy"), r));
    Some(RouteAction {
        target,
        timeouts,
        retry,
    })
}

fn retry_policy(c: &mut Checker, field: &str, r: &pb::RetryPolicy) -> Option<RetryPolicy> {
    if r.max_retries > MAX_RETRIES {
        c.problem(
            format!("{field}.maxRetries"),
            format!("must be at most {MAX_RETRIES}"),
        );
    }
    let mut policy = RetryPolicy {
        max_retries: r.max_retries.min(MAX_RETRIES),
        on_connect_failure: false,
        on_reset: false,
        on_503: false,
        on_grpc_unavailable: false,
        max_replay_body_bytes: match r.max_replay_body_bytes {
            0 => DEFAULT_REPLAY_BYTES,
            n => n,
        } as usize,
        backoff: c
            .duration(&format!("{field}.backoff"), r.backoff.as_ref())
            .unwrap_or(DEFAULT_RETRY_BACKOFF),
    };
    for (i, on) in r.retry_on.iter().enumerate() {
        match RetryOn::try_from(*on) {
            Ok(RetryOn::ConnectFailure) => policy.on_connect_failure = true,
            Ok(RetryOn::Reset) => policy.on_reset = true,
            Ok(RetryOn::Unavailable503) => policy.on_503 = true,
            Ok(RetryOn::GrpcUnavailable) => policy.on_grpc_unavailable = true,
            Ok(RetryOn::Unspecified) | Err(_) => c.problem(
                format!("{field}.retryOn[{i}]"),
                format!("unknown retry condition {on}"),
            ),
        }
    }
    if policy.max_retries > 0 && r.retry_on.is_empty() {
        c.problem(
            format!("{field}.retryOn"),
            "must name at least one condition when maxRetries > 0",
        );
    }
    (policy.max_retries > 0).then_some(policy)
}

fn header_mutation(c: &mut Checker, field: &str, m: &Option<pb::HeaderMutation>) -> HeaderMutation {
    let Some(m) = m else {
        return HeaderMutation::default();
    };
    let mut out = HeaderMutation::default();
    for (i, h) in m.set.iter().enumerate() {
        let name = c.header_name(&format!("{field}.set[{i}].name"), &h.name);
        if name.as_ref().is_some_and(is_connection_header) {
            c.problem(
                format!("{field}.set[{i}].name"),
                "connection-level headers cannot be set",
            );
            continue;
        }
        let value = HeaderValue::from_str(&h.value);
        if value.is_err() {
            c.problem(
                format!("{field}.set[{i}].value"),
                "is not a valid header value",
            );
        }
        if let (Some(n), Ok(v)) = (name, value) {
            out.set.push((n, v, h.append));
        }
    }
    for (i, name) in m.remove.iter().enumerate() {
        if let Some(n) = c.header_name(&format!("{field}.remove[{i}]"), name) {
            out.remove.push(n);
        }
    }
    out
}

/// Headers that describe one connection, not the request: setting them
/// from config would corrupt framing.
fn is_connection_header(name: &HeaderName) -> bool {
    use http::header::*;
    [
        CONNECTION,
        TRANSFER_ENCODING,
        CONTENT_LENGTH,
        UPGRADE,
        TE,
        HOST,
    ]
    .contains(name)
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}
