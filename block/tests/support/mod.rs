//! Shared helpers for gridmesh-block's end-to-end tests.
//!
//! - [`test_models`]: the repository `block/models/make_test_models.py` builds,
//!   with its `expected.json`. The script imports torch (seconds), so its output
//!   is cached under cargo's test scratch directory, keyed by a hash of the
//!   script, and shared by every test process (nextest runs each test in its
//!   own process).
//! - [`BlockServer`]: the real `gridmesh-block` binary on ports it picks
//!   itself (read back from its log), with a gRPC client, HTTP GETs and
//!   Prometheus parsing.
//! - Request builders and response checks for the models' tensors.
//!
//! Each test binary uses a part of this module.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result};
use gridmesh_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use gridmesh_proto::inference::model_infer_request::{
    InferInputTensor, InferRequestedOutputTensor,
};
use gridmesh_proto::inference::{
    InferTensorContents, ModelInferRequest, ModelInferResponse, ModelStatistics,
    ModelStatisticsRequest, ServerReadyRequest,
};
use gridmesh_tests::process::{AdminResponse, ManagedProcess, admin_get, log_field};
use gridmesh_tests::test_models;
use serde_json::Value;
use tonic::transport::Channel;
use tonic::{Code, Status};

pub type Client = GrpcInferenceServiceClient<Channel>;

/// Bound on the server binding its ports, and on all models loading.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on any other condition a test polls for.
pub const POLL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a SIGTERMed server may take to drain and exit.
pub const STOP_GRACE: Duration = Duration::from_secs(15);
const POLL_INTERVAL: Duration = Duration::from_millis(20);

// ---------------------------------------------------------------------------
// The test model repository

/// The model repository `make_test_models.py` wrote, shared read-only: tests
/// that need a modified repository copy models into their own directory
/// ([`copy_models`]).
pub struct TestModels {
    pub dir: PathBuf,
    expected: Value,
}

/// The test model repository, generated on first use (once per cache key).
pub fn test_models() -> &'static TestModels {
    static MODELS: OnceLock<TestModels> = OnceLock::new();
    MODELS.get_or_init(|| generate_models().unwrap_or_else(|e| panic!("{e:#}")))
}

fn generate_models() -> Result<TestModels> {
    let script = test_models::script();
    let script_bytes =
        std::fs::read(&script).with_context(|| format!("reading {}", script.display()))?;
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("test-models");
    let key = format!("{:016x}", fnv1a(&script_bytes));
    let dir = cache.join(&key);
    if !dir.join("expected.json").is_file() {
        std::fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
        // One process generates while the others wait for it: torch imports
        // on every core at once would only slow them all down.
        let lock_path = cache.join(format!("{key}.lock"));
        let lock = std::fs::File::create(&lock_path)
            .with_context(|| format!("creating {}", lock_path.display()))?;
        lock.lock()
            .with_context(|| format!("locking {}", lock_path.display()))?;
        if !dir.join("expected.json").is_file() {
            run_model_script(&cache, &dir)?;
        }
    }
    let expected_path = dir.join("expected.json");
    let text = std::fs::read_to_string(&expected_path)
        .with_context(|| format!("reading {}", expected_path.display()))?;
    let expected = serde_json::from_str(&text)
        .with_context(|| format!("parsing {}", expected_path.display()))?;
    Ok(TestModels { dir, expected })
}

/// Runs make_test_models.py into a staging directory next to `dir` and
/// renames it into place, so no test process ever sees a half-written
/// repository.
fn run_model_script(cache: &Path, dir: &Path) -> Result<()> {
    let staging = tempfile::Builder::new()
        .prefix(".staging-")
        .tempdir_in(cache)
        .context("creating a staging directory for the test models")?;
    test_models::build(staging.path())?;
    match std::fs::rename(staging.path(), dir) {
        Ok(()) => {
            let _ = staging.keep();
            Ok(())
        }
        // Another process got there first (the lock makes this unlikely):
        // use its copy; ours is deleted with `staging`.
        Err(_) if dir.join("expected.json").is_file() => Ok(()),
        Err(error) => Err(error).with_context(|| format!("renaming into {}", dir.display())),
    }
}

/// FNV-1a: a hash that stays the same across Rust releases (the cache key).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl TestModels {
    /// `expected.json`'s input and PyTorch's output for `model` at `version`.
    pub fn example(&self, model: &str, version: &str) -> Example {
        let entry = &self.expected[model][version];
        assert!(
            entry.is_object(),
            "expected.json has no {model} version {version}"
        );
        let tensors = |key: &str| -> Vec<TensorData> {
            entry[key]
                .as_array()
                .unwrap_or_else(|| panic!("{model}/{version}: no {key}"))
                .iter()
                .map(TensorData::from_json)
                .collect()
        };
        Example {
            inputs: tensors("inputs"),
            outputs: tensors("outputs"),
        }
    }
}

/// A copy of `models` from the test repository in a fresh directory, for a
/// test that modifies or adds models.
pub fn copy_models(models: &[&str]) -> tempfile::TempDir {
    let repo = tempfile::Builder::new()
        .prefix("block-repo-")
        .tempdir()
        .expect("creating a temporary model repository");
    for model in models {
        copy_dir(&test_models().dir.join(model), &repo.path().join(model));
    }
    repo
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// One model's fixed input and the outputs PyTorch computed for it.
#[derive(Debug, Clone)]
pub struct Example {
    pub inputs: Vec<TensorData>,
    pub outputs: Vec<TensorData>,
}

impl Example {
    pub fn output(&self, name: &str) -> &TensorData {
        self.outputs
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("the example has no output {name}"))
    }
}

/// A tensor as expected.json writes it: values flattened, as f64 (exact for
/// every element type the test models use).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorData {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
    pub data: Vec<f64>,
}

impl TensorData {
    fn from_json(value: &Value) -> Self {
        let datatype = value["datatype"].as_str().expect("datatype");
        // serde_json's float parsing may be off by an f64 ulp; every FP32 and
        // FP16 value is exactly an f32, so rounding to f32 restores it.
        let is_float = matches!(datatype, "FP32" | "FP16");
        let data = value["data"]
            .as_array()
            .expect("tensor data")
            .iter()
            .map(|v| match v {
                Value::Bool(b) => f64::from(u8::from(*b)),
                other if is_float => f64::from(other.as_f64().expect("numeric tensor data") as f32),
                other => other.as_f64().expect("numeric tensor data"),
            })
            .collect();
        TensorData {
            name: value["name"].as_str().expect("tensor name").to_owned(),
            datatype: datatype.to_owned(),
            shape: value["shape"]
                .as_array()
                .expect("shape")
                .iter()
                .map(|d| d.as_i64().expect("dimension"))
                .collect(),
            data,
        }
    }

    pub fn new(name: &str, datatype: &str, shape: &[i64], data: &[f64]) -> Self {
        TensorData {
            name: name.to_owned(),
            datatype: datatype.to_owned(),
            shape: shape.to_vec(),
            data: data.to_vec(),
        }
    }

    /// Little-endian bytes, as `raw_input_contents` carries them.
    pub fn raw(&self) -> Vec<u8> {
        encode_raw(&self.datatype, &self.data)
    }

    /// The typed `contents` field for this datatype (FP16 has none).
    pub fn contents(&self) -> InferTensorContents {
        let mut contents = InferTensorContents::default();
        let d = &self.data;
        match self.datatype.as_str() {
            "FP32" => contents.fp32_contents = d.iter().map(|v| *v as f32).collect(),
            "INT64" => contents.int64_contents = d.iter().map(|v| *v as i64).collect(),
            "INT32" => contents.int_contents = d.iter().map(|v| *v as i32).collect(),
            "UINT8" => contents.uint_contents = d.iter().map(|v| *v as u32).collect(),
            "BOOL" => contents.bool_contents = d.iter().map(|v| *v != 0.0).collect(),
            other => panic!("{other} has no typed contents"),
        }
        contents
    }

    /// The tensor as a request input, with typed contents or (for raw) none.
    pub fn input(&self, form: Form) -> InferInputTensor {
        InferInputTensor {
            name: self.name.clone(),
            datatype: self.datatype.clone(),
            shape: self.shape.clone(),
            parameters: HashMap::new(),
            contents: match form {
                Form::Typed => Some(self.contents()),
                Form::Raw => None,
            },
        }
    }
}

/// How a request carries its input values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `InferInputTensor.contents` (fp32_contents, int64_contents, ...).
    Typed,
    /// `ModelInferRequest.raw_input_contents`.
    Raw,
}

pub fn encode_raw(datatype: &str, data: &[f64]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for v in data {
        match datatype {
            "FP32" => bytes.extend((*v as f32).to_le_bytes()),
            "FP16" => bytes.extend(f64_to_f16_bits(*v).to_le_bytes()),
            "INT64" => bytes.extend((*v as i64).to_le_bytes()),
            "INT32" => bytes.extend((*v as i32).to_le_bytes()),
            "UINT8" => bytes.push(*v as u8),
            "BOOL" => bytes.push(u8::from(*v != 0.0)),
            other => panic!("no raw encoding for {other} in these tests"),
        }
    }
    bytes
}

/// Raw little-endian bytes of `datatype` as f64 values (exact for these types).
pub fn decode_raw(datatype: &str, bytes: &[u8]) -> Vec<f64> {
    let size = element_size(datatype);
    assert_eq!(
        bytes.len() % size,
        0,
        "{} bytes is not a whole number of {datatype} elements",
        bytes.len()
    );
    bytes
        .chunks_exact(size)
        .map(|c| match datatype {
            "FP32" => f64::from(f32::from_le_bytes(c.try_into().unwrap())),
            "FP16" => f16_bits_to_f64(u16::from_le_bytes(c.try_into().unwrap())),
            "INT64" => i64::from_le_bytes(c.try_into().unwrap()) as f64,
            "INT32" => f64::from(i32::from_le_bytes(c.try_into().unwrap())),
            "UINT8" => f64::from(c[0]),
            "BOOL" => {
                assert!(c[0] <= 1, "BOOL byte {} is neither 0 nor 1", c[0]);
                f64::from(c[0])
            }
            other => panic!("no raw decoding for {other} in these tests"),
        })
        .collect()
}

pub fn element_size(datatype: &str) -> usize {
    match datatype {
        "FP64" | "INT64" | "UINT64" => 8,
        "FP32" | "INT32" | "UINT32" => 4,
        "FP16" | "BF16" | "INT16" | "UINT16" => 2,
        "UINT8" | "INT8" | "BOOL" => 1,
        other => panic!("unknown datatype {other}"),
    }
}

/// IEEE half (binary16) bits to the exact f64 value.
pub fn f16_bits_to_f64(bits: u16) -> f64 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exponent = i32::from((bits >> 10) & 0x1f);
    let mantissa = f64::from(bits & 0x3ff);
    match exponent {
        0 => sign * mantissa * 2f64.powi(-24),
        31 if mantissa == 0.0 => sign * f64::INFINITY,
        31 => f64::NAN,
        e => sign * (1.0 + mantissa / 1024.0) * 2f64.powi(e - 15),
    }
}

/// An f64 that is exactly a finite half to its binary16 bits; panics on any
/// other value (the tests only send values that came from float16 tensors).
pub fn f64_to_f16_bits(value: f64) -> u16 {
    let sign: u16 = if value.is_sign_negative() { 0x8000 } else { 0 };
    let magnitude = value.abs();
    if magnitude == 0.0 {
        return sign;
    }
    let mut exponent = magnitude.log2().floor() as i32;
    while 2f64.powi(exponent) > magnitude {
        exponent -= 1;
    }
    while 2f64.powi(exponent + 1) <= magnitude {
        exponent += 1;
    }
    let (exponent_bits, mantissa) = if exponent < -14 {
        (0, magnitude / 2f64.powi(-24))
    } else {
        (
            exponent + 15,
            (magnitude / 2f64.powi(exponent) - 1.0) * 1024.0,
        )
    };
    assert!(
        mantissa.fract() == 0.0 && (0.0..1024.0).contains(&mantissa) && exponent_bits < 31,
        "{value} is not exactly a finite half"
    );
    sign | ((exponent_bits as u16) << 10) | mantissa as u16
}

// ---------------------------------------------------------------------------
// Requests and responses

/// A ModelInfer request with `inputs` in `form` and all outputs.
pub fn infer_request(
    model: &str,
    version: &str,
    inputs: &[TensorData],
    form: Form,
) -> ModelInferRequest {
    ModelInferRequest {
        model_name: model.to_owned(),
        model_version: version.to_owned(),
        inputs: inputs.iter().map(|t| t.input(form)).collect(),
        raw_input_contents: match form {
            Form::Typed => Vec::new(),
            Form::Raw => inputs.iter().map(|t| t.raw().into()).collect(),
        },
        ..Default::default()
    }
}

/// Asks for only these outputs, in this order.
pub fn request_outputs(request: &mut ModelInferRequest, names: &[&str]) {
    request.outputs = names
        .iter()
        .map(|name| InferRequestedOutputTensor {
            name: (*name).to_owned(),
            parameters: HashMap::new(),
        })
        .collect();
}

/// A batch_probe request: one row per value, every row asking for `work`
/// units of spinning (the forward spins for the largest `work` in its batch).
pub fn probe_request(values: &[f32], work: i64) -> ModelInferRequest {
    let rows = values.len() as i64;
    let inputs = [
        TensorData::new(
            "INPUT__0",
            "FP32",
            &[rows, 1],
            &values.iter().map(|v| f64::from(*v)).collect::<Vec<_>>(),
        ),
        TensorData::new(
            "INPUT__1",
            "INT64",
            &[rows, 1],
            &vec![work as f64; values.len()],
        ),
    ];
    infer_request("batch_probe", "1", &inputs, Form::Typed)
}

/// batch_probe's answer: each row's value (2 x its input) and the batch size
/// the forward saw for it.
pub fn probe_result(response: &ModelInferResponse) -> (Vec<f64>, Vec<i64>) {
    let doubled = output(response, "OUTPUT__0");
    let seen = output(response, "OUTPUT__1");
    assert_eq!(doubled.datatype, "FP32");
    assert_eq!(seen.datatype, "INT64");
    let rows = doubled.data.len() as i64;
    assert_eq!(doubled.shape, vec![rows, 1]);
    assert_eq!(seen.shape, vec![rows, 1]);
    (doubled.data, seen.data.iter().map(|v| *v as i64).collect())
}

/// The response's output `name` (from `raw_output_contents`), decoded.
pub fn output(response: &ModelInferResponse, name: &str) -> TensorData {
    assert_eq!(
        response.outputs.len(),
        response.raw_output_contents.len(),
        "one raw_output_contents buffer per output expected; outputs: {:?}",
        output_names(response)
    );
    let index = response
        .outputs
        .iter()
        .position(|o| o.name == name)
        .unwrap_or_else(|| {
            panic!(
                "no output {name} in the response; it has {:?}",
                output_names(response)
            )
        });
    let tensor = &response.outputs[index];
    let raw = &response.raw_output_contents[index];
    let elements: i64 = tensor.shape.iter().product();
    assert_eq!(
        raw.len(),
        elements as usize * element_size(&tensor.datatype),
        "output {name}: {} bytes for shape {:?} of {}",
        raw.len(),
        tensor.shape,
        tensor.datatype
    );
    TensorData {
        name: tensor.name.clone(),
        datatype: tensor.datatype.clone(),
        shape: tensor.shape.clone(),
        data: decode_raw(&tensor.datatype, raw),
    }
}

pub fn output_names(response: &ModelInferResponse) -> Vec<&str> {
    response.outputs.iter().map(|o| o.name.as_str()).collect()
}

/// How closely an output must match PyTorch's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tolerance {
    /// Bit for bit (signed zeros included).
    Exact,
    /// FP32 models run through more than one kernel: |a-b| <= 1e-5 + 1e-5*|b|.
    Fp32,
}

/// Checks that `response` has output `expected.name` with the same datatype,
/// shape and values.
pub fn assert_output(response: &ModelInferResponse, expected: &TensorData, tolerance: Tolerance) {
    let actual = output(response, &expected.name);
    assert_eq!(
        (&actual.datatype, &actual.shape),
        (&expected.datatype, &expected.shape),
        "output {}: datatype and shape",
        expected.name
    );
    assert_eq!(actual.data.len(), expected.data.len());
    for (i, (a, b)) in actual.data.iter().zip(&expected.data).enumerate() {
        let close = match tolerance {
            Tolerance::Exact => a.to_bits() == b.to_bits(),
            Tolerance::Fp32 => (a - b).abs() <= 1e-5 + 1e-5 * b.abs(),
        };
        assert!(
            close,
            "output {} element {i}: got {a:?}, PyTorch gave {b:?} ({tolerance:?})\n\
             got:      {:?}\nexpected: {:?}",
            expected.name, actual.data, expected.data
        );
    }
}

/// Checks that a call failed with `code` and a message that mentions each of
/// `mentions`.
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: Code,
    mentions: &[&str],
    case: &str,
) -> Status {
    let status = match result {
        Ok(value) => panic!("{case}: expected {code:?}, got a success: {value:?}"),
        Err(status) => status,
    };
    assert_eq!(
        status.code(),
        code,
        "{case}: wrong code; message: {:?}",
        status.message()
    );
    for word in mentions {
        assert!(
            status.message().contains(word),
            "{case}: the {code:?} message does not mention {word:?}: {:?}",
            status.message()
        );
    }
    status
}

/// The `endpoint-load-metrics` ORCA report on a response, as key -> value.
pub fn load_report(metadata: &tonic::metadata::MetadataMap) -> HashMap<String, f64> {
    let header = metadata
        .get("endpoint-load-metrics")
        .unwrap_or_else(|| panic!("no endpoint-load-metrics in {metadata:?}"))
        .to_str()
        .expect("endpoint-load-metrics is ASCII");
    let body = header
        .strip_prefix("TEXT ")
        .unwrap_or_else(|| panic!("endpoint-load-metrics is not TEXT form: {header:?}"));
    body.split(',')
        .map(|pair| {
            let (key, value) = pair
                .trim()
                .split_once('=')
                .unwrap_or_else(|| panic!("{pair:?} in {header:?} is not key=value"));
            let value: f64 = value
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("{key} in {header:?} is not a number"));
            (key.to_owned(), value)
        })
        .collect()
}

/// Statistics of one model version.
pub async fn model_stats(client: &mut Client, model: &str, version: &str) -> ModelStatistics {
    let response = client
        .model_statistics(ModelStatisticsRequest {
            name: model.to_owned(),
            version: version.to_owned(),
        })
        .await
        .unwrap_or_else(|s| panic!("ModelStatistics {model} {version}: {s:?}"))
        .into_inner();
    let stats: Vec<_> = response
        .model_stats
        .into_iter()
        .filter(|s| s.name == model && (version.is_empty() || s.version == version))
        .collect();
    assert_eq!(
        stats.len(),
        1,
        "ModelStatistics {model} {version}: expected one entry, got {stats:?}"
    );
    stats.into_iter().next().unwrap()
}

/// Batch sizes (batch_stats) -> how many batches of that size ran.
pub fn batch_counts(stats: &ModelStatistics) -> HashMap<u64, u64> {
    stats
        .batch_stats
        .iter()
        .map(|b| {
            (
                b.batch_size,
                b.compute_infer.as_ref().map_or(0, |d| d.count),
            )
        })
        .filter(|(_, count)| *count > 0)
        .collect()
}

// ---------------------------------------------------------------------------
// Prometheus text

/// The labels every per-model series carries.
pub fn model_labels<'a>(model: &'a str, version: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![("model_name", model), ("model_version", version)]
}

// ---------------------------------------------------------------------------
// The server process

/// A running `gridmesh-block`, killed when dropped.
pub struct BlockServer {
    process: ManagedProcess,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
}

impl BlockServer {
    /// Starts the server on `repo` and waits until every model has loaded.
    pub async fn start_ready(repo: &Path) -> Self {
        Self::start_ready_with(repo, &[]).await
    }

    /// [`BlockServer::start_ready`] with more command-line arguments.
    pub async fn start_ready_with(repo: &Path, extra_args: &[&str]) -> Self {
        let mut server = Self::start_with(repo, extra_args).await;
        server.wait_ready().await;
        server
    }

    /// Starts the server on `repo` (one libtorch thread, ports chosen by the
    /// server) and returns once it logged its addresses: it is live, models may
    /// still be loading.
    pub async fn start_with(repo: &Path, extra_args: &[&str]) -> Self {
        let mut args: Vec<String> = [
            "--model-repository",
            &repo.display().to_string(),
            "--grpc-address",
            "127.0.0.1:0",
            "--http-address",
            "127.0.0.1:0",
            "--log",
            "info",
            "--torch-threads",
            "1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra_args.iter().map(|s| s.to_string()));
        let binary = Path::new(env!("CARGO_BIN_EXE_gridmesh-block"));
        let mut process = ManagedProcess::spawn("gridmesh-block", binary, &args).unwrap();
        let line = process
            .wait_for_line("gridmesh-block listening", START_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        let field = |name: &str| -> SocketAddr {
            log_field(&line, name)
                .map(|value| value.trim_matches('"'))
                .and_then(|value| value.parse().ok())
                .unwrap_or_else(|| panic!("no {name}=ip:port in {line:?}"))
        };
        let (grpc, http) = (field("grpc_addr"), field("http_addr"));
        BlockServer {
            process,
            grpc,
            http,
        }
    }

    /// A gRPC client on its own HTTP/2 connection.
    pub async fn client(&self) -> Client {
        Client::connect(format!("http://{}", self.grpc))
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.grpc))
    }

    /// Waits until ServerReady says true (every model loaded); panics with
    /// the server's output if it exits first or [`START_TIMEOUT`] passes.
    pub async fn wait_ready(&mut self) {
        let mut client = self.client().await;
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            let ready = client.server_ready(ServerReadyRequest {}).await;
            if matches!(&ready, Ok(r) if r.get_ref().ready) {
                return;
            }
            if let Some(status) = self.process.exit_status().unwrap() {
                // Takes in the last lines it wrote.
                let _ = self.process.wait_exit(Duration::from_secs(5)).await;
                panic!(
                    "gridmesh-block exited ({status}) before it was ready:\n{}",
                    self.output()
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "gridmesh-block was not ready after {START_TIMEOUT:?} (last answer {ready:?}); \
                 its output:\n{}",
                self.output()
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Polls `check` until it returns Some, for up to [`POLL_TIMEOUT`]; panics
    /// with `what` and the server's output when time runs out.
    pub async fn poll<T>(&self, what: &str, check: impl AsyncFnMut() -> Option<T>) -> T {
        self.poll_within(POLL_TIMEOUT, what, check).await
    }

    pub async fn poll_within<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut check: impl AsyncFnMut() -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(value) = check().await {
                return value;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "gridmesh-block: still no {what} after {timeout:?}; its output:\n{}",
                self.output()
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// GET `path` from the HTTP server (health, metrics).
    pub async fn get(&self, path: &str) -> AdminResponse {
        admin_get(self.http, path)
            .await
            .unwrap_or_else(|e| panic!("GET {path} from {}: {e:#}", self.http))
    }

    /// The Prometheus text from `/metrics`.
    pub async fn metrics(&self) -> String {
        let response = self.get("/metrics").await;
        assert_eq!(response.status, 200, "GET /metrics: {}", response.body);
        response.body
    }

    /// Everything the server logged so far.
    pub fn output(&self) -> String {
        self.process.output()
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// The process, e.g. to SIGTERM it from another task while requests run.
    pub fn into_process(self) -> ManagedProcess {
        self.process
    }

    /// Sends SIGTERM and returns at once (the server drains meanwhile).
    pub fn send_sigterm(&self) {
        let pid = self.pid().expect("gridmesh-block is running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -TERM {pid}: {status}");
    }

    /// Waits up to `timeout` for the process to exit (killing it after that).
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        self.process.wait_exit(timeout).await
    }

    /// SIGKILL: the process dies mid-request, as a crash would.
    pub async fn kill(&mut self) {
        self.process.kill().await;
    }

    /// SIGTERM, then wait up to [`STOP_GRACE`] for the exit.
    pub async fn terminate(&mut self) -> Result<ExitStatus> {
        self.process.terminate(STOP_GRACE).await
    }
}
