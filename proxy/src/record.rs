//! What the sidecar keeps of one request for those who watch it: Istio's
//! request metrics ([`crate::istio`]), its trace spans ([`crate::trace`])
//! and its access log line ([`crate::access_log`]). Made when the request
//! arrives, told by the pipeline's phases what they decided, finished when
//! the response stream ends. Spans and log entries exist only when the
//! listener traces or logs (and the request is sampled).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::access_log::{AccessLog, Entry, traceparent_trace_id};
use crate::body::Body;
use crate::cluster::{Cluster, Endpoint};
use crate::downstream::ListenerContext;
use crate::istio::{self, ListenerIstio};
use crate::trace::{Outcome, RequestTrace};
use crate::transport::ConnectionContext;
use gridmesh_identity::SpiffeId;

pub struct RequestRecord {
    start: Instant,
    grpc: bool,
    istio: Arc<ListenerIstio>,
    /// The caller's verified identity.
    peer: Option<SpiffeId>,
    cluster: Option<Arc<Cluster>>,
    trace: Option<RequestTrace>,
    log: Option<(Arc<AccessLog>, Box<Entry>)>,
    /// The upstream call's last attempt: its number from 0, its endpoint
    /// and the identity it presented.
    last_attempt: Mutex<Option<LastAttempt>>,
    request_bytes: Option<Arc<AtomicU64>>,
    response_bytes: u64,
    to_first_byte: Option<std::time::Duration>,
}

/// How the response ended.
pub struct Ending {
    pub status: StatusCode,
    pub grpc_status: Option<u32>,
    /// The `x-gridmesh-error` reason of a reply the sidecar made or cut.
    pub error: Option<&'static str>,
    /// The body size of a reply the sidecar made (an upstream's body is
    /// counted as it passes).
    pub local_body: Option<u64>,
}

impl RequestRecord {
    /// The record of a request that just arrived on `listener`.
    pub fn start(
        listener: &ListenerContext,
        req: &Request<Incoming>,
        connection: &ConnectionContext,
        grpc: bool,
    ) -> RequestRecord {
        let tracing = listener.tracing.load();
        let trace = (tracing.as_ref())
            .map(|tracing| RequestTrace::start(tracing, &listener.name, req, connection, grpc));
        let log = listener
            .access_log
            .load_full()
            .filter(|log| log.sampled())
            .map(|log| {
                let header = |name: http::header::HeaderName| req.headers().get(name).cloned();
                let trace_id = match &trace {
                    Some(trace) => trace.trace_id(),
                    None => (req.headers().get("traceparent"))
                        .and_then(|v| v.to_str().ok())
                        .and_then(traceparent_trace_id),
                };
                let entry = Entry {
                    start_time: SystemTime::now(),
                    listener: listener.name.clone(),
                    protocol: req.version(),
                    method: req.method().clone(),
                    uri: req.uri().clone(),
                    host: header(http::header::HOST),
                    grpc,
                    user_agent: header(http::header::USER_AGENT),
                    request_id: header(http::HeaderName::from_static("x-request-id")),
                    peer: connection.peer,
                    peer_identity: connection.peer_identity.clone(),
                    trace_id,
                    route: None,
                    cluster: None,
                    upstream: None,
                    attempts: None,
                    status: 0,
                    grpc_status: None,
                    duration: std::time::Duration::ZERO,
                    to_first_byte: None,
                    bytes_received: 0,
                    bytes_sent: 0,
                    error: None,
                };
                (log, Box::new(entry))
            });
        RequestRecord {
            start: Instant::now(),
            grpc,
            istio: listener.istio.clone(),
            peer: connection.peer_identity.clone(),
            cluster: None,
            trace,
            log,
            last_attempt: Mutex::new(None),
            request_bytes: None,
            response_bytes: 0,
            to_first_byte: None,
        }
    }

    /// Phase 3 picked `route` and `cluster`: the client span starts and its
    /// context goes upstream in `headers`.
    pub fn routed(&mut self, headers: &mut HeaderMap, route: &str, cluster: &Arc<Cluster>) {
        // The name is a copy: made only for a recorded span or a log line.
        let traced = self.trace.as_ref().is_some_and(RequestTrace::is_recording);
        let name = (traced || self.log.is_some()).then(|| cluster.name());
        if let Some(trace) = &mut self.trace {
            trace.call(headers, route, name.as_deref().unwrap_or_default());
        }
        if let Some((_, entry)) = &mut self.log {
            entry.route = Some(route.to_string());
            entry.cluster = name;
        }
        self.cluster = Some(cluster.clone());
    }

    /// `body`, its bytes counted as they pass upstream.
    pub fn count_request_body(&mut self, body: Body) -> Body {
        let count = Arc::new(AtomicU64::new(0));
        self.request_bytes = Some(count.clone());
        body.map_frame(move |frame| {
            if let Some(data) = frame.data_ref() {
                count.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
            frame
        })
        .boxed_unsync()
    }

    /// The upstream's response headers arrived.
    pub fn responded(&mut self) {
        self.to_first_byte = Some(self.start.elapsed());
    }

    /// `len` bytes of the response body passed downstream.
    pub fn response_data(&mut self, len: usize) {
        self.response_bytes += len as u64;
    }

    pub fn finish(self, ending: Ending) {
        let duration = self.start.elapsed();
        let bytes_received = (self.request_bytes.as_ref()).map_or(0, |c| c.load(Ordering::Relaxed));
        let bytes_sent = ending.local_body.unwrap_or(self.response_bytes);
        let last_attempt = self.last_attempt.lock().take();
        let cluster = self.cluster.as_ref().map(|c| c.spec());
        let key = istio::Key {
            peer: if self.istio.inbound() {
                self.peer.as_ref()
            } else {
                last_attempt.as_ref().and_then(|a| a.identity.as_ref())
            },
            cluster: cluster.as_ref().map(|spec| spec.name.as_str()),
            grpc: self.grpc,
            status: ending.status.as_u16(),
            grpc_status: ending.grpc_status,
            error: ending.error,
        };
        let measured = istio::Measured {
            duration,
            request_bytes: bytes_received,
            response_bytes: bytes_sent,
        };
        self.istio.record(&key, &measured);
        let last_attempt = last_attempt.map(|a| (a.attempt, a.endpoint));
        if let Some(trace) = self.trace {
            trace.finish(Outcome {
                status: ending.status,
                grpc_status: ending.grpc_status,
                error: ending.error,
                last_attempt,
                bytes_received,
                bytes_sent,
            });
        }
        if let Some((log, mut entry)) = self.log {
            entry.status = ending.status.as_u16();
            entry.grpc_status = ending.grpc_status;
            entry.error = ending.error;
            entry.duration = duration;
            // A local reply's headers leave when it is made, at the end.
            entry.to_first_byte =
                (self.to_first_byte).or_else(|| ending.local_body.map(|_| duration));
            entry.bytes_received = bytes_received;
            entry.bytes_sent = bytes_sent;
            if let Some((attempt, endpoint)) = last_attempt {
                entry.upstream = Some(endpoint);
                entry.attempts = Some(attempt + 1);
            }
            log.write(entry);
        }
    }
}

struct LastAttempt {
    attempt: u32,
    endpoint: SocketAddr,
    identity: Option<SpiffeId>,
}

/// Where each attempt went and why one was retried.
impl crate::call::Attempts for RequestRecord {
    fn sending(&self, attempt: u32, endpoint: &Endpoint) {
        *self.last_attempt.lock() = Some(LastAttempt {
            attempt,
            endpoint: endpoint.addr,
            identity: endpoint.identity.clone(),
        });
    }

    fn retrying(&self, attempt: u32, reason: &str) {
        if let Some(trace) = &self.trace {
            trace.retrying(attempt, reason);
        }
    }
}
