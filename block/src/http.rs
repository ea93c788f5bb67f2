//! The plain-HTTP side port (Triton's 8002 convention): Prometheus `/metrics`
//! and KServe's `/v2/health/live` and `/v2/health/ready`, so kubelet probes
//! and scrapers need no gRPC.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use gridmesh_net::{AcceptBackoff, accept};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus::{Encoder, TextEncoder};
use tokio::net::TcpListener;

use crate::observe::Metrics;

/// Answers one question: is the server ready now.
pub type Readiness = Arc<dyn Fn() -> bool + Send + Sync>;

pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, ready: Readiness) {
    let mut backoff = AcceptBackoff::default();
    loop {
        let (stream, _) = accept(&listener, &mut backoff, "HTTP").await;
        let (metrics, ready) = (metrics.clone(), ready.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = respond(&request, &metrics, &ready);
                async move { Ok::<_, Infallible>(response) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn respond(
    request: &Request<Incoming>,
    metrics: &Metrics,
    ready: &Readiness,
) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String| {
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from(body)))
            .expect("a static response is valid")
    };
    if request.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    match request.uri().path() {
        "/metrics" => {
            let mut body = Vec::new();
            match TextEncoder::new().encode(&metrics.registry.gather(), &mut body) {
                Ok(()) => text(StatusCode::OK, String::from_utf8_lossy(&body).into_owned()),
                Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")),
            }
        }
        "/v2/health/live" => text(StatusCode::OK, "live\n".into()),
        "/v2/health/ready" if ready() => text(StatusCode::OK, "ready\n".into()),
        "/v2/health/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into()),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found (try /metrics, /v2/health/live, /v2/health/ready)\n".into(),
        ),
    }
}
