//! The gRPC `Echo` service (`gridmesh.testing.v1`), implemented as its proto
//! comments say. In every reply `server` is the upstream's name and `seq` is
//! the reply's position in its call (0 for the single reply of a unary or
//! client-streaming call). A request with `fail_with_code` set ends the call
//! with that status; `delay_ms` makes the server wait before answering it.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt, stream};
use gridmesh_proto::testing::echo_server::Echo;
use gridmesh_proto::testing::{EchoReply, EchoRequest, StreamRequest};
use tonic::{Code, Request, Response, Status, Streaming};

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

pub(super) struct EchoService {
    name: Arc<str>,
}

impl EchoService {
    pub(super) fn new(name: &str) -> Self {
        Self { name: name.into() }
    }
}

fn reply(name: &str, payload: Vec<u8>, seq: u64) -> EchoReply {
    EchoReply {
        payload,
        server: name.to_owned(),
        seq,
    }
}

/// Applies a request's `delay_ms` and `fail_with_code`, in that order, so a
/// test can ask for an error that arrives late.
async fn obey(request: &EchoRequest) -> Result<(), Status> {
    if request.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(request.delay_ms.into())).await;
    }
    match Code::from(request.fail_with_code) {
        Code::Ok => Ok(()),
        code => Err(Status::new(code, "failure requested by fail_with_code")),
    }
}

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let request = request.into_inner();
        obey(&request).await?;
        Ok(Response::new(reply(&self.name, request.payload, 0)))
    }

    type ServerStreamStream = ReplyStream;

    async fn server_stream(
        &self,
        request: Request<StreamRequest>,
    ) -> Result<Response<ReplyStream>, Status> {
        let StreamRequest {
            count,
            payload_size,
            interval_ms,
        } = request.into_inner();
        let interval = Duration::from_millis(interval_ms.into());
        let name = self.name.clone();
        let replies = stream::unfold(0u32, move |sent| {
            let name = name.clone();
            async move {
                if sent == count {
                    return None;
                }
                if sent > 0 && !interval.is_zero() {
                    tokio::time::sleep(interval).await;
                }
                let payload = vec![0; payload_size as usize];
                Some((Ok(reply(&name, payload, sent.into())), sent + 1))
            }
        });
        Ok(Response::new(Box::pin(replies)))
    }

    async fn client_stream(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoReply>, Status> {
        let mut requests = request.into_inner();
        let mut payload = Vec::new();
        while let Some(request) = requests.message().await? {
            obey(&request).await?;
            payload.extend_from_slice(&request.payload);
        }
        Ok(Response::new(reply(&self.name, payload, 0)))
    }

    type BidiStream = ReplyStream;

    async fn bidi(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<ReplyStream>, Status> {
        let name = self.name.clone();
        let replies = request
            .into_inner()
            .enumerate()
            .then(move |(seq, request)| {
                let name = name.clone();
                async move {
                    let request = request?;
                    obey(&request).await?;
                    Ok(reply(&name, request.payload, seq as u64))
                }
            });
        Ok(Response::new(Box::pin(replies)))
    }
}
