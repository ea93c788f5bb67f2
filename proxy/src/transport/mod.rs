//! Where bytes enter and leave the proxy. The accept side turns a
//! listener's next connection into a stream and its [`ConnectionContext`];
//! the connect side ([`Connector`]) turns an endpoint's address into a
//! stream to it. Both are plain TCP today: TLS termination (with the peer's
//! identity and ALPN) and origination are added here, and nothing above
//! this module needs to know which it got.

mod accept;
mod connect;
mod observed;

pub use accept::{Accepted, ConnectionContext, accept};
pub use connect::{ConnectError, Connector};
pub use observed::{Observed, ReadObserver};
