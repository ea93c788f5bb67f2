//! How tensors flow along a vDAG's edges: a node's outputs become the next
//! node's inputs under the edge's names, a join's parts become one request,
//! and the tails' outputs become the client's answer.
//!
//! KServe carries a tensor's data either typed (`contents`) or as raw bytes
//! (`raw_*_contents`, parallel to the tensor list), and one message must
//! use one form for all its tensors. Both pass through as they came; what
//! would mix them in one message is refused with a message saying so.

use gridmesh_config::vdag::EdgeSpec;
use gridmesh_proto::inference::model_infer_request::InferInputTensor;
use gridmesh_proto::inference::model_infer_response::InferOutputTensor;
use gridmesh_proto::inference::{ModelInferRequest, ModelInferResponse};

/// The input a node's `answer` gives the node at the end of `edge`.
pub fn along_edge(
    answer: &ModelInferResponse,
    edge: &EdgeSpec,
) -> Result<ModelInferRequest, String> {
    let raw = has_raw(answer)?;
    let mut next = ModelInferRequest::default();
    let mut take = |index: usize, input: &str| {
        let output = &answer.outputs[index];
        next.inputs.push(InferInputTensor {
            name: input.to_string(),
            datatype: output.datatype.clone(),
            shape: output.shape.clone(),
            parameters: output.parameters.clone(),
            contents: output.contents.clone(),
        });
        if raw {
            next.raw_input_contents
                .push(answer.raw_output_contents[index].clone());
        }
    };
    if edge.tensors.is_empty() {
        for (index, output) in answer.outputs.iter().enumerate() {
            take(index, &output.name);
        }
    } else {
        for (output, input) in &edge.tensors {
            let index = answer
                .outputs
                .iter()
                .position(|o| &o.name == output)
                .ok_or_else(|| format!("the answer has no output {output:?}"))?;
            take(index, input);
        }
    }
    Ok(next)
}

/// A join's input: every predecessor's part, in the order given.
pub fn join(parts: Vec<ModelInferRequest>) -> Result<ModelInferRequest, String> {
    let raw = parts.iter().any(|p| !p.raw_input_contents.is_empty());
    let mut joined = ModelInferRequest::default();
    for part in parts {
        if raw && part.raw_input_contents.len() != part.inputs.len() {
            return Err(
                "the parts of a join carry their tensors in different forms (raw and typed)".into(),
            );
        }
        joined.inputs.extend(part.inputs);
        joined.raw_input_contents.extend(part.raw_input_contents);
    }
    Ok(joined)
}

/// The client's answer from the tails' answers, in the vDAG's tail order:
/// one tail's answer as it is, or every tail's outputs named
/// `<label>/<output>`.
pub fn answer(tails: Vec<(&str, ModelInferResponse)>) -> Result<ModelInferResponse, String> {
    if tails.len() == 1 {
        return Ok(tails.into_iter().next().expect("one tail").1);
    }
    let mut raw = None;
    let mut merged = ModelInferResponse::default();
    for (label, answer) in tails {
        let this_raw = has_raw(&answer)?;
        if *raw.get_or_insert(this_raw) != this_raw && !answer.outputs.is_empty() {
            return Err("the tails answered in different tensor forms (raw and typed)".into());
        }
        merged
            .outputs
            .extend(answer.outputs.into_iter().map(|o| InferOutputTensor {
                name: format!("{label}/{}", o.name),
                ..o
            }));
        merged
            .raw_output_contents
            .extend(answer.raw_output_contents);
    }
    Ok(merged)
}

/// Whether an answer carries raw contents (for every output, as it must).
fn has_raw(answer: &ModelInferResponse) -> Result<bool, String> {
    match answer.raw_output_contents.len() {
        0 => Ok(false),
        n if n == answer.outputs.len() => Ok(true),
        n => Err(format!(
            "the answer has {} outputs but {n} raw contents",
            answer.outputs.len()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn output(name: &str, raw: &[u8]) -> (InferOutputTensor, Bytes) {
        let tensor = InferOutputTensor {
            name: name.into(),
            datatype: "UINT8".into(),
            shape: vec![raw.len() as i64],
            ..Default::default()
        };
        (tensor, Bytes::copy_from_slice(raw))
    }

    fn answer_of(outputs: &[(&str, &[u8])]) -> ModelInferResponse {
        let (outputs, raw) = outputs.iter().map(|(n, r)| output(n, r)).unzip();
        ModelInferResponse {
            outputs,
            raw_output_contents: raw,
            ..Default::default()
        }
    }

    #[test]
    fn an_edge_renames_and_selects_outputs() {
        let answer = answer_of(&[("boxes", b"bb"), ("scores", b"s")]);
        let edge = EdgeSpec {
            to: 1,
            tensors: vec![("scores".into(), "confidence".into())],
        };
        let next = along_edge(&answer, &edge).unwrap();
        assert_eq!(next.inputs.len(), 1);
        assert_eq!(next.inputs[0].name, "confidence");
        assert_eq!(next.inputs[0].shape, vec![1]);
        assert_eq!(next.raw_input_contents, vec![b"s".to_vec()]);

        let all = along_edge(
            &answer,
            &EdgeSpec {
                to: 1,
                tensors: vec![],
            },
        )
        .unwrap();
        let names: Vec<_> = all.inputs.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["boxes", "scores"]);
        assert_eq!(all.raw_input_contents.len(), 2);

        let missing = EdgeSpec {
            to: 1,
            tensors: vec![("masks".into(), "m".into())],
        };
        assert_eq!(
            along_edge(&answer, &missing).unwrap_err(),
            "the answer has no output \"masks\""
        );
    }

    #[test]
    fn joins_and_multi_tail_answers_keep_every_tensor() {
        let left = along_edge(
            &answer_of(&[("a", b"1")]),
            &EdgeSpec {
                to: 2,
                tensors: vec![],
            },
        )
        .unwrap();
        let right = along_edge(
            &answer_of(&[("b", b"22")]),
            &EdgeSpec {
                to: 2,
                tensors: vec![],
            },
        )
        .unwrap();
        let joined = join(vec![left, right]).unwrap();
        let names: Vec<_> = joined.inputs.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(
            joined.raw_input_contents,
            vec![b"1".to_vec(), b"22".to_vec()]
        );

        let merged = answer(vec![
            ("pose", answer_of(&[("keypoints", b"k")])),
            ("track", answer_of(&[("ids", b"i")])),
        ])
        .unwrap();
        let names: Vec<_> = merged.outputs.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["pose/keypoints", "track/ids"]);
        assert_eq!(merged.raw_output_contents.len(), 2);

        let typed = ModelInferResponse {
            outputs: vec![output("ids", b"").0],
            ..Default::default()
        };
        let mixed = answer(vec![("pose", answer_of(&[("k", b"k")])), ("track", typed)]);
        assert!(mixed.unwrap_err().contains("different tensor forms"));
    }
}
