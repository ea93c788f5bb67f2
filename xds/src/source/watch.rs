//! Noticing that the config directory changed: inotify events (through
//! `notify`), debounced so that an editor's or a ConfigMap's burst of
//! renames becomes one reload, plus a slow periodic re-read for what
//! inotify cannot see (targets of symlinks that point outside the
//! directory, network filesystems). Whether anything really changed is
//! decided by comparing contents, not here.

use std::path::Path;
use std::time::Duration;

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

/// How long the directory must be quiet before it is re-read.
const DEBOUNCE: Duration = Duration::from_millis(30);

pub struct DirWatcher {
    // Kept alive: dropping it stops the events.
    _watcher: notify::RecommendedWatcher,
    events: mpsc::UnboundedReceiver<()>,
    resync: tokio::time::Interval,
}

impl DirWatcher {
    pub fn new(dir: &Path, resync: Duration) -> notify::Result<DirWatcher> {
        let (tx, events) = mpsc::unbounded_channel();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                // Errors (e.g. an inotify queue overflow) also mean "look again".
                if event.as_ref().map_or(true, |e| !e.kind.is_access()) {
                    let _ = tx.send(());
                }
            })?;
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
        let mut resync = tokio::time::interval(resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resync.reset();
        Ok(DirWatcher {
            _watcher: watcher,
            events,
            resync,
        })
    }

    /// Resolves when the directory may have changed and has been quiet for
    /// the debounce time.
    pub async fn changed(&mut self) {
        tokio::select! {
            _ = self.events.recv() => {}
            _ = self.resync.tick() => return,
        }
        loop {
            match tokio::time::timeout(DEBOUNCE, self.events.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) | Err(_) => return,
            }
        }
    }
}
