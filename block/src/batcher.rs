//! The dynamic batcher of one model version, in the shape of Triton's and of
//! text-generation-inference's router: a bounded queue of requests, a task
//! that forms batches whenever an instance is free, and instance threads that
//! run one forward per batch and hand each caller its own rows back.
//!
//! The batcher is an OS thread, not a task: it waits on a condition variable
//! with a timeout, which wakes within tens of microseconds of the oldest request's
//! deadline, where tokio's timer would round `max_queue_delay` up to the next
//! millisecond (a 100 us delay would become 1-2 ms).
//!
//! A batch is formed only when an instance is idle, so while every instance
//! is busy requests accumulate and the next batch is as large as the model
//! allows: under load batches grow by themselves, and a lone request on an
//! idle server waits at most `max_queue_delay`. Requests whose caller went
//! away (cancelled, deadline passed) are dropped when the batch is formed and
//! are never computed.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tch::{CModule, Device, IValue};
use tokio::sync::oneshot;

use crate::load::Load;
use crate::model_config::{BatchingPolicy, ModelSpec, TensorSpec};
use crate::observe::{Observer, Phases};
use crate::tensor::Value;
use crate::trace::{BatchSpan, QueueSpan};

/// One request waiting for its batch.
pub struct Job {
    /// CPU values in forward order; with a leading batch dimension of `rows`
    /// when the model batches.
    pub inputs: Vec<Value>,
    pub rows: usize,
    pub enqueued: Instant,
    pub reply: oneshot::Sender<Result<Completed, String>>,
    /// Its wait in the queue, when the request is traced.
    pub trace: Option<QueueSpan>,
}

/// Jobs that run in one forward.
struct Batch {
    jobs: Vec<Job>,
    trace: Option<BatchSpan>,
}

/// A job's share of a batch that ran.
pub struct Completed {
    /// CPU values in the model's output order.
    pub outputs: Vec<Value>,
}

/// The waiting requests of one model version.
pub struct Queue {
    jobs: Mutex<VecDeque<Job>>,
    capacity: usize,
    /// Wakes the batcher when a job arrives.
    arrived: Condvar,
    load: Arc<Load>,
    observer: Arc<Observer>,
}

/// The queue already holds `capacity` jobs.
#[derive(Debug)]
pub struct QueueFull {
    pub capacity: usize,
}

impl Queue {
    pub fn new(capacity: usize, load: Arc<Load>, observer: Arc<Observer>) -> Self {
        Self {
            jobs: Mutex::new(VecDeque::new()),
            capacity,
            arrived: Condvar::new(),
            load,
            observer,
        }
    }

    pub fn push(&self, job: Job) -> Result<(), QueueFull> {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        if jobs.len() >= self.capacity {
            // Callers that gave up must not keep a live one out.
            self.drop_cancelled(&mut jobs);
        }
        if jobs.len() >= self.capacity {
            return Err(QueueFull {
                capacity: self.capacity,
            });
        }
        jobs.push_back(job);
        drop(jobs);
        self.load.job_queued();
        self.observer.waiting.inc();
        self.arrived.notify_one();
        Ok(())
    }

    fn drop_cancelled(&self, jobs: &mut VecDeque<Job>) {
        let before = jobs.len();
        jobs.retain(|job| !job.reply.is_closed());
        let cancelled = before - jobs.len();
        if cancelled > 0 {
            self.load.jobs_left_queue(cancelled);
            self.observer.cancelled(cancelled);
        }
    }

    /// Removes jobs whose caller is gone; returns how many rows of jobs
    /// compatible with the oldest one are waiting, and when the oldest came.
    fn survey(&self, jobs: &mut VecDeque<Job>, max_rows: usize) -> Option<(usize, Instant)> {
        self.drop_cancelled(jobs);
        let oldest = jobs.front()?;
        let mut rows = 0;
        for job in jobs.iter().filter(|job| same_item_shapes(job, oldest)) {
            if rows + job.rows > max_rows {
                break;
            }
            rows += job.rows;
        }
        Some((rows, oldest.enqueued))
    }

    /// Takes the oldest job and the compatible jobs after it, up to `max_rows`.
    fn take(&self, jobs: &mut VecDeque<Job>, max_rows: usize) -> Vec<Job> {
        let Some(oldest) = jobs.pop_front() else {
            return Vec::new();
        };
        let mut rows = oldest.rows;
        let mut batch = vec![oldest];
        let mut index = 0;
        while index < jobs.len() && rows < max_rows {
            if !same_item_shapes(&jobs[index], &batch[0]) {
                index += 1;
                continue;
            }
            if rows + jobs[index].rows > max_rows {
                break;
            }
            let job = jobs.remove(index).expect("index is in range");
            rows += job.rows;
            batch.push(job);
        }
        self.load.jobs_left_queue(batch.len());
        self.observer.waiting.sub(batch.len() as i64);
        batch
    }

    /// Waits for the next batch by `rule`.
    fn next_batch(&self, rule: &BatchRule) -> Vec<Job> {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            jobs = match self.survey(&mut jobs, rule.max_rows) {
                None => self.wait(jobs, None),
                Some((rows, oldest)) => {
                    let deadline = oldest + rule.max_queue_delay();
                    let now = Instant::now();
                    if rule.dispatch_now(rows) || now >= deadline {
                        return self.take(&mut jobs, rule.batch_rows(rows));
                    }
                    self.wait(jobs, Some(deadline - now))
                }
            };
        }
    }

    fn wait<'a>(
        &self,
        jobs: MutexGuard<'a, VecDeque<Job>>,
        timeout: Option<Duration>,
    ) -> MutexGuard<'a, VecDeque<Job>> {
        match timeout {
            None => self.arrived.wait(jobs).unwrap_or_else(|e| e.into_inner()),
            Some(timeout) => {
                let waited = self.arrived.wait_timeout(jobs, timeout);
                waited.unwrap_or_else(|e| e.into_inner()).0
            }
        }
    }
}

/// Only requests whose tensors agree beyond the batch dimension can share a
/// forward (a model with a variable dimension may get different sizes).
fn same_item_shapes(a: &Job, b: &Job) -> bool {
    a.inputs
        .iter()
        .zip(&b.inputs)
        .all(|(x, y)| x.shape().get(1..) == y.shape().get(1..))
}

/// When a batch is complete, from the model's configuration.
struct BatchRule {
    /// Rows one forward may take (`max_batch_size`, at least 1): how many
    /// rows of waiting requests are worth surveying.
    max_rows: usize,
    batching: Option<BatchingPolicy>,
}

impl BatchRule {
    fn for_model(spec: &ModelSpec) -> Self {
        Self {
            max_rows: spec.max_batch_size.max(1),
            batching: spec.batching.clone(),
        }
    }

    /// Rows a batch may grow to when `available` rows wait; 0 leaves the
    /// oldest request alone. As Triton's batcher does, the largest preferred
    /// batch size that can be filled wins over taking everything: those are
    /// the sizes the model runs best at.
    fn batch_rows(&self, available: usize) -> usize {
        match &self.batching {
            None => 0,
            Some(policy) => policy
                .preferred_batch_sizes
                .iter()
                .copied()
                .filter(|size| *size <= available)
                .max()
                .unwrap_or(self.max_rows),
        }
    }

    fn max_queue_delay(&self) -> Duration {
        self.batching
            .as_ref()
            .map_or(Duration::ZERO, |policy| policy.max_queue_delay)
    }

    fn dispatch_now(&self, rows: usize) -> bool {
        match &self.batching {
            // Triton's default scheduler: every request is its own batch.
            None => rows > 0,
            Some(policy) => rows >= self.max_rows || policy.preferred_batch_sizes.contains(&rows),
        }
    }
}

/// A loaded copy of the model on one device.
pub struct Instance {
    pub module: CModule,
    pub device: Device,
}

/// Starts the batcher thread and one thread per instance.
pub fn start(
    model: &str,
    spec: Arc<ModelSpec>,
    queue: Arc<Queue>,
    instances: Vec<Instance>,
    load: Arc<Load>,
    observer: Arc<Observer>,
) -> std::io::Result<()> {
    // Each idle instance hands the batcher the sender of its batch channel.
    let (idle_tx, idle_rx) = channel::<Sender<Batch>>();
    for (index, instance) in instances.into_iter().enumerate() {
        let (batch_tx, batch_rx) = channel::<Batch>();
        let name = format!("{model}#{index}");
        let idle = idle_tx.clone();
        let spec = spec.clone();
        let (load, observer) = (load.clone(), observer.clone());
        idle.send(batch_tx.clone())
            .expect("the batcher holds the receiver");
        std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                // Inference only: no autograd graph is ever recorded.
                let _no_grad = tch::no_grad_guard();
                for batch in batch_rx {
                    run_batch(&instance, &name, &spec, batch, &load, &observer);
                    if idle.send(batch_tx.clone()).is_err() {
                        break;
                    }
                }
            })?;
    }
    let rule = BatchRule::for_model(&spec);
    std::thread::Builder::new()
        .name(format!("{model} batcher"))
        .spawn(move || dispatch(&queue, &rule, idle_rx))?;
    Ok(())
}

/// Gives each idle instance the next batch.
fn dispatch(queue: &Queue, rule: &BatchRule, idle: Receiver<Sender<Batch>>) {
    for instance in idle {
        let mut jobs = queue.next_batch(rule);
        let now = Instant::now();
        for job in &jobs {
            queue.observer.queued_for(now - job.enqueued);
        }
        let rows = jobs.iter().map(|job| job.rows).sum();
        let requests = jobs.len();
        let waits = jobs.iter_mut().filter_map(|job| job.trace.as_mut());
        let trace = BatchSpan::formed(waits, requests, rows);
        queue.load.batch_started(requests);
        queue.observer.running.add(requests as i64);
        if instance.send(Batch { jobs, trace }).is_err() {
            break;
        }
    }
}

fn run_batch(
    instance: &Instance,
    name: &str,
    spec: &ModelSpec,
    Batch { jobs: batch, trace }: Batch,
    load: &Load,
    observer: &Observer,
) {
    let rows: usize = batch.iter().map(|job| job.rows).sum();
    let started = Instant::now();
    let arguments = (0..spec.inputs.len())
        .map(|index| batch.iter().map(|job| &job.inputs[index]).collect())
        .collect();
    // A panic fails this batch; the instance thread (and with it the model)
    // keeps answering.
    let result = contain_panic("the forward", || forward(instance, spec, arguments, rows));
    load.batch_finished(batch.len(), started.elapsed());
    observer.running.sub(batch.len() as i64);
    if let Some(trace) = trace {
        let forward = result.as_ref().map(|(_, phases)| phases);
        trace.finish(name, started, forward.map_err(String::as_str));
    }
    match result {
        Ok((outputs, phases)) => {
            observer.batch_ran(rows, batch.len(), phases);
            if spec.max_batch_size == 0 {
                // Without a batch dimension every batch is one request.
                if let Some(job) = batch.into_iter().next() {
                    let _ = job.reply.send(Ok(Completed { outputs }));
                }
                return;
            }
            let mut offset = 0;
            for job in batch {
                let mine = outputs
                    .iter()
                    .map(|output| output.rows(offset, job.rows))
                    .collect();
                offset += job.rows;
                let _ = job.reply.send(Ok(Completed { outputs: mine }));
            }
        }
        Err(error) => {
            for job in batch {
                let _ = job.reply.send(Err(error.clone()));
            }
        }
    }
}

/// Runs `inputs` (in forward order) `count` times on `instance`, for
/// `model_warmup` before the instance takes requests.
pub fn warm_up(
    instance: &Instance,
    spec: &ModelSpec,
    inputs: &[Value],
    rows: usize,
    count: usize,
) -> Result<(), String> {
    let _no_grad = tch::no_grad_guard();
    for _ in 0..count {
        let arguments = inputs.iter().map(|input| vec![input]).collect();
        forward(instance, spec, arguments, rows)?;
    }
    Ok(())
}

/// One forward over the whole batch (per input, the parts to join along the
/// batch dimension); outputs on the CPU, checked against the configuration.
fn forward(
    instance: &Instance,
    spec: &ModelSpec,
    arguments: Vec<Vec<&Value>>,
    rows: usize,
) -> Result<(Vec<Value>, Phases), String> {
    let torch = |error: tch::TchError| first_line(&error.to_string());
    let started = Instant::now();
    let arguments = arguments
        .into_iter()
        .map(|parts| {
            Ok(match Value::join(&parts).map_err(torch)? {
                Value::Tensor(tensor) => {
                    IValue::Tensor(tensor.f_to_device(instance.device).map_err(torch)?)
                }
                Value::Strings { strings, .. } => IValue::StringList(strings),
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let joined = Instant::now();
    let result = instance.module.forward_is(&arguments).map_err(torch)?;
    // The forward's kernels may still be queued on a GPU: the copy back below
    // waits for them, so the split between infer and output is approximate there.
    let inferred = Instant::now();
    let results = match result {
        IValue::Tuple(values) => values,
        IValue::TensorList(tensors) => tensors.into_iter().map(IValue::Tensor).collect(),
        IValue::GenericList(values)
            if !values
                .iter()
                .all(|value| matches!(value, IValue::String(_))) =>
        {
            values
        }
        single => vec![single],
    };
    if results.len() != spec.outputs.len() {
        return Err(format!(
            "the model returned {} results but its configuration declares {} outputs",
            results.len(),
            spec.outputs.len()
        ));
    }
    let batch_rows = (spec.max_batch_size > 0).then_some(rows);
    let outputs = results
        .into_iter()
        .zip(&spec.outputs)
        .map(|(result, declared)| output_value(result, declared, batch_rows).map_err(torch_or_text))
        .collect::<Result<Vec<_>, _>>()?;
    let phases = Phases {
        input: joined - started,
        infer: inferred - joined,
        output: inferred.elapsed(),
    };
    Ok((outputs, phases))
}

enum OutputError {
    Torch(tch::TchError),
    Text(String),
}

fn torch_or_text(error: OutputError) -> String {
    match error {
        OutputError::Torch(error) => first_line(&error.to_string()),
        OutputError::Text(text) => text,
    }
}

/// One result of the forward as the output `declared` says it is, on the
/// CPU; `batch_rows`: the rows it must have when the model batches.
fn output_value(
    result: IValue,
    declared: &TensorSpec,
    batch_rows: Option<usize>,
) -> Result<Value, OutputError> {
    let mismatch = |what: &str| {
        OutputError::Text(format!(
            "the model returned {what} for output \"{}\", declared {}",
            declared.name,
            declared.element.kserve_name()
        ))
    };
    match (result, declared.element.kind()) {
        (IValue::Tensor(tensor), Some(kind)) => {
            if tensor.kind() != kind {
                return Err(mismatch(&format!("{:?}", tensor.kind())));
            }
            if let Some(rows) =
                batch_rows.filter(|rows| tensor.size().first() != Some(&(*rows as i64)))
            {
                return Err(OutputError::Text(format!(
                    "output \"{}\" has shape {:?}, not {rows} rows for the {rows} rows of the batch",
                    declared.name,
                    tensor.size()
                )));
            }
            Ok(Value::Tensor(
                tensor
                    .f_to_device(Device::Cpu)
                    .map_err(OutputError::Torch)?,
            ))
        }
        (IValue::StringList(strings), None) => strings_output(strings, declared, batch_rows),
        (IValue::GenericList(values), None) => {
            let strings = values
                .into_iter()
                .map(|value| match value {
                    IValue::String(string) => Ok(string),
                    _ => Err(mismatch("a list of something other than strings")),
                })
                .collect::<Result<_, _>>()?;
            strings_output(strings, declared, batch_rows)
        }
        (IValue::Tensor(_), None) => Err(mismatch("a tensor")),
        (_, _) => Err(mismatch("something other than a tensor")),
    }
}

/// The shape of a list of strings: the batch's rows, then the declared
/// dims, one of which may be -1.
fn strings_output(
    strings: Vec<String>,
    declared: &TensorSpec,
    batch_rows: Option<usize>,
) -> Result<Value, OutputError> {
    let mut shape: Vec<i64> = batch_rows
        .map(|rows| rows as i64)
        .into_iter()
        .chain(declared.dims.iter().copied())
        .collect();
    let known: i64 = shape.iter().filter(|dim| **dim >= 0).product();
    let count = strings.len() as i64;
    let unknown: Vec<usize> = (0..shape.len()).filter(|i| shape[*i] < 0).collect();
    let fits = match unknown.as_slice() {
        [] => known == count,
        [index] if known > 0 && count % known == 0 => {
            shape[*index] = count / known;
            true
        }
        _ => false,
    };
    if !fits {
        return Err(OutputError::Text(format!(
            "the model returned {count} strings for output \"{}\", which do not fill its shape {:?}",
            declared.name,
            declared.full_shape(usize::from(batch_rows.is_some()))
        )));
    }
    Ok(Value::Strings { strings, shape })
}

/// Runs `work` (a call into libtorch), turning a panic into an error: tch
/// panics where libtorch reports what its checked calls did not expect, and
/// that must fail the work, not the thread doing it.
pub fn contain_panic<T>(what: &str, work: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    std::panic::catch_unwind(AssertUnwindSafe(work)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("no message");
        Err(format!("{what} panicked: {}", first_line(message)))
    })
}

/// libtorch errors carry a C++ backtrace after the message.
pub fn first_line(message: &str) -> String {
    let message = message
        .split("\nException raised from")
        .next()
        .unwrap_or(message);
    message.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(preferred: Vec<usize>) -> BatchRule {
        BatchRule {
            max_rows: 64,
            batching: Some(BatchingPolicy {
                max_queue_delay: Duration::from_millis(2),
                preferred_batch_sizes: preferred,
            }),
        }
    }

    #[test]
    fn the_largest_preferred_size_that_can_be_filled_wins() {
        let rule = rule(vec![16, 32]);
        assert_eq!(rule.batch_rows(36), 32);
        assert_eq!(rule.batch_rows(20), 16);
        // No preferred size can be filled: take whatever waits.
        assert_eq!(rule.batch_rows(10), 64);
        assert!(rule.dispatch_now(16) && rule.dispatch_now(64));
        assert!(!rule.dispatch_now(17));
    }

    #[test]
    fn without_dynamic_batching_each_request_runs_alone() {
        let rule = BatchRule {
            max_rows: 8,
            batching: None,
        };
        assert_eq!(rule.batch_rows(8), 0);
        assert!(rule.dispatch_now(1));
        assert_eq!(rule.max_queue_delay(), Duration::ZERO);
    }
}
