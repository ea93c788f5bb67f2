//! Access logs: one JSON line per sampled request of a listener that has
//! `accessLog` set, to stdout or a file.
//!
//! The request path only fills an [`Entry`] and tries to hand it over: a
//! bounded queue per destination, drained by a thread of its own that
//! formats and writes. When the destination cannot keep up (a slow disk, a
//! stdout nobody reads) entries are dropped and counted; a request never
//! waits for its log line. Listeners that log to the same destination share
//! its writer, which closes when the last of them is gone.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use gridmesh_config::{AccessLogSpec, LogDestination};
use gridmesh_identity::SpiffeId;
use parking_lot::Mutex;
use prometheus::IntCounter;
use serde_json::{Map, Value, json};

use crate::grpc;

/// Entries waiting for a destination's writer at most.
const QUEUE: usize = 8192;

/// What becomes of entries: `written`, `dropped` (the queue was full),
/// `failed` (the write failed).
#[derive(Clone)]
pub struct AccessLogMetrics {
    pub written: IntCounter,
    pub dropped: IntCounter,
    pub failed: IntCounter,
}

/// The writers of every destination in use.
pub struct AccessLogs {
    writers: Mutex<HashMap<LogDestination, Weak<Writer>>>,
    metrics: AccessLogMetrics,
}

struct Writer {
    queue: SyncSender<Entry>,
}

/// One listener's log.
pub struct AccessLog {
    writer: Arc<Writer>,
    sampling_ratio: f64,
    dropped: IntCounter,
}

impl AccessLogs {
    pub fn new(metrics: AccessLogMetrics) -> AccessLogs {
        AccessLogs {
            writers: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// The log `spec` describes; its destination is opened now (a file that
    /// cannot be opened fails the config that names it).
    pub fn open(&self, spec: &AccessLogSpec) -> io::Result<AccessLog> {
        let mut writers = self.writers.lock();
        writers.retain(|_, writer| writer.strong_count() > 0);
        let writer = match writers.get(&spec.destination).and_then(Weak::upgrade) {
            Some(writer) => writer,
            None => {
                let writer = Arc::new(self.start_writer(&spec.destination)?);
                writers.insert(spec.destination.clone(), Arc::downgrade(&writer));
                writer
            }
        };
        Ok(AccessLog {
            writer,
            sampling_ratio: spec.sampling_ratio,
            dropped: self.metrics.dropped.clone(),
        })
    }

    fn start_writer(&self, destination: &LogDestination) -> io::Result<Writer> {
        let out: Box<dyn Write + Send> = match destination {
            LogDestination::Stdout => Box::new(io::stdout()),
            LogDestination::File(path) => {
                Box::new(OpenOptions::new().create(true).append(true).open(path)?)
            }
        };
        Writer::start(destination, out, QUEUE, self.metrics.clone())
    }
}

impl Writer {
    fn start(
        destination: &LogDestination,
        out: Box<dyn Write + Send>,
        capacity: usize,
        metrics: AccessLogMetrics,
    ) -> io::Result<Writer> {
        let (queue, entries) = sync_channel(capacity);
        std::thread::Builder::new()
            .name(format!("access-log {destination}"))
            .spawn(move || write_entries(entries, out, &metrics))?;
        Ok(Writer { queue })
    }
}

impl AccessLog {
    /// Whether this request is logged (decided once, when it arrives).
    pub fn sampled(&self) -> bool {
        self.sampling_ratio >= 1.0 || rand::random::<f64>() < self.sampling_ratio
    }

    /// Hands `entry` to the writer, or drops it if the writer is behind.
    pub fn write(&self, entry: Box<Entry>) {
        match self.writer.queue.try_send(*entry) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }
}

/// Writes entries as they come, flushing whenever the queue runs empty (so
/// a quiet log is never left in the buffer); ends when every listener
/// using the destination is gone.
fn write_entries(entries: Receiver<Entry>, out: Box<dyn Write + Send>, metrics: &AccessLogMetrics) {
    let mut out = BufWriter::with_capacity(64 << 10, out);
    loop {
        let entry = match entries.try_recv() {
            Ok(entry) => entry,
            Err(TryRecvError::Empty) => {
                if out.flush().is_err() {
                    metrics.failed.inc();
                }
                match entries.recv() {
                    Ok(entry) => entry,
                    Err(_) => return,
                }
            }
            Err(TryRecvError::Disconnected) => {
                let _ = out.flush();
                return;
            }
        };
        let mut line = entry.to_json().to_string();
        line.push('\n');
        match out.write_all(line.as_bytes()) {
            Ok(()) => metrics.written.inc(),
            Err(_) => metrics.failed.inc(),
        }
    }
}

/// What the log says of one request. Filled on the request path with owned
/// values only; formatted on the writer's thread.
pub struct Entry {
    pub start_time: SystemTime,
    pub listener: Arc<str>,
    pub protocol: http::Version,
    pub method: http::Method,
    pub authority: Option<String>,
    /// Path and query.
    pub path: String,
    pub grpc: bool,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub peer: SocketAddr,
    pub peer_identity: Option<SpiffeId>,
    pub trace_id: Option<String>,
    pub route: Option<String>,
    pub cluster: Option<String>,
    pub upstream: Option<SocketAddr>,
    pub attempts: Option<u32>,
    pub status: u16,
    pub grpc_status: Option<u32>,
    pub duration: Duration,
    /// Until the response's headers (from the upstream or the proxy).
    pub to_first_byte: Option<Duration>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// The `x-gridmesh-error` reason of a response the proxy made or cut.
    pub error: Option<&'static str>,
}

impl Entry {
    /// The line's fields, every one present (null when unknown), so that
    /// every line has the same keys.
    fn to_json(&self) -> Value {
        let millis = |d: Duration| json!(d.as_secs_f64() * 1e3);
        let (grpc_service, grpc_method) = match self.grpc.then(|| grpc::service_method(&self.path))
        {
            Some(Some((service, method))) => (json!(service), json!(method)),
            _ => (Value::Null, Value::Null),
        };
        let fields = [
            (
                "start_time",
                json!(humantime::format_rfc3339_micros(self.start_time).to_string()),
            ),
            ("listener", json!(&*self.listener)),
            ("protocol", json!(format!("{:?}", self.protocol))),
            ("method", json!(self.method.as_str())),
            ("authority", json!(self.authority)),
            ("path", json!(self.path)),
            ("grpc_service", grpc_service),
            ("grpc_method", grpc_method),
            ("status", json!(self.status)),
            ("grpc_status", json!(self.grpc_status)),
            ("duration_ms", millis(self.duration)),
            (
                "to_first_byte_ms",
                self.to_first_byte.map_or(Value::Null, millis),
            ),
            ("bytes_received", json!(self.bytes_received)),
            ("bytes_sent", json!(self.bytes_sent)),
            ("route", json!(self.route)),
            ("cluster", json!(self.cluster)),
            ("upstream", json!(self.upstream.map(|a| a.to_string()))),
            ("attempts", json!(self.attempts)),
            ("peer", json!(self.peer.to_string())),
            (
                "peer_identity",
                json!(self.peer_identity.as_ref().map(|p| p.as_str())),
            ),
            ("trace_id", json!(self.trace_id)),
            ("request_id", json!(self.request_id)),
            ("user_agent", json!(self.user_agent)),
            ("error", json!(self.error)),
        ];
        Value::Object(
            fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect::<Map<_, _>>(),
        )
    }
}

/// The trace id of a well-formed W3C `traceparent`
/// (`00-<32 hex>-<16 hex>-<2 hex>`), for logs when this sidecar does not
/// trace itself.
pub fn traceparent_trace_id(value: &str) -> Option<String> {
    let mut parts = value.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    let valid = hex(version, 2)
        && version != "ff"
        && hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && hex(span, 16)
        && hex(flags, 2);
    valid.then(|| trace.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Box<Entry> {
        Box::new(Entry {
            start_time: SystemTime::now(),
            listener: "l".into(),
            protocol: http::Version::HTTP_11,
            method: http::Method::GET,
            authority: None,
            path: "/".into(),
            grpc: false,
            user_agent: None,
            request_id: None,
            peer: "127.0.0.1:1".parse().unwrap(),
            peer_identity: None,
            trace_id: None,
            route: None,
            cluster: None,
            upstream: None,
            attempts: None,
            status: 200,
            grpc_status: None,
            duration: Duration::ZERO,
            to_first_byte: None,
            bytes_received: 0,
            bytes_sent: 0,
            error: None,
        })
    }

    /// A destination whose writes never return (a full pipe nobody reads).
    struct Stuck(std::sync::mpsc::Receiver<()>);

    impl Write for Stuck {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            let _ = self.0.recv();
            Err(io::Error::other("unblocked"))
        }

        fn flush(&mut self) -> io::Result<()> {
            let _ = self.0.recv();
            Ok(())
        }
    }

    #[test]
    fn a_stuck_destination_costs_entries_never_a_wait() {
        let metrics = crate::metrics::Metrics::default().access_logs();
        let (unblock, stuck) = std::sync::mpsc::channel();
        let writer = Writer::start(
            &LogDestination::Stdout,
            Box::new(Stuck(stuck)),
            4,
            metrics.clone(),
        )
        .unwrap();
        let log = AccessLog {
            writer: Arc::new(writer),
            sampling_ratio: 1.0,
            dropped: metrics.dropped.clone(),
        };
        // The writer takes one entry and blocks on it; four more wait in
        // the queue; every other one is dropped at once.
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for _ in 0..100 {
                log.write(entry());
            }
            done.send(log).unwrap();
        });
        let log = finished
            .recv_timeout(Duration::from_secs(10))
            .expect("writes never wait for the destination");
        let dropped = metrics.dropped.get();
        assert!((95..=96).contains(&dropped), "dropped {dropped}");
        assert_eq!(metrics.written.get(), 0);
        drop(unblock);
        drop(log);
    }

    #[test]
    fn only_well_formed_traceparents_give_a_trace_id() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(
            traceparent_trace_id(&format!("00-{id}-00f067aa0ba902b7-01")).as_deref(),
            Some(id)
        );
        for bad in [
            format!("ff-{id}-00f067aa0ba902b7-01"),
            format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32)),
            format!("00-{id}-00f067aa0ba902b-01"),
            format!("00-{id}-00f067aa0ba902bz-01"),
            "garbage".into(),
        ] {
            assert_eq!(traceparent_trace_id(&bad), None, "{bad}");
        }
    }
}
