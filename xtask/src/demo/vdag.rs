//! The demo's vDAG traffic (examples/mesh/vdags.yaml), called the way an
//! application calls a vDAG: a KServe v2 `ModelInfer` to its own sidecar
//! with `x-gridmesh-vdag: <name>`. The client sidecar is each request's
//! origin; hops go from sidecar to sidecar over mTLS (here all to the
//! classifier's sidecar, whose gridmesh-block serves every node's model),
//! and the tail delivers back to the client sidecar's inbound listener.
//!
//! - `features`, a diamond (pre -> left and right -> join): every answer is
//!   checked against PyTorch's composition of the same saved models
//!   (`vdag_expected.json`, written by make_test_models.py).
//! - `broken`, whose second node names a model the block does not have: one
//!   call, which must fail at once with an error naming that node.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use gridmesh_proto::inference::ModelInferRequest;
use gridmesh_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use gridmesh_proto::inference::model_infer_request::InferInputTensor;
use serde_json::Value;
use tonic::transport::Channel;

use super::inference::check_fp32;
use super::traffic::{Tally, drive};

const HEADER: &str = "x-gridmesh-vdag";
/// The `broken` vDAG's error must come well before its deadline.
const PROMPT: Duration = Duration::from_secs(2);

pub struct VDagReport {
    pub tally: Tally,
    /// The `broken` call's error, and how long it took.
    pub failure: String,
    pub failure_after: Duration,
}

pub async fn send(
    outbound: SocketAddr,
    expected_json: &Path,
    requests: usize,
    concurrency: usize,
) -> Result<VDagReport> {
    let (request, expected) = load_case(expected_json)?;
    // Its authority routes to the classifier, but a vDAG call never
    // reaches a route: the header makes the client sidecar its origin.
    let channel = super::inference::connect(outbound).await?;
    let clients = (0..concurrency)
        .map(|_| GrpcInferenceServiceClient::new(channel.clone()))
        .collect();
    let tally = drive(
        requests,
        clients,
        async |client: &mut GrpcInferenceServiceClient<Channel>, _| {
            let response = client
                .model_infer(call("features", &request))
                .await
                .map_err(|status| anyhow::anyhow!("{:?}: {}", status.code(), status.message()))?
                .into_inner();
            let index = response
                .outputs
                .iter()
                .position(|o| o.name == "y")
                .context("no output y")?;
            let raw = response
                .raw_output_contents
                .get(index)
                .context("no raw output")?;
            check_fp32(raw, &expected).context("y")?;
            Ok(format!(
                "vDAG {} v{}",
                response.model_name, response.model_version
            ))
        },
    )
    .await;

    let started = Instant::now();
    let broken = GrpcInferenceServiceClient::new(channel)
        .model_infer(call("broken", &request))
        .await;
    let failure_after = started.elapsed();
    let failure = match broken {
        Ok(_) => bail!("the broken vDAG answered with outputs"),
        Err(status) => format!("{:?}: {}", status.code(), status.message()),
    };
    ensure!(
        failure.contains("node missing") && failure_after < PROMPT,
        "the broken vDAG's error should name node \"missing\" within {PROMPT:?}; \
         got after {failure_after:?}: {failure}"
    );
    Ok(VDagReport {
        tally,
        failure,
        failure_after,
    })
}

fn call(vdag: &'static str, request: &ModelInferRequest) -> tonic::Request<ModelInferRequest> {
    let mut call = tonic::Request::new(request.clone());
    call.metadata_mut()
        .insert(HEADER, tonic::metadata::MetadataValue::from_static(vdag));
    call.set_timeout(Duration::from_secs(10));
    call
}

/// The input x and the diamond's output y, from vdag_expected.json.
fn load_case(expected_json: &Path) -> Result<(ModelInferRequest, Vec<f32>)> {
    let text = std::fs::read_to_string(expected_json)
        .with_context(|| format!("cannot read {}", expected_json.display()))?;
    let expected: Value = serde_json::from_str(&text)?;
    let values = |value: &Value| -> Result<Vec<f32>> {
        value
            .as_array()
            .context("not a list")?
            .iter()
            .map(|v| v.as_f64().map(|v| v as f32).context("not a number"))
            .collect()
    };
    let shape: Vec<i64> = serde_json::from_value(expected["shape"].clone())?;
    let raw = values(&expected["x"])?
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let request = ModelInferRequest {
        inputs: vec![InferInputTensor {
            name: "x".into(),
            datatype: "FP32".into(),
            shape,
            ..Default::default()
        }],
        raw_input_contents: vec![raw],
        ..Default::default()
    };
    Ok((request, values(&expected["diamond"]["y"])?))
}
