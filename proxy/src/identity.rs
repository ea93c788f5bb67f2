//! The sidecar's own identity: started from the bootstrap's source, kept
//! current by it (files re-read on change), and shown in metrics — expiry,
//! and how many updates were taken or refused.

use std::sync::Arc;
use std::time::SystemTime;

use gridmesh_config::IdentitySource;
use gridmesh_identity::IdentityStore;
use gridmesh_identity::files::FilesError;

use crate::metrics::IdentityMetrics;
use crate::shared::Identity;

/// Starts following `source`. The store may still be empty when this
/// returns (the files are not there yet, or are bad): the sidecar then
/// stays unready until a good certificate arrives.
pub fn start(source: IdentitySource, metrics: IdentityMetrics) -> Result<Identity, FilesError> {
    let store = IdentityStore::new();
    let mut changes = store.watch();
    match &source {
        IdentitySource::Files(files) => {
            files.clone().follow(store.clone())?;
        }
    }
    let observed = Arc::downgrade(&store);
    tokio::spawn(async move {
        let (mut installed, mut refused) = (0, 0);
        loop {
            let Some(store) = observed.upgrade() else {
                return;
            };
            let status = store.status();
            drop(store);
            if let Some(not_after) = status.not_after {
                metrics.expiry.set(unix_seconds(not_after));
            }
            metrics.installed.inc_by(status.installed - installed);
            metrics.refused.inc_by(status.refused - refused);
            (installed, refused) = (status.installed, status.refused);
            if changes.changed().await.is_err() {
                return;
            }
        }
    });
    Ok(Identity { source, store })
}

fn unix_seconds(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
