//! Reading the config directory: every `*.yaml`, `*.yml` and `*.json` file
//! at its top level, each in the sidecar's bootstrap schema, merged into one
//! set of resources and validated whole with the sidecar's own validator.
//!
//! Names starting with `.` are skipped and symlinks are followed, so a
//! Kubernetes ConfigMap mount (visible symlinks into a `..data` directory
//! that is swapped atomically) reads as the plain files it shows.

use std::path::{Path, PathBuf};

use gridmesh_config::{ConfigError, parse_bootstrap, validate_served};
use gridmesh_proto::config::Bootstrap;
use gridmesh_proto::resource::Kind;
use twox_hash::XxHash64;

use super::{FileProblem, Rejected};

/// The directory's files as read, before parsing: what a change is detected
/// on, so that events which change no content push nothing.
pub struct Contents {
    /// (file name, text), sorted by name.
    files: Vec<(String, Result<String, String>)>,
    fingerprint: u64,
}

impl Contents {
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }
}

/// A validated, merged set of resources and the files it came from.
pub struct Loaded {
    pub resources: Bootstrap,
    pub files: Vec<String>,
}

/// Reads every config file in `dir`. Only a missing or unreadable
/// directory fails here; a file that cannot be read becomes a problem
/// reported by [`load`].
pub fn read(dir: &Path) -> Result<Contents, Rejected> {
    let unreadable = |e: std::io::Error| Rejected {
        problems: vec![FileProblem {
            file: dir.display().to_string(),
            resource: "directory".into(),
            field: "-".into(),
            message: format!("cannot read: {e}"),
        }],
    };
    let mut paths: Vec<(String, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(unreadable)? {
        let entry = entry.map_err(unreadable)?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if !is_config_name(&name) {
            continue;
        }
        let path = entry.path();
        // Follows symlinks: a dangling one is reported when read below.
        if std::fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        paths.push((name, path));
    }
    paths.sort();
    let mut hasher = XxHash64::with_seed(0);
    let files: Vec<_> = paths
        .into_iter()
        .map(|(name, path)| {
            let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read: {e}"));
            std::hash::Hasher::write(&mut hasher, name.as_bytes());
            match &text {
                Ok(t) => std::hash::Hasher::write(&mut hasher, t.as_bytes()),
                Err(e) => std::hash::Hasher::write(&mut hasher, e.as_bytes()),
            }
            std::hash::Hasher::write_u8(&mut hasher, 0xff);
            (name, text)
        })
        .collect();
    Ok(Contents {
        fingerprint: std::hash::Hasher::finish(&hasher),
        files,
    })
}

fn is_config_name(name: &str) -> bool {
    !name.starts_with('.')
        && [".yaml", ".yml", ".json"]
            .iter()
            .any(|ext| name.len() > ext.len() && name.ends_with(ext))
}

/// Parses every file, merges them and validates the result as the sidecar
/// would. Every problem is reported against the file that caused it.
pub fn load(contents: &Contents, dir: &Path) -> Result<Loaded, Rejected> {
    let mut problems = Vec::new();
    let mut merged = Bootstrap::default();
    // For each kind (in `Kind::PUSH_ORDER` slots), the file index of each
    // resource in the merged list, to map validation problems back.
    let mut owners = Kind::PUSH_ORDER.map(|_| Vec::new());
    for (index, (name, text)) in contents.files.iter().enumerate() {
        let text = match text {
            Ok(text) => text,
            Err(message) => {
                problems.push(FileProblem {
                    file: name.clone(),
                    resource: "file".into(),
                    field: "-".into(),
                    message: message.clone(),
                });
                continue;
            }
        };
        let file = match parse_bootstrap(text, name) {
            Ok(file) => file,
            Err(e) => {
                problems.extend(from_config_error(e, name));
                continue;
            }
        };
        // Checked here rather than by the validator, which sees only the
        // merged set and could not say which file set them.
        for (field, set) in [
            ("admin", file.admin.is_some()),
            ("drainTimeout", file.drain_timeout.is_some()),
            ("xds", file.xds.is_some()),
        ] {
            if set {
                problems.push(FileProblem {
                    file: name.clone(),
                    resource: "bootstrap".into(),
                    field: field.into(),
                    message: "belongs in a sidecar's own bootstrap, not in what the control \
                              plane serves"
                        .into(),
                });
            }
        }
        for kind in Kind::PUSH_ORDER {
            owners[slot(kind)].extend(std::iter::repeat_n(index, kind.count(&file)));
        }
        merged.clusters.extend(file.clusters);
        merged.endpoints.extend(file.endpoints);
        merged.listeners.extend(file.listeners);
        merged.route_tables.extend(file.route_tables);
        merged
            .authorization_policies
            .extend(file.authorization_policies);
        merged.vdags.extend(file.vdags);
    }
    if problems.is_empty()
        && let Err(e) = validate_served(merged.clone(), &dir.display().to_string())
    {
        for p in e.problems {
            let owner =
                p.at.and_then(|at| owners[slot(at.kind)].get(at.index).copied());
            let mut problem = FileProblem {
                file: owner.map_or_else(|| "-".into(), |i| contents.files[i].0.clone()),
                resource: p.resource,
                field: p.field,
                message: p.message,
            };
            if let Some(at) = p.at {
                locate(
                    &mut problem,
                    at.kind,
                    at.index,
                    &merged,
                    &owners[slot(at.kind)],
                    contents,
                );
            }
            problems.push(problem);
        }
    }
    if !problems.is_empty() {
        return Err(Rejected { problems });
    }
    Ok(Loaded {
        resources: merged,
        files: contents.files.iter().map(|(n, _)| n.clone()).collect(),
    })
}

/// Rewords a problem found in the merged set for the file it belongs to:
/// an unnamed resource is numbered within its file, not the merged list,
/// and a duplicate says where the first definition is.
fn locate(
    problem: &mut FileProblem,
    kind: Kind,
    index: usize,
    merged: &Bootstrap,
    owners: &[usize],
    contents: &Contents,
) {
    let names = kind.names(merged);
    let Some(name) = names.get(index).copied() else {
        return;
    };
    if problem.resource == format!("{kind}[{index}]") {
        problem.resource = if name.is_empty() {
            let owner = owners.get(index);
            let in_file = owners[..index].iter().filter(|o| Some(*o) == owner).count();
            format!("{kind}[{in_file}]")
        } else {
            format!("{kind} {name:?}")
        };
    }
    let first = names.iter().position(|n| *n == name);
    if problem.message.contains("duplicate")
        && let Some(first) = first.filter(|f| *f != index)
        && let Some(&file) = owners.get(first)
    {
        problem.message = format!(
            "{} (first defined in {})",
            problem.message, contents.files[file].0
        );
    }
}

fn from_config_error(e: ConfigError, file: &str) -> impl Iterator<Item = FileProblem> {
    e.problems.into_iter().map(move |p| FileProblem {
        file: file.to_string(),
        resource: p.resource,
        field: p.field,
        message: p.message,
    })
}

fn slot(kind: Kind) -> usize {
    Kind::PUSH_ORDER
        .iter()
        .position(|k| *k == kind)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_config_files_only() {
        for name in ["a.yaml", "b.yml", "c.json"] {
            assert!(is_config_name(name), "{name}");
        }
        for name in ["..data", ".a.yaml", "a.txt", ".yaml", "yaml"] {
            assert!(!is_config_name(name), "{name}");
        }
    }
}
