//! Servers out of file descriptors: the real binaries with their soft
//! RLIMIT_NOFILE lowered (prlimit) to the descriptors they already hold, so
//! every accept() fails with EMFILE while connections wait in the backlog.
//! An accept loop that retries at once spins a core — on the sidecar, the
//! control thread that also runs the xDS client. Each server must wait the
//! condition out cheaply and serve again once descriptors are back.

use std::net::SocketAddr;
use std::time::Duration;

use gridmesh_proto::discovery::DeltaDiscoveryRequest;
use gridmesh_proto::discovery::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use gridmesh_tests::harness::within;
use gridmesh_tests::process::{
    self, AdminResponse, ProxyConfig, ProxyProcess, admin_get, start_control_plane,
};
use rustix::process::{Pid, Resource, Rlimit, prlimit};
use tokio::net::TcpStream;

const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long CPU use is watched while accept() keeps failing.
const WINDOW: Duration = Duration::from_secs(1);
/// A busy loop burns the whole window; backing off (5 ms doubling to 1 s)
/// costs a handful of failed accepts. The bound leaves room for a loaded CI.
const MAX_CPU_IN_WINDOW: Duration = Duration::from_millis(250);

/// Lowers `pid`'s soft descriptor limit to its lowest free descriptor
/// number (a new descriptor takes the lowest free number, and fails with
/// EMFILE when that is at or above the limit); returns the limit to restore.
fn exhaust_descriptors(pid: u32) -> Rlimit {
    let open: std::collections::HashSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read the process's descriptors")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let lowest_free = (0..).find(|fd| !open.contains(fd)).expect("a free number");
    // prlimit sets both values; the hard one stays as it is.
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let fields: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a descriptor limit")
        .split_whitespace()
        .collect();
    let value = |v: &str| v.parse::<u64>().ok();
    let before = Rlimit {
        current: value(fields[3]),
        maximum: value(fields[4]),
    };
    let pid = Pid::from_raw(pid as i32).expect("a running process");
    prlimit(
        Some(pid),
        Resource::Nofile,
        Rlimit {
            current: Some(lowest_free),
            maximum: before.maximum,
        },
    )
    .expect("prlimit");
    before
}

fn restore_descriptors(pid: u32, limit: Rlimit) {
    let pid = Pid::from_raw(pid as i32).expect("a running process");
    prlimit(Some(pid), Resource::Nofile, limit).expect("prlimit");
}

/// Connections waiting in `addr`'s accept queue, from /proc/net/tcp (a
/// listening socket's rx_queue is its backlog).
fn accept_backlog(addr: SocketAddr) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(match addr.ip() {
            std::net::IpAddr::V4(ip) => ip.octets(),
            std::net::IpAddr::V6(_) => panic!("IPv4 only"),
        }),
        addr.port()
    );
    table
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 4 && f[1] == local && f[3] == "0A")
        .and_then(|f| f[4].split(':').nth(1))
        .and_then(|rx| usize::from_str_radix(rx, 16).ok())
        .unwrap_or_else(|| panic!("{addr} is not listening"))
}

/// CPU `pid` uses over [`WINDOW`] while connections to `addrs` wait in
/// their backlogs because every accept fails; returns it with the limit to
/// restore. The server may close a descriptor it held (a connection ending)
/// and accept into the freed slot; then the limit is lowered again and the
/// window measured anew.
async fn cpu_while_accepts_fail(pid: u32, addrs: &[SocketAddr]) -> (Duration, Rlimit) {
    let mut original = None;
    let mut held = Vec::new();
    for _ in 0..5 {
        let before = exhaust_descriptors(pid);
        let original = *original.get_or_insert(before);
        for addr in addrs {
            // On loopback a connection is in the accept queue when connect returns.
            held.push(
                TcpStream::connect(addr)
                    .await
                    .expect("the kernel completes the connect"),
            );
        }
        if addrs.iter().any(|addr| accept_backlog(*addr) == 0) {
            continue;
        }
        let cpu_before = process::cpu_time(pid);
        // The window is the measurement, not a wait for a condition.
        tokio::time::sleep(WINDOW).await;
        let used = process::cpu_time(pid) - cpu_before;
        if addrs.iter().all(|addr| accept_backlog(*addr) > 0) {
            return (used, original);
        }
    }
    panic!("connections to {addrs:?} kept being accepted: the descriptor limit does not hold");
}

/// The answer to GET `path` once the admin server serves again (the
/// connections queued meanwhile are accepted first).
async fn answered_again(admin: SocketAddr, path: &str) -> AdminResponse {
    within("the admin server to answer again", async {
        loop {
            if let Ok(response) = admin_get(admin, path).await {
                return response;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

#[tokio::test]
async fn a_sidecar_out_of_descriptors_waits_and_recovers() {
    let upstream = gridmesh_tests::harness::upstream("up").await;
    let yaml = format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
listeners:
  - {{ name: in, address: "127.0.0.1:0", routeTable: rt }}
routeTables:
  - name: rt
    virtualHosts:
      - {{ name: all, domains: ["*"], routes: [{{ name: all, route: {{ cluster: up }} }}] }}
clusters: [{{ name: up }}]
endpoints: [{{ cluster: up, endpoints: [{{ address: "{}" }}] }}]
"#,
        upstream.local_addr()
    );
    let binary = process::binary(process::GRIDMESH_PROXY).unwrap();
    let proxy = ProxyProcess::start(&binary, "sidecar", ProxyConfig::Yaml(yaml), START_TIMEOUT)
        .await
        .unwrap();
    let pid = proxy.pid().unwrap();
    let admin = proxy.admin_address().unwrap();
    let listener = proxy.listener_address("in").unwrap();

    let (used, limit) = cpu_while_accepts_fail(pid, &[admin, listener]).await;
    assert!(
        used < MAX_CPU_IN_WINDOW,
        "the sidecar used {used:?} of CPU in {WINDOW:?} failing to accept\n{}",
        proxy.output()
    );
    assert!(
        proxy.output().contains("cannot accept connections"),
        "the failure is logged\n{}",
        proxy.output()
    );

    restore_descriptors(pid, limit);
    let ready = answered_again(admin, "/ready").await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    let reply = gridmesh_tests::harness::http1_client()
        .get(listener, "up", "/echo")
        .await;
    assert_eq!(reply.status, 200, "the listener serves again");
}

#[tokio::test]
async fn a_control_plane_out_of_descriptors_waits_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("clusters.yaml"),
        "clusters: [{ name: up }]\n",
    )
    .unwrap();
    let any_port: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (control, xds, admin) = start_control_plane(dir.path(), any_port, any_port).await;
    let pid = control.pid().unwrap();

    let (used, limit) = cpu_while_accepts_fail(pid, &[admin, xds]).await;
    assert!(
        used < MAX_CPU_IN_WINDOW,
        "the control plane used {used:?} of CPU in {WINDOW:?} failing to accept\n{}",
        control.output()
    );

    restore_descriptors(pid, limit);
    let status = answered_again(admin, "/status").await;
    assert_eq!(status.status, 200, "{}", status.body);
    // The xDS server still serves: a new stream gets the clusters.
    let mut client = within(
        "an xDS connection",
        AggregatedDiscoveryServiceClient::connect(format!("http://{xds}")),
    )
    .await
    .expect("the xDS server accepts");
    let request = DeltaDiscoveryRequest {
        type_url: "type.googleapis.com/gridmesh.v1.Cluster".into(),
        ..Default::default()
    };
    let mut responses = within(
        "an xDS stream",
        client.delta_aggregated_resources(futures_util::stream::iter([request])),
    )
    .await
    .expect("the stream opens")
    .into_inner();
    let response = within("the first push", responses.message())
        .await
        .expect("a response")
        .expect("not the end");
    assert_eq!(response.resources.len(), 1, "{response:?}");
}
