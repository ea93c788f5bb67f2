//! Tensors between the wire and libtorch: element types in their three
//! spellings (KServe `FP32`, Triton `TYPE_FP32`, tch `Kind::Float`), request
//! inputs decoded into CPU tensors (typed contents or raw little-endian
//! bytes, checked against what the model declares), and outputs encoded as
//! raw bytes, which is how Triton answers over gRPC. BYTES travel as the
//! strings of a TorchScript `List[str]`, as Triton's PyTorch backend passes
//! them.

use gridmesh_proto::inference::{DataType, InferTensorContents};
use tch::{Kind, Tensor};

/// An element type gridmesh-block can move between the wire and a TorchScript
/// model. (Unsigned types wider than 8 bits have no libtorch kind.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElementType {
    /// UTF-8 strings: a `List[str]` argument or result.
    Bytes,
    Bool,
    Uint8,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Bf16,
    Fp32,
    Fp64,
}

impl ElementType {
    /// From a model configuration's `data_type`.
    pub fn from_config(data_type: DataType) -> Result<Self, String> {
        Ok(match data_type {
            DataType::TypeBool => Self::Bool,
            DataType::TypeUint8 => Self::Uint8,
            DataType::TypeInt8 => Self::Int8,
            DataType::TypeInt16 => Self::Int16,
            DataType::TypeInt32 => Self::Int32,
            DataType::TypeInt64 => Self::Int64,
            DataType::TypeFp16 => Self::Fp16,
            DataType::TypeBf16 => Self::Bf16,
            DataType::TypeFp32 => Self::Fp32,
            DataType::TypeFp64 => Self::Fp64,
            DataType::TypeString => Self::Bytes,
            DataType::TypeInvalid => return Err("data_type is missing".into()),
            other => {
                return Err(format!(
                    "data_type {} is not supported for TorchScript models (supported: \
                     TYPE_BOOL, TYPE_UINT8, TYPE_INT8, TYPE_INT16, TYPE_INT32, TYPE_INT64, \
                     TYPE_FP16, TYPE_BF16, TYPE_FP32, TYPE_FP64, TYPE_STRING)",
                    other.as_str_name()
                ));
            }
        })
    }

    /// The KServe v2 name (`datatype` on the wire).
    pub fn kserve_name(self) -> &'static str {
        match self {
            Self::Bytes => "BYTES",
            Self::Bool => "BOOL",
            Self::Uint8 => "UINT8",
            Self::Int8 => "INT8",
            Self::Int16 => "INT16",
            Self::Int32 => "INT32",
            Self::Int64 => "INT64",
            Self::Fp16 => "FP16",
            Self::Bf16 => "BF16",
            Self::Fp32 => "FP32",
            Self::Fp64 => "FP64",
        }
    }

    /// The libtorch element kind (none for strings).
    pub fn kind(self) -> Option<Kind> {
        Some(match self {
            Self::Bytes => return None,
            Self::Bool => Kind::Bool,
            Self::Uint8 => Kind::Uint8,
            Self::Int8 => Kind::Int8,
            Self::Int16 => Kind::Int16,
            Self::Int32 => Kind::Int,
            Self::Int64 => Kind::Int64,
            Self::Fp16 => Kind::Half,
            Self::Bf16 => Kind::BFloat16,
            Self::Fp32 => Kind::Float,
            Self::Fp64 => Kind::Double,
        })
    }

    /// Bytes per element in raw contents (strings: their length prefix).
    fn size(self) -> usize {
        match self {
            Self::Bool | Self::Uint8 | Self::Int8 => 1,
            Self::Bytes => 4,
            Self::Int16 | Self::Fp16 | Self::Bf16 => 2,
            Self::Int32 | Self::Fp32 => 4,
            Self::Int64 | Self::Fp64 => 8,
        }
    }
}

/// Why an input could not become a tensor; the caller prefixes the input's name.
pub type DecodeError = String;

/// A model's argument or result: a tensor, or the strings of a BYTES tensor
/// (row-major, with the shape they have on the wire).
pub enum Value {
    Tensor(Tensor),
    Strings {
        strings: Vec<String>,
        shape: Vec<i64>,
    },
}

impl Value {
    pub fn shape(&self) -> Vec<i64> {
        match self {
            Value::Tensor(tensor) => tensor.size(),
            Value::Strings { shape, .. } => shape.clone(),
        }
    }

    /// `count` rows of the leading dimension from `first` on.
    pub fn rows(&self, first: usize, count: usize) -> Value {
        match self {
            Value::Tensor(tensor) => Value::Tensor(tensor.narrow(0, first as i64, count as i64)),
            Value::Strings { strings, shape } => {
                let per_row = element_count(shape.get(1..).unwrap_or_default());
                let mut shape = shape.clone();
                shape[0] = count as i64;
                Value::Strings {
                    strings: strings[first * per_row..(first + count) * per_row].to_vec(),
                    shape,
                }
            }
        }
    }

    /// The values one after the other along the leading dimension (the
    /// callers made sure the rest of their shapes agree).
    pub fn join(parts: &[&Value]) -> Result<Value, tch::TchError> {
        match parts {
            [Value::Tensor(single)] => Ok(Value::Tensor(single.shallow_clone())),
            [Value::Tensor(_), ..] => {
                let tensors: Vec<&Tensor> = parts
                    .iter()
                    .filter_map(|part| match part {
                        Value::Tensor(tensor) => Some(tensor),
                        Value::Strings { .. } => None,
                    })
                    .collect();
                Ok(Value::Tensor(Tensor::f_cat(&tensors, 0)?))
            }
            _ => {
                let mut strings = Vec::new();
                let mut shape = parts.first().map(|part| part.shape()).unwrap_or_default();
                if let Some(rows) = shape.first_mut() {
                    *rows = parts
                        .iter()
                        .map(|part| part.shape().first().copied().unwrap_or(0))
                        .sum();
                }
                for part in parts {
                    if let Value::Strings { strings: more, .. } = part {
                        strings.extend(more.iter().cloned());
                    }
                }
                Ok(Value::Strings { strings, shape })
            }
        }
    }

    /// The raw contents KServe carries it in: little-endian elements, or for
    /// strings each one's length as a little-endian u32 and then its bytes.
    pub fn to_raw(&self) -> Result<Vec<u8>, tch::TchError> {
        match self {
            Value::Tensor(tensor) => to_raw(tensor),
            Value::Strings { strings, .. } => {
                let mut raw = Vec::with_capacity(strings.iter().map(|s| 4 + s.len()).sum());
                for string in strings {
                    raw.extend_from_slice(&(string.len() as u32).to_le_bytes());
                    raw.extend_from_slice(string.as_bytes());
                }
                Ok(raw)
            }
        }
    }
}

/// An input of `shape` from its raw contents, if the request sent raw
/// contents, else from its typed contents.
pub fn decode(
    element: ElementType,
    shape: &[i64],
    raw: Option<&[u8]>,
    contents: Option<&InferTensorContents>,
) -> Result<Value, DecodeError> {
    match (element, raw, contents) {
        (ElementType::Bytes, Some(raw), _) => strings(shape, split_bytes(raw)?),
        (ElementType::Bytes, None, Some(contents)) => strings(
            shape,
            contents.bytes_contents.iter().map(|b| &b[..]).collect(),
        ),
        (_, Some(raw), _) => from_raw(element, shape, raw).map(Value::Tensor),
        (_, None, Some(contents)) => from_contents(element, shape, contents).map(Value::Tensor),
        (_, None, None) => Err("has no contents (typed contents or raw_input_contents)".into()),
    }
}

/// BYTES raw contents: each element's length (u32, little-endian), then it.
fn split_bytes(mut raw: &[u8]) -> Result<Vec<&[u8]>, DecodeError> {
    let mut elements = Vec::new();
    while !raw.is_empty() {
        let (length, rest) = raw
            .split_first_chunk::<4>()
            .ok_or("has BYTES raw contents that end inside an element's length prefix")?;
        let length = u32::from_le_bytes(*length) as usize;
        if rest.len() < length {
            return Err(format!(
                "has a BYTES element of {length} bytes but only {} bytes of raw contents left",
                rest.len()
            ));
        }
        let (element, rest) = rest.split_at(length);
        elements.push(element);
        raw = rest;
    }
    Ok(elements)
}

fn strings(shape: &[i64], elements: Vec<&[u8]>) -> Result<Value, DecodeError> {
    let count = element_count(shape);
    if elements.len() != count {
        return Err(format!(
            "has {} BYTES elements, but its shape {shape:?} holds {count}",
            elements.len()
        ));
    }
    let strings = elements
        .into_iter()
        .enumerate()
        .map(|(index, bytes)| {
            String::from_utf8(bytes.to_vec()).map_err(|_| {
                format!("has BYTES element {index} that is not UTF-8 (TorchScript strings are)")
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Value::Strings {
        strings,
        shape: shape.to_vec(),
    })
}

/// Builds a CPU tensor of `shape` from raw little-endian bytes.
fn from_raw(element: ElementType, shape: &[i64], raw: &[u8]) -> Result<Tensor, DecodeError> {
    let expected = element_count(shape) * element.size();
    if raw.len() != expected {
        return Err(format!(
            "has {} bytes of raw contents, but {} elements of {} take {expected}",
            raw.len(),
            element_count(shape),
            element.kserve_name(),
        ));
    }
    if element == ElementType::Bool && raw.iter().any(|byte| *byte > 1) {
        return Err("has a BOOL byte other than 0 or 1 in its raw contents".into());
    }
    let kind = element.kind().ok_or("is BYTES, not a tensor")?;
    Tensor::f_from_data_size(raw, shape, kind).map_err(|error| error.to_string())
}

/// Builds a CPU tensor of `shape` from the typed field KServe assigns to
/// `element` (FP16 and BF16 have none: they only travel raw).
fn from_contents(
    element: ElementType,
    shape: &[i64],
    contents: &InferTensorContents,
) -> Result<Tensor, DecodeError> {
    let count = element_count(shape);
    let given = |field: &str, len: usize| -> Result<(), DecodeError> {
        if len == count {
            Ok(())
        } else {
            Err(format!(
                "has {len} values in {field}, but its shape {shape:?} holds {count}"
            ))
        }
    };
    let tensor = match element {
        ElementType::Bool => {
            given("bool_contents", contents.bool_contents.len())?;
            Tensor::from_slice(&contents.bool_contents)
        }
        ElementType::Uint8 => {
            given("uint_contents", contents.uint_contents.len())?;
            let bytes = narrow_all(&contents.uint_contents, "uint_contents", "UINT8")?;
            Tensor::from_slice::<u8>(&bytes)
        }
        ElementType::Int8 => {
            given("int_contents", contents.int_contents.len())?;
            let values = narrow_all::<i32, i8>(&contents.int_contents, "int_contents", "INT8")?;
            Tensor::from_slice(&values)
        }
        ElementType::Int16 => {
            given("int_contents", contents.int_contents.len())?;
            let values = narrow_all::<i32, i16>(&contents.int_contents, "int_contents", "INT16")?;
            Tensor::from_slice(&values)
        }
        ElementType::Int32 => {
            given("int_contents", contents.int_contents.len())?;
            Tensor::from_slice(&contents.int_contents)
        }
        ElementType::Int64 => {
            given("int64_contents", contents.int64_contents.len())?;
            Tensor::from_slice(&contents.int64_contents)
        }
        ElementType::Fp32 => {
            given("fp32_contents", contents.fp32_contents.len())?;
            Tensor::from_slice(&contents.fp32_contents)
        }
        ElementType::Fp64 => {
            given("fp64_contents", contents.fp64_contents.len())?;
            Tensor::from_slice(&contents.fp64_contents)
        }
        ElementType::Bytes => return Err("is BYTES, not a tensor".into()),
        ElementType::Fp16 | ElementType::Bf16 => {
            return Err(format!(
                "is {} and has no typed contents field: send it in raw_input_contents",
                element.kserve_name()
            ));
        }
    };
    tensor.f_view(shape).map_err(|error| error.to_string())
}

fn narrow_all<From, To>(values: &[From], field: &str, kserve: &str) -> Result<Vec<To>, DecodeError>
where
    From: Copy + std::fmt::Display,
    To: TryFrom<From>,
{
    values
        .iter()
        .map(|value| {
            To::try_from(*value)
                .map_err(|_| format!("has {value} in {field}, out of range for {kserve}"))
        })
        .collect()
}

/// The tensor's elements as little-endian bytes (libtorch stores them so on
/// every platform gridmesh runs on).
fn to_raw(tensor: &Tensor) -> Result<Vec<u8>, tch::TchError> {
    let tensor = tensor.f_contiguous()?;
    let count = tensor.numel();
    let mut bytes = vec![0u8; count * tensor.kind().elt_size_in_bytes()];
    tensor.f_copy_data_u8(&mut bytes, count)?;
    Ok(bytes)
}

pub fn element_count(shape: &[i64]) -> usize {
    shape
        .iter()
        .map(|dim| usize::try_from(*dim).unwrap_or(0))
        .product()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn raw_round_trip_keeps_every_element_type() {
        for element in [
            ElementType::Bool,
            ElementType::Uint8,
            ElementType::Int8,
            ElementType::Int16,
            ElementType::Int32,
            ElementType::Int64,
            ElementType::Fp16,
            ElementType::Bf16,
            ElementType::Fp32,
            ElementType::Fp64,
        ] {
            let raw: Vec<u8> = (0..6 * element.size())
                .map(|i| {
                    if element == ElementType::Bool {
                        (i % 2) as u8
                    } else {
                        (i * 7) as u8
                    }
                })
                .collect();
            let tensor = from_raw(element, &[2, 3], &raw).unwrap();
            assert_eq!(tensor.size(), vec![2, 3]);
            assert_eq!(Some(tensor.kind()), element.kind());
            assert_eq!(to_raw(&tensor).unwrap(), raw, "{element:?}");
        }
    }

    #[test]
    fn bytes_round_trip_as_length_prefixed_strings() {
        let raw = [
            &3u32.to_le_bytes()[..],
            b"abc",
            &0u32.to_le_bytes(),
            &2u32.to_le_bytes(),
            "é".as_bytes(),
        ]
        .concat();
        let value = decode(ElementType::Bytes, &[3, 1], Some(&raw), None).unwrap();
        assert_eq!(value.to_raw().unwrap(), raw);
        let Value::Strings { strings, .. } = value.rows(1, 2) else {
            panic!("strings")
        };
        assert_eq!(strings, ["", "é"]);
        let error = decode(ElementType::Bytes, &[1], Some(&raw[..5]), None)
            .err()
            .unwrap();
        assert!(error.contains("3 bytes but only 1"), "{error}");
        let error = decode(ElementType::Bytes, &[1], Some(&[1, 0, 0, 0, 0xff]), None)
            .err()
            .unwrap();
        assert!(error.contains("not UTF-8"), "{error}");
        let typed = InferTensorContents {
            bytes_contents: vec![Bytes::from_static(b"x")],
            ..Default::default()
        };
        let error = decode(ElementType::Bytes, &[2], None, Some(&typed))
            .err()
            .unwrap();
        assert!(
            error.contains("1 BYTES elements") && error.contains("holds 2"),
            "{error}"
        );
    }

    #[test]
    fn raw_contents_of_the_wrong_length_are_refused() {
        let error = from_raw(ElementType::Fp32, &[2, 2], &[0; 15]).unwrap_err();
        assert!(
            error.contains("15 bytes") && error.contains("take 16"),
            "{error}"
        );
    }

    #[test]
    fn typed_contents_must_fit_the_shape_and_the_type() {
        let contents = InferTensorContents {
            fp32_contents: vec![1.0, 2.0, 3.0],
            ..Default::default()
        };
        let error = from_contents(ElementType::Fp32, &[2, 2], &contents).unwrap_err();
        assert!(error.contains("3 values in fp32_contents"), "{error}");
        let contents = InferTensorContents {
            uint_contents: vec![1, 256],
            ..Default::default()
        };
        let error = from_contents(ElementType::Uint8, &[2], &contents).unwrap_err();
        assert!(error.contains("256") && error.contains("UINT8"), "{error}");
    }
}
