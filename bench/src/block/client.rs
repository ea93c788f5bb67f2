//! The closed-loop client: `concurrency` callers, each sending its next
//! ModelInfer (one 3x32x32 image, raw FP32 bytes) as soon as the previous
//! answer is in, over a few HTTP/2 connections. Every caller runs from the
//! start of the warm-up to the end of the measured window without pausing,
//! so the window sees the steady state; a request counts when its answer
//! arrives inside the window.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use gridmesh_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use gridmesh_proto::inference::model_infer_request::InferInputTensor;
use gridmesh_proto::inference::{ModelInferRequest, ModelInferResponse};
use hdrhistogram::Histogram;
use tonic::transport::{Channel, Endpoint};

/// Bound on one call, so a wedged server costs an error, not a hang.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Most HTTP/2 connections the callers share.
pub const MAX_CONNECTIONS: usize = 4;
/// Image side and channels of the test CNN; its 10 logits come back.
const IMAGE_ELEMENTS: usize = 3 * 32 * 32;
const LOGITS_BYTES: usize = 10 * 4;

pub type Client = GrpcInferenceServiceClient<Channel>;

pub async fn connect(address: SocketAddr) -> Result<Client> {
    let channel = Endpoint::from_shared(format!("http://{address}"))?
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connecting to gridmesh-block at {address}"))?;
    Ok(GrpcInferenceServiceClient::new(channel))
}

/// One image per request, batch dimension 1, as a client of the server
/// would send it; the pixels are fixed (a ramp) so every run sends the same.
pub fn request(model: &str) -> ModelInferRequest {
    let pixels: Vec<u8> = (0..IMAGE_ELEMENTS)
        .flat_map(|i| ((i % 255) as f32 / 255.0).to_le_bytes())
        .collect();
    ModelInferRequest {
        model_name: model.into(),
        model_version: "1".into(),
        inputs: vec![InferInputTensor {
            name: "image".into(),
            datatype: "FP32".into(),
            shape: vec![1, 3, 32, 32],
            ..Default::default()
        }],
        raw_input_contents: vec![pixels.into()],
        ..Default::default()
    }
}

fn check(response: &ModelInferResponse) -> Result<()> {
    let logits = response.raw_output_contents.first().map(|b| b.len());
    ensure!(
        logits == Some(LOGITS_BYTES),
        "the response carries {logits:?} bytes of logits, not {LOGITS_BYTES}"
    );
    Ok(())
}

/// What the callers saw in the measured window.
pub struct Outcome {
    pub completed: u64,
    pub latency_ns: Histogram<u64>,
    pub errors: u64,
    pub first_error: Option<String>,
}

impl Outcome {
    fn new() -> Self {
        Self {
            completed: 0,
            latency_ns: Histogram::new_with_bounds(1, 60_000_000_000, 3)
                .expect("valid histogram bounds"),
            errors: 0,
            first_error: None,
        }
    }

    fn merge(&mut self, other: Outcome) {
        self.completed += other.completed;
        self.latency_ns
            .add(&other.latency_ns)
            .expect("histograms with the same bounds");
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// Starts `concurrency` callers on `clients` (round robin) that run until
/// `end` and count what completes in `[start, end]`. Join the handles
/// after `end` with [`collect`].
pub fn start(
    clients: &[Client],
    model: &str,
    concurrency: usize,
    start: Instant,
    end: Instant,
) -> Vec<tokio::task::JoinHandle<Outcome>> {
    let request = request(model);
    (0..concurrency)
        .map(|i| {
            let client = clients[i % clients.len()].clone();
            tokio::spawn(caller(client, request.clone(), start, end))
        })
        .collect()
}

pub async fn collect(callers: Vec<tokio::task::JoinHandle<Outcome>>) -> Outcome {
    let mut total = Outcome::new();
    for caller in callers {
        total.merge(caller.await.expect("a load caller panicked"));
    }
    total
}

async fn caller(
    mut client: Client,
    request: ModelInferRequest,
    start: Instant,
    end: Instant,
) -> Outcome {
    let mut outcome = Outcome::new();
    while Instant::now() < end {
        let sent = Instant::now();
        let result = tokio::time::timeout(CALL_TIMEOUT, client.model_infer(request.clone())).await;
        let done = Instant::now();
        let result = match result {
            Ok(Ok(response)) => check(&response.into_inner()),
            Ok(Err(status)) => Err(anyhow::anyhow!("{:?}: {}", status.code(), status.message())),
            Err(_) => Err(anyhow::anyhow!("no answer within {CALL_TIMEOUT:?}")),
        };
        if done < start || done > end {
            continue;
        }
        match result {
            Ok(()) => {
                outcome.completed += 1;
                let nanos = (done - sent).as_nanos().max(1) as u64;
                let _ = outcome.latency_ns.record(nanos);
            }
            Err(error) => {
                outcome.errors += 1;
                outcome
                    .first_error
                    .get_or_insert_with(|| format!("{error:#}"));
            }
        }
    }
    outcome
}
