//! Replies the proxy makes itself. Each is well-formed for the caller's
//! protocol: an HTTP status with `x-gridmesh-error: <reason>`, or for gRPC a
//! trailers-only response carrying the matching `grpc-status`.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::body::{Body, empty, full};
use crate::grpc::{self, Code};

pub const ERROR_HEADER: &str = "x-gridmesh-error";

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("no route matches the request")]
    RouteNotFound,
    #[error("the cluster has no endpoints")]
    NoHealthyUpstream,
    #[error("circuit breaker open: too many requests in flight")]
    RequestOverflow,
    #[error("circuit breaker open: too many requests waiting for a connection")]
    PendingOverflow,
    #[error("could not connect to the upstream")]
    ConnectFailure,
    #[error("timed out connecting to the upstream")]
    ConnectTimeout,
    #[error("the upstream reset the stream or closed the connection")]
    UpstreamReset,
    #[error("the upstream did not send response headers in time")]
    ResponseHeadersTimeout,
    #[error("the stream was idle for longer than the route allows")]
    IdleTimeout,
    #[error("the request's deadline passed")]
    DeadlineExceeded,
    #[error("grpc-timeout header is malformed")]
    BadGrpcTimeout,
    #[error("the proxy is shutting down")]
    Draining,
    #[error("the listener was removed from the configuration and is draining")]
    ListenerRemoved,
    /// An authorization policy refused the request. Which one, and why,
    /// goes to the log and metrics only: a caller learns nothing about the
    /// policies.
    #[error("access denied")]
    AccessDenied,
}

impl From<crate::cluster::SendError> for ProxyError {
    fn from(error: crate::cluster::SendError) -> Self {
        use crate::cluster::SendError;
        match error {
            SendError::ConnectFailure => ProxyError::ConnectFailure,
            SendError::ConnectTimeout => ProxyError::ConnectTimeout,
            SendError::PendingOverflow => ProxyError::PendingOverflow,
            SendError::Reset => ProxyError::UpstreamReset,
        }
    }
}

impl ProxyError {
    /// Stable machine-readable reason, sent as `x-gridmesh-error` and used as
    /// a metric label (bounded: one value per variant).
    pub fn reason(self) -> &'static str {
        match self {
            ProxyError::RouteNotFound => "route_not_found",
            ProxyError::NoHealthyUpstream => "no_healthy_upstream",
            ProxyError::RequestOverflow => "overflow_requests",
            ProxyError::PendingOverflow => "overflow_pending",
            ProxyError::ConnectFailure => "upstream_connect_failure",
            ProxyError::ConnectTimeout => "upstream_connect_timeout",
            ProxyError::UpstreamReset => "upstream_reset",
            ProxyError::ResponseHeadersTimeout => "upstream_response_timeout",
            ProxyError::IdleTimeout => "stream_idle_timeout",
            ProxyError::DeadlineExceeded => "deadline_exceeded",
            ProxyError::BadGrpcTimeout => "bad_grpc_timeout",
            ProxyError::Draining => "draining",
            ProxyError::ListenerRemoved => "listener_removed",
            ProxyError::AccessDenied => "access_denied",
        }
    }

    fn http_status(self) -> StatusCode {
        match self {
            ProxyError::RouteNotFound => StatusCode::NOT_FOUND,
            ProxyError::BadGrpcTimeout => StatusCode::BAD_REQUEST,
            ProxyError::AccessDenied => StatusCode::FORBIDDEN,
            ProxyError::UpstreamReset => StatusCode::BAD_GATEWAY,
            ProxyError::ResponseHeadersTimeout
            | ProxyError::IdleTimeout
            | ProxyError::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::NoHealthyUpstream
            | ProxyError::RequestOverflow
            | ProxyError::PendingOverflow
            | ProxyError::ConnectFailure
            | ProxyError::ConnectTimeout
            | ProxyError::Draining
            | ProxyError::ListenerRemoved => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub(crate) fn grpc_code(self) -> Code {
        match self {
            ProxyError::RouteNotFound => Code::Unimplemented,
            ProxyError::BadGrpcTimeout => Code::Internal,
            ProxyError::AccessDenied => Code::PermissionDenied,
            ProxyError::RequestOverflow | ProxyError::PendingOverflow => Code::ResourceExhausted,
            ProxyError::ResponseHeadersTimeout
            | ProxyError::IdleTimeout
            | ProxyError::DeadlineExceeded => Code::DeadlineExceeded,
            ProxyError::NoHealthyUpstream
            | ProxyError::ConnectFailure
            | ProxyError::ConnectTimeout
            | ProxyError::UpstreamReset
            | ProxyError::Draining
            | ProxyError::ListenerRemoved => Code::Unavailable,
        }
    }

    pub fn into_response(self, grpc: bool) -> Response<Body> {
        let reason = HeaderValue::from_static(self.reason());
        if grpc {
            let mut rsp = Response::new(empty());
            let h = rsp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            h.insert(grpc::GRPC_STATUS, self.grpc_code().header_value());
            h.insert(grpc::GRPC_MESSAGE, reason.clone());
            h.insert(ERROR_HEADER, reason);
            return rsp;
        }
        let mut rsp = Response::new(full(Bytes::from(format!("{self}\n"))));
        *rsp.status_mut() = self.http_status();
        let h = rsp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        h.insert(ERROR_HEADER, reason);
        rsp
    }
}
