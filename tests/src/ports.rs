//! Loopback ports for tests, without the bind-and-release race: a port
//! picked by binding port 0 and closing the socket can be taken by another
//! test before it is used. Where a server can bind port 0 itself, tests do
//! that and read the address it bound; these guards cover the rest, and
//! hold their port for as long as they live.

use std::net::SocketAddr;

use socket2::{Domain, Socket, Type};

/// A loopback address that refuses connections while the guard lives: a
/// socket is bound there and never listens. It does not set SO_REUSEADDR,
/// so nothing else can bind the port meanwhile: a process told to serve
/// there fails to bind, which lets a test see that a process bound a port
/// it should not have. For a dead endpoint, a connect fails at once
/// (ECONNREFUSED), unlike a listener that never accepts (the kernel
/// completes that connect into its backlog).
pub struct RefusingPort {
    _socket: Socket,
    addr: SocketAddr,
}

impl RefusingPort {
    pub fn new() -> RefusingPort {
        let (socket, addr) = bound(false);
        RefusingPort {
            _socket: socket,
            addr,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Default for RefusingPort {
    fn default() -> Self {
        Self::new()
    }
}

/// A loopback port held for a server that must be told its address before
/// it starts (a control plane's config naming a sidecar's listener, a
/// server restarted on the same port): bound with SO_REUSEADDR and never
/// listening. gridmesh's servers set SO_REUSEADDR too, so they can bind and
/// listen on it; the kernel does not hand it out for port 0 while the guard
/// lives; and once the server exits the port refuses connections again and
/// is still held, so a restart binds the same address.
pub struct ReservedPort {
    _socket: Socket,
    addr: SocketAddr,
}

impl ReservedPort {
    pub fn new() -> ReservedPort {
        let (socket, addr) = bound(true);
        ReservedPort {
            _socket: socket,
            addr,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Default for ReservedPort {
    fn default() -> Self {
        Self::new()
    }
}

fn bound(reuse_address: bool) -> (Socket, SocketAddr) {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("a TCP socket");
    socket
        .set_reuse_address(reuse_address)
        .expect("SO_REUSEADDR");
    let any_port: SocketAddr = "127.0.0.1:0".parse().expect("an address");
    socket.bind(&any_port.into()).expect("bind a loopback port");
    let addr = socket
        .local_addr()
        .expect("the bound address")
        .as_socket()
        .expect("an IP address");
    (socket, addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusing_port_refuses_and_cannot_be_bound() {
        let port = RefusingPort::new();
        let error = std::net::TcpStream::connect(port.addr()).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused);
        // std sets SO_REUSEADDR, as gridmesh's servers do.
        let error = std::net::TcpListener::bind(port.addr()).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse);
    }

    #[test]
    fn a_reserved_port_serves_and_refuses_again_after() {
        let port = ReservedPort::new();
        for _ in 0..2 {
            let server = std::net::TcpListener::bind(port.addr()).unwrap();
            std::net::TcpStream::connect(port.addr()).unwrap();
            drop(server);
            let error = std::net::TcpStream::connect(port.addr()).unwrap_err();
            assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused);
        }
    }
}
