//! Bodies that travel through the proxy. Nothing here buffers a stream: the
//! wrappers pass frames through as they come and only watch them go by.

mod replay;
mod response;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, combinators::UnsyncBoxBody};

pub use replay::Replay;
pub use response::{Completion, ResponseBody, StreamEnd, StreamLimits};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The one body type both directions use, so requests and responses of
/// every origin (upstream, replay, local reply) fit the same connections.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn full(bytes: Bytes) -> Body {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}
