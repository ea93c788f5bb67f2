//! A steady load for end-to-end tests: requests through a sidecar while
//! config changes, restarts or certificate rotations happen, every failure
//! kept for the assertion that none happened.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Requests sent to `target` (a sidecar's listener), 4 at a time on
/// keep-alive connections, until stopped; counts successes and failures
/// and remembers which upstream answered last.
pub struct Load {
    stop: Arc<AtomicBool>,
    /// Requests answered 200 so far.
    pub ok: Arc<AtomicU64>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    last_upstream: Arc<std::sync::Mutex<String>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(target: SocketAddr) -> Load {
        let load = Load {
            stop: Arc::default(),
            ok: Arc::default(),
            failures: Arc::default(),
            last_upstream: Arc::default(),
            tasks: Vec::new(),
        };
        let tasks = (0..4)
            .map(|_| {
                let (stop, ok) = (load.stop.clone(), load.ok.clone());
                let (failures, last) = (load.failures.clone(), load.last_upstream.clone());
                tokio::spawn(async move {
                    let mut conn = crate::harness::http1_client().connect(target).await;
                    while !stop.load(Ordering::Relaxed) {
                        let outcome = match conn.send(crate::harness::get("echo", "/echo")).await {
                            Ok(rsp) => crate::harness::collect(rsp)
                                .await
                                .map_err(|e| e.to_string()),
                            Err(e) => Err(e.to_string()),
                        };
                        match outcome {
                            Ok(reply) if reply.status == 200 => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                if let Some(name) = reply.headers.get("x-upstream") {
                                    *last.lock().unwrap() =
                                        name.to_str().unwrap_or_default().to_string();
                                }
                            }
                            Ok(reply) => failures
                                .lock()
                                .unwrap()
                                .push(format!("{} {:?}", reply.status, reply.body)),
                            Err(e) => {
                                failures.lock().unwrap().push(e);
                                conn = crate::harness::http1_client().connect(target).await;
                            }
                        }
                    }
                })
            })
            .collect();
        Load { tasks, ..load }
    }

    pub fn last_upstream(&self) -> String {
        self.last_upstream.lock().unwrap().clone()
    }

    /// Stops the load; asserts that no request failed and that more than
    /// `minimum` succeeded (too little traffic would prove nothing).
    pub async fn finish_without_failures(self, minimum: u64) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.unwrap();
        }
        let failures = self.failures.lock().unwrap();
        let ok = self.ok.load(Ordering::Relaxed);
        assert!(
            failures.is_empty(),
            "{} failed, {ok} succeeded; first: {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        assert!(ok > minimum, "only {ok} requests got through");
    }
}
