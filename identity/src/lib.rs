//! Workload identity for gridmesh, shared by the sidecar and the control
//! plane.
//!
//! - [`spiffe`]: SPIFFE IDs and reading one off an X.509 SVID.
//! - [`credentials`]: an SVID with its key, and the trust bundle, from PEM,
//!   checked as a consistent set.
//! - [`verify`]: how a peer's SVID is verified (chain, then SPIFFE ID), on
//!   either side of a handshake.
//! - [`store`]: the identity held now, swapped on rotation; the TLS 1.3
//!   configs built on it read it per handshake.
//! - [`files`]: identity from files on disk, re-read on change.
//! - [`ca`]: signing SVIDs (the control plane's CA, tests).
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used)]

pub mod ca;
pub mod credentials;
pub mod files;
pub mod spiffe;
pub mod store;
pub mod verify;

pub use ca::Authority;
pub use credentials::{Credentials, CredentialsError, TrustBundle};
pub use files::IdentityFiles;
pub use spiffe::{SpiffeId, SpiffeIdError, SvidInfo};
pub use store::{ALPN_H2, ALPN_HTTP11, IdentityStatus, IdentityStore};
pub use verify::VerifyError;
