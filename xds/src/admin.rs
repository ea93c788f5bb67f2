//! The admin server (port 15014, loopback by default): `/status` for
//! operators and `gridmesh-control status`, `/ready` for probes,
//! `/metrics` for Prometheus.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use gridmesh_net::{AcceptBackoff, accept};
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::{Shared, status};

pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut backoff = AcceptBackoff::default();
    loop {
        let (stream, _) = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            accepted = accept(&listener, &mut backoff, "admin") => accepted,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(|req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, &req)) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn handle(shared: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/ready") if shared.listening.load(Ordering::Acquire) => {
            text(StatusCode::OK, "ready\n")
        }
        (&Method::GET, "/ready") => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        (&Method::GET, "/status") => json(&status::view(shared)),
        (&Method::GET, "/metrics") => {
            let mut rsp = text(StatusCode::OK, shared.metrics.encode());
            rsp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            rsp
        }
        (_, "/ready" | "/status" | "/metrics") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /status /ready /metrics\n",
        ),
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut rsp = Response::new(Full::new(body.into()));
    *rsp.status_mut() = status;
    rsp
}

fn json(value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => {
            let mut rsp = text(StatusCode::OK, body);
            rsp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            rsp
        }
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}
