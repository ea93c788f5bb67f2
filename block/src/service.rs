//! The gRPC face of the server: KServe v2's `GRPCInferenceService` with
//! Triton's ModelConfig and ModelStatistics. Requests are checked against the
//! model's configuration here, before they queue, so a malformed request costs
//! no batch slot and its error names the input at fault.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use gridmesh_proto::inference::{
    self as kserve, ModelInferRequest, ModelInferResponse,
    grpc_inference_service_server::GrpcInferenceService, model_infer_response::InferOutputTensor,
    model_metadata_response::TensorMetadata,
};
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use crate::batcher::{Job, QueueFull};
use crate::load::Load;
use crate::model_config::{ModelSpec, PLATFORM, TensorSpec};
use crate::observe::FailureReason;
use crate::repository::{Repository, ServedVersion, Unservable};
use crate::tensor::{self, Value};
use crate::trace::RequestSpan;
use gridmesh_telemetry::Tracing;

/// The response header the sidecar reads load from (ORCA).
const LOAD_REPORT_HEADER: &str = "endpoint-load-metrics";

pub struct InferenceService {
    pub repository: Arc<Repository>,
    pub load: Arc<Load>,
    pub draining: Arc<AtomicBool>,
    /// Spans of sampled requests, when the server exports traces.
    pub tracing: Option<Tracing>,
}

impl From<Unservable> for Status {
    fn from(unservable: Unservable) -> Self {
        match unservable {
            Unservable::NotFound(message) => Status::not_found(message),
            Unservable::Unavailable(message) => Status::unavailable(message),
        }
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(
        &self,
        _: Request<kserve::ServerLiveRequest>,
    ) -> Result<Response<kserve::ServerLiveResponse>, Status> {
        Ok(Response::new(kserve::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<kserve::ServerReadyRequest>,
    ) -> Result<Response<kserve::ServerReadyResponse>, Status> {
        let ready = self.repository.all_ready() && !self.draining.load(Ordering::Relaxed);
        Ok(Response::new(kserve::ServerReadyResponse { ready }))
    }

    async fn model_ready(
        &self,
        request: Request<kserve::ModelReadyRequest>,
    ) -> Result<Response<kserve::ModelReadyResponse>, Status> {
        let request = request.into_inner();
        let ready = match self.repository.get(&request.name, &request.version) {
            Ok(_) => !self.draining.load(Ordering::Relaxed),
            Err(Unservable::Unavailable(_)) => false,
            Err(not_found) => return Err(not_found.into()),
        };
        Ok(Response::new(kserve::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<kserve::ServerMetadataRequest>,
    ) -> Result<Response<kserve::ServerMetadataResponse>, Status> {
        Ok(Response::new(kserve::ServerMetadataResponse {
            name: "gridmesh-block".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: vec!["model_configuration".into(), "statistics".into()],
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<kserve::ModelMetadataRequest>,
    ) -> Result<Response<kserve::ModelMetadataResponse>, Status> {
        let request = request.into_inner();
        if !request.version.is_empty() {
            self.repository.get(&request.name, &request.version)?;
        }
        let (spec, versions) = self.repository.describe(&request.name)?;
        let metadata = |tensors: &[TensorSpec]| -> Vec<TensorMetadata> {
            tensors
                .iter()
                .map(|tensor| TensorMetadata {
                    name: tensor.name.clone(),
                    datatype: tensor.element.kserve_name().into(),
                    shape: tensor.full_shape(spec.max_batch_size),
                })
                .collect()
        };
        Ok(Response::new(kserve::ModelMetadataResponse {
            name: request.name,
            versions: versions.iter().map(u64::to_string).collect(),
            platform: PLATFORM.into(),
            inputs: metadata(&spec.inputs),
            outputs: metadata(&spec.outputs),
        }))
    }

    async fn model_config(
        &self,
        request: Request<kserve::ModelConfigRequest>,
    ) -> Result<Response<kserve::ModelConfigResponse>, Status> {
        let request = request.into_inner();
        let (spec, _) = self.repository.describe(&request.name)?;
        Ok(Response::new(kserve::ModelConfigResponse {
            config: Some(spec.config.clone()),
        }))
    }

    async fn model_statistics(
        &self,
        request: Request<kserve::ModelStatisticsRequest>,
    ) -> Result<Response<kserve::ModelStatisticsResponse>, Status> {
        let request = request.into_inner();
        let name = (!request.name.is_empty()).then_some(request.name.as_str());
        if let Some(name) = name {
            self.repository.describe(name)?;
        }
        let model_stats = self
            .repository
            .served(name)
            .iter()
            .filter(|served| {
                request.version.is_empty() || request.version == served.version.to_string()
            })
            .map(|served| served.observer.report())
            .collect();
        Ok(Response::new(kserve::ModelStatisticsResponse {
            model_stats,
        }))
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        let span = (self.tracing.as_ref()).and_then(|tracing| {
            RequestSpan::start(tracing, request.metadata().as_ref(), "ModelInfer")
        });
        let result = self.infer(request.into_inner(), span.as_ref()).await;
        if let Some(span) = span {
            match &result {
                Ok(_) => span.finish(tonic::Code::Ok, ""),
                Err(status) => span.finish(status.code(), status.message()),
            }
        }
        result
    }
}

impl InferenceService {
    async fn infer(
        &self,
        request: ModelInferRequest,
        span: Option<&RequestSpan>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        let arrived = Instant::now();
        let served = self
            .repository
            .get(&request.model_name, &request.model_version)?;
        if let Some(span) = span {
            span.model(&request.model_name, served.version);
        }
        let fail = |reason: FailureReason, status: Status| {
            served.observer.failed(reason, arrived.elapsed());
            status
        };
        if self.draining.load(Ordering::Relaxed) {
            return Err(fail(
                FailureReason::Draining,
                Status::unavailable(
                    "gridmesh-block is draining: send the request to another instance",
                ),
            ));
        }
        let model = &request.model_name;
        let invalid = |message: String| {
            fail(
                FailureReason::InvalidArgument,
                Status::invalid_argument(format!("model \"{model}\": {message}")),
            )
        };
        let (inputs, rows) = decode_inputs(&served.spec, &request).map_err(invalid)?;
        let wanted = requested_outputs(&served.spec, &request).map_err(invalid)?;

        let (reply, completion) = oneshot::channel();
        let job = Job {
            inputs,
            rows,
            enqueued: arrived,
            reply,
            trace: span.map(RequestSpan::queued),
        };
        served.queue.push(job).map_err(|QueueFull { capacity }| {
            fail(
                FailureReason::QueueFull,
                Status::resource_exhausted(format!(
                    "model \"{model}\" version {} has {capacity} requests queued, its limit",
                    served.version
                )),
            )
        })?;
        let completed = match completion.await {
            Ok(Ok(completed)) => completed,
            Ok(Err(error)) => {
                return Err(fail(
                    FailureReason::ModelError,
                    Status::internal(format!("model \"{model}\" failed: {error}")),
                ));
            }
            Err(_) => {
                return Err(fail(
                    FailureReason::ModelError,
                    Status::internal(format!("model \"{model}\" stopped before answering")),
                ));
            }
        };
        let response = encode_outputs(&served, request.id, &completed.outputs, &wanted)
            .map_err(|error| fail(FailureReason::ModelError, Status::internal(error)))?;
        served.observer.succeeded(arrived.elapsed());
        let mut response = Response::new(response);
        if let Ok(value) = self.load.orca_header().parse() {
            response.metadata_mut().insert(LOAD_REPORT_HEADER, value);
        }
        Ok(response)
    }
}

/// The request's inputs as CPU values in forward order, and its batch rows.
fn decode_inputs(
    spec: &ModelSpec,
    request: &ModelInferRequest,
) -> Result<(Vec<Value>, usize), String> {
    let raw = &request.raw_input_contents;
    if !raw.is_empty() && raw.len() != request.inputs.len() {
        return Err(format!(
            "raw_input_contents has {} buffers for {} inputs (one per input, or none)",
            raw.len(),
            request.inputs.len()
        ));
    }
    let mut decoded: Vec<Option<Value>> = spec.inputs.iter().map(|_| None).collect();
    let mut rows = None;
    for (index, input) in request.inputs.iter().enumerate() {
        let Some(position) = spec
            .inputs
            .iter()
            .position(|declared| declared.name == input.name)
        else {
            return Err(format!(
                "\"{}\" is not one of its inputs ({})",
                input.name,
                names(&spec.inputs)
            ));
        };
        let declared = &spec.inputs[position];
        let at = |message: String| format!("input \"{}\" {message}", input.name);
        if decoded[position].is_some() {
            return Err(at("is given twice".into()));
        }
        if input.datatype != declared.element.kserve_name() {
            return Err(at(format!(
                "is {}, the model takes {}",
                if input.datatype.is_empty() {
                    "missing its datatype"
                } else {
                    &input.datatype
                },
                declared.element.kserve_name()
            )));
        }
        let input_rows = check_shape(spec, declared, &input.shape).map_err(at)?;
        if let Some(rows) = rows.filter(|rows| *rows != input_rows) {
            return Err(at(format!(
                "has batch size {input_rows}, other inputs {rows}"
            )));
        }
        rows = Some(input_rows);
        let raw = raw.get(index).map(|b| &b[..]);
        let value = tensor::decode(declared.element, &input.shape, raw, input.contents.as_ref())
            .map_err(at)?;
        decoded[position] = Some(value);
    }
    let inputs = decoded
        .into_iter()
        .zip(&spec.inputs)
        .map(|(tensor, declared)| {
            tensor.ok_or_else(|| {
                format!(
                    "input \"{}\" is missing (inputs: {})",
                    declared.name,
                    names(&spec.inputs)
                )
            })
        })
        .collect::<Result<_, _>>()?;
    Ok((inputs, rows.unwrap_or(1)))
}

/// Checks `shape` against the declaration; returns the batch rows it carries.
fn check_shape(spec: &ModelSpec, declared: &TensorSpec, shape: &[i64]) -> Result<usize, String> {
    let expected = declared.full_shape(spec.max_batch_size);
    let matches = shape.len() == expected.len()
        && shape
            .iter()
            .zip(&expected)
            .all(|(given, wanted)| *given >= 0 && (*wanted == -1 || given == wanted));
    if !matches {
        return Err(format!(
            "has shape {shape:?}, the model takes {expected:?} (-1: any size)"
        ));
    }
    if shape
        .iter()
        .try_fold(1usize, |count, dim| count.checked_mul(*dim as usize))
        .is_none_or(|count| count > isize::MAX as usize)
    {
        return Err(format!("has shape {shape:?}, too many elements"));
    }
    if spec.max_batch_size == 0 {
        return Ok(1);
    }
    let rows = shape[0] as usize;
    if rows == 0 || rows > spec.max_batch_size {
        return Err(format!(
            "has batch size {rows}, the model takes 1 to {} (max_batch_size)",
            spec.max_batch_size
        ));
    }
    Ok(rows)
}

/// Indices into the model's outputs, in the order the response lists them.
fn requested_outputs(spec: &ModelSpec, request: &ModelInferRequest) -> Result<Vec<usize>, String> {
    if request.outputs.is_empty() {
        return Ok((0..spec.outputs.len()).collect());
    }
    request
        .outputs
        .iter()
        .map(|requested| {
            spec.outputs
                .iter()
                .position(|declared| declared.name == requested.name)
                .ok_or_else(|| {
                    format!(
                        "requested output \"{}\" is not one of its outputs ({})",
                        requested.name,
                        names(&spec.outputs)
                    )
                })
        })
        .collect()
}

fn encode_outputs(
    served: &ServedVersion,
    id: String,
    outputs: &[Value],
    wanted: &[usize],
) -> Result<ModelInferResponse, String> {
    let mut response = ModelInferResponse {
        model_name: served.spec.config.name.clone(),
        model_version: served.version.to_string(),
        id,
        ..Default::default()
    };
    for &index in wanted {
        let declared = &served.spec.outputs[index];
        let output = &outputs[index];
        response.outputs.push(InferOutputTensor {
            name: declared.name.clone(),
            datatype: declared.element.kserve_name().into(),
            shape: output.shape(),
            ..Default::default()
        });
        let raw = output
            .to_raw()
            .map_err(|error| format!("cannot read output \"{}\": {error}", declared.name))?;
        response.raw_output_contents.push(raw.into());
    }
    Ok(response)
}

fn names(tensors: &[TensorSpec]) -> String {
    tensors
        .iter()
        .map(|tensor| tensor.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
