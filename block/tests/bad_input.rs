//! Bad input gets a clear error and loses nothing: malformed ModelInfer
//! requests get INVALID_ARGUMENT naming what is wrong, unknown models and
//! versions NOT_FOUND, and a model that cannot load (corrupt model.pt,
//! malformed or unsupported config.pbtxt) UNAVAILABLE with the reason, while
//! the server keeps serving every other model.

mod support;

use gridmesh_proto::inference::{
    ModelConfigRequest, ModelInferRequest, ModelMetadataRequest, ModelReadyRequest,
    ServerLiveRequest, ServerReadyRequest,
};
use gridmesh_tests::prometheus;
use support::{
    BlockServer, Client, Form, TensorData, Tolerance, assert_output, assert_status, copy_models,
    infer_request, request_outputs, test_models,
};
use tonic::Code;

async fn server() -> BlockServer {
    BlockServer::start_ready(&test_models().dir).await
}

/// mlp version 1's example input with `change` applied to the tensor.
fn mlp_input(change: impl FnOnce(&mut TensorData)) -> Vec<TensorData> {
    let mut inputs = test_models().example("mlp", "1").inputs;
    change(&mut inputs[0]);
    inputs
}

#[tokio::test]
async fn unknown_models_and_versions_are_not_found() {
    let server = server().await;
    let mut client = server.client().await;
    let example = test_models().example("mlp", "1");

    let result = client
        .model_infer(infer_request(
            "no_such_model",
            "",
            &example.inputs,
            Form::Typed,
        ))
        .await;
    assert_status(
        result,
        Code::NotFound,
        &["no_such_model"],
        "ModelInfer of an unknown model",
    );
    let result = client
        .model_infer(infer_request("mlp", "7", &example.inputs, Form::Typed))
        .await;
    assert_status(
        result,
        Code::NotFound,
        &["7"],
        "ModelInfer of an unknown version",
    );

    let result = client
        .model_metadata(ModelMetadataRequest {
            name: "no_such_model".into(),
            version: String::new(),
        })
        .await;
    assert_status(result, Code::NotFound, &["no_such_model"], "ModelMetadata");
    let result = client
        .model_config(ModelConfigRequest {
            name: "no_such_model".into(),
            version: String::new(),
        })
        .await;
    assert_status(result, Code::NotFound, &["no_such_model"], "ModelConfig");

    // Still serving.
    let response = client
        .model_infer(infer_request("mlp", "1", &example.inputs, Form::Raw))
        .await
        .unwrap()
        .into_inner();
    assert_output(&response, &example.outputs[0], Tolerance::Fp32);
}

#[tokio::test]
async fn malformed_requests_are_invalid_arguments_that_name_the_input() {
    let models = test_models();
    let mlp = models.example("mlp", "1");
    let two_io = models.example("two_io", "1");
    let dtypes = models.example("dtypes", "1");
    let server = server().await;
    let mut client = server.client().await;

    let typed = |model: &str, inputs: &[TensorData]| infer_request(model, "1", inputs, Form::Typed);
    let raw = |model: &str, inputs: &[TensorData]| infer_request(model, "1", inputs, Form::Raw);
    let mut cases: Vec<(&str, ModelInferRequest, &str)> = vec![
        (
            "wrong datatype (INT64 for an FP32 input)",
            typed("mlp", &mlp_input(|t| t.datatype = "INT64".into())),
            "INPUT__0",
        ),
        (
            "wrong shape ([3, 15] for [-1, 16])",
            typed(
                "mlp",
                &mlp_input(|t| {
                    t.shape = vec![3, 15];
                    t.data.truncate(45);
                }),
            ),
            "INPUT__0",
        ),
        (
            "wrong rank ([48] for [-1, 16])",
            typed("mlp", &mlp_input(|t| t.shape = vec![48])),
            "INPUT__0",
        ),
        (
            "batch larger than max_batch_size (33 > 32)",
            typed(
                "mlp",
                &mlp_input(|t| {
                    t.shape = vec![33, 16];
                    t.data = vec![0.5; 33 * 16];
                }),
            ),
            "INPUT__0",
        ),
        (
            "batch of 0",
            typed(
                "mlp",
                &mlp_input(|t| {
                    t.shape = vec![0, 16];
                    t.data.clear();
                }),
            ),
            "INPUT__0",
        ),
        (
            "fewer typed values than the shape holds",
            typed(
                "mlp",
                &mlp_input(|t| {
                    t.data.pop();
                }),
            ),
            "INPUT__0",
        ),
        (
            "more typed values than the shape holds",
            typed("mlp", &mlp_input(|t| t.data.push(1.0))),
            "INPUT__0",
        ),
        (
            "missing input",
            typed("two_io", &two_io.inputs[..1]),
            "INPUT__1",
        ),
        (
            "unknown input name",
            typed(
                "two_io",
                &[
                    two_io.inputs[0].clone(),
                    two_io.inputs[1].clone(),
                    TensorData::new("EXTRA", "FP32", &[3, 4], &[0.0; 12]),
                ],
            ),
            "EXTRA",
        ),
        (
            "unbatched model given a batch dimension",
            raw(
                "dtypes",
                &dtypes
                    .inputs
                    .iter()
                    .map(|t| {
                        let mut t = t.clone();
                        if t.name == "u8" {
                            t.shape = vec![1, 8];
                        }
                        t
                    })
                    .collect::<Vec<_>>(),
            ),
            "u8",
        ),
    ];

    // Typed values of the wrong family: INT64 values for an FP32 input.
    let mut request = typed("mlp", &mlp.inputs);
    let contents = request.inputs[0].contents.as_mut().unwrap();
    contents.int64_contents = contents.fp32_contents.iter().map(|v| *v as i64).collect();
    contents.fp32_contents.clear();
    cases.push(("FP32 input sent as int64_contents", request, "INPUT__0"));

    // Raw bytes one element short.
    let mut request = raw("mlp", &mlp.inputs);
    request.raw_input_contents[0].truncate(47 * 4);
    cases.push(("raw bytes one element short", request, "INPUT__0"));

    // Raw bytes not a whole number of elements.
    let mut request = raw("mlp", &mlp.inputs);
    let mut longer = request.raw_input_contents[0].to_vec();
    longer.push(0);
    request.raw_input_contents[0] = longer.into();
    cases.push(("raw bytes one byte long", request, "INPUT__0"));

    // FP16 has no typed contents: everything typed, half as fp32_contents.
    let mut request = infer_request("dtypes", "1", &dtypes.inputs[..3], Form::Typed);
    let half = &dtypes.inputs[3];
    let mut half_input = half.input(Form::Raw);
    half_input.contents = Some(gridmesh_proto::inference::InferTensorContents {
        fp32_contents: half.data.iter().map(|v| *v as f32).collect(),
        ..Default::default()
    });
    request.inputs.push(half_input);
    cases.push(("FP16 input sent as fp32_contents", request, "half"));

    // An output the model does not have.
    let mut request = typed("mlp", &mlp.inputs);
    request_outputs(&mut request, &["OUTPUT__9"]);
    cases.push(("unknown requested output", request, "OUTPUT__9"));

    let count = cases.len();
    for (case, request, names) in cases {
        let result = client.model_infer(request).await;
        assert_status(result, Code::InvalidArgument, &[names], case);
    }

    // Inputs whose batch sizes disagree: either input may be named.
    let mut inputs = two_io.inputs.clone();
    inputs[1].shape = vec![2, 4];
    inputs[1].data.truncate(8);
    let status = assert_status(
        client.model_infer(typed("two_io", &inputs)).await,
        Code::InvalidArgument,
        &[],
        "inputs with different batch sizes",
    );
    assert!(
        status.message().contains("INPUT__0") || status.message().contains("INPUT__1"),
        "{status:?}"
    );

    // Nothing was lost: the server still serves, and counted the failures.
    let response = client
        .model_infer(typed("mlp", &mlp.inputs))
        .await
        .unwrap()
        .into_inner();
    assert_output(&response, &mlp.outputs[0], Tolerance::Fp32);
    let text = server.metrics().await;
    // Every model's invalid-argument failures (mlp, two_io and dtypes got
    // bad requests); absent would mean nothing was counted.
    let failures = prometheus::sum(
        &text,
        "gridmesh_block:request_failure_total",
        &[("reason", "invalid_argument")],
    );
    assert_eq!(
        failures,
        Some((count + 1) as f64),
        "request_failure_total{{reason=\"invalid_argument\"}} in:\n{text}"
    );
}

/// Starts a server on `repo` whose `broken` model cannot load, and waits until
/// the good `cnn` is ready and `broken` answers ModelInfer with UNAVAILABLE
/// whose message satisfies `reason` (loading is over). Returns that message.
async fn start_with_broken_model(
    repo: &std::path::Path,
    broken: &str,
    reason: impl Fn(&str) -> bool,
) -> (BlockServer, Client, String) {
    let server = BlockServer::start_with(repo, &[]).await;
    let mut client = server.client().await;
    let example = test_models().example("mlp", "1");
    let deadline = tokio::time::Instant::now() + support::START_TIMEOUT;
    let message = loop {
        let cnn = client
            .model_ready(ModelReadyRequest {
                name: "cnn".into(),
                version: String::new(),
            })
            .await;
        let cnn_ready = matches!(&cnn, Ok(r) if r.get_ref().ready);
        let result = client
            .model_infer(infer_request(broken, "", &example.inputs, Form::Typed))
            .await;
        match &result {
            Err(status)
                if cnn_ready && status.code() == Code::Unavailable && reason(status.message()) =>
            {
                break status.message().to_owned();
            }
            _ => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "after {:?}: cnn ModelReady {cnn:?}; {broken} ModelInfer {result:?} \
             (expected UNAVAILABLE with the reason); server output:\n{}",
            support::START_TIMEOUT,
            server.output()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    (server, client, message)
}

/// The checks every broken-model repository shares: the server is live but
/// not ready, the broken model is not ready, and cnn serves correctly.
async fn assert_only_the_broken_model_is_down(
    server: &BlockServer,
    client: &mut Client,
    broken: &str,
) {
    let live = client.server_live(ServerLiveRequest {}).await.unwrap();
    assert!(live.get_ref().live);
    let ready = client.server_ready(ServerReadyRequest {}).await.unwrap();
    assert!(
        !ready.get_ref().ready,
        "ServerReady is true although {broken} failed to load"
    );
    let http_ready = server.get("/v2/health/ready").await;
    assert_eq!(
        http_ready.status, 503,
        "/v2/health/ready: {}",
        http_ready.body
    );
    let http_live = server.get("/v2/health/live").await;
    assert_eq!(http_live.status, 200, "/v2/health/live: {}", http_live.body);
    let model_ready = client
        .model_ready(ModelReadyRequest {
            name: broken.into(),
            version: String::new(),
        })
        .await;
    assert!(
        !matches!(&model_ready, Ok(r) if r.get_ref().ready),
        "ModelReady {broken}: {model_ready:?}"
    );

    let cnn = test_models().example("cnn", "1");
    let response = client
        .model_infer(infer_request("cnn", "1", &cnn.inputs, Form::Raw))
        .await
        .unwrap_or_else(|s| panic!("cnn next to a broken {broken}: {s:?}"))
        .into_inner();
    assert_output(&response, &cnn.outputs[0], Tolerance::Fp32);
}

#[tokio::test]
async fn a_corrupt_model_file_makes_only_that_model_unavailable() {
    let repo = copy_models(&["mlp", "cnn"]);
    for version in ["1", "2"] {
        std::fs::write(
            repo.path().join("mlp").join(version).join("model.pt"),
            b"this is not a TorchScript archive\n\x00\x01\x02\xff",
        )
        .unwrap();
    }
    let (server, mut client, message) = start_with_broken_model(repo.path(), "mlp", |m| {
        m.contains("model.pt") || m.contains("zip") || m.contains("archive")
    })
    .await;
    assert!(message.contains("mlp"), "{message}");
    assert_only_the_broken_model_is_down(&server, &mut client, "mlp").await;

    // Explicit versions too.
    let example = test_models().example("mlp", "1");
    let result = client
        .model_infer(infer_request("mlp", "1", &example.inputs, Form::Raw))
        .await;
    assert_status(result, Code::Unavailable, &["mlp"], "mlp version 1");
}

/// Writes `config` as `<repo>/<name>/config.pbtxt` next to a copy of mlp's
/// version 1 model file.
fn add_model_with_config(repo: &std::path::Path, name: &str, config: &str) {
    let version_dir = repo.join(name).join("1");
    std::fs::create_dir_all(&version_dir).unwrap();
    std::fs::copy(
        test_models().dir.join("mlp/1/model.pt"),
        version_dir.join("model.pt"),
    )
    .unwrap();
    std::fs::write(repo.join(name).join("config.pbtxt"), config).unwrap();
}

fn mlp_like_config(name: &str, scheduling: &str) -> String {
    format!(
        r#"name: "{name}"
platform: "pytorch_libtorch"
max_batch_size: 32
input [
  {{ name: "INPUT__0" data_type: TYPE_FP32 dims: [ 16 ] }}
]
output [
  {{ name: "OUTPUT__0" data_type: TYPE_FP32 dims: [ 4 ] }}
]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
{scheduling}
"#
    )
}

#[tokio::test]
async fn a_malformed_config_is_unavailable_naming_the_file_and_line() {
    let repo = copy_models(&["cnn"]);
    // Line 11: a `]` where the block's `}` belongs.
    let config = mlp_like_config(
        "mlp",
        "dynamic_batching { max_queue_delay_microseconds: 1000 ]",
    );
    assert!(
        config
            .lines()
            .nth(10)
            .unwrap()
            .starts_with("dynamic_batching")
    );
    add_model_with_config(repo.path(), "mlp", &config);

    let (server, mut client, message) =
        start_with_broken_model(repo.path(), "mlp", |m| m.contains("config.pbtxt")).await;
    assert!(
        message.contains("line 11") || message.contains(":11:") || message.contains(":11"),
        "the message does not point at line 11: {message}"
    );
    assert_only_the_broken_model_is_down(&server, &mut client, "mlp").await;

    let result = client
        .model_config(ModelConfigRequest {
            name: "mlp".into(),
            version: String::new(),
        })
        .await;
    assert_status(
        result,
        Code::Unavailable,
        &["config.pbtxt"],
        "ModelConfig of a malformed config",
    );
}

#[tokio::test]
async fn an_unsupported_config_is_unavailable_naming_the_feature() {
    let repo = copy_models(&["cnn"]);
    add_model_with_config(
        repo.path(),
        "stateful",
        &mlp_like_config("stateful", "sequence_batching { }"),
    );
    let (server, mut client, message) =
        start_with_broken_model(repo.path(), "stateful", |m| m.contains("sequence_batching")).await;
    assert!(message.contains("stateful"), "{message}");
    assert_only_the_broken_model_is_down(&server, &mut client, "stateful").await;
}

#[tokio::test]
async fn a_warmup_that_cannot_run_makes_the_model_unavailable() {
    let repo = copy_models(&["cnn"]);
    // Warm-up data from <model>/warmup/ that was never shipped.
    let warmup = r#"model_warmup [ { name: "from file" batch_size: 1 inputs {
  key: "INPUT__0" value: { data_type: TYPE_FP32 dims: [ 16 ] input_data_file: "missing.bin" } } } ]"#;
    add_model_with_config(repo.path(), "warm", &mlp_like_config("warm", warmup));
    let (server, mut client, message) =
        start_with_broken_model(repo.path(), "warm", |m| m.contains("model_warmup")).await;
    assert!(
        message.contains("from file") && message.contains("warmup/missing.bin"),
        "{message}"
    );
    assert_only_the_broken_model_is_down(&server, &mut client, "warm").await;
}
