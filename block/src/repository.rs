//! The model repository, laid out as Triton's
//! (`<repo>/<model>/config.pbtxt`, `<repo>/<model>/<version>/model.pt`), and
//! the state of every model in it.
//!
//! The directory is scanned and every `config.pbtxt` checked before anything
//! loads; then each selected version loads on a blocking thread, and only a
//! version that loaded gets a queue and a batcher. A model that cannot be
//! served (a malformed config, a corrupt file) keeps its reason, which is what
//! its requests are answered with, and never keeps the others from serving.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result};
use tch::{CModule, Device, Kind, Tensor};

use crate::batcher::{self, Instance, Queue, contain_panic, first_line};
use crate::load::Load;
use crate::model_config::{self, DeviceKind, ModelSpec, TensorSpec, WarmupData, WarmupInput};
use crate::observe::{Metrics, Observer};
use crate::tensor::{self, Value};

pub struct Repository {
    root: PathBuf,
    models: RwLock<BTreeMap<String, ModelState>>,
    loaded: AtomicBool,
    load: Arc<Load>,
    metrics: Arc<Metrics>,
    default_max_queue_size: usize,
}

enum ModelState {
    /// Its configuration (or its set of versions) cannot be served.
    Unusable(String),
    Configured {
        spec: Arc<ModelSpec>,
        versions: BTreeMap<u64, VersionState>,
    },
}

enum VersionState {
    Loading,
    Ready(Arc<ServedVersion>),
    Failed(String),
}

/// A model version that takes requests.
pub struct ServedVersion {
    pub spec: Arc<ModelSpec>,
    pub version: u64,
    pub queue: Arc<Queue>,
    pub observer: Arc<Observer>,
}

/// Why a lookup found nothing to run.
#[derive(Debug)]
pub enum Unservable {
    /// No such model or version in the repository.
    NotFound(String),
    /// It exists but cannot take requests (still loading, or failed to).
    Unavailable(String),
}

impl Repository {
    /// Reads the repository's layout and every model's configuration.
    pub fn scan(
        root: &Path,
        load: Arc<Load>,
        metrics: Arc<Metrics>,
        default_max_queue_size: usize,
    ) -> Result<Self> {
        let mut models = BTreeMap::new();
        let entries = std::fs::read_dir(root)
            .with_context(|| format!("cannot read the model repository {}", root.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot read {}", root.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !entry.path().is_dir() {
                continue;
            }
            let state = match configure(&entry.path(), &name) {
                Ok((spec, versions)) => {
                    for setting in &spec.ignored {
                        tracing::warn!(model = %name, setting, "config.pbtxt setting is not acted on by gridmesh-block");
                    }
                    ModelState::Configured {
                        spec: Arc::new(spec),
                        versions: versions
                            .into_iter()
                            .map(|version| (version, VersionState::Loading))
                            .collect(),
                    }
                }
                Err(reason) => {
                    tracing::error!(model = %name, %reason, "model cannot be served");
                    ModelState::Unusable(reason)
                }
            };
            models.insert(name, state);
        }
        Ok(Self {
            root: root.to_path_buf(),
            models: RwLock::new(models),
            loaded: AtomicBool::new(false),
            load,
            metrics,
            default_max_queue_size,
        })
    }

    fn models(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, ModelState>> {
        self.models.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads every selected version, each on a blocking thread, and starts
    /// its batcher. Returns once all have loaded or failed.
    pub async fn load_all(self: &Arc<Self>) {
        let pending: Vec<(String, u64, Arc<ModelSpec>)> = self
            .models()
            .iter()
            .filter_map(|(name, state)| match state {
                ModelState::Configured { spec, versions } => Some(
                    versions
                        .keys()
                        .map(|version| (name.clone(), *version, spec.clone()))
                        .collect::<Vec<_>>(),
                ),
                ModelState::Unusable(_) => None,
            })
            .flatten()
            .collect();
        let mut loads = tokio::task::JoinSet::new();
        for (name, version, spec) in pending {
            let path = self
                .root
                .join(&name)
                .join(version.to_string())
                .join(&spec.model_filename);
            loads.spawn_blocking(move || {
                // A panic must fail this version, not leave it loading forever.
                let instances = contain_panic("loading", || load_instances(&path, &spec));
                (name, version, spec, instances)
            });
        }
        while let Some(joined) = loads.join_next().await {
            let Ok((name, version, spec, instances)) = joined else {
                continue;
            };
            let state =
                match instances.and_then(|instances| self.serve(&name, version, spec, instances)) {
                    Ok(served) => {
                        tracing::info!(model = %name, version, "model ready");
                        VersionState::Ready(served)
                    }
                    Err(reason) => {
                        tracing::error!(model = %name, version, %reason, "model failed to load");
                        VersionState::Failed(reason)
                    }
                };
            let mut models = self.models.write().unwrap_or_else(|e| e.into_inner());
            if let Some(ModelState::Configured { versions, .. }) = models.get_mut(&name) {
                versions.insert(version, state);
            }
        }
        self.loaded.store(true, Ordering::Release);
    }

    fn serve(
        &self,
        name: &str,
        version: u64,
        spec: Arc<ModelSpec>,
        instances: Vec<Instance>,
    ) -> Result<Arc<ServedVersion>, String> {
        let observer = Arc::new(Observer::new(&self.metrics, name, version));
        let capacity = spec.max_queue_size.unwrap_or(self.default_max_queue_size);
        let queue = Arc::new(Queue::new(capacity, self.load.clone(), observer.clone()));
        self.load.instances_started(instances.len());
        batcher::start(
            &format!("{name}/{version}"),
            spec.clone(),
            queue.clone(),
            instances,
            self.load.clone(),
            observer.clone(),
        )
        .map_err(|error| format!("cannot start the instance threads: {error}"))?;
        Ok(Arc::new(ServedVersion {
            spec,
            version,
            queue,
            observer,
        }))
    }

    /// Loading finished and every model in the repository is serving
    /// (Triton's strict readiness).
    pub fn all_ready(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
            && self.models().values().all(|state| match state {
                ModelState::Unusable(_) => false,
                ModelState::Configured { versions, .. } => versions
                    .values()
                    .all(|version| matches!(version, VersionState::Ready(_))),
            })
    }

    /// The version a request names (`""`: the newest ready one).
    pub fn get(&self, name: &str, version: &str) -> Result<Arc<ServedVersion>, Unservable> {
        let models = self.models();
        let (_, versions) = configured(&models, name)?;
        let state = if version.is_empty() {
            versions
                .values()
                .rev()
                .find(|state| matches!(state, VersionState::Ready(_)))
                .or_else(|| versions.values().next_back())
        } else {
            let number: u64 = version.parse().map_err(|_| {
                Unservable::NotFound(format!("model \"{name}\" has no version \"{version}\""))
            })?;
            versions.get(&number)
        };
        match state {
            Some(VersionState::Ready(served)) => Ok(served.clone()),
            Some(VersionState::Loading) => Err(Unservable::Unavailable(format!(
                "model \"{name}\" is still loading"
            ))),
            Some(VersionState::Failed(reason)) => Err(Unservable::Unavailable(format!(
                "model \"{name}\" failed to load: {reason}"
            ))),
            None if version.is_empty() => Err(Unservable::Unavailable(format!(
                "model \"{name}\" has no version to serve"
            ))),
            None => Err(Unservable::NotFound(format!(
                "model \"{name}\" has no version \"{version}\" (serving: {})",
                list(versions.keys())
            ))),
        }
    }

    /// The model's checked configuration and the versions that are ready.
    pub fn describe(&self, name: &str) -> Result<(Arc<ModelSpec>, Vec<u64>), Unservable> {
        let models = self.models();
        let (spec, versions) = configured(&models, name)?;
        let ready = versions
            .iter()
            .filter(|(_, state)| matches!(state, VersionState::Ready(_)))
            .map(|(version, _)| *version)
            .collect();
        Ok((spec.clone(), ready))
    }

    /// Every ready version, of one model or of all, for statistics.
    pub fn served(&self, name: Option<&str>) -> Vec<Arc<ServedVersion>> {
        self.models()
            .iter()
            .filter(|(model, _)| name.is_none_or(|name| name == model.as_str()))
            .filter_map(|(_, state)| match state {
                ModelState::Configured { versions, .. } => Some(versions.values()),
                ModelState::Unusable(_) => None,
            })
            .flatten()
            .filter_map(|state| match state {
                VersionState::Ready(served) => Some(served.clone()),
                _ => None,
            })
            .collect()
    }
}

fn configured<'a>(
    models: &'a BTreeMap<String, ModelState>,
    name: &str,
) -> Result<(&'a Arc<ModelSpec>, &'a BTreeMap<u64, VersionState>), Unservable> {
    match models.get(name) {
        None => Err(Unservable::NotFound(format!(
            "model \"{name}\" is not in the repository (models: {})",
            list(models.keys())
        ))),
        Some(ModelState::Unusable(reason)) => Err(Unservable::Unavailable(format!(
            "model \"{name}\" cannot be served: {reason}"
        ))),
        Some(ModelState::Configured { spec, versions }) => Ok((spec, versions)),
    }
}

fn list<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    let items: Vec<String> = items.map(|item| item.to_string()).collect();
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

/// The model's checked configuration and the versions its policy selects.
fn configure(dir: &Path, name: &str) -> Result<(ModelSpec, Vec<u64>), String> {
    let config_path = dir.join("config.pbtxt");
    let text = std::fs::read_to_string(&config_path).map_err(|error| {
        format!(
            "cannot read config.pbtxt ({error}): TorchScript models need one declaring their inputs and outputs"
        )
    })?;
    let spec = model_config::parse(&text, name)?;
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)
        .map_err(|error| format!("cannot list the model's directory: {error}"))?
    {
        let entry = entry.map_err(|error| format!("cannot list the model's directory: {error}"))?;
        let is_dir = entry.file_type().is_ok_and(|kind| kind.is_dir());
        if let (true, Ok(version)) = (is_dir, entry.file_name().to_string_lossy().parse::<u64>()) {
            found.push(version);
        }
    }
    if found.is_empty() {
        return Err("no version directory (<model>/<version>/, the version a number)".into());
    }
    let selected = spec.versions.select(found.clone());
    if selected.is_empty() {
        return Err(format!(
            "version_policy selects none of the versions found ({})",
            list(found.iter())
        ));
    }
    Ok((spec, selected))
}

/// Loads one copy of the model per instance, each on its device.
fn load_instances(path: &Path, spec: &ModelSpec) -> Result<Vec<Instance>, String> {
    if !path.is_file() {
        return Err(format!("{} does not exist", path.display()));
    }
    let gpus = if tch::Cuda::is_available() {
        tch::Cuda::device_count() as usize
    } else {
        0
    };
    let mut instances = Vec::new();
    for group in &spec.instances {
        for index in 0..group.count {
            let device = match (group.kind, gpus) {
                (DeviceKind::Cpu, _) | (DeviceKind::Auto, 0) => Device::Cpu,
                (DeviceKind::Gpu, 0) => {
                    tracing::warn!(model = %spec.config.name, "instance_group asks for a GPU but libtorch sees none: running on the CPU");
                    Device::Cpu
                }
                (_, available) => {
                    let gpu = match group.gpus.as_slice() {
                        [] => index % available,
                        listed => listed[index % listed.len()],
                    };
                    if gpu >= available {
                        return Err(format!(
                            "instance_group lists GPU {gpu}, but there are {available}"
                        ));
                    }
                    Device::Cuda(gpu)
                }
            };
            let mut module = CModule::load_on_device(path, device).map_err(|error| {
                format!(
                    "{} is not a TorchScript model libtorch can load: {}",
                    path.display(),
                    first_line(&error.to_string())
                )
            })?;
            module.set_eval();
            instances.push(Instance { module, device });
        }
    }
    // <model>/<version>/model.pt: the model's directory holds warmup/.
    let model_dir = path.parent().and_then(Path::parent).unwrap_or(path);
    warm_up(&instances, spec, model_dir)?;
    Ok(instances)
}

/// Runs the configuration's `model_warmup` samples on every instance.
fn warm_up(instances: &[Instance], spec: &ModelSpec, model_dir: &Path) -> Result<(), String> {
    for (index, sample) in spec.warmup.iter().enumerate() {
        let at = |message: String| format!("model_warmup[{index}] \"{}\": {message}", sample.name);
        let started = std::time::Instant::now();
        let inputs = sample
            .inputs
            .iter()
            .zip(&spec.inputs)
            .map(|(input, declared)| warmup_value(input, declared, model_dir))
            .collect::<Result<Vec<_>, _>>()
            .map_err(at)?;
        for instance in instances {
            batcher::warm_up(instance, spec, &inputs, sample.rows, sample.count).map_err(at)?;
        }
        tracing::info!(
            model = %spec.config.name,
            sample = %sample.name,
            runs = sample.count * instances.len(),
            took = ?started.elapsed(),
            "warmed up"
        );
    }
    Ok(())
}

/// A warm-up input: zeros (empty strings), random values (uniform in [0, 1)
/// for floating point, 0 or 1 otherwise, so index-like inputs stay in range),
/// or raw contents from `<model>/warmup/<file>`.
fn warmup_value(
    input: &WarmupInput,
    declared: &TensorSpec,
    model_dir: &Path,
) -> Result<Value, String> {
    let shape = input.shape.as_slice();
    let options = |kind| (kind, Device::Cpu);
    let tensor = match (&input.data, declared.element.kind()) {
        (WarmupData::File(file), _) => {
            let path = model_dir.join("warmup").join(file);
            let raw = std::fs::read(&path)
                .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
            return tensor::decode(declared.element, shape, Some(&raw), None)
                .map_err(|message| format!("{} {message}", path.display()));
        }
        (_, None) => {
            return Ok(Value::Strings {
                strings: vec![String::new(); tensor::element_count(shape)],
                shape: shape.to_vec(),
            });
        }
        (WarmupData::Zero, Some(kind)) => Tensor::f_zeros(shape, options(kind)),
        (
            WarmupData::Random,
            Some(kind @ (Kind::Half | Kind::BFloat16 | Kind::Float | Kind::Double)),
        ) => Tensor::f_rand(shape, options(kind)),
        (WarmupData::Random, Some(Kind::Bool)) => {
            Tensor::f_randint(2, shape, options(Kind::Int64)).and_then(|t| t.f_to_kind(Kind::Bool))
        }
        (WarmupData::Random, Some(kind)) => Tensor::f_randint(2, shape, options(kind)),
    };
    tensor
        .map(Value::Tensor)
        .map_err(|error| first_line(&error.to_string()))
}
