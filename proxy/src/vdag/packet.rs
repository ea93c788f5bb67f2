//! AIOSPackets as the existing network's blocks send them, read and edited
//! in place: a sidecar reads the few fields it routes by and replaces
//! `output_ptr`, and every other field — unknown ones included — passes on
//! byte for byte (decoding into a message type and encoding it again would
//! drop the fields this build does not know).

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use prost::encoding::{WireType, decode_key, decode_varint, encode_key, encode_varint};

use super::wire::Status;
use crate::grpc::Code;

const SESSION_ID: u32 = 1;
const SEQ_NO: u32 = 2;
const OUTPUT_PTR: u32 = 6;

/// The fields of a packet a sidecar routes by.
#[derive(Debug, Default, PartialEq)]
pub struct Head {
    pub session_id: String,
    pub seq_no: u64,
    pub output_ptr: String,
}

/// One field as it lies in the packet.
struct Field {
    number: u32,
    /// The whole field, key included.
    span: Range<usize>,
    value: Value,
}

enum Value {
    Varint(u64),
    /// Where a length-delimited value's bytes are.
    Bytes(Range<usize>),
    Fixed,
}

fn malformed(what: impl std::fmt::Display) -> Status {
    Status::new(
        Code::InvalidArgument,
        format!("rpc_data is not an AIOSPacket: {what}"),
    )
}

/// Every field of `packet`, in order.
fn fields(packet: &[u8]) -> Result<Vec<Field>, Status> {
    let mut rest = packet;
    let mut fields = Vec::new();
    let at = |rest: &[u8]| packet.len() - rest.len();
    while !rest.is_empty() {
        let start = at(rest);
        let (number, wire_type) = decode_key(&mut rest).map_err(malformed)?;
        let value = match wire_type {
            WireType::Varint => Value::Varint(decode_varint(&mut rest).map_err(malformed)?),
            WireType::LengthDelimited => {
                let len = decode_varint(&mut rest).map_err(malformed)?;
                let len = usize::try_from(len)
                    .ok()
                    .filter(|&len| len <= rest.len())
                    .ok_or_else(|| malformed(format!("field {number} runs past the end")))?;
                let value = at(rest)..at(rest) + len;
                rest = &rest[len..];
                Value::Bytes(value)
            }
            WireType::SixtyFourBit | WireType::ThirtyTwoBit => {
                let len = if wire_type == WireType::SixtyFourBit {
                    8
                } else {
                    4
                };
                if rest.len() < len {
                    return Err(malformed(format!("field {number} runs past the end")));
                }
                rest = &rest[len..];
                Value::Fixed
            }
            WireType::StartGroup | WireType::EndGroup => {
                return Err(malformed(format!("field {number} is a group")));
            }
        };
        fields.push(Field {
            number,
            span: start..at(rest),
            value,
        });
    }
    Ok(fields)
}

/// The routing fields of `packet` (the last of a repeated one wins, as a
/// protobuf parser takes it).
pub fn head(packet: &[u8]) -> Result<Head, Status> {
    let mut head = Head::default();
    for field in fields(packet)? {
        let text = |range: Range<usize>| {
            String::from_utf8(packet[range].to_vec())
                .map_err(|_| malformed(format!("field {} is not UTF-8", field.number)))
        };
        match (field.number, field.value) {
            (SESSION_ID, Value::Bytes(range)) => head.session_id = text(range)?,
            (SEQ_NO, Value::Varint(n)) => head.seq_no = n,
            (OUTPUT_PTR, Value::Bytes(range)) => head.output_ptr = text(range)?,
            (SESSION_ID | SEQ_NO | OUTPUT_PTR, _) => {
                return Err(malformed(format!(
                    "field {} has the wrong wire type",
                    field.number
                )));
            }
            _ => {}
        }
    }
    Ok(head)
}

/// `packet` with `output_ptr` in place of its own, every other field as it
/// was.
pub fn with_output_ptr(packet: &[u8], output_ptr: &str) -> Result<Bytes, Status> {
    let mut edited = BytesMut::with_capacity(packet.len() + output_ptr.len());
    for field in fields(packet)? {
        if field.number != OUTPUT_PTR {
            edited.extend_from_slice(&packet[field.span]);
        }
    }
    encode_key(OUTPUT_PTR, WireType::LengthDelimited, &mut edited);
    encode_varint(output_ptr.len() as u64, &mut edited);
    edited.extend_from_slice(output_ptr.as_bytes());
    Ok(edited.freeze())
}

#[cfg(test)]
mod tests {
    use gridmesh_proto::inference_proxy::{AiosPacket, FileInfo};
    use prost::Message;

    use super::*;

    fn packet() -> AiosPacket {
        AiosPacket {
            session_id: "vdag::chain::s1".into(),
            seq_no: 7,
            frame_ptr: b"{\"key\": 1}".to_vec().into(),
            data: "{\"value\": 1}".into(),
            ts: 1.5,
            output_ptr: "{\"is_graph\": true}".into(),
            files: vec![FileInfo {
                metadata: "{}".into(),
                file_data: vec![0, 1, 2].into(),
            }],
        }
    }

    #[test]
    fn the_routing_fields_are_read() {
        let head = head(&packet().encode_to_vec()).unwrap();
        assert_eq!(head.session_id, "vdag::chain::s1");
        assert_eq!(head.seq_no, 7);
        assert_eq!(head.output_ptr, "{\"is_graph\": true}");
    }

    #[test]
    fn a_new_output_ptr_leaves_every_other_field_as_it_was() {
        let mut bytes = packet().encode_to_vec();
        // A field this build does not know (number 15, a string) must
        // survive the edit.
        bytes.extend_from_slice(&[0x7a, 3, b'n', b'e', b'w']);
        let edited = with_output_ptr(&bytes, "{\"rewritten\": 1}").unwrap();
        let decoded = AiosPacket::decode(edited.as_ref()).unwrap();
        let mut expected = packet();
        expected.output_ptr = "{\"rewritten\": 1}".into();
        assert_eq!(decoded, expected);
        assert!(
            edited.windows(5).any(|w| w == [0x7a, 3, b'n', b'e', b'w']),
            "the unknown field was dropped"
        );
    }

    #[test]
    fn malformed_packets_are_refused_with_the_reason() {
        let bytes = packet().encode_to_vec();
        let cut = head(&bytes[..bytes.len() - 1]).unwrap_err();
        assert!(cut.message.contains("runs past the end"), "{}", cut.message);
        // Field 1 (session_id) as a varint.
        let wrong = head(&[0x08, 1]).unwrap_err();
        assert!(
            wrong.message.contains("wrong wire type"),
            "{}",
            wrong.message
        );
        let group = head(&[0x0b]).unwrap_err();
        assert!(group.message.contains("group"), "{}", group.message);
    }
}
