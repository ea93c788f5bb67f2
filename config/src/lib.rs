//! gridmesh's configuration: reading the bootstrap file and turning gridmesh.v1
//! resources into the immutable snapshot the data plane serves from, with the
//! route tables compiled ([`route`]).
//!
//! Applying config is two-phase (as in ztunnel): everything is validated and
//! converted here, off the data path and without side effects, and only a
//! complete [`Snapshot`] is ever swapped in. A rejected file changes nothing.
//! A change to a snapshot ([`rebuild_snapshot`]) converts only the resources
//! it carries and takes the rest over from the snapshot it changes.
//!
//! Its own crate, with no runtime and no network: the sidecar serves what it
//! builds, and the control plane validates a directory with exactly the same
//! rules without linking the sidecar.
#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used)]

pub mod authz;
pub mod route;
mod validate;
pub mod vdag;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::Path;

use gridmesh_proto::config::Bootstrap;
use gridmesh_proto::resource::Kind;

pub use validate::{
    AccessLogSpec, Carryover, ClusterSpec, ControlPlaneIdentity, EndpointAddress, EndpointSpec,
    IdentitySource, ListenerSpec, LogDestination, Protocol, Snapshot, TlsMode, build_snapshot,
    rebuild_snapshot, validate_served,
};

/// Exit status for invalid configuration (EX_USAGE / EX_DATAERR family).
pub const EXIT_INVALID_CONFIG: i32 = 64;

/// Why a configuration was rejected: every problem found, each naming the
/// file, the resource and the field, so an operator can fix them all at once.
#[derive(Debug)]
pub struct ConfigError {
    pub source: String,
    pub problems: Vec<Problem>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// e.g. `cluster "echo"`, or `file` for a parse error.
    pub resource: String,
    /// Which resource of the validated set the problem belongs to, for
    /// callers that map it back (the control plane to a file, the xDS
    /// client to the update it rejects). `None`: the set as a whole.
    pub at: Option<ResourceAt>,
    /// The field path in the proto3 JSON names used by the file, e.g.
    /// `virtualHosts[0].routes[1].match.regex`.
    pub field: String,
    pub message: String,
}

/// Where a resource came from and which version of it is served.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Origin {
    /// e.g. `xds:gridmesh-control:15012`.
    pub source: String,
    pub version: String,
}

/// The `index`th resource of `kind` in the validated [`Bootstrap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceAt {
    pub kind: Kind,
    pub index: usize,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration in {}", self.source)?;
        for p in &self.problems {
            write!(
                f,
                "\n  {}: {}: {}: {}",
                self.source, p.resource, p.field, p.message
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Reads, parses and validates a bootstrap YAML (or JSON) file.
pub fn load_file(path: &Path) -> Result<Snapshot, ConfigError> {
    let source = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        source: source.clone(),
        problems: vec![Problem {
            resource: "file".into(),
            at: None,
            field: "-".into(),
            message: format!("cannot read: {e}"),
        }],
    })?;
    load_str(&text, &source)
}

/// Parses and validates bootstrap YAML; `source` names it in errors.
pub fn load_str(text: &str, source: &str) -> Result<Snapshot, ConfigError> {
    let bootstrap = parse_bootstrap(text, source)?;
    build_snapshot(bootstrap, source)
}

/// Parses the proto3 JSON mapping of `gridmesh.v1.Bootstrap` written as YAML.
/// Unknown fields are errors: a typo must not silently drop a setting.
pub fn parse_bootstrap(text: &str, source: &str) -> Result<Bootstrap, ConfigError> {
    yaml_serde::from_str::<Bootstrap>(text).map_err(|e| ConfigError {
        source: source.to_string(),
        problems: vec![Problem {
            resource: "file".into(),
            at: None,
            field: e
                .location()
                .map(|l| format!("line {} column {}", l.line(), l.column()))
                .unwrap_or_else(|| "-".into()),
            message: explain(e.to_string()),
        }],
    })
}

/// Adds the hint people need most: proto3 JSON durations are seconds.
fn explain(message: String) -> String {
    let duration_field = [
        "Timeout",
        "timeout",
        "backoff",
        "Refresh",
        "idle",
        "maxDuration",
        "responseHeaders",
    ]
    .iter()
    .any(|f| message.contains(f));
    if duration_field && message.contains("invalid digit") {
        format!("{message} (durations are seconds with an \"s\" suffix, e.g. \"0.25s\" or \"30s\")")
    } else {
        message
    }
}
