//! gridmesh's control plane: reads configuration from a source (a directory
//! of files), turns it into versioned snapshots and serves them to every
//! sidecar over xDS (Envoy's aggregated discovery service, SotW and delta).
//!
//! sources (`source`) -> snapshot (`snapshot`) -> xDS server (`server`),
//! with `clients`, `admin` and `metrics` observing from the side.
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used)]

mod admin;
pub mod ca;
mod clients;
mod metrics;
mod reload;
mod server;
mod snapshot;
pub mod source;
pub mod status;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::net::TcpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Connections the kernel queues before the server accepts them. A whole
/// fleet reconnects at once after a control-plane restart; with tokio's
/// default (1,024) a burst of 1,000 streams on a busy 2-core machine saw
/// connections reset (the kernel caps this at `net.core.somaxconn`).
const ACCEPT_BACKLOG: u32 = 4096;
use tokio_util::sync::CancellationToken;

pub use clients::{ClientView, Nack, Protocol, Subscribed, TypeView};
pub use source::{FileProblem, Rejected};
pub use status::{ConfigError, ConfigView, StatusView};

use crate::clients::Registry;
use crate::metrics::Metrics;
use crate::snapshot::Snapshot;

/// Exit status for a config directory that cannot be served at startup
/// (the sidecar uses the same for a bad bootstrap).
pub const EXIT_INVALID_CONFIG: u8 = 64;

/// How the control plane is started.
#[derive(Debug, Clone)]
pub struct Options {
    /// The directory of YAML/JSON files to serve.
    pub config_dir: PathBuf,
    /// Where the xDS (gRPC) server listens.
    pub xds_addr: SocketAddr,
    /// Where the admin server (`/status`, `/ready`, `/metrics`) listens.
    pub admin_addr: SocketAddr,
    /// How often the directory is re-read even without change events.
    pub resync: Duration,
    /// The certificate authority; with it the xDS port speaks TLS and xDS
    /// streams need a workload certificate.
    pub ca: Option<ca::CaOptions>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(Rejected),
    #[error("cannot watch the config directory {dir}: {source}")]
    Watch { dir: PathBuf, source: notify::Error },
    #[error("cannot open the CA: {0}")]
    Ca(#[from] ca::CaError),
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// State every part of the control plane shares.
pub(crate) struct Shared {
    pub snapshots: watch::Sender<Arc<Snapshot>>,
    /// The latest rejected change, cleared when a change is served.
    pub last_error: Mutex<Option<ConfigError>>,
    pub clients: Arc<Registry>,
    pub metrics: Metrics,
    /// The xDS server is accepting streams.
    pub listening: AtomicBool,
    pub shutdown: CancellationToken,
    /// xDS streams must come over mTLS (there is a CA to get a certificate from).
    pub xds_needs_identity: bool,
}

/// A running control plane.
pub struct ControlPlane {
    shared: Arc<Shared>,
    xds_addr: SocketAddr,
    admin_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl ControlPlane {
    /// Loads the config directory, binds both servers and starts serving.
    /// A directory that does not validate fails the start: there is no
    /// earlier config to fall back on.
    pub async fn start(options: Options) -> Result<ControlPlane, StartError> {
        let dir = options.config_dir.clone();
        // Watching starts before the first read, so no change slips between.
        let watcher = source::watch::DirWatcher::new(&dir, options.resync).map_err(|source| {
            StartError::Watch {
                dir: dir.clone(),
                source,
            }
        })?;
        let (snapshot, fingerprint) = reload::initial(&dir).await.map_err(StartError::Config)?;
        let bind = |what, addr: SocketAddr| async move {
            let error = |source| StartError::Bind { what, addr, source };
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()
            } else {
                TcpSocket::new_v6()
            }
            .map_err(error)?;
            socket.set_reuseaddr(true).map_err(error)?;
            socket.bind(addr).map_err(error)?;
            let listener = socket.listen(ACCEPT_BACKLOG).map_err(error)?;
            let local =
                listener
                    .local_addr()
                    .map_err(|source| StartError::Bind { what, addr, source })?;
            Ok::<_, StartError>((listener, local))
        };
        let (xds, xds_addr) = bind("xDS", options.xds_addr).await?;
        let (admin, admin_addr) = bind("the admin server", options.admin_addr).await?;

        let metrics = Metrics::default();
        metrics.config_served(&snapshot.version);
        tracing::info!(
            version = %snapshot.version,
            files = snapshot.files.len(),
            dir = %dir.display(),
            "serving config"
        );
        let shared = Arc::new(Shared {
            snapshots: watch::Sender::new(Arc::new(snapshot)),
            last_error: Mutex::new(None),
            clients: Arc::default(),
            metrics,
            listening: AtomicBool::new(false),
            shutdown: CancellationToken::new(),
            xds_needs_identity: options.ca.is_some(),
        });
        let ca = options.ca.map(ca::Ca::open).transpose()?.map(Arc::new);
        let incoming = match &ca {
            None => tls::plain(xds).boxed(),
            Some(ca) => tls::secured(xds, ca.serving_identity()?, shared.clone()).boxed(),
        };
        let ca_service = ca.map(|ca| ca::service(ca, shared.clone()));
        let reloads = tokio::spawn(reload::run(shared.clone(), dir, watcher, fingerprint));
        let grpc = tokio::spawn({
            let shared = shared.clone();
            async move {
                let served = tonic::transport::Server::builder()
                    // Finds sidecars that vanished without closing.
                    .http2_keepalive_interval(Some(Duration::from_secs(30)))
                    .http2_keepalive_timeout(Some(Duration::from_secs(10)))
                    .add_service(server::service(shared.clone()))
                    .add_optional_service(ca_service)
                    .serve_with_incoming_shutdown(
                        // gridmesh_net's accept loop sets TCP_NODELAY (tonic
                        // ignores its own setting with an incoming stream)
                        // and waits out EMFILE.
                        incoming,
                        shared.shutdown.clone().cancelled_owned(),
                    )
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "xDS server failed");
                }
            }
        });
        shared.listening.store(true, Ordering::Release);
        tracing::info!(%xds_addr, %admin_addr, "control plane listening");
        let admin = tokio::spawn(admin::serve(admin, shared.clone()));
        Ok(ControlPlane {
            shared,
            xds_addr,
            admin_addr,
            tasks: vec![reloads, grpc, admin],
        })
    }

    pub fn xds_addr(&self) -> SocketAddr {
        self.xds_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// What `GET /status` shows.
    pub fn status(&self) -> StatusView {
        status::view(&self.shared)
    }

    /// Stops accepting streams and ends the open ones; [`Self::stopped`]
    /// waits for that to finish.
    pub fn shutdown(&self) {
        self.shared.listening.store(false, Ordering::Release);
        self.shared.shutdown.cancel();
    }

    /// Waits until both servers and the config watcher have stopped.
    pub async fn stopped(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }
}
