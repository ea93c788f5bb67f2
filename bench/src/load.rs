//! The load generator: connections per protocol, open-loop fixed-rate and
//! closed-loop maximum-throughput drivers, and gRPC streaming workloads.

pub mod clients;
pub mod closed_loop;
pub mod fixed_rate;
pub mod streams;

use serde::Serialize;

/// Failed exchanges of a run: how many, and the first one's reason (the rest
/// are usually the same).
#[derive(Debug, Default, Clone, Serialize)]
pub struct ErrorTally {
    pub count: u64,
    pub first: Option<String>,
}

impl ErrorTally {
    fn record(&mut self, error: &anyhow::Error) {
        self.count += 1;
        self.first.get_or_insert_with(|| format!("{error:#}"));
    }

    pub fn merge(&mut self, other: ErrorTally) {
        self.count += other.count;
        if self.first.is_none() {
            self.first = other.first;
        }
    }
}
