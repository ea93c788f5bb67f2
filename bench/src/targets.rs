//! The paths a request can take from the load generator to the upstream:
//! direct, or through one or two hops of a proxy (client -> outbound ->
//! inbound -> upstream), each hop a real process pinned to the proxy core and
//! configured as a comparable minimal reverse proxy: one worker, no access
//! log, no timeouts that could cut a stream. gridmesh's two hops also run
//! with mTLS between them, as a mesh does.

mod envoy;
mod gridmesh;
mod haproxy;
mod mtls;
mod nginx;
pub mod process;

use std::fmt;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use serde::Serialize;

use crate::cgroup::TargetCgroup;
use crate::load::clients::{Exchange, GrpcUnaryEcho, Http1Echo, TlsClient, grpc_channel};
use gridmesh_tests::otlp::OtlpReceiver;
use mtls::HopIdentity;
use mtls::MeshPki;
use process::PinnedProcess;

/// Envoy needs a second or two to start; a proxy not serving after this is broken.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const READY_POLL: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ProxyKind {
    Gridmesh,
    Envoy,
    Nginx,
    Haproxy,
}

impl ProxyKind {
    /// The proxies gridmesh is compared with.
    pub const PEERS: [ProxyKind; 3] = [ProxyKind::Envoy, ProxyKind::Nginx, ProxyKind::Haproxy];

    pub fn name(self) -> &'static str {
        match self {
            ProxyKind::Gridmesh => "gridmesh",
            ProxyKind::Envoy => "envoy",
            ProxyKind::Nginx => "nginx",
            ProxyKind::Haproxy => "haproxy",
        }
    }

    fn command(self, binary: &Path, hop: &HopPlan) -> Result<Command> {
        match self {
            ProxyKind::Gridmesh => gridmesh::command(binary, hop),
            ProxyKind::Envoy => envoy::command(binary, hop),
            ProxyKind::Nginx => nginx::command(binary, hop),
            ProxyKind::Haproxy => haproxy::command(binary, hop),
        }
    }

    /// gridmesh and Envoy detect HTTP/1.1 or h2c per connection; nginx and
    /// HAProxy get a second port for h2c.
    fn listen_entry(self) -> Result<Entry> {
        let http1 = free_local_address()?;
        let grpc = match self {
            ProxyKind::Gridmesh | ProxyKind::Envoy => http1,
            ProxyKind::Nginx | ProxyKind::Haproxy => free_local_address()?,
        };
        Ok(Entry { http1, grpc })
    }
}

/// Where HTTP/1.1 and gRPC requests are sent to reach the upstream.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub http1: SocketAddr,
    pub grpc: SocketAddr,
}

/// A request path under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Target {
    /// `None`: straight to the upstream.
    pub proxy: Option<ProxyKind>,
    pub hops: u8,
    /// Mutual TLS between the hops (gridmesh only): the inbound hop's
    /// listener is STRICT and the outbound hop verifies its SPIFFE ID.
    pub mtls: bool,
    /// What the hops record of each request beyond their metrics
    /// (gridmesh only).
    pub observe: Observe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Observe {
    Nothing,
    /// Spans of this percentage of requests, exported over OTLP/gRPC to a
    /// collector in the bench process that accepts and counts them.
    Traces {
        percent: u8,
    },
    /// A JSON access log line per request, to a file.
    AccessLog,
}

impl Target {
    pub const DIRECT: Target = Target {
        proxy: None,
        hops: 0,
        mtls: false,
        observe: Observe::Nothing,
    };

    pub fn through(proxy: ProxyKind, hops: u8) -> Self {
        Self {
            proxy: Some(proxy),
            hops,
            mtls: false,
            observe: Observe::Nothing,
        }
    }

    /// Two gridmesh hops speaking mTLS to each other.
    pub const GRIDMESH_MTLS: Target = Target {
        proxy: Some(ProxyKind::Gridmesh),
        hops: 2,
        mtls: true,
        observe: Observe::Nothing,
    };

    /// Two gridmesh hops tracing `percent`% of requests.
    pub const fn gridmesh_traced(percent: u8) -> Target {
        Target {
            observe: Observe::Traces { percent },
            ..Target::GRIDMESH_PLAIN
        }
    }

    /// Two gridmesh hops writing an access log line per request.
    pub const GRIDMESH_ACCESS_LOG: Target = Target {
        observe: Observe::AccessLog,
        ..Target::GRIDMESH_PLAIN
    };

    const GRIDMESH_PLAIN: Target = Target {
        proxy: Some(ProxyKind::Gridmesh),
        hops: 2,
        mtls: false,
        observe: Observe::Nothing,
    };
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.proxy {
            None => f.write_str("direct")?,
            Some(proxy) => write!(f, "{} x{}", proxy.name(), self.hops)?,
        }
        if self.mtls {
            f.write_str(" mTLS")?;
        }
        match self.observe {
            Observe::Nothing => {}
            Observe::Traces { percent } => write!(f, " traced {percent}%")?,
            Observe::AccessLog => f.write_str(" access log")?,
        }
        Ok(())
    }
}

/// What one hop listens on and where it forwards; the proxy modules turn it
/// into their own configuration language.
pub struct HopPlan {
    pub name: String,
    pub listen: Entry,
    pub forward_to: Entry,
    /// The hop next to the upstream (the inbound sidecar).
    pub forwards_to_upstream: bool,
    pub admin: SocketAddr,
    /// Configuration, logs and temporary files.
    pub dir: PathBuf,
    /// Its certificate and what it expects of its peers (mTLS targets).
    pub identity: Option<HopIdentity>,
    /// Where its spans go and the share of requests sampled.
    pub tracing: Option<(String, f64)>,
    /// The file its access log goes to.
    pub access_log: Option<PathBuf>,
}

/// A target whose hops are all up and serving both protocols end to end.
pub struct RunningTarget {
    pub entry: Entry,
    /// The hop next to the upstream (the upstream itself for the direct
    /// path): where connection setup is measured.
    pub inbound: SocketAddr,
    /// How the load generator gets through the inbound hop's STRICT
    /// listener itself (mTLS targets).
    pub inbound_tls: Option<TlsClient>,
    hops: Vec<PinnedProcess>,
    /// Every hop's processes; `None` for the direct path.
    cgroup: Option<TargetCgroup>,
    /// The certificates' files live as long as the hops.
    _pki: Option<MeshPki>,
    /// The hops' trace collector (traced targets).
    _collector: Option<OtlpReceiver>,
}

impl RunningTarget {
    /// Starts the hops from the upstream outwards, each once the one behind
    /// it serves. `binary` is the proxy's executable (unused for direct).
    pub async fn start(
        target: Target,
        binary: Option<&Path>,
        upstream: SocketAddr,
        proxy_core: usize,
        dir: &Path,
    ) -> Result<Self> {
        let mut next = Entry {
            http1: upstream,
            grpc: upstream,
        };
        let mut hops = Vec::new();
        let mut cgroup = None;
        let mut inbound = upstream;
        let pki = target.mtls.then(MeshPki::new).transpose()?;
        let inbound_tls = pki.as_ref().map(MeshPki::load_generator).transpose()?;
        let collector = match target.observe {
            Observe::Traces { .. } => Some(OtlpReceiver::counting().await?),
            _ => None,
        };
        if let Some(proxy) = target.proxy {
            let mtls = match (target.mtls, target.observe) {
                (true, _) => "-mtls".to_string(),
                (false, Observe::Nothing) => String::new(),
                (false, Observe::Traces { percent }) => format!("-traced{percent}"),
                (false, Observe::AccessLog) => "-logged".to_string(),
            };
            let group = cgroup.insert(TargetCgroup::create(&format!(
                "{}-x{}{mtls}",
                proxy.name(),
                target.hops
            ))?);
            let binary = binary.with_context(|| format!("no {} binary", proxy.name()))?;
            for index in (1..=target.hops).rev() {
                let forwards_to_upstream = index == target.hops;
                let plan = HopPlan {
                    name: format!("{}-hop{index}-of-{}{mtls}", proxy.name(), target.hops),
                    listen: proxy.listen_entry()?,
                    forward_to: next,
                    forwards_to_upstream,
                    admin: free_local_address()?,
                    dir: dir.to_owned(),
                    identity: pki.as_ref().map(|pki| pki.hop(index, forwards_to_upstream)),
                    tracing: match (target.observe, &collector) {
                        (Observe::Traces { percent }, Some(collector)) => {
                            Some((collector.endpoint(), f64::from(percent) / 100.0))
                        }
                        _ => None,
                    },
                    access_log: (target.observe == Observe::AccessLog)
                        .then(|| dir.join(format!("access-hop{index}.log"))),
                };
                if forwards_to_upstream {
                    inbound = plan.listen.http1;
                }
                let log = dir.join(format!("{}.log", plan.name));
                let command = proxy.command(binary, &plan)?;
                let mut process =
                    PinnedProcess::spawn(&plan.name, command, proxy_core, group, &log)?;
                // A STRICT hop takes mTLS only: probed as the load generator.
                let probe_tls = inbound_tls.as_ref().filter(|_| forwards_to_upstream);
                wait_until_serving(plan.listen, probe_tls, &mut process).await?;
                next = plan.listen;
                hops.push(process);
            }
        }
        Ok(Self {
            entry: next,
            inbound,
            inbound_tls,
            hops,
            cgroup,
            _pki: pki,
            _collector: collector,
        })
    }

    /// The cgroup of every hop's processes; `None` for the direct path.
    pub fn cgroup(&self) -> Option<&TargetCgroup> {
        self.cgroup.as_ref()
    }

    pub async fn stop(self) {
        for hop in self.hops {
            hop.stop().await;
        }
        // The cgroup goes (with anything left in it) after the hops.
        drop(self.cgroup);
    }
}

/// Polls until an HTTP/1.1 and a gRPC request through `entry` both succeed
/// (an HTTP/1.1 request over mTLS, with `tls`: the gRPC path through a
/// STRICT hop is proved by the probe of the hop in front of it).
async fn wait_until_serving(
    entry: Entry,
    tls: Option<&TlsClient>,
    process: &mut PinnedProcess,
) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = process.exit_status() {
            bail!(
                "{} exited with {status} while starting\n{}",
                process.name(),
                process.log_tail()
            );
        }
        let attempt = probe(entry, tls).await;
        match attempt {
            Ok(()) => return Ok(()),
            Err(error) if Instant::now() >= deadline => {
                bail!(
                    "{} did not serve within {READY_TIMEOUT:?}: {error:#}\n{}",
                    process.name(),
                    process.log_tail()
                )
            }
            Err(_) => tokio::time::sleep(READY_POLL).await,
        }
    }
}

async fn probe(entry: Entry, tls: Option<&TlsClient>) -> Result<()> {
    let payload = Bytes::from_static(b"ready?");
    Http1Echo::connect_with(entry.http1, payload.clone(), tls.cloned())
        .await?
        .exchange()
        .await
        .context("HTTP/1.1")?;
    if tls.is_some() {
        return Ok(());
    }
    let channel = grpc_channel(entry.grpc).await?;
    GrpcUnaryEcho::new(channel, payload)
        .exchange()
        .await
        .context("gRPC")
}

/// A loopback address nobody listens on right now. Another process could
/// take it before the proxy binds it; the proxy then fails to start and says so.
fn free_local_address() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?)
}
