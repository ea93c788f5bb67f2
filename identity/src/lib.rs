//! Workload identity for gridmesh, shared by the sidecar and the control
//! plane.
//!
//! Always there, for the configuration model: [`SpiffeId`] and
//! [`IdentityFiles`], plain values without a runtime or a TLS stack. With
//! the `tls` feature (default), everything that holds and uses an identity:
//!
//! - [`svid`]: the SPIFFE ID and validity an X.509 SVID carries.
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

pub mod spiffe;

#[cfg(feature = "tls")]
pub mod ca;
#[cfg(feature = "tls")]
pub mod credentials;
#[cfg(feature = "tls")]
pub mod files;
#[cfg(feature = "tls")]
pub mod store;
#[cfg(feature = "tls")]
pub mod svid;
#[cfg(feature = "tls")]
pub mod verify;

use std::path::PathBuf;

pub use spiffe::{SpiffeId, SpiffeIdError};

#[cfg(feature = "tls")]
pub use {
    ca::Authority,
    credentials::{Credentials, CredentialsError, TrustBundle},
    store::{ALPN_H2, ALPN_HTTP11, ClientAuth, IdentityStatus, IdentityStore},
    svid::{SvidError, SvidInfo},
    verify::VerifyError,
};

/// An identity kept in PEM files by another issuer (cert-manager, SPIRE),
/// as the bootstrap names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityFiles {
    /// The SVID chain, leaf first.
    pub certificate: PathBuf,
    pub private_key: PathBuf,
    /// The roots peers must chain to.
    pub trust_bundle: PathBuf,
}
