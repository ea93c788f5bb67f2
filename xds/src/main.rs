//! `gridmesh-control`: the control plane (`serve`) and a view of what it is
//! doing (`status`).
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::{Parser, Subcommand};
use gridmesh_xds::ca::tokens::Grant;
use gridmesh_xds::ca::{Ca, CaOptions};
use gridmesh_xds::{ControlPlane, EXIT_INVALID_CONFIG, Options, StartError, StatusView, status};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
#[command(version, about = "gridmesh control plane")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the config directory to sidecars over xDS (ADS, SotW and delta).
    Serve(Serve),
    /// Print a running control plane's config version, last config error and
    /// where each sidecar stands per resource type.
    Status {
        /// The control plane's admin address.
        #[arg(long, default_value = "http://127.0.0.1:15014")]
        admin: String,
    },
    /// Print a bootstrap token for one namespace and service account: what
    /// a workload outside Kubernetes presents to get its first certificate.
    Token {
        /// The CA's directory (the one `serve --ca-dir` uses; made if new).
        #[arg(long, env = "GRIDMESH_CA_DIR")]
        ca_dir: PathBuf,
        #[arg(long, default_value = "gridmesh.local")]
        trust_domain: String,
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        service_account: String,
        /// How long the token may be used for a first certificate.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        valid_for: Duration,
    },
}

#[derive(Parser)]
struct Serve {
    /// Directory of YAML/JSON files (sidecar bootstrap schema: listeners,
    /// routeTables, clusters, endpoints), merged and served; top level only,
    /// names starting with "." are skipped, symlinks are followed.
    #[arg(long, env = "GRIDMESH_CONFIG_DIR")]
    config_dir: PathBuf,
    /// xDS (gRPC) listen address; TLS when there is a CA.
    #[arg(long, env = "GRIDMESH_XDS_ADDRESS", default_value = "0.0.0.0:15012")]
    xds_address: SocketAddr,
    /// Admin HTTP listen address: /status, /ready, /metrics.
    #[arg(
        long,
        env = "GRIDMESH_ADMIN_ADDRESS",
        default_value = "127.0.0.1:15014"
    )]
    admin_address: SocketAddr,
    /// Re-read the directory this often even without change events
    /// (catches what inotify cannot see), e.g. "5s".
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    resync: Duration,
    /// Log filter, e.g. `info` or `gridmesh_xds=debug`.
    #[arg(long, env = "GRIDMESH_LOG", default_value = "info")]
    log: String,
    /// Run the certificate authority, keeping its key, certificate and
    /// token key in this directory (a self-signed root is made there when
    /// it holds none). With it the xDS port speaks TLS.
    #[arg(long, env = "GRIDMESH_CA_DIR")]
    ca_dir: Option<PathBuf>,
    /// The trust domain of the identities the CA signs.
    #[arg(long, env = "GRIDMESH_TRUST_DOMAIN", default_value = "gridmesh.local")]
    trust_domain: String,
    /// How long a workload certificate lives when the request names nothing.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    svid_lifetime: Duration,
    /// The longest a workload certificate may be asked to live.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    max_svid_lifetime: Duration,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match args.command {
        Command::Serve(serve) => {
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(&serve.log))
                .with_writer(std::io::stderr)
                .init();
            runtime.block_on(run(serve))
        }
        Command::Status { admin } => runtime.block_on(print_status(&admin)),
        Command::Token {
            ca_dir,
            trust_domain,
            namespace,
            service_account,
            valid_for,
        } => {
            let options = CaOptions {
                dir: ca_dir,
                trust_domain,
                default_lifetime: Duration::from_secs(86_400),
                max_lifetime: Duration::from_secs(86_400),
            };
            let grant = Grant {
                namespace,
                service_account,
            };
            match Ca::open(options).map(|ca| ca.tokens.issue(&grant, valid_for)) {
                Ok(Ok(token)) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Ok(Err(e)) => {
                    eprintln!("{e}");
                    ExitCode::from(2)
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn run(args: Serve) -> ExitCode {
    let (mut sigterm, mut sigint) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let options = Options {
        config_dir: args.config_dir,
        xds_addr: args.xds_address,
        admin_addr: args.admin_address,
        resync: args.resync,
        ca: args.ca_dir.map(|dir| CaOptions {
            dir,
            trust_domain: args.trust_domain,
            default_lifetime: args.svid_lifetime,
            max_lifetime: args.max_svid_lifetime,
        }),
    };
    let control = match ControlPlane::start(options).await {
        Ok(control) => control,
        Err(StartError::Config(rejected)) => {
            eprintln!("{rejected}");
            return ExitCode::from(EXIT_INVALID_CONFIG);
        }
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        _ = sigterm.recv() => {}
        _ = sigint.recv() => {}
    }
    tracing::info!("shutting down: closing xDS streams");
    control.shutdown();
    control.stopped().await;
    ExitCode::SUCCESS
}

async fn print_status(admin: &str) -> ExitCode {
    let base = if admin.contains("://") {
        admin.trim_end_matches('/').to_string()
    } else {
        format!("http://{}", admin.trim_end_matches('/'))
    };
    let uri = match format!("{base}/status").parse::<http::Uri>() {
        Ok(uri) => uri,
        Err(e) => {
            eprintln!("invalid admin address {admin:?}: {e}");
            return ExitCode::from(2);
        }
    };
    match fetch(uri.clone()).await {
        Ok(status) => {
            print!("{}", status::render(&status));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot read {uri}: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn fetch(uri: http::Uri) -> Result<StatusView, String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let response = tokio::time::timeout(Duration::from_secs(5), client.get(uri))
        .await
        .map_err(|_| "timed out after 5s".to_string())?
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)));
    }
    serde_json::from_slice(&body).map_err(|e| format!("unexpected answer: {e}"))
}
