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
use http::HeaderValue;
use parking_lot::Mutex;
use prometheus::IntCounter;
use serde::Serialize;

use crate::grpc;

/// Entries waiting for a destination's writer at most: with
/// [`DRAIN_EVERY`], up to 80,000 lines a second before any is dropped.
const QUEUE: usize = 8192;
/// How often a writer takes what waits (Envoy flushes its access logs
/// every second by default).
const DRAIN_EVERY: Duration = Duration::from_millis(100);

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

/// Every [`DRAIN_EVERY`], writes what the queue holds and flushes. The
/// writer is never woken per entry: on a busy proxy that would cost a
/// context switch per request (measured: four futex calls and a write per
/// request when it flushed whenever the queue ran empty). Ends when every
/// listener using the destination is gone.
fn write_entries(entries: Receiver<Entry>, out: Box<dyn Write + Send>, metrics: &AccessLogMetrics) {
    let mut out = BufWriter::with_capacity(64 << 10, out);
    let mut line = Vec::with_capacity(1024);
    loop {
        std::thread::sleep(DRAIN_EVERY);
        let mut written = false;
        loop {
            let entry = match entries.try_recv() {
                Ok(entry) => entry,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    let _ = out.flush();
                    return;
                }
            };
            line.clear();
            entry.write_json(&mut line);
            match out.write_all(&line) {
                Ok(()) => metrics.written.inc(),
                Err(_) => metrics.failed.inc(),
            }
            written = true;
        }
        if written && out.flush().is_err() {
            metrics.failed.inc();
        }
    }
}

/// What the log says of one request. Filled on the request path with
/// values that are cheap to take there (header values and the URI share
/// the request's buffers); formatted on the writer's thread.
pub struct Entry {
    pub start_time: SystemTime,
    pub listener: Arc<str>,
    pub protocol: http::Version,
    pub method: http::Method,
    /// The request's target (its path and query, and an authority when it
    /// came in absolute form or over HTTP/2).
    pub uri: http::Uri,
    /// `Host`, when the target names no authority.
    pub host: Option<HeaderValue>,
    pub grpc: bool,
    pub user_agent: Option<HeaderValue>,
    pub request_id: Option<HeaderValue>,
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
    /// The line, every key present (null when unknown) so that every line
    /// has the same keys, and a newline.
    fn write_json(&self, out: &mut Vec<u8>) {
        fn text(value: &Option<HeaderValue>) -> Option<&str> {
            value.as_ref().and_then(|v| v.to_str().ok())
        }
        let path = (self.uri.path_and_query()).map_or(self.uri.path(), |p| p.as_str());
        let (grpc_service, grpc_method) = match self.grpc.then(|| grpc::service_method(path)) {
            Some(Some((service, method))) => (Some(service), Some(method)),
            _ => (None, None),
        };
        let authority = self
            .uri
            .authority()
            .map(|a| a.as_str())
            .or(text(&self.host));
        let millis = |d: Duration| d.as_secs_f64() * 1e3;
        let line = Line {
            start_time: humantime::format_rfc3339_micros(self.start_time).to_string(),
            listener: &self.listener,
            protocol: version_name(self.protocol),
            method: self.method.as_str(),
            authority,
            path,
            grpc_service,
            grpc_method,
            status: self.status,
            grpc_status: self.grpc_status,
            duration_ms: millis(self.duration),
            to_first_byte_ms: self.to_first_byte.map(millis),
            bytes_received: self.bytes_received,
            bytes_sent: self.bytes_sent,
            route: self.route.as_deref(),
            cluster: self.cluster.as_deref(),
            upstream: self.upstream,
            attempts: self.attempts,
            peer: self.peer,
            peer_identity: self.peer_identity.as_ref().map(SpiffeId::as_str),
            trace_id: self.trace_id.as_deref(),
            request_id: text(&self.request_id),
            user_agent: text(&self.user_agent),
            error: self.error,
        };
        // Serializing these plain fields into memory cannot fail.
        let _ = serde_json::to_writer(&mut *out, &line);
        out.push(b'\n');
    }
}

/// A line's keys, in order.
#[derive(Serialize)]
struct Line<'a> {
    start_time: String,
    listener: &'a str,
    protocol: &'static str,
    method: &'a str,
    authority: Option<&'a str>,
    path: &'a str,
    grpc_service: Option<&'a str>,
    grpc_method: Option<&'a str>,
    status: u16,
    grpc_status: Option<u32>,
    duration_ms: f64,
    to_first_byte_ms: Option<f64>,
    bytes_received: u64,
    bytes_sent: u64,
    route: Option<&'a str>,
    cluster: Option<&'a str>,
    upstream: Option<SocketAddr>,
    attempts: Option<u32>,
    peer: SocketAddr,
    peer_identity: Option<&'a str>,
    trace_id: Option<&'a str>,
    request_id: Option<&'a str>,
    user_agent: Option<&'a str>,
    error: Option<&'static str>,
}

fn version_name(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "unknown",
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
            uri: http::Uri::from_static("/"),
            host: None,
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
