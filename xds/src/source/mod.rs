//! Where configuration comes from. Today one source: a directory of files
//! ([`files`]), watched for changes ([`watch`]).

pub mod files;
pub mod watch;

use std::fmt;

/// One reason a configuration was rejected, located as precisely as the
/// operator needs to fix it: the file, the resource in it and the field.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileProblem {
    /// The file's name in the config directory (`-` when no single file is
    /// to blame, the directory's path when it cannot be read).
    pub file: String,
    /// e.g. `cluster "echo"`, or `file` for a parse error.
    pub resource: String,
    /// Field path in the file's (proto3 JSON) names, or `line L column C`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for FileProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}: {}",
            self.file, self.resource, self.field, self.message
        )
    }
}

/// Why a directory's contents were not served: every problem found.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub problems: Vec<FileProblem>,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid configuration ({} problems)",
            self.problems.len()
        )?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Rejected {}
