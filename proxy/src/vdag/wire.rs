//! gRPC on the wire, for the messages the proxy itself reads and writes in
//! a vDAG (hops, deliveries, a block's ModelInfer): length-prefixed frames,
//! unary answers, trailers-only errors. Everything else the
//! proxy forwards without decoding (`crate::grpc`).

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use prost::Message;

use crate::body::{Body, BoxError, empty};
use crate::grpc::{self, Code};

/// The largest message read whole: a node's input or output tensors. The
/// benchmark's 1 MiB tensors fit many times over; a bigger one fails its
/// request with a message saying so instead of growing memory unbounded.
pub const MAX_MESSAGE: usize = 64 << 20;

const FRAME_HEADER: usize = 5;

/// Why an exchange failed, as gRPC would say it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub code: u32,
    pub message: String,
}

impl Status {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Status {
            code: code as u32,
            message: message.into(),
        }
    }
}

/// `message` in a gRPC length-prefixed frame, uncompressed.
pub fn frame(message: &impl Message) -> Bytes {
    let len = message.encoded_len();
    let mut buf = BytesMut::with_capacity(FRAME_HEADER + len);
    buf.put_u8(0);
    buf.put_u32(len as u32);
    message
        .encode(&mut buf)
        .expect("the buffer was sized for the message");
    buf.freeze()
}

/// A body as received: a request's, or an upstream's answer.
pub trait Received: http_body::Body<Data = Bytes, Error: std::fmt::Display> + Unpin {}

impl<B: http_body::Body<Data = Bytes, Error: std::fmt::Display> + Unpin> Received for B {}

/// Reads a whole unary request body: exactly one uncompressed frame.
pub async fn read_one<M: Message + Default>(body: Body) -> Result<M, Status> {
    let (message, _trailers) = read_whole(body, "request").await?;
    message.ok_or_else(|| Status::new(Code::InvalidArgument, "the body holds no whole message"))
}

/// Reads a whole unary answer: its one message, unless its trailers say it
/// failed.
pub async fn read_answer<M: Message + Default>(body: impl Received) -> Result<M, Status> {
    let (message, trailers) = read_whole(body, "answer").await?;
    if let Some(status) = trailers.as_ref().and_then(status_of)
        && status.code != 0
    {
        return Err(status);
    }
    message.ok_or_else(|| Status::new(Code::Internal, "the answer held no message"))
}

/// A body holding at most one message, and its trailers. Received chunks
/// are kept as they came (a message within one chunk is decoded in place),
/// and at most one message and a frame header are held.
async fn read_whole<M: Message + Default>(
    mut body: impl Received,
    what: &str,
) -> Result<(Option<M>, Option<HeaderMap>), Status> {
    let mut frames = Frames::default();
    let mut message = None;
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            Status::new(Code::Unavailable, format!("the {what} body broke off: {e}"))
        })?;
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                trailers = frame.into_trailers().ok();
                continue;
            }
        };
        frames.push(data);
        while let Some(m) = frames.next()? {
            if message.replace(m).is_some() {
                return Err(Status::new(
                    Code::InvalidArgument,
                    "the body holds more than one message",
                ));
            }
        }
        if message.is_some() && frames.held() > 0 {
            return Err(Status::new(
                Code::InvalidArgument,
                "the body holds more than one message",
            ));
        }
    }
    if frames.held() > 0 {
        return Err(Status::new(
            Code::InvalidArgument,
            "the body ends inside a message",
        ));
    }
    Ok((message, trailers))
}

/// Messages cut out of a stream's data frames as they arrive. Chunks are
/// kept as received: a message inside one chunk is a slice of it (its
/// tensors too, as `Bytes` fields), one spread over several is copied once.
#[derive(Default)]
pub struct Frames {
    chunks: VecDeque<Bytes>,
    held: usize,
}

impl Frames {
    pub fn push(&mut self, data: Bytes) {
        if !data.is_empty() {
            self.held += data.len();
            self.chunks.push_back(data);
        }
    }

    /// How many bytes arrived that no message was cut out of yet.
    pub fn held(&self) -> usize {
        self.held
    }

    /// The next whole message, if one has arrived.
    pub fn next<M: Message + Default>(&mut self) -> Result<Option<M>, Status> {
        let mut header = [0u8; FRAME_HEADER];
        if !self.peek(&mut header) {
            return Ok(None);
        }
        if header[0] != 0 {
            return Err(Status::new(
                Code::Unimplemented,
                "compressed messages are not accepted here",
            ));
        }
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if len > MAX_MESSAGE {
            return Err(Status::new(
                Code::ResourceExhausted,
                format!("a {len}-byte message is over the {MAX_MESSAGE}-byte limit"),
            ));
        }
        if self.held < FRAME_HEADER + len {
            return Ok(None);
        }
        self.take(FRAME_HEADER);
        M::decode(self.take(len))
            .map(Some)
            .map_err(|e| Status::new(Code::InvalidArgument, format!("malformed message: {e}")))
    }

    /// Copies the first `into.len()` bytes held into `into`, if that many are.
    fn peek(&self, into: &mut [u8]) -> bool {
        if self.held < into.len() {
            return false;
        }
        let mut filled = 0;
        for chunk in &self.chunks {
            let n = chunk.len().min(into.len() - filled);
            into[filled..filled + n].copy_from_slice(&chunk[..n]);
            filled += n;
            if filled == into.len() {
                break;
            }
        }
        true
    }

    /// The first `n` bytes held (there are at least `n`): a slice of the
    /// first chunk when it holds them, else one copy.
    fn take(&mut self, n: usize) -> Bytes {
        self.held -= n;
        if let Some(front) = self.chunks.front_mut()
            && front.len() >= n
        {
            let taken = front.split_to(n);
            if front.is_empty() {
                self.chunks.pop_front();
            }
            return taken;
        }
        let mut joined = BytesMut::with_capacity(n);
        while joined.len() < n
            && let Some(front) = self.chunks.front_mut()
        {
            let want = (n - joined.len()).min(front.len());
            joined.extend_from_slice(&front.split_to(want));
            if front.is_empty() {
                self.chunks.pop_front();
            }
        }
        joined.freeze()
    }
}

/// The head every gRPC answer starts with.
fn grpc_head<B>(body: B) -> Response<B> {
    let mut rsp = Response::new(body);
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    rsp
}

/// The trailers of a successful call.
pub fn ok_trailers() -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert(grpc::GRPC_STATUS, HeaderValue::from_static("0"));
    trailers
}

/// A unary answer: `message`, then status OK.
pub fn unary(message: &impl Message) -> Response<Body> {
    let frames = [
        Ok::<_, BoxError>(Frame::data(frame(message))),
        Ok(Frame::trailers(ok_trailers())),
    ];
    grpc_head(StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync())
}

/// A trailers-only error answer.
pub fn error(status: &Status) -> Response<Body> {
    let mut rsp = grpc_head(empty());
    set_status(rsp.headers_mut(), status);
    rsp
}

/// Writes `grpc-status` and `grpc-message` into headers or trailers.
pub fn set_status(headers: &mut HeaderMap, status: &Status) {
    headers.insert(grpc::GRPC_STATUS, HeaderValue::from(status.code));
    if let Ok(message) = HeaderValue::from_str(&percent_encode(&status.message)) {
        headers.insert(grpc::GRPC_MESSAGE, message);
    }
}

/// The status a call ended with (from trailers, or a trailers-only head);
/// `None` when it carries none.
pub fn status_of(headers: &HeaderMap) -> Option<Status> {
    let code = grpc::status(headers)?;
    let message = headers
        .get(grpc::GRPC_MESSAGE)
        .map(|m| percent_decode(m.as_bytes()))
        .unwrap_or_default();
    Some(Status { code, message })
}

/// Whether an answer's head is a gRPC answer at all (a proxy in between
/// may answer in plain HTTP).
pub fn check_head(status: StatusCode, headers: &HeaderMap) -> Result<(), Status> {
    if status != StatusCode::OK {
        return Err(Status::new(
            Code::Unavailable,
            format!("answered HTTP {status}, not gRPC"),
        ));
    }
    match status_of(headers) {
        Some(s) if s.code != 0 => Err(s),
        _ => Ok(()),
    }
}

/// gRPC's `grpc-message` encoding: printable ASCII but `%` as is, the rest
/// as `%XX` of its UTF-8 bytes.
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridmesh_proto::hop::{Hop, HopProgress, hop_progress};
    use gridmesh_proto::inference::ModelInferRequest;

    #[test]
    fn messages_are_cut_out_of_a_stream_however_it_is_split() {
        let hop = Hop {
            request_id: "r1".into(),
            node: "detect".into(),
            ..Default::default()
        };
        let progress = HopProgress {
            step: Some(hop_progress::Step::HandedOn(Default::default())),
        };
        let mut stream = frame(&hop).to_vec();
        stream.extend_from_slice(&frame(&progress));
        for split in 0..stream.len() {
            let mut frames = Frames::default();
            frames.push(Bytes::copy_from_slice(&stream[..split]));
            let mut got = Vec::new();
            while let Some(h) = frames.next::<Hop>().unwrap() {
                got.push(h);
            }
            frames.push(Bytes::copy_from_slice(&stream[split..]));
            if got.is_empty() {
                got.push(frames.next::<Hop>().unwrap().expect("the whole hop"));
            }
            assert_eq!(got, vec![hop.clone()], "split at {split}");
            assert_eq!(
                frames.next::<HopProgress>().unwrap(),
                Some(progress.clone())
            );
            assert_eq!(frames.next::<HopProgress>().unwrap(), None);
        }
    }

    #[test]
    fn a_tensor_within_one_chunk_is_decoded_in_place() {
        let request = ModelInferRequest {
            raw_input_contents: vec![Bytes::from(vec![7u8; 4096])],
            ..Default::default()
        };
        let chunk = frame(&request);
        let mut frames = Frames::default();
        frames.push(chunk.clone());
        let decoded: ModelInferRequest = frames.next().unwrap().expect("the whole message");
        let tensor = decoded.raw_input_contents[0].as_ptr_range();
        let received = chunk.as_ptr_range();
        assert!(
            received.start <= tensor.start && tensor.end <= received.end,
            "the tensor was copied out of the received chunk"
        );
        assert_eq!(decoded, request);
        assert_eq!(frames.held(), 0);
    }

    #[test]
    fn oversized_and_compressed_frames_are_refused() {
        let mut frames = Frames::default();
        frames.push(Bytes::from_static(&[0, 0xff, 0xff, 0xff, 0xff]));
        let e = frames.next::<Hop>().unwrap_err();
        assert_eq!(e.code, Code::ResourceExhausted as u32, "{e:?}");
        let mut frames = Frames::default();
        frames.push(Bytes::from_static(&[1, 0, 0, 0, 0]));
        let e = frames.next::<Hop>().unwrap_err();
        assert_eq!(e.code, Code::Unimplemented as u32, "{e:?}");
    }

    #[test]
    fn grpc_messages_survive_percent_encoding() {
        for message in ["node detect: 100% failed", "naïve\nline", "plain"] {
            let mut headers = HeaderMap::new();
            set_status(&mut headers, &Status::new(Code::Internal, message));
            let encoded = headers[grpc::GRPC_MESSAGE].to_str().unwrap();
            assert!(
                encoded.bytes().all(|b| (0x20..0x7f).contains(&b)),
                "{encoded}"
            );
            assert_eq!(status_of(&headers).unwrap().message, message);
        }
    }
}
