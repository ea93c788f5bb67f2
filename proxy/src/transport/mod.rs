//! Where bytes enter and leave the proxy. The accept side turns a
//! listener's next connection into a stream and its [`ConnectionContext`],
//! after the listener's TLS step ([`Terminator`]: mTLS, the peer's SPIFFE
//! ID and ALPN); the connect side ([`Connector`]) turns an endpoint's
//! address into a stream to it, originating mTLS to meshed endpoints
//! ([`Origination`]). Either way the result is an [`Io`], and nothing above
//! this module needs to know whether it is encrypted.

mod accept;
mod connect;
mod io;
mod observed;
mod tls;

pub use accept::{Accepted, ConnectionContext, accept};
pub use connect::{ConnectError, Connector};
pub use io::Io;
pub use observed::{Observed, ReadObserver};
pub use tls::{Alpn, Origination, Terminated, Terminator};
