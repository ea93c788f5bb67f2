//! Turning the config directory into served snapshots: read on every
//! change, skip when the bytes are the same, validate, and publish only a
//! config that passes. A rejected change is reported and the last good
//! snapshot keeps serving.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError};
use std::time::SystemTime;

use gridmesh_proto::resource::Kind;

use crate::Shared;
use crate::clients::timestamp;
use crate::snapshot::Snapshot;
use crate::source::watch::DirWatcher;
use crate::source::{Rejected, files};
use crate::status::ConfigError;

/// The first snapshot and the fingerprint of the contents it came from.
pub async fn initial(dir: &Path) -> Result<(Snapshot, u64), Rejected> {
    let dir = dir.to_path_buf();
    let loaded = tokio::task::spawn_blocking(move || {
        let contents = files::read(&dir)?;
        let loaded = files::load(&contents, &dir)?;
        Ok((
            Snapshot::new(&loaded.resources, loaded.files),
            contents.fingerprint(),
        ))
    })
    .await;
    loaded.unwrap_or_else(|e| Err(internal(e)))
}

pub async fn run(shared: Arc<Shared>, dir: PathBuf, mut watcher: DirWatcher, mut fingerprint: u64) {
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            () = watcher.changed() => {}
        }
        let (task_shared, task_dir) = (shared.clone(), dir.clone());
        let done =
            tokio::task::spawn_blocking(move || reload(&task_shared, &task_dir, fingerprint)).await;
        match done {
            Ok(Some(seen)) => fingerprint = seen,
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "config reload failed"),
        }
    }
}

/// Reads the directory and serves it if it changed and validates. Returns
/// the fingerprint of the contents read, when they could be read.
fn reload(shared: &Shared, dir: &Path, last: u64) -> Option<u64> {
    let contents = match files::read(dir) {
        Ok(contents) => contents,
        Err(rejected) => {
            reject(shared, rejected);
            return None;
        }
    };
    let fingerprint = contents.fingerprint();
    if fingerprint == last {
        return Some(fingerprint);
    }
    let loaded = match files::load(&contents, dir) {
        Ok(loaded) => loaded,
        Err(rejected) => {
            reject(shared, rejected);
            return Some(fingerprint);
        }
    };
    let snapshot = Snapshot::new(&loaded.resources, loaded.files);
    *shared
        .last_error
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = None;
    shared.metrics.reload(true);
    shared.metrics.config_served(&snapshot.version);
    let counts: Vec<String> = Kind::PUSH_ORDER
        .iter()
        .map(|k| format!("{} {}", snapshot.resources(*k).entries.len(), k.label()))
        .collect();
    let same = shared.snapshots.borrow().version == snapshot.version;
    if same {
        // e.g. a comment changed: the same resources, so nothing to push.
        tracing::info!(version = %snapshot.version, "config files changed, resources did not");
    } else {
        tracing::info!(version = %snapshot.version, resources = %counts.join(", "), "serving new config");
    }
    let snapshot = Arc::new(snapshot);
    shared.snapshots.send_if_modified(|current| {
        *current = snapshot;
        !same
    });
    Some(fingerprint)
}

fn reject(shared: &Shared, rejected: Rejected) {
    tracing::warn!(
        served = %shared.snapshots.borrow().version,
        "{rejected}; still serving the previous config"
    );
    shared.metrics.reload(false);
    shared.metrics.config_rejected(rejected.problems.len());
    *shared
        .last_error
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = Some(ConfigError {
        at: timestamp(SystemTime::now()),
        problems: rejected.problems,
    });
}

fn internal(e: tokio::task::JoinError) -> Rejected {
    Rejected {
        problems: vec![crate::source::FileProblem {
            file: "-".into(),
            resource: "-".into(),
            field: "-".into(),
            message: format!("loading failed: {e}"),
        }],
    }
}
