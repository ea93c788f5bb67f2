//! The sidecars of the vDAG benchmark: one per echo block (nodes n1..n4)
//! and the origin the client calls, each a `gridmesh-proxy` process with one
//! worker on the proxy core, all in one cgroup (their CPU time together is
//! the mesh's). Every hop between sidecars is mutual TLS: inbound listeners
//! are STRICT and the node clusters verify the sidecars' SPIFFE ID.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use anyhow::Result;
use gridmesh_tests::pki::TestPki;
use gridmesh_tests::ports::ReservedPort;

use crate::cgroup::TargetCgroup;
use crate::targets::process::PinnedProcess;

/// Nodes n1..n4: the chain is n1 -> n2 -> n3; the diamond n1 -> (n2, n3) ->
/// n4, whose join takes n2's output as `left` and n3's as `right`.
pub const NODES: usize = 4;
pub const CHAIN_NODES: usize = 3;

const VDAGS: &str = r#"
vdags:
  - name: chain
    version: "1"
    timeout: 10s
    entry: [n1]
    tails: [n3]
    nodes:
      - { label: n1, cluster: node-1, model: echo }
      - { label: n2, cluster: node-2, model: echo }
      - { label: n3, cluster: node-3, model: echo }
    edges: [{ from: n1, to: n2 }, { from: n2, to: n3 }]
  - name: diamond
    version: "1"
    timeout: 10s
    entry: [n1]
    tails: [n4]
    nodes:
      - { label: n1, cluster: node-1, model: echo }
      - { label: n2, cluster: node-2, model: echo }
      - { label: n3, cluster: node-3, model: echo }
      - { label: n4, cluster: node-4, model: echo }
    edges:
      - { from: n1, to: n2 }
      - { from: n1, to: n3 }
      - { from: n2, to: n4, tensors: [{ output: x, input: left }] }
      - { from: n3, to: n4, tensors: [{ output: x, input: right }] }
"#;

/// The running sidecars.
pub struct Mesh {
    /// Where the client calls: the origin's outbound listener.
    pub origin: SocketAddr,
    pub cgroup: TargetCgroup,
    processes: Vec<PinnedProcess>,
    _ports: Vec<ReservedPort>,
    _pki: TestPki,
}

/// One sidecar's addresses, held until the mesh stops.
struct Ports {
    inbound: ReservedPort,
    outbound: ReservedPort,
    admin: ReservedPort,
}

impl Mesh {
    /// Starts the origin and a sidecar in front of each of `blocks` (n1..n4).
    pub fn start(
        binary: &Path,
        blocks: &[SocketAddr; NODES],
        core: usize,
        work_dir: &Path,
    ) -> Result<Mesh> {
        let pki = TestPki::new();
        let files = pki.workload("sidecar");
        let id = TestPki::id("sidecar");
        let ports: Vec<Ports> = (0..=NODES)
            .map(|_| Ports {
                inbound: ReservedPort::new(),
                outbound: ReservedPort::new(),
                admin: ReservedPort::new(),
            })
            .collect();
        let clusters: String = (1..=NODES)
            .map(|n| format!("  - {{ name: node-{n}, connectTimeout: 1s, identity: \"{id}\" }}\n"))
            .collect();
        let endpoints: String = (1..=NODES)
            .map(|n| {
                let addr = ports[n].inbound.addr();
                format!("  - {{ cluster: node-{n}, endpoints: [{{ address: \"{addr}\" }}] }}\n")
            })
            .collect();
        // The origin-orchestrated path: the client asks the origin for each
        // node in turn (authority n<k>.node), every output back through it.
        let node_hosts: String = (1..=NODES)
            .map(|n| format!("      - {{ name: n{n}, domains: [n{n}.node], routes: [{{ name: n{n}, route: {{ cluster: node-{n} }} }}] }}\n"))
            .collect();
        let cgroup = TargetCgroup::create("vdag-sidecars")?;
        let mut processes = Vec::new();
        for (index, sidecar) in ports.iter().enumerate() {
            // Index 0 is the origin, whose "block" is never called.
            let block = match index {
                0 => blocks[0],
                n => blocks[n - 1],
            };
            let yaml = format!(
                r#"admin: {{ address: "{admin}" }}
{identity}
listeners:
  - {{ name: in, address: "{inbound}", direction: INBOUND, routeTable: local, tlsMode: STRICT }}
  - {{ name: out, address: "{outbound}", direction: OUTBOUND, routeTable: out }}
routeTables:
  - name: local
    virtualHosts:
      - {{ name: all, domains: ["*"], routes: [{{ name: all, route: {{ cluster: local }} }}] }}
  - name: out
    virtualHosts:
{node_hosts}      - {{ name: all, domains: ["*"], routes: [{{ name: all, route: {{ cluster: local }} }}] }}
clusters:
  - {{ name: local }}
{clusters}
endpoints:
  - {{ cluster: local, endpoints: [{{ address: "{block}" }}] }}
{endpoints}
{VDAGS}"#,
                admin = sidecar.admin.addr(),
                identity = files.yaml(),
                inbound = sidecar.inbound.addr(),
                outbound = sidecar.outbound.addr(),
            );
            let name = match index {
                0 => "origin".to_string(),
                n => format!("sidecar-n{n}"),
            };
            let config = work_dir.join(format!("{name}.yaml"));
            std::fs::write(&config, yaml)?;
            let mut command = Command::new(binary);
            command
                .arg("--config")
                .arg(&config)
                .args(["--workers", "1", "--log", "warn"]);
            let log = work_dir.join(format!("{name}.log"));
            processes.push(PinnedProcess::spawn(&name, command, core, &cgroup, &log)?);
        }
        let origin = ports[0].outbound.addr();
        let held = ports
            .into_iter()
            .flat_map(|p| [p.inbound, p.outbound, p.admin])
            .collect();
        Ok(Mesh {
            origin,
            cgroup,
            processes,
            _ports: held,
            _pki: pki,
        })
    }

    /// Why the mesh is not serving, if a sidecar exited.
    pub fn exited(&mut self) -> Option<String> {
        self.processes.iter_mut().find_map(|p| {
            p.exit_status()
                .map(|status| format!("{status}: {}", p.log_tail()))
        })
    }

    pub async fn stop(self) {
        for process in self.processes {
            process.stop().await;
        }
    }
}
