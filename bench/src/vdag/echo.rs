//! The benchmark's blocks: KServe v2 servers whose model returns its inputs
//! as outputs, so that what a path costs is the path, not a model. They run
//! in the benchmark's process, on the load core, each on its own port.

use std::net::SocketAddr;

use anyhow::Result;
use gridmesh_proto::inference::grpc_inference_service_server::{
    GrpcInferenceService, GrpcInferenceServiceServer,
};
use gridmesh_proto::inference::model_infer_request::InferInputTensor;
use gridmesh_proto::inference::model_infer_response::InferOutputTensor;
use gridmesh_proto::inference::*;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

/// Largest message a block takes or sends (the 1 MiB tensors and framing).
const MAX_MESSAGE: usize = 8 << 20;

/// Starts an echo block on a port of its own; serves until the runtime ends.
pub async fn start() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let service = GrpcInferenceServiceServer::new(EchoBlock)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(gridmesh_net::incoming(listener, "echo block")),
    );
    Ok(addr)
}

/// The outputs of `request`: its inputs, under their own names.
pub fn echo(request: ModelInferRequest) -> ModelInferResponse {
    ModelInferResponse {
        model_name: request.model_name,
        model_version: request.model_version,
        id: request.id,
        outputs: (request.inputs.into_iter())
            .map(|input| InferOutputTensor {
                name: input.name,
                datatype: input.datatype,
                shape: input.shape,
                ..Default::default()
            })
            .collect(),
        raw_output_contents: request.raw_input_contents,
        ..Default::default()
    }
}

/// The request a next node gets from `response`: every output under its own
/// name, as a vDAG edge without tensor mappings passes them.
pub fn as_request(response: ModelInferResponse) -> ModelInferRequest {
    ModelInferRequest {
        model_name: response.model_name,
        id: response.id,
        inputs: (response.outputs.into_iter())
            .map(|output| InferInputTensor {
                name: output.name,
                datatype: output.datatype,
                shape: output.shape,
                ..Default::default()
            })
            .collect(),
        raw_input_contents: response.raw_output_contents,
        ..Default::default()
    }
}

struct EchoBlock;

#[tonic::async_trait]
impl GrpcInferenceService for EchoBlock {
    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        Ok(Response::new(echo(request.into_inner())))
    }

    async fn server_live(
        &self,
        _: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse { ready: true }))
    }

    async fn model_ready(
        &self,
        _: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        Ok(Response::new(ModelReadyResponse { ready: true }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Err(Status::unimplemented("an echo block has no metadata"))
    }

    async fn model_metadata(
        &self,
        _: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        Err(Status::unimplemented("an echo block has no metadata"))
    }

    async fn model_config(
        &self,
        _: Request<ModelConfigRequest>,
    ) -> Result<Response<ModelConfigResponse>, Status> {
        Err(Status::unimplemented("an echo block has no config"))
    }

    async fn model_statistics(
        &self,
        _: Request<ModelStatisticsRequest>,
    ) -> Result<Response<ModelStatisticsResponse>, Status> {
        Err(Status::unimplemented("an echo block keeps no statistics"))
    }
}
