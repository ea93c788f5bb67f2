//! Identity from files on disk, as cert-manager's CSI driver and SPIRE's
//! helper write them: a PEM certificate chain, its private key and the trust
//! bundle, re-read whenever they change. Writers replace these files (often
//! by swapping a `..data` symlink), so the directories holding them are
//! watched rather than the files, and every change re-reads all three:
//! only a consistent set (the key matches the certificate, the certificate
//! verifies against the bundle) replaces what is held. A set caught half
//! written fails that check and is retried on the writer's next event; what
//! was held keeps serving meanwhile.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::IdentityFiles;
use crate::credentials::{Credentials, TrustBundle};
use crate::store::IdentityStore;

/// Events come in bursts (a symlink swap is several); one re-read per burst.
const SETTLE: Duration = Duration::from_millis(50);
/// Also re-read this often, in case a change was not reported (network
/// file systems do not report changes made elsewhere).
const REREAD: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Invalid {
        path: PathBuf,
        source: crate::credentials::CredentialsError,
    },
    #[error("cannot watch {path}: {source}")]
    Watch {
        path: PathBuf,
        source: notify::Error,
    },
}

impl IdentityFiles {
    /// Reads and checks the three files as one set.
    pub fn load(&self) -> Result<(Credentials, TrustBundle), FilesError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| FilesError::Read {
                path: path.to_owned(),
                source,
            })
        };
        let (chain, key, bundle) = (
            read(&self.certificate)?,
            read(&self.private_key)?,
            read(&self.trust_bundle)?,
        );
        let bundle = TrustBundle::from_pem(&bundle).map_err(|source| FilesError::Invalid {
            path: self.trust_bundle.clone(),
            source,
        })?;
        let credentials =
            Credentials::from_pem(&chain, &key, &bundle).map_err(|source| FilesError::Invalid {
                path: self.certificate.clone(),
                source,
            })?;
        Ok((credentials, bundle))
    }

    /// Loads into `store` now (a failure is logged and recorded; the store
    /// stays empty and the sidecar unready until a good set appears), then
    /// re-loads on every change until the returned task is aborted. Fails
    /// only when the directories cannot be watched.
    pub fn follow(
        self,
        store: Arc<IdentityStore>,
    ) -> Result<tokio::task::JoinHandle<()>, FilesError> {
        let (tx, mut changes) = mpsc::channel::<()>(1);
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                // Reading the files is an event too (open, access, close): only
                // a change may cause a re-read, or each re-read would cause the next.
                if let Ok(event) = &event
                    && matches!(event.kind, notify::EventKind::Access(_))
                {
                    return;
                }
                // Full: a re-read is already due, which sees this change too.
                let _ = tx.try_send(());
            })
            .map_err(|source| FilesError::Watch {
                path: self.certificate.clone(),
                source,
            })?;
        let directories: BTreeSet<PathBuf> =
            [&self.certificate, &self.private_key, &self.trust_bundle]
                .iter()
                .map(|p| match p.parent() {
                    Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
                    _ => PathBuf::from("."),
                })
                .collect();
        for dir in &directories {
            watcher
                .watch(dir, RecursiveMode::NonRecursive)
                .map_err(|source| FilesError::Watch {
                    path: dir.clone(),
                    source,
                })?;
        }
        self.reload(&store);
        Ok(tokio::spawn(async move {
            // Dropping the watcher stops it: it lives as long as the task.
            let _watcher = watcher;
            loop {
                let woke = tokio::time::timeout(REREAD, changes.recv()).await;
                if let Ok(None) = woke {
                    return;
                }
                tokio::time::sleep(SETTLE).await;
                // What arrived while settling is covered by this re-read.
                while changes.try_recv().is_ok() {}
                self.reload(&store);
            }
        }))
    }

    /// One re-read; a set equal to the one held changes nothing.
    fn reload(&self, store: &IdentityStore) {
        match self.load() {
            Ok((credentials, bundle)) => {
                let same = store
                    .credentials()
                    .is_some_and(|held| held.certified.cert == credentials.certified.cert)
                    && store
                        .bundle()
                        .is_some_and(|held| held.roots() == bundle.roots());
                if !same {
                    store.install(credentials, bundle);
                }
            }
            Err(error) => {
                let error = error.to_string();
                tracing::error!(%error, "identity files not taken; keeping what is held");
                store.failed(error);
            }
        }
    }
}
