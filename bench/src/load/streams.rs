//! gRPC server-streaming workloads: one long stream of many small messages
//! (per-message cost), and many concurrently open streams (memory per stream).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use futures_util::future::try_join_all;
use gridmesh_proto::testing::echo_client::EchoClient;
use gridmesh_proto::testing::{EchoReply, StreamRequest};
use tonic::Streaming;
use tonic::transport::Channel;

use super::clients::grpc_channel;

/// Far longer than any measurement: an open stream's second message is sent
/// this long after its first, so the stream stays open until dropped.
const HOLD_OPEN_INTERVAL_MS: u32 = 600_000;
/// Bound on one long stream or on opening the set of streams.
const STREAM_TIMEOUT: Duration = Duration::from_secs(120);

/// Receives one server stream of `count` messages of `payload_size` bytes
/// and returns how long it took, from the call to the last message.
pub async fn time_server_stream(
    channel: &Channel,
    count: u32,
    payload_size: u32,
) -> Result<Duration> {
    let mut client = EchoClient::new(channel.clone());
    let receive_all = async {
        let start = Instant::now();
        let request = StreamRequest {
            count,
            payload_size,
            interval_ms: 0,
        };
        let mut replies = client.server_stream(request).await?.into_inner();
        let mut received = 0;
        while replies.message().await?.is_some() {
            received += 1;
        }
        ensure!(
            received == count,
            "stream ended after {received} of {count} messages"
        );
        Ok(start.elapsed())
    };
    tokio::time::timeout(STREAM_TIMEOUT, receive_all)
        .await
        .context("server stream did not finish in time")?
}

/// Server streams held open (each has delivered its first message) until
/// this value is dropped, which cancels them.
pub struct OpenStreams {
    _streams: Vec<Streaming<EchoReply>>,
    // Kept so that the connections outlive nothing but this value.
    _channels: Vec<Channel>,
}

/// Opens `streams` server streams spread over `connections` HTTP/2
/// connections and waits until every one has delivered its first message,
/// i.e. is open end to end through every hop.
pub async fn open_streams(
    address: SocketAddr,
    streams: u32,
    connections: u32,
) -> Result<OpenStreams> {
    let channels = try_join_all((0..connections).map(|_| grpc_channel(address))).await?;
    let open_one = |index: u32| {
        let mut client = EchoClient::new(channels[(index % connections) as usize].clone());
        async move {
            let request = StreamRequest {
                count: 2,
                payload_size: 64,
                interval_ms: HOLD_OPEN_INTERVAL_MS,
            };
            let mut replies = client.server_stream(request).await?.into_inner();
            replies
                .message()
                .await?
                .context("stream ended before its first message")?;
            anyhow::Ok(replies)
        }
    };
    let streams = tokio::time::timeout(STREAM_TIMEOUT, try_join_all((0..streams).map(open_one)))
        .await
        .context("streams did not all open in time")??;
    Ok(OpenStreams {
        _streams: streams,
        _channels: channels,
    })
}
