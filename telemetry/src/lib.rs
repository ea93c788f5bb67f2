//! OpenTelemetry tracing for gridmesh's sidecar and block server.
//!
//! - [`settings`]: what the bootstrap says (collector, protocol, sampling,
//!   resource attributes, queue bound), validated by the config model.
//! - [`export`] (feature `export`): spans leave through a bounded queue
//!   drained by a task on the caller's runtime; when the collector is slow
//!   or down, new spans are dropped and counted, and no request ever waits.
//! - [`Tracing`] (feature `export`): the tracer, parent-based sampling, and
//!   the W3C `traceparent`/`tracestate` read from and written to requests.
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used)]

pub mod settings;
pub use settings::{OtlpProtocol, TraceSettings};

#[cfg(feature = "export")]
pub mod export;
#[cfg(feature = "export")]
mod tracer;
#[cfg(feature = "export")]
pub use tracer::{Tracing, TracingError, is_grpc_server_error};
