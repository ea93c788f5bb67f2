//! The demo's model traffic: KServe v2 `ModelInfer` calls to gridmesh-block,
//! sent the way an application in the mesh would (to its own sidecar, for the
//! authority "classifier"), checked against the outputs PyTorch gave for the
//! same inputs, then the server's statistics and load report as the sidecars
//! passed them back.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use gridmesh_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use gridmesh_proto::inference::model_infer_request::InferInputTensor;
use gridmesh_proto::inference::{ModelInferRequest, ModelStatisticsRequest};
use serde_json::Value;
use tonic::transport::{Channel, Endpoint};

use super::traffic::{Tally, drive};

/// The authority the client sidecar routes to the model server's sidecar.
const AUTHORITY: &str = "http://classifier";
/// The models the demo calls, alternately; both are in expected.json.
const MODELS: [&str; 2] = ["mlp", "cnn"];
/// How far an output may be from PyTorch's (FP32, different thread counts).
const TOLERANCE: f32 = 1e-5;
const LOAD_REPORT_HEADER: &str = "endpoint-load-metrics";

/// What the inference traffic showed.
pub struct InferenceReport {
    pub tally: Tally,
    /// Per model: requests answered and forwards run (Triton's statistics).
    pub batches: Vec<(String, u64, u64)>,
    /// The last ORCA load report a response carried.
    pub load_report: Option<String>,
}

/// One request and the outputs PyTorch computed for it.
struct Case {
    model: &'static str,
    request: ModelInferRequest,
    expected: Vec<f32>,
}

pub async fn send(
    outbound: SocketAddr,
    expected_json: &Path,
    requests: usize,
    concurrency: usize,
) -> Result<InferenceReport> {
    let cases = load_cases(expected_json)?;
    let channel = connect(outbound).await?;
    let load_report = std::cell::RefCell::new(None);
    let clients = (0..concurrency)
        .map(|_| GrpcInferenceServiceClient::new(channel.clone()))
        .collect();
    let tally = drive(
        requests,
        clients,
        async |client: &mut GrpcInferenceServiceClient<Channel>, index| {
            let case = &cases[index % cases.len()];
            let response = client
                .model_infer(case.request.clone())
                .await
                .map_err(|status| anyhow::anyhow!("{:?}: {}", status.code(), status.message()))?;
            if let Some(report) = response.metadata().get(LOAD_REPORT_HEADER) {
                *load_report.borrow_mut() = report.to_str().ok().map(str::to_owned);
            }
            let response = response.into_inner();
            let raw = response.raw_output_contents.first().context("no output")?;
            check_fp32(raw, &case.expected).with_context(|| case.model)?;
            Ok(format!(
                "{} v{}",
                response.model_name, response.model_version
            ))
        },
    )
    .await;

    let mut client = GrpcInferenceServiceClient::new(channel);
    let mut batches = Vec::new();
    for model in MODELS {
        let statistics = client
            .model_statistics(ModelStatisticsRequest {
                name: model.into(),
                version: String::new(),
            })
            .await
            .with_context(|| format!("ModelStatistics of {model}"))?
            .into_inner();
        let (requests, forwards) = statistics.model_stats.iter().fold((0, 0), |(r, f), stats| {
            let succeeded = stats
                .inference_stats
                .as_ref()
                .and_then(|s| s.success)
                .map_or(0, |s| s.count);
            (r + succeeded, f + stats.execution_count)
        });
        batches.push((model.to_string(), requests, forwards));
    }
    Ok(InferenceReport {
        tally,
        batches,
        load_report: load_report.into_inner(),
    })
}

/// One call, sent as an instrumented application sends it: with a sampled
/// W3C `traceparent`, so every hop records and exports its spans.
pub async fn traced_call(
    outbound: SocketAddr,
    expected_json: &Path,
    traceparent: &str,
) -> Result<()> {
    let cases = load_cases(expected_json)?;
    let case = cases.first().context("expected.json has no case")?;
    let channel = connect(outbound).await?;
    let mut request = tonic::Request::new(case.request.clone());
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().context("a traceparent")?);
    GrpcInferenceServiceClient::new(channel)
        .model_infer(request)
        .await
        .map_err(|status| anyhow::anyhow!("{:?}: {}", status.code(), status.message()))?;
    Ok(())
}

/// Checks raw little-endian FP32 `raw` against PyTorch's `expected`.
pub(super) fn check_fp32(raw: &[u8], expected: &[f32]) -> Result<()> {
    let outputs: Vec<f32> = raw
        .chunks_exact(4)
        .map(|bytes| f32::from_le_bytes(bytes.try_into().expect("4 bytes")))
        .collect();
    ensure!(
        outputs.len() == expected.len(),
        "{} output values, expected {}",
        outputs.len(),
        expected.len()
    );
    let worst = outputs
        .iter()
        .zip(expected)
        .map(|(got, want)| (got - want).abs() / (1.0 + want.abs()))
        .fold(0.0f32, f32::max);
    ensure!(
        worst <= TOLERANCE,
        "differs from PyTorch's output by {worst}"
    );
    Ok(())
}

/// A channel to the client sidecar, for the classifier's authority.
pub(super) async fn connect(outbound: SocketAddr) -> Result<Channel> {
    Endpoint::from_shared(format!("http://{outbound}"))?
        .origin(AUTHORITY.parse().expect("a static URI"))
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("cannot connect to the client sidecar at {outbound}"))
}

/// The requests, from the inputs in the test models' expected.json (latest
/// version of each model: what a request without a version gets).
fn load_cases(expected_json: &Path) -> Result<Vec<Case>> {
    let text = std::fs::read_to_string(expected_json)
        .with_context(|| format!("cannot read {}", expected_json.display()))?;
    let expected: Value = serde_json::from_str(&text)?;
    MODELS
        .iter()
        .map(|model| {
            let versions = expected[model]
                .as_object()
                .with_context(|| format!("{model} is not in expected.json"))?;
            let latest = versions
                .keys()
                .max_by_key(|version| version.parse::<u64>().unwrap_or(0))
                .context("no version")?;
            let case = &versions[latest];
            let input = &case["inputs"][0];
            let values = |tensor: &Value| -> Result<Vec<f32>> {
                tensor["data"]
                    .as_array()
                    .context("data is not a list")?
                    .iter()
                    .map(|value| value.as_f64().map(|v| v as f32).context("not a number"))
                    .collect()
            };
            let shape: Vec<i64> = serde_json::from_value(input["shape"].clone())?;
            let raw: Vec<u8> = values(input)?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            let request = ModelInferRequest {
                model_name: model.to_string(),
                inputs: vec![InferInputTensor {
                    name: input["name"].as_str().context("input name")?.into(),
                    datatype: "FP32".into(),
                    shape,
                    ..Default::default()
                }],
                raw_input_contents: vec![raw.into()],
                ..Default::default()
            };
            let expected = values(&case["outputs"][0])?;
            if expected.is_empty() {
                bail!("{model} has no expected output");
            }
            Ok(Case {
                model,
                request,
                expected,
            })
        })
        .collect()
}
