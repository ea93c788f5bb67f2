//! A call to a cluster: admission under its breakers, an endpoint picked by
//! its balancer, the request put in the form the upstream protocol expects,
//! the response-headers and whole-request deadlines, and budgeted retries
//! with a replay body. It needs no route — a vDAG hop calls a cluster
//! directly — only a [`CallPolicy`].
//!
//! Response heads (and, through the response body, trailers) reach the
//! endpoint's load state here, which is where the balancer learns of the
//! endpoint's own load reports.

use std::net::SocketAddr;
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
use crate::body::{Body, Replay};
use crate::cluster::{Cluster, Endpoint, Lease, Permit};
use crate::error::ProxyError;
use crate::grpc;
use gridmesh_config::route::RetryPolicy;

/// What a call may take: time and attempts.
#[derive(Clone, Copy, Default)]
pub struct CallPolicy<'a> {
    /// When the whole request must be over (the route's max duration, the
    /// client's `grpc-timeout`); what is left travels on in `grpc-timeout`.
    pub deadline: Option<Instant>,
    /// How long each attempt may wait for response headers.
    pub response_headers_timeout: Option<Duration>,
    pub retry: Option<&'a RetryPolicy>,
    /// Sends every attempt to the endpoint this key belongs to
    /// ([`Cluster::pick_by_key`]) instead of the balancer's choice.
    pub affinity: Option<&'a [u8]>,
    /// Endpoints an earlier try failed at: when the balancer picks one of
    /// them, another endpoint is taken if there is one.
    pub avoid: &'a [SocketAddr],
    /// Told where each attempt goes and why one is retried (the request's
    /// trace).
    pub attempts: Option<&'a dyn Attempts>,
}

/// What a call's attempts are told to, as they happen.
pub trait Attempts: Sync {
    /// Attempt `attempt` (0 first) goes to `endpoint`.
    fn sending(&self, attempt: u32, endpoint: &Endpoint);
    /// Attempt `attempt` failed in a way the retry policy retries.
    fn retrying(&self, attempt: u32, reason: &str);
}

/// An upstream's answer, with what must live as long as its body streams.
pub struct Answer {
    pub response: Response<Incoming>,
    /// The endpoint counts the request as in flight until this is dropped.
    pub in_flight: InFlight,
    /// The cluster's `maxRequests` breaker, likewise.
    pub admission: Permit,
    /// The HTTP/1.1 connection, back to its pool when this is dropped after
    /// the body was read to the end.
    pub lease: Lease,
}

/// One attempt's response, and the guards that go with it into [`Answer`].
struct Attempt {
    response: Response<Incoming>,
    in_flight: InFlight,
    lease: Lease,
}

/// Sends `parts` and `body` to `cluster` under `policy`.
pub async fn call(
    cluster: &Arc<Cluster>,
    parts: Parts,
    body: Body,
    policy: &CallPolicy<'_>,
) -> Result<Answer, ProxyError> {
    let admission = cluster.admit()?;
    cluster.deposit_request();
    let upstream = Upstream::new(&parts, cluster.upstream_version(parts.version));
    let Attempt {
        response,
        in_flight,
        lease,
    } = match policy.retry {
        Some(retry) => send_with_retries(cluster, &upstream, parts, body, retry, policy).await?,
        None => {
            let endpoint = pick(cluster, &parts.headers, policy)?;
            if let Some(attempts) = policy.attempts {
                attempts.sending(0, &endpoint);
            }
            let request = upstream.request(parts, body, policy.deadline);
            send(cluster, &endpoint, request, policy).await?
        }
    };
    Ok(Answer {
        response,
        in_flight,
        admission,
        lease,
    })
}

fn pick(
    cluster: &Cluster,
    headers: &http::HeaderMap,
    policy: &CallPolicy<'_>,
) -> Result<Arc<Endpoint>, ProxyError> {
    match policy.affinity {
        Some(key) => cluster.pick_by_key(key),
        None => cluster.pick_avoiding(headers, policy.avoid),
    }
}

/// How requests are addressed upstream: the URI form and authority each
/// protocol expects, worked out once per request.
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

/// Sends one attempt and waits for response headers within the policy's
/// limits. The endpoint counts the request as in flight until the returned
/// guard is dropped with the end of the response stream.
async fn send(
    cluster: &Cluster,
    endpoint: &Endpoint,
    req: Request<Body>,
    policy: &CallPolicy<'_>,
) -> Result<Attempt, ProxyError> {
    let in_flight = endpoint.load.start();
    let headers_deadline = policy.response_headers_timeout.map(|t| Instant::now() + t);
    let (limit, on_expiry) = match (headers_deadline, policy.deadline) {
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
        Ok((response, lease)) => {
            // Time to response headers is the latency the balancer learns
            // from: a long stream is load, not slowness.
            in_flight.record_latency();
            in_flight.observe_report(response.headers());
            Ok(Attempt {
                response,
                in_flight,
                lease,
            })
        }
        // A failed attempt records no latency sample: an endpoint that fails
        // fast must not look fast.
        Err(e) => Err(e.into()),
    }
}

async fn send_with_retries(
    cluster: &Arc<Cluster>,
    upstream: &Upstream,
    mut parts: Parts,
    body: Body,
    retry: &RetryPolicy,
    policy: &CallPolicy<'_>,
) -> Result<Attempt, ProxyError> {
    let replay = Replay::new(body, retry.max_replay_body_bytes);
    let mut attempt = 0;
    loop {
        let endpoint = pick(cluster, &parts.headers, policy)?;
        let body = match replay.attempt() {
            Some(body) => body.boxed_unsync(),
            None => return Err(ProxyError::UpstreamReset),
        };
        // The head is copied only when another attempt may follow.
        let last_possible = attempt >= retry.max_retries;
        let head = if last_possible {
            std::mem::replace(&mut parts, empty_parts())
        } else {
            clone_parts(&parts)
        };
        let req = upstream.request(head, body, policy.deadline);
        if let Some(attempts) = policy.attempts {
            attempts.sending(attempt, &endpoint);
        }
        let result = send(cluster, &endpoint, req, policy).await;
        let retryable = match &result {
            Ok(attempt) => retryable_response(retry, &attempt.response),
            Err(e) => retryable_error(retry, *e),
        };
        let can_retry =
            retryable && !last_possible && replay.is_replayable() && cluster.try_retry();
        if !can_retry {
            return result;
        }
        if let Some(attempts) = policy.attempts {
            let reason = match &result {
                Ok(answered) => match grpc::status(answered.response.headers()) {
                    Some(code) => format!("grpc-status {code}"),
                    None => format!("HTTP {}", answered.response.status().as_u16()),
                },
                Err(e) => e.reason().to_string(),
            };
            attempts.retrying(attempt, &reason);
        }
        attempt += 1;
        let backoff = backoff(retry.backoff, attempt);
        if policy
            .deadline
            .is_some_and(|d| Instant::now() + backoff >= d)
        {
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

fn empty_parts() -> Parts {
    Request::new(()).into_parts().0
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    use super::*;
    use crate::body::empty;
    use crate::metrics::Metrics;
    use crate::runtime::Runtime;

    /// An HTTP/1.1 upstream answering `/slow` after 500 ms and anything
    /// else at once, with its path in `x-path`.
    async fn upstream() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let service = service_fn(|req: Request<Incoming>| async move {
                        if req.uri().path() == "/slow" {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                        let mut rsp = Response::new(Full::new(bytes::Bytes::from_static(b"ok")));
                        rsp.headers_mut()
                            .insert("x-path", HeaderValue::from_str(req.uri().path()).unwrap());
                        Ok::<_, Infallible>(rsp)
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        addr
    }

    /// A cluster as a vDAG hop uses one: taken from the runtime by name and
    /// called with a policy, no route involved.
    #[tokio::test]
    async fn a_cluster_is_called_without_a_route() {
        let up = upstream().await;
        let yaml = format!(
            "clusters: [{{ name: block }}]\nendpoints: [{{ cluster: block, endpoints: [{{ address: \"{up}\" }}] }}]\n"
        );
        let snapshot = gridmesh_config::load_str(&yaml, "test").unwrap();
        let runtime = Runtime::build(snapshot, None, &Metrics::default(), None, None)
            .unwrap()
            .commit();
        let cluster = &runtime.clusters[0];
        let head = |path: &str| {
            Request::get(format!("http://block{path}"))
                .body(())
                .unwrap()
                .into_parts()
                .0
        };
        let answer = call(cluster, head("/hop"), empty(), &CallPolicy::default())
            .await
            .unwrap();
        assert_eq!(answer.response.status(), StatusCode::OK);
        assert_eq!(answer.response.headers()["x-path"], "/hop");
        let policy = CallPolicy {
            deadline: Some(Instant::now() + Duration::from_millis(100)),
            ..CallPolicy::default()
        };
        let late = call(cluster, head("/slow"), empty(), &policy).await;
        assert_eq!(late.err(), Some(ProxyError::DeadlineExceeded));
    }
}
