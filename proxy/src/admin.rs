//! The admin server (port 15000, loopback by default), on the control
//! thread.

use std::convert::Infallible;
use std::sync::Arc;

use parking_lot::Mutex;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use gridmesh_net::{AcceptBackoff, accept};
use gridmesh_proto::resource::Kind;

use crate::shared::Shared;
use crate::xds;

/// The xDS client's state, for `/config_dump`, when the proxy has one.
type XdsStatus = Option<Arc<Mutex<xds::Status>>>;

/// Serves admin requests on an already-bound (non-blocking) listener.
pub async fn serve(listener: std::net::TcpListener, shared: Arc<Shared>, xds: XdsStatus) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "admin listener unusable");
            return;
        }
    };
    let mut backoff = AcceptBackoff::default();
    loop {
        let (stream, _) = accept(&listener, &mut backoff, "admin").await;
        let (shared, xds) = (shared.clone(), xds.clone());
        tokio::spawn(async move {
            let service = service_fn(|req| {
                let response = handle(&shared, &xds, req);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn handle(shared: &Shared, xds: &XdsStatus, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/live") => text(StatusCode::OK, "live\n"),
        (&Method::GET, "/ready") if shared.drain.is_draining() => {
            text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
        }
        (&Method::GET, "/ready") if !shared.is_ready() => {
            let waiting_for_certificate = shared
                .identity
                .as_ref()
                .is_some_and(|i| !i.store.is_ready());
            let why = if waiting_for_certificate {
                "waiting for the workload certificate\n"
            } else {
                "waiting for the first complete config from the control plane\n"
            };
            text(StatusCode::SERVICE_UNAVAILABLE, why)
        }
        (&Method::GET, "/ready") => text(StatusCode::OK, "ready\n"),
        (&Method::GET, "/metrics") => {
            let mut rsp = text(StatusCode::OK, shared.metrics.encode());
            rsp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            rsp
        }
        (&Method::GET, "/config_dump") => json(&config_dump(shared, xds)),
        (&Method::GET, "/clusters") => {
            let runtime = shared.runtime.load();
            let clusters: Vec<_> = runtime.clusters.iter().map(|c| c.status()).collect();
            json(&clusters)
        }
        (&Method::GET, "/vdags") => json(&shared.listeners.vdags().status()),
        (&Method::POST, "/drain") => {
            shared.start_drain();
            text(StatusCode::OK, "draining\n")
        }
        (
            _,
            "/live" | "/ready" | "/metrics" | "/config_dump" | "/clusters" | "/vdags" | "/drain",
        ) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /ready /live /metrics /config_dump /clusters /vdags, POST /drain\n",
        ),
    }
}

/// The config being served, in the bootstrap's own shape (it loads again
/// as a bootstrap), with each resource's version and origin, and the xDS
/// client's state (warming listeners, rejected resources and why).
fn config_dump(shared: &Shared, xds: &XdsStatus) -> serde_json::Value {
    let runtime = shared.runtime.load();
    let snapshot = &runtime.snapshot;
    let resources: serde_json::Map<String, serde_json::Value> = Kind::PUSH_ORDER
        .into_iter()
        .map(|kind| {
            let list = kind
                .names(&snapshot.bootstrap)
                .into_iter()
                .map(|name| {
                    let origin = snapshot.origins.get(&(kind, name.to_string()));
                    serde_json::json!({
                        "name": name,
                        "source": origin.map_or(snapshot.source.as_str(), |o| o.source.as_str()),
                        "version": origin.map_or("static", |o| o.version.as_str()),
                    })
                })
                .collect();
            (kind.label().to_string(), serde_json::Value::Array(list))
        })
        .collect();
    let xds = xds.as_ref().map(|s| s.lock().clone());
    let identity = shared.identity.as_ref().map(|i| {
        let status = i.store.status();
        let time =
            |t: Option<std::time::SystemTime>| t.map(gridmesh_identity::store::humantime_utc);
        serde_json::json!({
            "spiffeId": status.id.as_ref().map(|id| id.as_str()),
            "notBefore": time(status.not_before),
            "notAfter": time(status.not_after),
            "trustBundleRoots": status.roots,
            "lastError": status.last_error,
        })
    });
    serde_json::json!({
        "source": snapshot.source,
        "bootstrap": &snapshot.bootstrap,
        "resources": resources,
        "xds": xds,
        "identity": identity,
    })
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
