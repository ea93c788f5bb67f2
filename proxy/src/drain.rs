//! Drain: stop accepting, let in-flight requests finish, and end what is
//! still open at the deadline in a way each protocol's clients understand.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The three phases of a proxy's life, shared by listeners, connections
/// and streaming bodies.
#[derive(Clone, Default)]
pub struct Drain {
    /// Set when draining starts: listeners stop accepting, connections get
    /// GOAWAY / `Connection: close`, `/ready` turns 503.
    started: CancellationToken,
    /// Set when the drain deadline passes: open gRPC streams end with
    /// `grpc-status: UNAVAILABLE` trailers instead of being reset.
    expired: CancellationToken,
}

impl Drain {
    /// Starts draining; a second call changes nothing (the first deadline holds).
    pub fn start(&self, deadline: Duration) {
        if self.started.is_cancelled() {
            return;
        }
        self.started.cancel();
        let expired = self.expired.clone();
        tokio::spawn(async move {
            tokio::time::sleep(deadline).await;
            expired.cancel();
        });
    }

    pub fn is_draining(&self) -> bool {
        self.started.is_cancelled()
    }

    pub async fn started(&self) {
        self.started.cancelled().await
    }

    pub async fn expired(&self) {
        self.expired.cancelled().await
    }

    /// A token streaming bodies can wait on without borrowing the drain.
    pub fn expiry_token(&self) -> CancellationToken {
        self.expired.clone()
    }
}
