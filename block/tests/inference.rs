//! gridmesh-block end to end: the real server on the test model repository,
//! real gRPC. Results are checked against the outputs PyTorch gave for the same
//! inputs (expected.json), and the protocol's other RPCs against the models'
//! config.pbtxt.

mod support;

use gridmesh_proto::inference::model_config::SchedulingChoice;
use gridmesh_proto::inference::model_infer_request::InferInputTensor;
use gridmesh_proto::inference::model_instance_group::Kind;
use gridmesh_proto::inference::model_metadata_response::TensorMetadata;
use gridmesh_proto::inference::model_version_policy::PolicyChoice;
use gridmesh_proto::inference::{
    DataType, InferTensorContents, ModelConfig, ModelConfigRequest, ModelInferRequest,
    ModelInferResponse, ModelMetadataRequest, ModelReadyRequest, ServerLiveRequest,
    ServerMetadataRequest, ServerReadyRequest,
};
use gridmesh_tests::prometheus;
use support::{
    BlockServer, Client, Form, Tolerance, assert_output, batch_counts, f16_bits_to_f64,
    f64_to_f16_bits, infer_request, load_report, model_labels, model_stats, output_names,
    request_outputs, test_models,
};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

async fn server() -> BlockServer {
    BlockServer::start_ready(&test_models().dir).await
}

async fn infer(client: &mut Client, request: ModelInferRequest) -> ModelInferResponse {
    let what = format!("{} version {:?}", request.model_name, request.model_version);
    client
        .model_infer(request)
        .await
        .unwrap_or_else(|s| panic!("ModelInfer {what}: {s:?}"))
        .into_inner()
}

#[test]
fn half_float_codec_is_exact() {
    // The test helpers' FP16 conversion, against known binary16 encodings.
    let cases: &[(f64, u16)] = &[
        (0.0, 0x0000),
        (-0.0, 0x8000),
        (1.0, 0x3c00),
        (-2.0, 0xc000),
        (0.0999755859375, 0x2e66),
        (65504.0, 0x7bff),
        (-30000.0, 0xf753),
        (2f64.powi(-24), 0x0001),
        (2f64.powi(-14), 0x0400),
        (1023.0 * 2f64.powi(-24), 0x03ff),
    ];
    for (value, bits) in cases {
        assert_eq!(f64_to_f16_bits(*value), *bits, "{value}");
        assert_eq!(
            f16_bits_to_f64(*bits).to_bits(),
            value.to_bits(),
            "{bits:#06x}"
        );
    }
}

#[tokio::test]
async fn mlp_versions_match_pytorch_in_typed_and_raw_form() {
    let models = test_models();
    let server = server().await;
    let mut client = server.client().await;
    for version in ["1", "2"] {
        let example = models.example("mlp", version);
        for form in [Form::Typed, Form::Raw] {
            let request = infer_request("mlp", version, &example.inputs, form);
            let response = infer(&mut client, request).await;
            assert_eq!(response.model_name, "mlp");
            assert_eq!(response.model_version, version, "{form:?}");
            assert_eq!(output_names(&response), ["OUTPUT__0"]);
            assert_output(&response, &example.outputs[0], Tolerance::Fp32);
        }
    }
    // Same input, different weights: the answers above tell the versions apart.
    assert_ne!(
        models.example("mlp", "1").outputs[0].data,
        models.example("mlp", "2").outputs[0].data
    );
}

#[tokio::test]
async fn an_empty_version_is_served_by_the_latest_version() {
    let example = test_models().example("mlp", "2");
    let server = server().await;
    let mut client = server.client().await;
    for form in [Form::Typed, Form::Raw] {
        let response = infer(&mut client, infer_request("mlp", "", &example.inputs, form)).await;
        assert_output(&response, &example.outputs[0], Tolerance::Fp32);
        assert_eq!(
            response.model_version, "2",
            "the response should name the version that served it"
        );
    }
}

#[tokio::test]
async fn cnn_matches_pytorch_in_typed_and_raw_form() {
    let example = test_models().example("cnn", "1");
    let server = server().await;
    let mut client = server.client().await;
    for form in [Form::Typed, Form::Raw] {
        let response = infer(
            &mut client,
            infer_request("cnn", "1", &example.inputs, form),
        )
        .await;
        assert_eq!(output_names(&response), ["logits"]);
        assert_output(&response, &example.outputs[0], Tolerance::Fp32);
    }
}

#[tokio::test]
async fn two_io_returns_both_outputs_exactly_in_config_order() {
    let example = test_models().example("two_io", "1");
    let server = server().await;
    let mut client = server.client().await;
    for form in [Form::Typed, Form::Raw] {
        let response = infer(
            &mut client,
            infer_request("two_io", "", &example.inputs, form),
        )
        .await;
        assert_eq!(
            output_names(&response),
            ["OUTPUT__0", "OUTPUT__1"],
            "{form:?}"
        );
        for expected in &example.outputs {
            assert_output(&response, expected, Tolerance::Exact);
        }
    }
}

#[tokio::test]
async fn dtypes_round_trip_uint8_bool_int32_and_fp16_exactly() {
    // FP16 has no typed contents and a request cannot mix typed and raw
    // inputs, so this model is sent raw only.
    let example = test_models().example("dtypes", "1");
    let server = server().await;
    let mut client = server.client().await;
    let response = infer(
        &mut client,
        infer_request("dtypes", "1", &example.inputs, Form::Raw),
    )
    .await;
    assert_eq!(
        output_names(&response),
        ["u8_plus_one", "not_flag", "i32_times_two", "half_times_two"]
    );
    for expected in &example.outputs {
        assert_output(&response, expected, Tolerance::Exact);
    }
}

#[tokio::test]
async fn only_the_requested_outputs_are_returned() {
    let models = test_models();
    let two_io = models.example("two_io", "1");
    let dtypes = models.example("dtypes", "1");
    let server = server().await;
    let mut client = server.client().await;

    let mut request = infer_request("two_io", "1", &two_io.inputs, Form::Typed);
    request_outputs(&mut request, &["OUTPUT__1"]);
    let response = infer(&mut client, request).await;
    assert_eq!(output_names(&response), ["OUTPUT__1"]);
    assert_eq!(response.raw_output_contents.len(), 1);
    assert_output(&response, two_io.output("OUTPUT__1"), Tolerance::Exact);

    // Both, named in the reverse of config order: every buffer still belongs
    // to the output listed at its position.
    let mut request = infer_request("two_io", "1", &two_io.inputs, Form::Raw);
    request_outputs(&mut request, &["OUTPUT__1", "OUTPUT__0"]);
    let response = infer(&mut client, request).await;
    let mut names = output_names(&response);
    names.sort();
    assert_eq!(names, ["OUTPUT__0", "OUTPUT__1"]);
    for expected in &two_io.outputs {
        assert_output(&response, expected, Tolerance::Exact);
    }

    let mut request = infer_request("dtypes", "1", &dtypes.inputs, Form::Raw);
    request_outputs(&mut request, &["half_times_two"]);
    let response = infer(&mut client, request).await;
    assert_eq!(output_names(&response), ["half_times_two"]);
    assert_output(&response, dtypes.output("half_times_two"), Tolerance::Exact);
}

#[tokio::test]
async fn the_request_id_is_echoed() {
    let example = test_models().example("mlp", "1");
    let server = server().await;
    let mut client = server.client().await;
    for id in ["request-7f3a", ""] {
        let mut request = infer_request("mlp", "1", &example.inputs, Form::Typed);
        request.id = id.to_owned();
        let response = infer(&mut client, request).await;
        assert_eq!(response.id, id);
    }
}

#[tokio::test]
async fn liveness_readiness_and_model_readiness() {
    let server = server().await;
    let mut client = server.client().await;
    let live = client.server_live(ServerLiveRequest {}).await.unwrap();
    assert!(live.get_ref().live);
    let ready = client.server_ready(ServerReadyRequest {}).await.unwrap();
    assert!(ready.get_ref().ready);
    for (model, version) in [
        ("mlp", ""),
        ("mlp", "1"),
        ("mlp", "2"),
        ("cnn", ""),
        ("two_io", "1"),
        ("dtypes", ""),
        ("batch_probe", "1"),
    ] {
        let request = ModelReadyRequest {
            name: model.into(),
            version: version.into(),
        };
        let ready = client.model_ready(request).await;
        assert!(
            matches!(&ready, Ok(r) if r.get_ref().ready),
            "ModelReady {model} {version:?}: {ready:?}"
        );
    }
    // A version or model that does not exist is not ready (Triton answers
    // either false or NOT_FOUND).
    for (model, version) in [("mlp", "3"), ("no_such_model", "")] {
        let request = ModelReadyRequest {
            name: model.into(),
            version: version.into(),
        };
        match client.model_ready(request).await {
            Ok(r) => assert!(!r.get_ref().ready, "ModelReady {model} {version:?}"),
            Err(s) => assert_eq!(s.code(), Code::NotFound, "ModelReady {model}: {s:?}"),
        }
    }

    let live = server.get("/v2/health/live").await;
    assert_eq!(live.status, 200, "{}", live.body);
    let ready = server.get("/v2/health/ready").await;
    assert_eq!(ready.status, 200, "{}", ready.body);

    // The standard gRPC health service, which kubelet's gRPC probes ask.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "inference.GRPCInferenceService"] {
        let request = HealthCheckRequest {
            service: service.into(),
        };
        let status = health.check(request).await.unwrap().into_inner().status;
        assert_eq!(
            status,
            ServingStatus::Serving as i32,
            "health of {service:?}"
        );
    }
}

#[tokio::test]
async fn server_metadata_names_the_server() {
    let server = server().await;
    let mut client = server.client().await;
    let metadata = client
        .server_metadata(ServerMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!metadata.name.is_empty(), "{metadata:?}");
    assert!(!metadata.version.is_empty(), "{metadata:?}");
}

fn tensors(metadata: &[TensorMetadata]) -> Vec<(&str, &str, &[i64])> {
    metadata
        .iter()
        .map(|t| (t.name.as_str(), t.datatype.as_str(), t.shape.as_slice()))
        .collect()
}

#[tokio::test]
async fn model_metadata_describes_versions_and_tensors() {
    let server = server().await;
    let mut client = server.client().await;
    let mut metadata = async |name: &str| {
        client
            .model_metadata(ModelMetadataRequest {
                name: name.into(),
                version: String::new(),
            })
            .await
            .unwrap_or_else(|s| panic!("ModelMetadata {name}: {s:?}"))
            .into_inner()
    };

    let mlp = metadata("mlp").await;
    assert_eq!(mlp.name, "mlp");
    let mut versions = mlp.versions.clone();
    versions.sort();
    assert_eq!(versions, ["1", "2"]);
    assert_eq!(mlp.platform, "pytorch_libtorch");
    assert_eq!(tensors(&mlp.inputs), [("INPUT__0", "FP32", &[-1, 16][..])]);
    assert_eq!(tensors(&mlp.outputs), [("OUTPUT__0", "FP32", &[-1, 4][..])]);

    let cnn = metadata("cnn").await;
    assert_eq!(cnn.versions, ["1"]);
    assert_eq!(
        tensors(&cnn.inputs),
        [("image", "FP32", &[-1, 3, 32, 32][..])]
    );
    assert_eq!(tensors(&cnn.outputs), [("logits", "FP32", &[-1, 10][..])]);

    let two_io = metadata("two_io").await;
    assert_eq!(
        tensors(&two_io.inputs),
        [
            ("INPUT__0", "INT64", &[-1, 4][..]),
            ("INPUT__1", "FP32", &[-1, 4][..])
        ]
    );
    assert_eq!(
        tensors(&two_io.outputs),
        [
            ("OUTPUT__0", "FP32", &[-1, 4][..]),
            ("OUTPUT__1", "INT64", &[-1, 1][..])
        ]
    );

    // No batching: no -1 dimension.
    let dtypes = metadata("dtypes").await;
    assert_eq!(
        tensors(&dtypes.inputs),
        [
            ("u8", "UINT8", &[8][..]),
            ("flag", "BOOL", &[8][..]),
            ("i32", "INT32", &[8][..]),
            ("half", "FP16", &[8][..])
        ]
    );
    assert_eq!(
        tensors(&dtypes.outputs),
        [
            ("u8_plus_one", "UINT8", &[8][..]),
            ("not_flag", "BOOL", &[8][..]),
            ("i32_times_two", "INT32", &[8][..]),
            ("half_times_two", "FP16", &[8][..])
        ]
    );
}

#[tokio::test]
async fn model_config_returns_config_pbtxt() {
    let server = server().await;
    let mut client = server.client().await;
    let mut config = async |name: &str| -> ModelConfig {
        client
            .model_config(ModelConfigRequest {
                name: name.into(),
                version: String::new(),
            })
            .await
            .unwrap_or_else(|s| panic!("ModelConfig {name}: {s:?}"))
            .into_inner()
            .config
            .unwrap_or_else(|| panic!("ModelConfig {name}: no config"))
    };

    let cnn = config("cnn").await;
    assert_eq!(cnn.name, "cnn");
    assert_eq!(cnn.platform, "pytorch_libtorch");
    assert_eq!(cnn.max_batch_size, 64);
    assert_eq!(cnn.input.len(), 1);
    assert_eq!(cnn.input[0].name, "image");
    assert_eq!(cnn.input[0].data_type, DataType::TypeFp32 as i32);
    assert_eq!(cnn.input[0].dims, [3, 32, 32]);
    assert_eq!(cnn.output.len(), 1);
    assert_eq!(cnn.output[0].name, "logits");
    assert_eq!(cnn.output[0].data_type, DataType::TypeFp32 as i32);
    assert_eq!(cnn.output[0].dims, [10]);
    let Some(SchedulingChoice::DynamicBatching(batching)) = &cnn.scheduling_choice else {
        panic!("cnn: no dynamic_batching: {cnn:?}");
    };
    assert_eq!(batching.preferred_batch_size, [16, 32]);
    assert_eq!(batching.max_queue_delay_microseconds, 2000);
    assert_eq!(cnn.instance_group.len(), 1);
    assert_eq!(cnn.instance_group[0].count, 1);
    assert_eq!(cnn.instance_group[0].kind, Kind::Cpu as i32);

    let probe = config("batch_probe").await;
    assert_eq!(probe.max_batch_size, 16);
    let Some(SchedulingChoice::DynamicBatching(batching)) = &probe.scheduling_choice else {
        panic!("batch_probe: no dynamic_batching: {probe:?}");
    };
    assert_eq!(batching.max_queue_delay_microseconds, 100_000);
    let policy = batching
        .default_queue_policy
        .as_ref()
        .expect("queue policy");
    assert_eq!(policy.max_queue_size, 8);

    let mlp = config("mlp").await;
    assert_eq!(mlp.max_batch_size, 32);
    assert!(
        matches!(
            mlp.version_policy
                .as_ref()
                .and_then(|p| p.policy_choice.as_ref()),
            Some(PolicyChoice::All(_))
        ),
        "mlp version_policy: {:?}",
        mlp.version_policy
    );

    let two_io = config("two_io").await;
    assert_eq!(two_io.scheduling_choice, None, "two_io has no batching");
    assert_eq!(two_io.instance_group[0].count, 2);
    assert_eq!(
        two_io.input[0].data_type,
        DataType::TypeInt64 as i32,
        "{two_io:?}"
    );

    let dtypes = config("dtypes").await;
    assert_eq!(dtypes.max_batch_size, 0);
    let types: Vec<i32> = dtypes.input.iter().map(|i| i.data_type).collect();
    assert_eq!(
        types,
        [
            DataType::TypeUint8 as i32,
            DataType::TypeBool as i32,
            DataType::TypeInt32 as i32,
            DataType::TypeFp16 as i32
        ]
    );
}

#[tokio::test]
async fn statistics_count_rows_batches_and_successes() {
    const REQUESTS: u64 = 4;
    let example = test_models().example("mlp", "1");
    let rows = example.inputs[0].shape[0] as u64;
    let server = server().await;
    let mut client = server.client().await;
    // One at a time, so each request is a batch of its own.
    for _ in 0..REQUESTS {
        infer(
            &mut client,
            infer_request("mlp", "1", &example.inputs, Form::Raw),
        )
        .await;
    }

    let mut stats_client = client.clone();
    let stats = server
        .poll("mlp version 1 statistics for every request", async || {
            let stats = model_stats(&mut stats_client, "mlp", "1").await;
            (stats.inference_count == REQUESTS * rows).then_some(stats)
        })
        .await;
    assert_eq!(stats.version, "1");
    assert_eq!(stats.execution_count, REQUESTS, "{stats:?}");
    let inference = stats.inference_stats.as_ref().expect("inference_stats");
    assert_eq!(
        inference.success.as_ref().map(|d| d.count),
        Some(REQUESTS),
        "{stats:?}"
    );
    assert_eq!(
        batch_counts(&stats),
        [(rows, REQUESTS)].into(),
        "batch_stats: {stats:?}"
    );
    assert!(stats.last_inference > 0, "{stats:?}");

    // Version 2 ran nothing.
    let v2 = model_stats(&mut client, "mlp", "2").await;
    assert_eq!((v2.inference_count, v2.execution_count), (0, 0), "{v2:?}");
}

#[tokio::test]
async fn responses_carry_an_orca_load_report() {
    let example = test_models().example("mlp", "1");
    let server = server().await;
    let mut client = server.client().await;
    let response = client
        .model_infer(infer_request("mlp", "1", &example.inputs, Form::Typed))
        .await
        .unwrap();
    let report = load_report(response.metadata());
    let utilization = report["application_utilization"];
    assert!(
        (0.0..=1.0).contains(&utilization),
        "application_utilization {utilization}"
    );
    for key in ["named_metrics.queue", "named_metrics.in_flight"] {
        let value = *report
            .get(key)
            .unwrap_or_else(|| panic!("no {key} in {report:?}"));
        assert!(
            value >= 0.0 && value.fract() == 0.0,
            "{key} = {value} is not a request count"
        );
    }
    // Alone on the server, this request is the only one there can be.
    assert!(report["named_metrics.queue"] <= 1.0, "{report:?}");
    assert!(report["named_metrics.in_flight"] <= 1.0, "{report:?}");
}

#[tokio::test]
async fn prometheus_metrics_count_requests_per_model_version() {
    let models = test_models();
    let server = server().await;
    let mut client = server.client().await;
    let v1 = models.example("mlp", "1");
    let v2 = models.example("mlp", "2");
    for _ in 0..2 {
        infer(
            &mut client,
            infer_request("mlp", "1", &v1.inputs, Form::Typed),
        )
        .await;
    }
    infer(
        &mut client,
        infer_request("mlp", "2", &v2.inputs, Form::Raw),
    )
    .await;

    let success = "gridmesh_block:request_success_total";
    let text = server
        .poll("the success counters in /metrics", async || {
            let text = server.metrics().await;
            let counts = (
                prometheus::sum(&text, success, &model_labels("mlp", "1")),
                prometheus::sum(&text, success, &model_labels("mlp", "2")),
            );
            (counts == (Some(2.0), Some(1.0))).then_some(text)
        })
        .await;

    for (family, kind) in [
        ("gridmesh_block:num_requests_waiting", "gauge"),
        ("gridmesh_block:num_requests_running", "gauge"),
        ("gridmesh_block:batch_size", "histogram"),
        ("gridmesh_block:request_queue_time_seconds", "histogram"),
        ("gridmesh_block:request_inference_time_seconds", "histogram"),
        ("gridmesh_block:e2e_request_latency_seconds", "histogram"),
        ("gridmesh_block:request_success_total", "counter"),
    ] {
        assert!(
            text.lines()
                .any(|l| l.trim_end() == format!("# TYPE {family} {kind}")),
            "no {kind} {family} in /metrics:\n{text}"
        );
    }
    let labels = model_labels("mlp", "1");
    let sample = |name: &str| prometheus::sum(&text, name, &labels);
    assert_eq!(
        sample("gridmesh_block:e2e_request_latency_seconds_count"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample("gridmesh_block:request_queue_time_seconds_count"),
        Some(2.0),
        "{text}"
    );
    // Two requests one after the other: two batches.
    assert_eq!(
        sample("gridmesh_block:batch_size_count"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(sample("gridmesh_block:num_requests_waiting"), Some(0.0));
    assert_eq!(sample("gridmesh_block:num_requests_running"), Some(0.0));
    assert!(
        matches!(
            sample("gridmesh_block:request_inference_time_seconds_count"),
            Some(n) if n >= 1.0
        ),
        "{text}"
    );
}

/// A BYTES tensor as KServe's raw contents: each element's length (u32,
/// little-endian), then its bytes.
fn bytes_raw(elements: &[&[u8]]) -> Vec<u8> {
    elements
        .iter()
        .flat_map(|element| [&(element.len() as u32).to_le_bytes()[..], element].concat())
        .collect()
}

fn strings_request(words: &[&str], form: Form) -> ModelInferRequest {
    let rows = words.len() as i64;
    let mut input = InferInputTensor {
        name: "TEXT".into(),
        datatype: "BYTES".into(),
        shape: vec![rows, 1],
        ..Default::default()
    };
    let mut request = ModelInferRequest {
        model_name: "strings".into(),
        ..Default::default()
    };
    match form {
        Form::Typed => {
            input.contents = Some(InferTensorContents {
                bytes_contents: words.iter().map(|w| w.as_bytes().to_vec().into()).collect(),
                ..Default::default()
            });
        }
        Form::Raw => {
            let elements: Vec<&[u8]> = words.iter().map(|w| w.as_bytes()).collect();
            request.raw_input_contents = vec![bytes_raw(&elements).into()];
        }
    }
    request.inputs = vec![input];
    request
}

/// The strings model's answer: each word's length and the word in upper case.
fn assert_strings_response(response: &ModelInferResponse, words: &[&str]) {
    let rows = words.len() as i64;
    assert_eq!(output_names(response), ["LENGTH", "UPPER"]);
    assert_eq!(response.outputs[0].shape, [rows, 1]);
    assert_eq!(response.outputs[1].shape, [rows, 1]);
    assert_eq!(response.outputs[1].datatype, "BYTES");
    let lengths: Vec<i64> = response.raw_output_contents[0]
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let expected: Vec<i64> = words.iter().map(|w| w.len() as i64).collect();
    assert_eq!(lengths, expected);
    let upper: Vec<String> = words.iter().map(|w| w.to_uppercase()).collect();
    let upper: Vec<&[u8]> = upper.iter().map(|w| w.as_bytes()).collect();
    assert_eq!(response.raw_output_contents[1], bytes_raw(&upper));
}

#[tokio::test]
async fn strings_travel_as_bytes_typed_raw_and_batched() {
    let server = server().await;
    let mut client = server.client().await;
    let words = ["gridmesh", "", "block server"];
    for form in [Form::Typed, Form::Raw] {
        let response = infer(&mut client, strings_request(&words, form)).await;
        assert_strings_response(&response, &words);
    }

    // Concurrent requests share forwards (their lists are joined), and each
    // gets its own strings back.
    let calls: Vec<_> = (0..6)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let words = [format!("call {i}"), "x".repeat(i)];
                let words: Vec<&str> = words.iter().map(String::as_str).collect();
                let response = client
                    .model_infer(strings_request(&words, Form::Raw))
                    .await
                    .unwrap()
                    .into_inner();
                assert_strings_response(&response, &words);
            })
        })
        .collect();
    for call in calls {
        call.await.unwrap();
    }
    let stats = model_stats(&mut client, "strings", "1").await;
    assert_eq!(stats.inference_count, 2 * 3 + 6 * 2);

    // Malformed BYTES: a length prefix that overruns, and a string that is
    // not UTF-8 (TorchScript strings are).
    let mut overrun = strings_request(&["abc"], Form::Raw);
    overrun.raw_input_contents[0].truncate(6);
    let mut not_utf8 = strings_request(&["abc"], Form::Raw);
    not_utf8.raw_input_contents[0] = bytes_raw(&[&[0xff, 0xfe]]).into();
    for (case, request, said) in [
        ("overrun", overrun, "3 bytes but only 2"),
        ("not UTF-8", not_utf8, "not UTF-8"),
    ] {
        let status = client.model_infer(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert!(
            status.message().contains("TEXT") && status.message().contains(said),
            "{case}: {status:?}"
        );
    }
}
