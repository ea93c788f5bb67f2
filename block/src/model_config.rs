//! A model's `config.pbtxt`: Triton's `ModelConfig` in protobuf text format,
//! parsed by reflection over the same descriptors the gRPC service uses (so
//! every field Triton knows parses), then checked and turned into the
//! [`ModelSpec`] the server acts on. Everything that can be wrong with a
//! configuration is found here, before any model file is opened, and reported
//! with the field it is about.

use std::sync::LazyLock;
use std::time::Duration;

use gridmesh_proto::inference::{
    DataType, ModelConfig, ModelInput, ModelOutput, ModelWarmup, model_config::SchedulingChoice,
    model_instance_group::Kind as InstanceKind, model_version_policy::PolicyChoice,
    model_warmup::input::InputDataType,
};
use prost_reflect::{DescriptorPool, DynamicMessage};

use crate::tensor::ElementType;

/// The platform name Triton gives TorchScript models, and its backend name.
pub const PLATFORM: &str = "pytorch_libtorch";
const BACKEND: &str = "pytorch";
const DEFAULT_MODEL_FILENAME: &str = "model.pt";

static DESCRIPTORS: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(gridmesh_proto::FILE_DESCRIPTOR_SET)
        .expect("gridmesh-proto's descriptor set decodes")
});

/// What the server needs to know about one model, checked.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// The configuration as written (with `name` filled in), for ModelConfig.
    pub config: ModelConfig,
    /// 0: tensors have no batch dimension and requests never share a forward.
    pub max_batch_size: usize,
    /// In the order the model's forward takes them.
    pub inputs: Vec<TensorSpec>,
    /// In the order the model's forward returns them.
    pub outputs: Vec<TensorSpec>,
    /// None: each request runs alone (Triton's default scheduler).
    pub batching: Option<BatchingPolicy>,
    /// Per-model cap on waiting requests, when the config sets one.
    pub max_queue_size: Option<usize>,
    pub instances: Vec<InstanceGroup>,
    pub model_filename: String,
    pub versions: VersionPolicy,
    /// Forwards to run on every instance before the version is ready
    /// (`model_warmup`), so the first requests do not pay for libtorch's
    /// first runs of a graph.
    pub warmup: Vec<WarmupSample>,
    /// Settings that parsed but that gridmesh-block does not act on, so the
    /// operator hears about them instead of assuming they apply.
    pub ignored: Vec<&'static str>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub element: ElementType,
    /// Without the batch dimension; -1 is any size.
    pub dims: Vec<i64>,
}

impl TensorSpec {
    /// The shape a client sees: with a variable leading batch dimension when
    /// the model batches.
    pub fn full_shape(&self, max_batch_size: usize) -> Vec<i64> {
        let batch = (max_batch_size > 0).then_some(-1);
        batch.into_iter().chain(self.dims.iter().copied()).collect()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct WarmupSample {
    pub name: String,
    /// Rows of the leading dimension (1 when the model does not batch).
    pub rows: usize,
    /// In forward order.
    pub inputs: Vec<WarmupInput>,
    pub count: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WarmupInput {
    /// The whole shape, with the batch dimension when the model batches.
    pub shape: Vec<i64>,
    pub data: WarmupData,
}

#[derive(Debug, Clone, PartialEq)]
pub enum WarmupData {
    Zero,
    Random,
    /// Raw contents, in the model directory's `warmup/` (as Triton reads them).
    File(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct BatchingPolicy {
    pub max_queue_delay: Duration,
    /// Batch sizes that are dispatched as soon as they are reached.
    pub preferred_batch_sizes: Vec<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// A GPU when libtorch sees one, else the CPU.
    Auto,
    Gpu,
    Cpu,
}

#[derive(Debug, Clone, PartialEq)]
pub struct InstanceGroup {
    pub count: usize,
    pub kind: DeviceKind,
    /// GPU indices to spread instances over; empty is all of them.
    pub gpus: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum VersionPolicy {
    Latest(usize),
    All,
    Specific(Vec<u64>),
}

impl VersionPolicy {
    /// Which of the versions found on disk to serve.
    pub fn select(&self, mut found: Vec<u64>) -> Vec<u64> {
        found.sort_unstable();
        match self {
            VersionPolicy::Latest(count) => {
                let skip = found.len().saturating_sub(*count);
                found.split_off(skip)
            }
            VersionPolicy::All => found,
            VersionPolicy::Specific(wanted) => {
                found.retain(|version| wanted.contains(version));
                found
            }
        }
    }
}

/// Parses `text` (a `config.pbtxt`) for the model in directory `model_dir_name`.
pub fn parse(text: &str, model_dir_name: &str) -> Result<ModelSpec, String> {
    let descriptor = DESCRIPTORS
        .get_message_by_name("inference.ModelConfig")
        .expect("the descriptor set has inference.ModelConfig");
    let text = colons_before_lists(text);
    let dynamic = DynamicMessage::parse_text_format(descriptor, &text).map_err(|error| {
        let offset = miette::Diagnostic::labels(&error)
            .and_then(|mut labels| labels.next())
            .map(|label| label.offset());
        match offset {
            Some(offset) => {
                let (line, column) = line_and_column(&text, offset);
                format!("config.pbtxt:{line}:{column}: {error}")
            }
            None => format!("config.pbtxt: {error}"),
        }
    })?;
    let config: ModelConfig = dynamic
        .transcode_to()
        .map_err(|error| format!("config.pbtxt: {error}"))?;
    check(config, model_dir_name).map_err(|error| format!("config.pbtxt: {error}"))
}

/// The text format lets a repeated message field omit its colon before a
/// list (`input [ { ... } ]`, how every Triton config is written), but
/// prost-reflect's parser wants `input: [ ... ]`. This puts the colon in,
/// over the whitespace before the `[` where there is some, so that error
/// positions still point into the file as written.
fn colons_before_lists(text: &str) -> String {
    #[derive(PartialEq)]
    enum Previous {
        /// An identifier where a field name stands (not after a ':').
        FieldName,
        Other,
    }
    let mut out = String::with_capacity(text.len() + 8);
    // Whether each open bracket is a message ('{', '<') rather than a list.
    let mut in_message = vec![true];
    let mut previous = Previous::Other;
    let mut after_colon = false;
    let mut chars = text.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        match c {
            '#' => {
                out.push(c);
                while let Some(&(_, next)) = chars.peek() {
                    if next == '\n' {
                        break;
                    }
                    out.push(next);
                    chars.next();
                }
                continue;
            }
            '"' | '\'' => {
                out.push(c);
                while let Some((_, next)) = chars.next() {
                    out.push(next);
                    if next == '\\' {
                        if let Some((_, escaped)) = chars.next() {
                            out.push(escaped);
                        }
                    } else if next == c || next == '\n' {
                        break;
                    }
                }
                previous = Previous::Other;
                after_colon = false;
                continue;
            }
            c if c.is_whitespace() => {
                out.push(c);
                continue;
            }
            '[' if previous == Previous::FieldName => {
                match out.pop() {
                    Some(space) if space.is_whitespace() && space != '\n' => out.push(':'),
                    Some(other) => {
                        out.push(other);
                        out.push(':');
                    }
                    None => out.push(':'),
                }
                out.push('[');
                in_message.push(false);
            }
            '[' => {
                out.push(c);
                in_message.push(false);
            }
            '{' | '<' => {
                out.push(c);
                in_message.push(true);
            }
            ']' | '}' | '>' => {
                out.push(c);
                if in_message.len() > 1 {
                    in_message.pop();
                }
            }
            c if c.is_alphabetic() || c == '_' => {
                out.push(c);
                while let Some(&(_, next)) = chars.peek() {
                    if !(next.is_alphanumeric() || next == '_' || next == '.') {
                        break;
                    }
                    out.push(next);
                    chars.next();
                }
                let is_field_name = !after_colon && in_message.last() == Some(&true);
                previous = if is_field_name {
                    Previous::FieldName
                } else {
                    Previous::Other
                };
                after_colon = false;
                continue;
            }
            _ => out.push(c),
        }
        after_colon = c == ':';
        previous = Previous::Other;
    }
    out
}

fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |newline| newline + 1) + 1;
    (line, column)
}

fn check(mut config: ModelConfig, model_dir_name: &str) -> Result<ModelSpec, String> {
    if config.name.is_empty() {
        config.name = model_dir_name.to_string();
    } else if config.name != model_dir_name {
        return Err(format!(
            "name \"{}\" differs from the model's directory \"{model_dir_name}\"",
            config.name
        ));
    }
    let platform_ok = config.platform.is_empty() || config.platform == PLATFORM;
    let backend_ok = config.backend.is_empty() || config.backend == BACKEND;
    if !platform_ok || !backend_ok {
        return Err(format!(
            "platform \"{}\" / backend \"{}\": gridmesh-block serves TorchScript models only \
             (platform \"{PLATFORM}\" or backend \"{BACKEND}\")",
            config.platform, config.backend
        ));
    }
    if config.platform.is_empty() {
        config.platform = PLATFORM.to_string();
    }
    let max_batch_size = usize::try_from(config.max_batch_size)
        .map_err(|_| format!("max_batch_size {} is negative", config.max_batch_size))?;

    let inputs = tensors("input", &config.input, |input: &ModelInput| {
        if input.reshape.is_some() {
            return Err("reshape is not supported".into());
        }
        if input.is_shape_tensor {
            return Err("shape tensors are not supported".into());
        }
        if input.allow_ragged_batch {
            return Err("ragged batches are not supported".into());
        }
        if input.optional {
            return Err("optional inputs are not supported (forward takes every argument)".into());
        }
        Ok((
            input.name.as_str(),
            input.data_type(),
            input.dims.as_slice(),
        ))
    })?;
    let outputs = tensors("output", &config.output, |output: &ModelOutput| {
        if output.reshape.is_some() {
            return Err("reshape is not supported".into());
        }
        if output.is_shape_tensor {
            return Err("shape tensors are not supported".into());
        }
        Ok((
            output.name.as_str(),
            output.data_type(),
            output.dims.as_slice(),
        ))
    })?;
    if inputs.is_empty() || outputs.is_empty() {
        return Err(
            "input and output must each list at least one tensor (a TorchScript file does \
             not describe them)"
                .into(),
        );
    }
    if !config.batch_input.is_empty() || !config.batch_output.is_empty() {
        return Err("batch_input and batch_output are not supported".into());
    }

    let (batching, max_queue_size) = match &config.scheduling_choice {
        None => (None, None),
        Some(SchedulingChoice::DynamicBatching(dynamic)) => {
            if max_batch_size == 0 {
                return Err("dynamic_batching needs max_batch_size > 0".into());
            }
            let mut preferred = Vec::new();
            for size in &dynamic.preferred_batch_size {
                match usize::try_from(*size) {
                    Ok(size) if size > 0 && size <= max_batch_size => preferred.push(size),
                    _ => {
                        return Err(format!(
                            "dynamic_batching.preferred_batch_size {size} is not within 1..={max_batch_size} (max_batch_size)"
                        ));
                    }
                }
            }
            let queue_size = dynamic
                .default_queue_policy
                .as_ref()
                .map(|policy| policy.max_queue_size)
                .filter(|size| *size > 0)
                .map(|size| size as usize);
            let policy = BatchingPolicy {
                max_queue_delay: Duration::from_micros(dynamic.max_queue_delay_microseconds),
                preferred_batch_sizes: preferred,
            };
            (Some(policy), queue_size)
        }
        Some(SchedulingChoice::SequenceBatching(_)) => {
            return Err("sequence_batching is not supported (stateless models only)".into());
        }
        Some(SchedulingChoice::EnsembleScheduling(_)) => {
            return Err("ensemble_scheduling is not supported: chain blocks with a vDAG".into());
        }
    };

    let instances = instance_groups(&config)?;
    let versions = match config
        .version_policy
        .as_ref()
        .and_then(|p| p.policy_choice.as_ref())
    {
        None => VersionPolicy::Latest(1),
        Some(PolicyChoice::Latest(latest)) => {
            VersionPolicy::Latest(latest.num_versions.max(1) as usize)
        }
        Some(PolicyChoice::All(_)) => VersionPolicy::All,
        Some(PolicyChoice::Specific(specific)) => VersionPolicy::Specific(
            specific
                .versions
                .iter()
                .map(|version| {
                    u64::try_from(*version)
                        .map_err(|_| format!("version_policy.specific lists version {version}"))
                })
                .collect::<Result<_, _>>()?,
        ),
    };
    let model_filename = match config.default_model_filename.as_str() {
        "" => DEFAULT_MODEL_FILENAME.to_string(),
        name if name.contains('/') || name == ".." => {
            return Err(format!(
                "default_model_filename \"{name}\" must be a file name"
            ));
        }
        name => name.to_string(),
    };

    let inputs = forward_order(inputs);
    let warmup = config
        .model_warmup
        .iter()
        .enumerate()
        .map(|(index, sample)| {
            warmup_sample(sample, &inputs, max_batch_size)
                .map_err(|message| format!("model_warmup[{index}]: {message}"))
        })
        .collect::<Result<_, _>>()?;
    let ignored = [
        (config.optimization.is_some(), "optimization"),
        (!config.parameters.is_empty(), "parameters"),
        (
            config.response_cache.as_ref().is_some_and(|c| c.enable),
            "response_cache",
        ),
        (!config.cc_model_filenames.is_empty(), "cc_model_filenames"),
        (
            config.model_repository_agents.is_some(),
            "model_repository_agents",
        ),
    ]
    .into_iter()
    .filter_map(|(present, name)| present.then_some(name))
    .collect();

    Ok(ModelSpec {
        max_batch_size,
        inputs,
        outputs: forward_order(outputs),
        warmup,
        batching,
        max_queue_size,
        instances,
        model_filename,
        versions,
        ignored,
        config,
    })
}

fn warmup_sample(
    sample: &ModelWarmup,
    inputs: &[TensorSpec],
    max_batch_size: usize,
) -> Result<WarmupSample, String> {
    let rows = match (max_batch_size, sample.batch_size as usize) {
        (0, 0 | 1) => 1,
        (0, rows) => return Err(format!("batch_size {rows} for a model without batching")),
        (max, rows) if (1..=max).contains(&rows) => rows,
        (max, rows) => return Err(format!("batch_size {rows} is not within 1..={max}")),
    };
    if let Some(unknown) = sample
        .inputs
        .keys()
        .find(|name| !inputs.iter().any(|i| &i.name == *name))
    {
        return Err(format!(
            "inputs has \"{unknown}\", not an input of the model"
        ));
    }
    let inputs = inputs
        .iter()
        .map(|declared| {
            let given = sample.inputs.get(&declared.name).ok_or_else(|| {
                format!(
                    "inputs has no \"{}\" (every input needs data)",
                    declared.name
                )
            })?;
            let at = |message: String| format!("input \"{}\": {message}", declared.name);
            let element = ElementType::from_config(given.data_type()).map_err(at)?;
            if element != declared.element {
                return Err(at(format!(
                    "data_type is {}, the input is {}",
                    element.kserve_name(),
                    declared.element.kserve_name()
                )));
            }
            let fits = given.dims.len() == declared.dims.len()
                && given
                    .dims
                    .iter()
                    .zip(&declared.dims)
                    .all(|(dim, wanted)| *dim > 0 && (*wanted == -1 || dim == wanted));
            if !fits {
                return Err(at(format!(
                    "dims {:?} do not fit the input's {:?} (each > 0)",
                    given.dims, declared.dims
                )));
            }
            let data = match &given.input_data_type {
                Some(InputDataType::ZeroData(_)) | None => WarmupData::Zero,
                Some(InputDataType::RandomData(_)) => WarmupData::Random,
                Some(InputDataType::InputDataFile(file)) if file.contains('/') || file == ".." => {
                    return Err(at(format!(
                        "input_data_file \"{file}\" must be a file name"
                    )));
                }
                Some(InputDataType::InputDataFile(file)) => WarmupData::File(file.clone()),
            };
            let batch = (max_batch_size > 0).then_some(rows as i64);
            let shape = batch
                .into_iter()
                .chain(given.dims.iter().copied())
                .collect();
            Ok(WarmupInput { shape, data })
        })
        .collect::<Result<_, _>>()?;
    Ok(WarmupSample {
        name: sample.name.clone(),
        rows,
        inputs,
        count: sample.count.max(1) as usize,
    })
}

fn tensors<'a, T>(
    field: &str,
    declared: &'a [T],
    describe: impl Fn(&'a T) -> Result<(&'a str, DataType, &'a [i64]), String>,
) -> Result<Vec<TensorSpec>, String> {
    let mut specs: Vec<TensorSpec> = Vec::with_capacity(declared.len());
    for (index, tensor) in declared.iter().enumerate() {
        let at = |message: String| format!("{field}[{index}]: {message}");
        let (name, data_type, dims) = describe(tensor).map_err(at)?;
        if name.is_empty() {
            return Err(at("name is missing".into()));
        }
        if specs.iter().any(|spec| spec.name == name) {
            return Err(at(format!("name \"{name}\" is used twice")));
        }
        let element = ElementType::from_config(data_type).map_err(at)?;
        if let Some(dim) = dims.iter().find(|dim| **dim == 0 || **dim < -1) {
            return Err(at(format!("dims has {dim}: each is > 0 or -1 (any size)")));
        }
        specs.push(TensorSpec {
            name: name.to_string(),
            element,
            dims: dims.to_vec(),
        });
    }
    Ok(specs)
}

/// Triton's PyTorch convention: when every name ends in `__<n>`, `n` is the
/// position in forward's arguments (or results); otherwise the config's order
/// is the forward's order.
fn forward_order(mut tensors: Vec<TensorSpec>) -> Vec<TensorSpec> {
    let position = |name: &str| -> Option<usize> { name.rsplit_once("__")?.1.parse().ok() };
    if tensors
        .iter()
        .all(|tensor| position(&tensor.name).is_some())
    {
        tensors.sort_by_key(|tensor| position(&tensor.name));
    }
    tensors
}

fn instance_groups(config: &ModelConfig) -> Result<Vec<InstanceGroup>, String> {
    if config.instance_group.is_empty() {
        return Ok(vec![InstanceGroup {
            count: 1,
            kind: DeviceKind::Auto,
            gpus: Vec::new(),
        }]);
    }
    config
        .instance_group
        .iter()
        .enumerate()
        .map(|(index, group)| {
            let at = |message: String| format!("instance_group[{index}]: {message}");
            let kind = match group.kind() {
                InstanceKind::Auto => DeviceKind::Auto,
                InstanceKind::Gpu => DeviceKind::Gpu,
                InstanceKind::Cpu => DeviceKind::Cpu,
                InstanceKind::Model => {
                    return Err(at(
                        "KIND_MODEL is not supported (use KIND_GPU or KIND_CPU)".into()
                    ));
                }
            };
            let count = match group.count {
                0 => 1,
                count if count > 0 => count as usize,
                count => return Err(at(format!("count {count} is negative"))),
            };
            let gpus = group
                .gpus
                .iter()
                .map(|gpu| usize::try_from(*gpu).map_err(|_| at(format!("gpus lists {gpu}"))))
                .collect::<Result<_, _>>()?;
            Ok(InstanceGroup { count, kind, gpus })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CNN: &str = r#"
name: "cnn"
platform: "pytorch_libtorch"
max_batch_size: 64
input [
  { name: "image" data_type: TYPE_FP32 dims: [ 3, 32, 32 ] }
]
output [
  { name: "logits" data_type: TYPE_FP32 dims: [ 10 ] }
]
dynamic_batching { max_queue_delay_microseconds: 2000 preferred_batch_size: [ 16, 32 ] }
instance_group [ { count: 2 kind: KIND_CPU } ]
"#;

    #[test]
    fn a_triton_config_parses_into_what_the_server_acts_on() {
        let spec = parse(CNN, "cnn").unwrap();
        assert_eq!(spec.max_batch_size, 64);
        assert_eq!(spec.inputs[0].name, "image");
        assert_eq!(spec.inputs[0].element, ElementType::Fp32);
        assert_eq!(spec.inputs[0].full_shape(64), vec![-1, 3, 32, 32]);
        assert_eq!(
            spec.batching,
            Some(BatchingPolicy {
                max_queue_delay: Duration::from_millis(2),
                preferred_batch_sizes: vec![16, 32],
            })
        );
        assert_eq!(spec.instances[0].count, 2);
        assert_eq!(spec.instances[0].kind, DeviceKind::Cpu);
        assert_eq!(spec.versions, VersionPolicy::Latest(1));
        assert_eq!(spec.model_filename, "model.pt");
    }

    #[test]
    fn indexed_names_give_the_forward_order() {
        let text = r#"
max_batch_size: 4
input [ { name: "INPUT__1" data_type: TYPE_INT64 dims: [1] },
        { name: "INPUT__0" data_type: TYPE_FP32 dims: [1] } ]
output [ { name: "OUTPUT__0" data_type: TYPE_FP32 dims: [1] } ]
"#;
        let spec = parse(text, "m").unwrap();
        let names: Vec<_> = spec.inputs.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["INPUT__0", "INPUT__1"]);
        assert_eq!(spec.config.name, "m");
        assert_eq!(spec.batching, None);
    }

    #[test]
    fn lists_without_a_colon_parse_and_strings_and_comments_are_left_alone() {
        let text = "input [{ name: \"a [b\" data_type: TYPE_FP32 dims[2] }] # kind [x]\n\
                    output\n[{ name: 'y' data_type: TYPE_FP32 dims: [ 2 ] }]";
        let spec = parse(text, "m").unwrap();
        assert_eq!(spec.inputs[0].name, "a [b");
        assert_eq!(spec.inputs[0].dims, vec![2]);
        assert_eq!(spec.outputs[0].name, "y");
    }

    #[test]
    fn a_syntax_error_names_line_and_column() {
        let error = parse("name: \"m\"\nmax_batch_size: [oops\n", "m").unwrap_err();
        assert!(error.starts_with("config.pbtxt:2:"), "{error}");
    }

    #[test]
    fn what_cannot_be_served_is_refused_with_the_field() {
        let cases = [
            ("platform: \"onnxruntime_onnx\"", "TorchScript models only"),
            ("name: \"other\"", "differs from the model's directory"),
            (
                "max_batch_size: 0 dynamic_batching {}",
                "needs max_batch_size > 0",
            ),
            (
                "max_batch_size: 4 dynamic_batching { preferred_batch_size: 8 }",
                "preferred_batch_size 8",
            ),
            ("sequence_batching {}", "sequence_batching is not supported"),
            (
                "instance_group [{ kind: KIND_MODEL }]",
                "instance_group[0]: KIND_MODEL",
            ),
        ];
        for (extra, expected) in cases {
            let text = format!(
                "input [{{ name: \"x\" data_type: TYPE_FP32 dims: [2] }}]\n\
                 output [{{ name: \"y\" data_type: TYPE_FP32 dims: [2] }}]\n{extra}"
            );
            let error = parse(&text, "m").unwrap_err();
            assert!(error.contains(expected), "{extra}: {error}");
        }
        let error = parse(
            "input [{ name: \"x\" data_type: TYPE_UINT16 dims: [1] }]",
            "m",
        )
        .unwrap_err();
        assert!(error.contains("input[0]: data_type TYPE_UINT16"), "{error}");
        let error = parse(
            "input [{ name: \"x\" data_type: TYPE_FP32 dims: [0] }]",
            "m",
        )
        .unwrap_err();
        assert!(error.contains("input[0]: dims has 0"), "{error}");
        let error = parse("", "m").unwrap_err();
        assert!(error.contains("at least one tensor"), "{error}");
    }

    #[test]
    fn warmup_samples_are_checked_against_the_inputs() {
        let model = |warmup: &str| {
            format!(
                "max_batch_size: 8\n\
                 input [{{ name: \"x\" data_type: TYPE_FP32 dims: [-1] }}]\n\
                 output [{{ name: \"y\" data_type: TYPE_FP32 dims: [1] }}]\n{warmup}"
            )
        };
        let sample = |batch: u32, dims: &str, extra: &str| {
            model(&format!(
                "model_warmup [{{ name: \"w\" batch_size: {batch} count: 2 \
                 inputs {{ key: \"x\" value: {{ data_type: TYPE_FP32 dims: [{dims}] {extra} }} }} }}]"
            ))
        };
        let spec = parse(&sample(4, "3", "random_data: true"), "m").unwrap();
        assert_eq!(
            spec.warmup,
            [WarmupSample {
                name: "w".into(),
                rows: 4,
                inputs: vec![WarmupInput {
                    shape: vec![4, 3],
                    data: WarmupData::Random
                }],
                count: 2,
            }]
        );
        let cases = [
            (
                sample(9, "3", ""),
                "model_warmup[0]: batch_size 9 is not within 1..=8",
            ),
            (sample(1, "-1", ""), "input \"x\": dims [-1] do not fit"),
            (
                sample(1, "3", "input_data_file: \"../x\""),
                "must be a file name",
            ),
            (
                model("model_warmup [{ batch_size: 1 }]"),
                "inputs has no \"x\"",
            ),
        ];
        for (text, expected) in cases {
            let error = parse(&text, "m").unwrap_err();
            assert!(error.contains(expected), "{expected}: {error}");
        }
    }

    #[test]
    fn version_policies_pick_from_what_is_on_disk() {
        assert_eq!(VersionPolicy::Latest(1).select(vec![3, 1, 2]), vec![3]);
        assert_eq!(VersionPolicy::Latest(2).select(vec![3, 1, 2]), vec![2, 3]);
        assert_eq!(VersionPolicy::All.select(vec![2, 1]), vec![1, 2]);
        assert_eq!(
            VersionPolicy::Specific(vec![1, 5]).select(vec![1, 2]),
            vec![1]
        );
    }

    /// Arbitrary edits of a valid configuration (every field the server
    /// acts on) and of the CNN's: parsed into a spec or refused with a
    /// message, never a panic. Errors that come from the text-format
    /// parser name the line and column.
    mod fuzz {
        use gridmesh_tests::fuzz::{cases, mutations_of};
        use gridmesh_tests::process::workspace_root;
        use proptest::prelude::*;

        use super::*;

        fn seeds() -> Vec<String> {
            let rich =
                std::fs::read_to_string(workspace_root().join("block/tests/fuzz/config.pbtxt"))
                    .expect("the fuzz seed");
            vec![rich, CNN.to_string()]
        }

        #[test]
        fn the_seeds_are_valid() {
            for seed in seeds() {
                parse(&seed, "cnn").unwrap_or_else(|e| panic!("{e}"));
            }
        }

        proptest! {
            #![proptest_config(cases(2_000))]

            #[test]
            fn fuzz_config_pbtxt_is_parsed_or_refused(text in mutations_of(seeds())) {
                if let Err(message) = parse(&text, "cnn") {
                    prop_assert!(!message.trim().is_empty());
                }
            }
        }
    }
}
