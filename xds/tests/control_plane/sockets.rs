//! What the control plane does to the sockets it accepts.

use std::os::fd::{BorrowedFd, RawFd};
use std::time::Duration;

use socket2::SockRef;
use tokio::net::TcpStream;

use crate::fixtures::CLUSTERS;
use crate::harness::Harness;

/// xDS pushes are small writes: with Nagle's algorithm on, each waits for
/// the sidecar's delayed ACK. tonic ignores its own `tcp_nodelay` when
/// given an incoming stream, so the server sets it on what it accepts.
/// The accepted socket is found among this process's descriptors (the
/// server runs in the test) by its addresses.
#[tokio::test]
async fn accepted_xds_connections_have_nodelay() {
    let h = Harness::start(&[("clusters.yaml", CLUSTERS)]).await;
    let server = h.control.xds_addr();
    let client = TcpStream::connect(server).await.unwrap();
    let client_addr = client.local_addr().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let nodelay = loop {
        if let Some(nodelay) = accepted_nodelay(server, client_addr) {
            break nodelay;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the control plane never accepted the connection from {client_addr}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(nodelay, "TCP_NODELAY is off on the accepted xDS connection");
}

/// TCP_NODELAY of this process's socket whose local address is `local` and
/// peer is `peer`, once one exists.
fn accepted_nodelay(local: std::net::SocketAddr, peer: std::net::SocketAddr) -> Option<bool> {
    std::fs::read_dir("/proc/self/fd")
        .ok()?
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<RawFd>().ok())
        .find_map(|fd| {
            // SAFETY: the descriptor is only borrowed for these calls; one
            // closed meanwhile fails them (or names another socket, which
            // the address check then rejects).
            #[allow(unsafe_code)]
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            let socket = SockRef::from(&fd);
            let addresses = (socket.local_addr().ok()?, socket.peer_addr().ok()?);
            if addresses.0.as_socket()? != local || addresses.1.as_socket()? != peer {
                return None;
            }
            socket.tcp_nodelay().ok()
        })
}
