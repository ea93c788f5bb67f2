//! One request's way through the proxy: route -> cluster -> endpoint ->
//! upstream, with the route's deadline, timeouts and retries, and the
//! response wrapped so its stream is observed and bounded on the way back.

use std::sync::Arc;
use std::time::Duration;

use http::header::HOST;
use http::request::Parts;
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use rand::RngExt;
use tokio::time::Instant;

use crate::balance::InFlight;
use crate::body::{Body, Completion, Replay, ResponseBody, StreamEnd, StreamLimits};
use crate::cluster::{Cluster, Endpoint, Permit, SendError};
use crate::error::ProxyError;
use crate::grpc;
use crate::headers;
use crate::server::{ListenerContext, RequestGuard, Shared};
use gridmesh_config::route::{RetryPolicy, Route};

/// Serves one downstream request. Never fails: errors become replies.
/// `connection` keeps the downstream connection counted as busy until the
/// response stream ends.
pub async fn serve(
    shared: Arc<Shared>,
    listener: Arc<ListenerContext>,
    req: Request<Incoming>,
    connection: RequestGuard,
) -> Response<Body> {
    listener.metrics.requests.inc();
    let grpc = grpc::is_grpc(req.headers());
    let http1 = req.version() < Version::HTTP_2;
    let mut rsp = match forward(&shared, &listener, req, grpc, connection).await {
        Ok(rsp) => rsp,
        Err(e) => {
            listener.metrics.local_reply(e.reason());
            e.into_response(grpc)
        }
    };
    if http1 && listener.closing() {
        // The listener is draining: this response is the connection's last.
        rsp.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    rsp
}

async fn forward(
    shared: &Shared,
    listener: &ListenerContext,
    req: Request<Incoming>,
    grpc: bool,
    connection: RequestGuard,
) -> Result<Response<Body>, ProxyError> {
    let start = Instant::now();
    // The snapshot this request started with serves it to the end, whatever
    // config arrives meanwhile.
    let runtime = shared.runtime.load_full();
    let (mut parts, body) = req.into_parts();
    let table = runtime
        .route_table(&listener.name)
        .ok_or(ProxyError::ListenerRemoved)?;
    let route = table.route(&parts).ok_or(ProxyError::RouteNotFound)?;
    let cluster = runtime.clusters[route.action.target.pick()].clone();
    let deadline = deadline(&parts, grpc, route, start)?;

    route.request_headers.apply(&mut parts.headers);
    headers::strip_hop_by_hop(&mut parts.headers);
    let admission = cluster.admit()?;
    cluster.deposit_request();

    let body: Body = body.map_err(Into::into).boxed_unsync();
    let version = cluster.upstream_version(parts.version);
    let upstream = Upstream::new(&parts, version);
    let (rsp, in_flight) = match &route.action.retry {
        Some(policy) => {
            send_with_retries(&cluster, &upstream, parts, body, policy, route, deadline).await?
        }
        _ => {
            let endpoint = cluster.pick(&parts.headers)?;
            let req = upstream.request(parts, body, deadline);
            send(&cluster, &endpoint, req, route, deadline).await?
        }
    };

    let (mut rparts, rbody) = rsp.into_parts();
    headers::strip_hop_by_hop(&mut rparts.headers);
    route.response_headers.apply(&mut rparts.headers);
    rparts.version = Version::default();
    cluster
        .metrics
        .response_headers
        .observe(start.elapsed().as_secs_f64());
    let exchange = Exchange {
        header_grpc_status: grpc::status(&rparts.headers),
        status: rparts.status,
        cluster,
        start,
        _admission: admission,
        _in_flight: in_flight,
        _connection: connection,
        recorded: false,
    };
    let limits = StreamLimits {
        deadline,
        idle: route.action.timeouts.idle,
        drain_expired: grpc.then(|| listener.drain.expiry_token()),
    };
    let body = ResponseBody::new(rbody, grpc, limits, exchange).boxed_unsync();
    Ok(Response::from_parts(rparts, body))
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

/// How requests are addressed upstream: the URI form and authority each
/// protocol expects, built once per request.
struct Upstream {
    version: Version,
    authority: Option<Authority>,
}

impl Upstream {
    fn new(parts: &Parts, version: Version) -> Self {
        let authority = parts.uri.authority().cloned().or_else(|| {
            parts
                .headers
                .get(HOST)
                .and_then(|h| Authority::try_from(h.as_bytes()).ok())
        });
        Upstream { version, authority }
    }

    fn request(&self, mut parts: Parts, body: Body, deadline: Option<Instant>) -> Request<Body> {
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = match (&self.authority, self.version) {
            // HTTP/2 carries the authority in the URI (:authority).
            (Some(authority), Version::HTTP_2) => {
                parts.headers.remove(HOST);
                Uri::builder()
                    .scheme(parts.uri.scheme().cloned().unwrap_or(Scheme::HTTP))
                    .authority(authority.clone())
                    .path_and_query(path)
                    .build()
                    .unwrap_or_default()
            }
            // HTTP/1.1 sends origin-form with a Host header.
            (authority, _) => {
                if let Some(authority) = authority
                    && !parts.headers.contains_key(HOST)
                    && let Ok(host) = HeaderValue::from_str(authority.as_str())
                {
                    parts.headers.insert(HOST, host);
                }
                Uri::from(path)
            }
        };
        parts.version = self.version;
        if let Some(deadline) = deadline
            && parts.headers.contains_key(grpc::GRPC_TIMEOUT)
        {
            // Propagate what is left, so every hop shares one deadline.
            let left = deadline.saturating_duration_since(Instant::now());
            parts
                .headers
                .insert(grpc::GRPC_TIMEOUT, grpc::format_timeout(left));
        }
        Request::from_parts(parts, body)
    }
}

/// Sends one attempt and waits for response headers within the route's
/// limits. The endpoint counts the request as in flight until the returned
/// guard is dropped with the end of the response stream.
async fn send(
    cluster: &Cluster,
    endpoint: &Endpoint,
    req: Request<Body>,
    route: &Route,
    deadline: Option<Instant>,
) -> Result<(Response<Incoming>, InFlight), ProxyError> {
    let in_flight = endpoint.load.start();
    let headers_deadline = route
        .action
        .timeouts
        .response_headers
        .map(|t| Instant::now() + t);
    let (limit, on_expiry) = match (headers_deadline, deadline) {
        (Some(h), Some(d)) if d <= h => (Some(d), ProxyError::DeadlineExceeded),
        (Some(h), _) => (Some(h), ProxyError::ResponseHeadersTimeout),
        (None, Some(d)) => (Some(d), ProxyError::DeadlineExceeded),
        (None, None) => (None, ProxyError::DeadlineExceeded),
    };
    let attempt = endpoint.send(req, &cluster.metrics);
    let result = match limit {
        Some(limit) => tokio::time::timeout_at(limit, attempt)
            .await
            .map_err(|_| on_expiry)?,
        None => attempt.await,
    };
    match result {
        Ok(rsp) => {
            // Time to response headers is the latency the balancer learns
            // from: a long stream is load, not slowness.
            in_flight.record_latency();
            Ok((rsp, in_flight))
        }
        // A failed attempt records no latency sample: an endpoint that fails
        // fast must not look fast.
        Err(e) => Err(match e {
            SendError::ConnectFailure => ProxyError::ConnectFailure,
            SendError::ConnectTimeout => ProxyError::ConnectTimeout,
            SendError::PendingOverflow => ProxyError::PendingOverflow,
            SendError::Reset => ProxyError::UpstreamReset,
        }),
    }
}

async fn send_with_retries(
    cluster: &Arc<Cluster>,
    upstream: &Upstream,
    parts: Parts,
    body: Body,
    policy: &RetryPolicy,
    route: &Route,
    deadline: Option<Instant>,
) -> Result<(Response<Incoming>, InFlight), ProxyError> {
    let replay = Replay::new(body, policy.max_replay_body_bytes);
    let mut attempt = 0;
    loop {
        let endpoint = cluster.pick(&parts.headers)?;
        let body = match replay.attempt() {
            Some(body) => body.boxed_unsync(),
            None => return Err(ProxyError::UpstreamReset),
        };
        let req = upstream.request(clone_parts(&parts), body, deadline);
        let result = send(cluster, &endpoint, req, route, deadline).await;
        let retryable = match &result {
            Ok((rsp, _)) => retryable_response(policy, rsp),
            Err(e) => retryable_error(policy, *e),
        };
        let can_retry = retryable
            && attempt < policy.max_retries
            && replay.is_replayable()
            && cluster.try_retry();
        if !can_retry {
            return result;
        }
        attempt += 1;
        let backoff = backoff(policy.backoff, attempt);
        if deadline.is_some_and(|d| Instant::now() + backoff >= d) {
            return result;
        }
        drop(result);
        tokio::time::sleep(backoff).await;
    }
}

fn retryable_response(policy: &RetryPolicy, rsp: &Response<Incoming>) -> bool {
    (policy.on_503 && rsp.status() == StatusCode::SERVICE_UNAVAILABLE)
        || (policy.on_grpc_unavailable
            && grpc::status(rsp.headers()) == Some(grpc::Code::Unavailable as u32))
}

fn retryable_error(policy: &RetryPolicy, e: ProxyError) -> bool {
    match e {
        ProxyError::ConnectFailure | ProxyError::ConnectTimeout => policy.on_connect_failure,
        ProxyError::UpstreamReset => policy.on_reset,
        _ => false,
    }
}

/// Jittered exponential backoff: base * 2^(attempt-1), scaled by 0.5-1.5.
fn backoff(base: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1 << (attempt - 1).min(10));
    exp.mul_f64(rand::rng().random_range(0.5..1.5))
}

fn clone_parts(parts: &Parts) -> Parts {
    let mut req = Request::new(());
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    req.into_parts().0
}

/// Accounts for one exchange until its response stream ends: the cluster's
/// in-flight permit, the endpoint's load, the downstream connection's busy
/// count, response and duration metrics.
struct Exchange {
    cluster: Arc<Cluster>,
    start: Instant,
    status: StatusCode,
    header_grpc_status: Option<u32>,
    _admission: Permit,
    _in_flight: InFlight,
    _connection: RequestGuard,
    recorded: bool,
}

impl Exchange {
    fn record(&mut self, trailer_grpc_status: Option<u32>) {
        self.recorded = true;
        let metrics = &self.cluster.metrics;
        metrics.duration.observe(self.start.elapsed().as_secs_f64());
        metrics.response(self.status, trailer_grpc_status.or(self.header_grpc_status));
    }
}

impl Completion for Exchange {
    fn finish(mut self, end: StreamEnd) {
        let grpc_status = match end {
            StreamEnd::Complete { grpc_status } => grpc_status,
            StreamEnd::Local(e) => Some(e.grpc_code() as u32),
            StreamEnd::UpstreamError => Some(grpc::Code::Unavailable as u32),
        };
        self.record(grpc_status);
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if !self.recorded {
            self.record(None);
        }
    }
}
