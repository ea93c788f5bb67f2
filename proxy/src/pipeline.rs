//! One request's life, as named phases, so anyone can see where each
//! decision is made:
//!
//! 1. **filter**  — the listener's filters see the request head first
//!    ([`crate::filter`]): they may change it (and so its routing), answer
//!    locally, or pause.
//! 2. **authorize** — the listener's authorization policies (DENY, then
//!    ALLOW) against the caller's SPIFFE ID and the request head.
//! 3. **vDAG**    — a client's call of a vDAG (`x-gridmesh-vdag`), or a hop
//!    or a delivery from another sidecar, is served by [`crate::vdag`]
//!    instead of a route.
//! 4. **route**   — the runtime the request is served with from start to
//!    end; the listener's route table picks a route and its cluster — or
//!    its vDAG, served by [`crate::vdag`] as from step 3.
//! 5. **prepare** — the deadline (route max duration, client `grpc-timeout`),
//!    who the mTLS caller was (`x-forwarded-client-cert`), the route's
//!    request-header mutations, hop-by-hop headers dropped.
//! 6. **call**    — the cluster call ([`crate::call`]): admission, pick,
//!    connect, timeouts, retries.
//! 7. **respond** — hop-by-hop headers dropped, the route's response-header
//!    mutations, response filters in reverse order, and the body wrapped to
//!    enforce the stream's limits and account for it when it ends.
//!
//! Never fails: every error becomes a reply in the caller's protocol.

use std::sync::Arc;

use arc_swap::ArcSwap;
use http::request::Parts;
use http::{HeaderValue, Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::balance::InFlight;
use crate::body::{Body, Completion, ResponseBody, StreamEnd, StreamLimits};
use crate::call::{self, Answer, CallPolicy};
use crate::cluster::{Cluster, Lease, Permit};
use crate::downstream::{ListenerContext, RequestGuard};
use crate::error::ProxyError;
use crate::filter::{Direction, FilterStack};
use crate::grpc;
use crate::headers;
use crate::record::{Ending, RequestRecord};
use crate::runtime::Runtime;
use crate::transport::ConnectionContext;
use crate::vdag::{self, VDags};
use gridmesh_config::authz::{Denial, ListenerAuthz};
use gridmesh_config::route::Route;
use gridmesh_identity::SpiffeId;

/// Serves one downstream request. `connection` keeps the downstream
/// connection counted as busy until the response stream ends.
pub async fn serve(
    runtime: &ArcSwap<Runtime>,
    listener: &ListenerContext,
    context: Arc<ConnectionContext>,
    mut req: Request<Incoming>,
    connection: RequestGuard,
) -> Response<Body> {
    listener.metrics.requests.inc();
    let grpc = grpc::is_grpc(req.headers());
    let http1 = req.version() < Version::HTTP_2;
    let filters = listener.filters.for_request(&context);
    let mut record = Some(RequestRecord::start(listener, &req, &context, grpc));
    req.extensions_mut().insert(context);
    let forwarded = forward(
        runtime,
        listener,
        req,
        grpc,
        filters,
        connection,
        &mut record,
    )
    .await;
    let (mut rsp, error) = match forwarded {
        Ok(rsp) => (rsp, None),
        Err(e) => {
            let reason = e.reason();
            listener.metrics.local_reply(reason);
            (e.into_response(grpc), Some(reason))
        }
    };
    // Answered before an upstream exchange took the record over: an error,
    // or a filter's local reply.
    if let Some(record) = record {
        record.finish(Ending {
            status: rsp.status(),
            grpc_status: grpc::status(rsp.headers()),
            error,
            local_body: Some(rsp.body().size_hint().exact().unwrap_or(0)),
        });
    }
    if http1 && listener.closing() {
        // The listener is draining: this response is the connection's last.
        rsp.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    rsp
}

async fn forward(
    runtime: &ArcSwap<Runtime>,
    listener: &ListenerContext,
    req: Request<Incoming>,
    grpc: bool,
    filters: Option<FilterStack>,
    connection: RequestGuard,
    record: &mut Option<RequestRecord>,
) -> Result<Response<Body>, ProxyError> {
    let start = Instant::now();
    let (mut parts, body) = req.into_parts();
    let mut body: Body = body.map_err(Into::into).boxed_unsync();

    // 1. filter
    if let Some(filters) = &filters {
        if let Some(reply) = filters.on_request_headers(&mut parts).await {
            return Ok(reply);
        }
        body = filters.watch(body, Direction::Request);
    }

    // 2. authorize — with the snapshot that then serves the request to the
    // end, whatever config arrives meanwhile.
    let runtime = runtime.load_full();
    let peer = parts
        .extensions
        .get::<Arc<ConnectionContext>>()
        .and_then(|c| c.peer_identity.clone());
    if let Some(authz) = runtime.snapshot.authorization.get(&*listener.name) {
        authorize(authz, &parts, peer.as_ref(), listener)?;
    }

    // 3. vDAG
    if let Some(step) = VDags::step(&parts, listener) {
        let vdags = &listener.vdags;
        return Ok(vdags
            .serve(step, runtime, listener, parts, body, start, record)
            .await);
    }

    // 4. route
    let table = runtime
        .route_table(&listener.name)
        .ok_or(ProxyError::ListenerRemoved)?;
    let route = table.route(&parts).ok_or(ProxyError::RouteNotFound)?;
    let Some(cluster) = route.action.target.pick() else {
        // A route to a vDAG: this sidecar becomes the request's origin.
        let named = route.action.target.vdag().unwrap_or_default();
        let named = HeaderValue::from_str(named).map_err(|_| ProxyError::RouteNotFound)?;
        let (vdags, step) = (&listener.vdags, vdag::Step::Call(named));
        let runtime = runtime.clone();
        return Ok(vdags
            .serve(step, runtime, listener, parts, body, start, record)
            .await);
    };
    let cluster = runtime.clusters[cluster].clone();

    // 5. prepare
    let deadline = deadline(&parts, grpc, route, start)?;
    headers::set_forwarded_client_cert(&mut parts.headers, peer.as_ref());
    route.request_headers.apply(&mut parts.headers);
    headers::strip_hop_by_hop(&mut parts.headers);
    if let Some(record) = record.as_mut() {
        record.routed(&mut parts.headers, &route.name, &cluster);
        body = record.count_request_body(body);
    }

    // 6. call
    let policy = CallPolicy {
        deadline,
        response_headers_timeout: route.action.timeouts.response_headers,
        retry: route.action.retry.as_ref(),
        affinity: None,
        avoid: &[],
        attempts: record.as_ref().map(|r| r as &dyn call::Attempts),
    };
    let Answer {
        response,
        in_flight,
        admission,
        lease,
    } = call::call(&cluster, parts, body, &policy).await?;
    cluster
        .metrics
        .response_headers
        .observe(start.elapsed().as_secs_f64());

    // 7. respond
    if let Some(record) = record.as_mut() {
        record.responded();
    }
    let (mut rparts, rbody) = response.into_parts();
    headers::strip_hop_by_hop(&mut rparts.headers);
    route.response_headers.apply(&mut rparts.headers);
    rparts.version = Version::default();
    let exchange = Exchange {
        header_grpc_status: grpc::status(&rparts.headers),
        status: rparts.status,
        cluster,
        start,
        _admission: admission,
        in_flight,
        _lease: lease,
        _connection: connection,
        record: record.take(),
        recorded: false,
    };
    let limits = StreamLimits {
        deadline,
        idle: route.action.timeouts.idle,
        drain_expired: grpc.then(|| listener.drain.expiry_token()),
    };
    let mut body = ResponseBody::new(rbody, grpc, limits, exchange).boxed_unsync();
    if let Some(filters) = &filters {
        if let Some(reply) = filters.on_response_headers(&mut rparts).await {
            return Ok(reply);
        }
        body = filters.watch(body, Direction::Response);
    }
    Ok(Response::from_parts(rparts, body))
}

/// Refuses a request the listener's policies do not allow, saying why in
/// the log and the metric only.
fn authorize(
    authz: &ListenerAuthz,
    parts: &http::request::Parts,
    peer: Option<&SpiffeId>,
    listener: &ListenerContext,
) -> Result<(), ProxyError> {
    let Err(denial) = authz.check(parts, peer) else {
        return Ok(());
    };
    let policy = match denial {
        Denial::Denied { policy } => policy,
        Denial::NotAllowed => "",
    };
    listener.metrics.access_denied(policy);
    tracing::info!(
        listener = %listener.name,
        peer = %peer.map_or("(plaintext)", |p| p.as_str()),
        method = %parts.method,
        path = %parts.uri.path(),
        policy = %if policy.is_empty() { "(no ALLOW policy matched)" } else { policy },
        "request denied by authorization policy"
    );
    Err(ProxyError::AccessDenied)
}

/// The request's deadline: the route's max duration and the client's
/// `grpc-timeout`, whichever ends first.
fn deadline(
    parts: &Parts,
    grpc: bool,
    route: &Route,
    start: Instant,
) -> Result<Option<Instant>, ProxyError> {
    let route_deadline = route.action.timeouts.max_duration.map(|d| start + d);
    let client_deadline = match parts.headers.get(grpc::GRPC_TIMEOUT) {
        Some(v) if grpc => Some(start + grpc::parse_timeout(v).ok_or(ProxyError::BadGrpcTimeout)?),
        _ => None,
    };
    Ok(match (route_deadline, client_deadline) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    })
}

/// Accounts for one exchange until its response stream ends: the cluster's
/// in-flight permit, the endpoint's load (and its load reports in
/// trailers), the downstream connection's busy count, response and duration
/// metrics.
struct Exchange {
    cluster: Arc<Cluster>,
    start: Instant,
    status: StatusCode,
    header_grpc_status: Option<u32>,
    _admission: Permit,
    in_flight: InFlight,
    /// Gives the upstream connection back when the exchange is over.
    _lease: Lease,
    _connection: RequestGuard,
    /// Ends with the response stream.
    record: Option<RequestRecord>,
    recorded: bool,
}

impl Exchange {
    fn record(&mut self, trailer_grpc_status: Option<u32>, error: Option<&'static str>) {
        self.recorded = true;
        let metrics = &self.cluster.metrics;
        let grpc_status = trailer_grpc_status.or(self.header_grpc_status);
        metrics.duration.observe(self.start.elapsed().as_secs_f64());
        metrics.response(self.status, grpc_status);
        if let Some(record) = self.record.take() {
            record.finish(Ending {
                status: self.status,
                grpc_status,
                error,
                local_body: None,
            });
        }
    }
}

impl Completion for Exchange {
    fn data(&mut self, len: usize) {
        if let Some(record) = &mut self.record {
            record.response_data(len);
        }
    }

    fn trailers(&mut self, trailers: &http::HeaderMap) {
        self.in_flight.observe_report(trailers);
    }

    fn finish(mut self, end: StreamEnd) {
        let (grpc_status, error) = match end {
            StreamEnd::Complete { grpc_status } => (grpc_status, None),
            StreamEnd::Local(e) => (Some(e.grpc_code() as u32), Some(e.reason())),
            StreamEnd::UpstreamError => {
                (Some(grpc::Code::Unavailable as u32), Some("upstream_reset"))
            }
        };
        self.record(grpc_status, error);
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if !self.recorded {
            self.record(None, None);
        }
    }
}
