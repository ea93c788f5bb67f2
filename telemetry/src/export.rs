//! Spans leave through a bounded queue. `on_end` runs on whatever thread
//! ended the span — a data-plane worker — so it only tries to enqueue; a
//! task on the caller's runtime drains the queue in batches to the OTLP
//! exporter, every second or once a batch's worth waits. A full queue drops the span and counts it: a slow or absent
//! collector never makes a request wait, and memory stays bounded.
//!
//! Not the SDK's own batch processor: that one runs a thread of its own
//! that cannot drive the hyper-based HTTP client, and reports drops only in
//! its internal log.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use prometheus::{IntCounterVec, Opts, Registry};

use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{Notify, mpsc};

/// Spans sent to the collector in one request at most.
const MAX_BATCH: usize = 512;
/// How long a span waits at most before it is sent.
const BATCH_DELAY: Duration = Duration::from_secs(1);

/// `<prefix>trace_spans_total{result}`:
/// exported, dropped (the queue was full) and failed (the collector refused
/// them or did not answer in time).
#[derive(Clone)]
pub struct ExportMetrics {
    spans: IntCounterVec,
}

impl ExportMetrics {
    /// `prefix` goes before the name (the sidecar's registry adds its own).
    pub fn register(registry: &Registry, prefix: &str) -> prometheus::Result<ExportMetrics> {
        let spans = IntCounterVec::new(
            Opts::new(
                format!("{prefix}trace_spans_total"),
                "Finished sampled spans by what became of them: exported to the collector, \
                 dropped (the export queue was full) or failed (the collector refused them or \
                 did not answer in time).",
            ),
            &["result"],
        )?;
        registry.register(Box::new(spans.clone()))?;
        for result in ["exported", "dropped", "failed"] {
            spans.with_label_values(&[result]);
        }
        Ok(ExportMetrics { spans })
    }

    fn count(&self, result: &str, spans: usize) {
        self.spans.with_label_values(&[result]).inc_by(spans as u64);
    }
}

/// A thread of its own running the export, for a process whose runtime
/// serves requests (the block server); it lives as long as the process.
pub fn export_thread() -> std::io::Result<tokio::runtime::Handle> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handle = runtime.handle().clone();
    std::thread::Builder::new()
        .name("otlp-export".into())
        .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
    Ok(handle)
}

/// The span processor: enqueue or drop.
pub struct BoundedExport {
    queue: mpsc::Sender<SpanData>,
    /// Wakes the drain early, once a batch's worth is waiting.
    batch_ready: Arc<Notify>,
    metrics: ExportMetrics,
}

impl fmt::Debug for BoundedExport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundedExport")
            .field("capacity", &self.queue.max_capacity())
            .finish_non_exhaustive()
    }
}

impl BoundedExport {
    /// The processor, and its drain spawned on `runtime`, exporting spans
    /// of `resource`. The drain ends when the processor is dropped and the
    /// queue is empty.
    pub fn start<E>(
        runtime: &tokio::runtime::Handle,
        mut exporter: E,
        resource: &Resource,
        capacity: usize,
        timeout: Duration,
        metrics: ExportMetrics,
    ) -> BoundedExport
    where
        E: SpanExporter + 'static,
    {
        // The SDK hands the resource to processors, which pass it on; this
        // one's exporter lives in the drain, so it gets it first.
        exporter.set_resource(resource);
        let (queue, spans) = mpsc::channel(capacity.max(1));
        let batch_ready = Arc::new(Notify::new());
        runtime.spawn(drain(
            spans,
            batch_ready.clone(),
            exporter,
            timeout,
            metrics.clone(),
        ));
        BoundedExport {
            queue,
            batch_ready,
            metrics,
        }
    }
}

impl SpanProcessor for BoundedExport {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if self.queue.try_send(span).is_err() {
            self.metrics.count("dropped", 1);
        }
        // Past the mark (spans end on many threads: none may see it
        // exactly); a wake-up already pending absorbs the repeats.
        let waiting = self.queue.max_capacity() - self.queue.capacity();
        if waiting >= MAX_BATCH.min(self.queue.max_capacity() / 2).max(1) {
            self.batch_ready.notify_one();
        }
    }

    /// Nothing to wait for here: the drain sends what is queued within
    /// [`BATCH_DELAY`], and a flush must not block a runtime thread.
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// Every [`BATCH_DELAY`], or as soon as a batch's worth waits, sends what
/// the queue holds in batches of up to [`MAX_BATCH`]. Never woken per span:
/// that would cost the thread ending spans a wake-up of this one each time.
async fn drain<E: SpanExporter>(
    mut spans: mpsc::Receiver<SpanData>,
    batch_ready: Arc<Notify>,
    exporter: E,
    timeout: Duration,
    metrics: ExportMetrics,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(BATCH_DELAY) => {}
            () = batch_ready.notified() => {}
        }
        loop {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            let mut closed = false;
            while batch.len() < MAX_BATCH {
                match spans.try_recv() {
                    Ok(span) => batch.push(span),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            let full = batch.len() == MAX_BATCH;
            if !batch.is_empty() {
                export(&exporter, batch, timeout, &metrics).await;
            }
            if closed {
                return;
            }
            if !full {
                break;
            }
        }
    }
}

async fn export<E: SpanExporter>(
    exporter: &E,
    batch: Vec<SpanData>,
    timeout: Duration,
    metrics: &ExportMetrics,
) {
    let count = batch.len();
    match tokio::time::timeout(timeout, exporter.export(batch)).await {
        Ok(Ok(())) => metrics.count("exported", count),
        Ok(Err(error)) => {
            metrics.count("failed", count);
            tracing::warn!(%error, spans = count, "trace export failed");
        }
        Err(_) => {
            metrics.count("failed", count);
            tracing::warn!(?timeout, spans = count, "trace export timed out");
        }
    }
}
