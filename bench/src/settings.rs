//! How long and how hard each measurement runs: `--quick` for a smoke check
//! in about two minutes, the default for figures worth recording.

use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub rounds: u32,
    /// Fixed-rate runs: requests per second, measured time, unmeasured warm-up.
    pub rate: u32,
    pub fixed_rate_duration: Duration,
    pub warmup: Duration,
    /// Connections (HTTP/1.1) or concurrent calls (gRPC) of the fixed-rate
    /// runs; enough that a slow response never leaves the schedule without
    /// a free connection.
    pub fixed_rate_concurrency: usize,
    /// Closed-loop maximum-throughput runs.
    pub max_throughput_duration: Duration,
    pub max_throughput_concurrency: usize,
    /// HTTP/2 connections the gRPC calls are spread over.
    pub grpc_connections: usize,
    pub payload_bytes: usize,
    /// Server streaming: messages per stream, their size, streams per round.
    pub stream_messages: u32,
    pub stream_message_bytes: u32,
    pub streams_per_round: u32,
    /// Memory: streams held open at once, over this many connections
    /// (100 each: HAProxy's default per-connection limit).
    pub open_streams: u32,
    pub open_stream_connections: u32,
    /// Connections: new connections set up at once in the closed loop,
    /// and connections held open for the memory figure.
    pub connection_concurrency: usize,
    pub open_connections: usize,
}

impl Settings {
    pub fn full() -> Self {
        Self {
            rounds: 3,
            rate: 1_000,
            fixed_rate_duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            fixed_rate_concurrency: 16,
            max_throughput_duration: Duration::from_secs(10),
            max_throughput_concurrency: 64,
            grpc_connections: 4,
            payload_bytes: 1024,
            stream_messages: 100_000,
            stream_message_bytes: 32,
            streams_per_round: 5,
            open_streams: 1_000,
            open_stream_connections: 10,
            connection_concurrency: 16,
            open_connections: 1_000,
        }
    }

    pub fn quick() -> Self {
        Self {
            rounds: 1,
            fixed_rate_duration: Duration::from_secs(2),
            warmup: Duration::from_millis(300),
            max_throughput_duration: Duration::from_secs(2),
            streams_per_round: 2,
            ..Self::full()
        }
    }
}
