//! Checkpoints are Hugging Face model directories: `config.json` (its `model_type` names the
//! architecture, which reads and writes its own keys; `architectures` names the head),
//! `model.safetensors` — or shards listed by `model.safetensors.index.json` — in the
//! architecture's HF tensor names, `generation_config.json` (the ids that end a generation) and
//! the tokenizer's files (`tokenizer.json`, `tokenizer_config.json`, `chat_template.jinja`).
//! Reward and value models are `*ForSequenceClassification` directories: the backbone and a
//! bias-free `score` head.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::Dtype;
use serde_json::Value;
use tch::nn::VarStore;
use tch::{Kind, Tensor};

use super::architecture::{HfHead, ModelConfig};
pub use crate::data::tokenizer::TOKENIZER_FILE;
use crate::data::tokenizer::{TextTokenizer, TokenizerError};

pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";
pub const CONFIG_FILE: &str = "config.json";
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";
/// transformers' `save_pretrained` default `max_shard_size`.
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 50 * 1_000_000_000;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint directory `{dir}` has no `{file}` (a checkpoint holds {WEIGHTS_FILE} or {WEIGHTS_INDEX_FILE}, {CONFIG_FILE} and {TOKENIZER_FILE})")]
    MissingFile { dir: PathBuf, file: &'static str },
    #[error("cannot read `{path}`: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("`{path}` is not valid JSON: {source}")]
    ConfigJson { path: PathBuf, source: serde_json::Error },
    #[error("`{path}`: unsupported model: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    #[error("`{path}`: `{key}` {expected}")]
    BadKey { path: PathBuf, key: String, expected: &'static str },
    #[error("`{path}` is not a safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error("`{path}` has no tensor `{name}` (nor `{}`)", name.strip_prefix("transformer.").unwrap_or(name))]
    MissingTensor { path: PathBuf, name: String },
    #[error("`{path}`: tensor `{name}` has shape {found:?}, the model expects {expected:?}")]
    ShapeMismatch { path: PathBuf, name: String, found: Vec<i64>, expected: Vec<i64> },
    #[error("`{path}`: tensor `{name}` has dtype {dtype:?}; expected F32, F16 or BF16 (I8 or U8 for quantized weights)")]
    UnsupportedDtype { path: PathBuf, name: String, dtype: Dtype },
    #[error("`{path}`: {source}")]
    Quantized { path: PathBuf, source: super::quantize::QuantizeError },
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Write(#[from] crate::run::RunDirError),
}

fn require(dir: &Path, file: &'static str) -> Result<PathBuf, CheckpointError> {
    let path = dir.join(file);
    if path.is_file() {
        Ok(path)
    } else {
        Err(CheckpointError::MissingFile { dir: dir.to_path_buf(), file })
    }
}

fn read_json(path: &Path) -> Result<Value, CheckpointError> {
    let text = std::fs::read_to_string(path).map_err(|source| CheckpointError::Io { path: path.to_path_buf(), source })?;
    serde_json::from_str(&text).map_err(|source| CheckpointError::ConfigJson { path: path.to_path_buf(), source })
}

/// Reads `config.json`: the architecture its `model_type` names (GPT-2 when absent).
pub fn read_config(dir: &Path) -> Result<ModelConfig, CheckpointError> {
    let path = require(dir, CONFIG_FILE)?;
    ModelConfig::from_hf(&read_json(&path)?).map_err(|reason| CheckpointError::Unsupported { path, reason })
}

/// How the checkpoint's projections are quantized (`config.json`'s `quantization_config`);
/// `None` for float weights.
pub fn read_quantization(dir: &Path) -> Result<Option<super::quantize::Scheme>, CheckpointError> {
    let path = require(dir, CONFIG_FILE)?;
    super::quantize::Scheme::from_config(&read_json(&path)?).map_err(|reason| CheckpointError::Unsupported { path, reason })
}

/// Whether `dir` holds a reward model: a checkpoint whose `architectures` names a
/// sequence-classification class, or PEFT adapters of task `SEQ_CLS`.
pub fn is_reward_model_dir(dir: &Path) -> Result<bool, CheckpointError> {
    let (file, read): (&'static str, fn(&Value) -> bool) = if super::peft::is_adapter_dir(dir) {
        (super::peft::ADAPTER_CONFIG_FILE, |json| json["task_type"] == "SEQ_CLS")
    } else {
        (CONFIG_FILE, |json| {
            json["architectures"]
                .as_array()
                .is_some_and(|classes| classes.iter().filter_map(Value::as_str).any(|class| class.ends_with("ForSequenceClassification")))
        })
    };
    Ok(read(&read_json(&require(dir, file)?)?))
}

/// Writes `config.json`: the keys transformers reads for the architecture (`hf`, from
/// `ArchitectureConfig::to_hf`), the class of `head`, and the padding id; a
/// sequence-classification head adds its one label.
fn write_config(dir: &Path, mut json: Value, class: &str, head: HfHead, pad_token_id: i64) -> Result<(), CheckpointError> {
    json["architectures"] = serde_json::json!([class]);
    json["pad_token_id"] = serde_json::json!(pad_token_id);
    if head == HfHead::SequenceClassification {
        json["num_labels"] = serde_json::json!(1);
        json["id2label"] = serde_json::json!({"0": "LABEL_0"});
        json["label2id"] = serde_json::json!({"LABEL_0": 0});
    }
    let path = dir.join(CONFIG_FILE);
    let text = serde_json::to_string_pretty(&json).expect("a JSON value serialises");
    Ok(crate::run::durable::write_file(&path, text.as_bytes())?)
}

/// The `torch.dtype` name of a tensor kind, as `config.json` writes it.
fn torch_dtype(kind: Kind) -> &'static str {
    match kind {
        Kind::BFloat16 => "bfloat16",
        Kind::Half => "float16",
        _ => "float32",
    }
}

/// `eos_token_id` of a config file: one id or a list of them.
fn eos_ids(json: &Value, path: &Path) -> Result<Vec<i64>, CheckpointError> {
    let bad = || CheckpointError::BadKey {
        path: path.to_path_buf(),
        key: "eos_token_id".into(),
        expected: "must be an integer or a list of integers",
    };
    match json.get("eos_token_id") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(ids)) => ids.iter().map(|id| id.as_i64().ok_or_else(bad)).collect(),
        Some(id) => Ok(vec![id.as_i64().ok_or_else(bad)?]),
    }
}

/// How a checkpoint is written.
#[derive(Debug, Clone)]
pub struct SaveOptions {
    pub head: HfHead,
    /// Weights above this many bytes are split into `model-0000i-of-0000n.safetensors` shards
    /// listed by `model.safetensors.index.json`, as `save_pretrained(max_shard_size=…)` does.
    pub max_shard_bytes: u64,
    /// `config.json`'s `quantization_config`, for quantized weights.
    pub quantization: Option<Value>,
}

impl SaveOptions {
    pub fn for_head(head: HfHead) -> Self {
        SaveOptions { head, max_shard_bytes: DEFAULT_MAX_SHARD_BYTES, quantization: None }
    }
}

/// One tensor ready to be written: its file name, dtype, shape and bytes.
struct Buffer {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

fn to_buffer(name: &str, tensor: &Tensor) -> Buffer {
    let tensor = tensor.detach().to_device(tch::Device::Cpu).contiguous();
    let (kind, dtype) = match tensor.kind() {
        Kind::BFloat16 => (Kind::BFloat16, Dtype::BF16),
        Kind::Half => (Kind::Half, Dtype::F16),
        Kind::Int8 => (Kind::Int8, Dtype::I8),
        Kind::Uint8 => (Kind::Uint8, Dtype::U8),
        _ => (Kind::Float, Dtype::F32),
    };
    let tensor = tensor.to_kind(kind);
    let numel = tensor.numel();
    let mut bytes = vec![0u8; numel * kind.elt_size_in_bytes()];
    tensor.copy_data_u8(&mut bytes, numel);
    Buffer { name: name.to_string(), dtype, shape: tensor.size().iter().map(|&d| d as usize).collect(), bytes }
}

/// Writes `buffers` as one safetensors file, flushed.
fn write_safetensors(path: &Path, buffers: &[&Buffer]) -> Result<(), CheckpointError> {
    safetensors::serialize_to_file(tensor_views(buffers.iter().copied()), format_metadata(), path)
        .map_err(|e| CheckpointError::Safetensors { path: path.to_path_buf(), message: e.to_string() })?;
    Ok(crate::run::durable::sync(path)?)
}

/// `tensors` as the bytes of a safetensors file, for a file saved beside a checkpoint's weights.
pub fn safetensors_bytes(tensors: &[(&str, &Tensor)]) -> Vec<u8> {
    let buffers: Vec<Buffer> = tensors.iter().map(|(name, tensor)| to_buffer(name, tensor)).collect();
    safetensors::serialize(tensor_views(buffers.iter()), format_metadata()).expect("tensors of matching shapes serialise")
}

/// The buffers as safetensors' views, by name.
fn tensor_views<'a>(buffers: impl Iterator<Item = &'a Buffer>) -> Vec<(&'a str, safetensors::tensor::TensorView<'a>)> {
    buffers
        .map(|b| {
            (b.name.as_str(), safetensors::tensor::TensorView::new(b.dtype, b.shape.clone(), &b.bytes).expect("shape matches byte count"))
        })
        .collect()
}

/// transformers refuses safetensors files whose metadata lacks `format`.
fn format_metadata() -> Option<HashMap<String, String>> {
    Some(HashMap::from([("format".to_string(), "pt".to_string())]))
}

/// Writes the weights: one file, or shards of at most `max_shard_bytes` (a tensor larger than
/// that gets a shard of its own) and the index mapping each tensor to its shard.
fn write_weights(dir: &Path, buffers: &[Buffer], max_shard_bytes: u64) -> Result<(), CheckpointError> {
    let total: u64 = buffers.iter().map(|b| b.bytes.len() as u64).sum();
    if total <= max_shard_bytes {
        return write_safetensors(&dir.join(WEIGHTS_FILE), &buffers.iter().collect::<Vec<_>>());
    }
    let mut shards: Vec<Vec<&Buffer>> = vec![Vec::new()];
    let mut shard_bytes = 0u64;
    for buffer in buffers {
        let size = buffer.bytes.len() as u64;
        if shard_bytes + size > max_shard_bytes && !shards.last().expect("one shard").is_empty() {
            shards.push(Vec::new());
            shard_bytes = 0;
        }
        shards.last_mut().expect("one shard").push(buffer);
        shard_bytes += size;
    }
    let mut weight_map = BTreeMap::new();
    for (index, shard) in shards.iter().enumerate() {
        let file = format!("model-{:05}-of-{:05}.safetensors", index + 1, shards.len());
        write_safetensors(&dir.join(&file), shard)?;
        for buffer in shard {
            weight_map.insert(buffer.name.clone(), file.clone());
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    let text = serde_json::to_string_pretty(&index).expect("JSON serialises");
    Ok(crate::run::durable::write_file(&dir.join(WEIGHTS_INDEX_FILE), text.as_bytes())?)
}

/// Writes every variable of `vs` (model and heads) as HF weights — but an untied LM head under a
/// sequence-classification head — plus the tokenizer's files, `generation_config.json`, the
/// `extra` files (name, contents) and the config. The directory is replaced as a
/// whole (`run::durable`): a crash never leaves a half-written checkpoint looking complete, and
/// `config.json`, written last, is what marks it complete.
pub fn save(
    dir: &Path,
    vs: &VarStore,
    config: &ModelConfig,
    tokenizer: &TextTokenizer,
    extra: &[(&str, Vec<u8>)],
    options: SaveOptions,
) -> Result<(), CheckpointError> {
    let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    if options.head == HfHead::SequenceClassification {
        variables.retain(|(name, _)| !name.starts_with("lm_head."));
    }
    save_tensors(dir, variables, config, tokenizer, extra, options)
}

/// [`save`] of the tensors given (by variable name) rather than a store's.
pub fn save_tensors(
    dir: &Path,
    mut variables: Vec<(String, Tensor)>,
    config: &ModelConfig,
    tokenizer: &TextTokenizer,
    extra: &[(&str, Vec<u8>)],
    options: SaveOptions,
) -> Result<(), CheckpointError> {
    let write = |dir: &Path| -> Result<(), CheckpointError> {
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        let precision = variables
            .iter()
            .map(|(_, t)| t.kind())
            .find(|kind| matches!(kind, Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16))
            .unwrap_or(Kind::Float);
        let buffers: Vec<Buffer> = variables.iter().map(|(name, tensor)| to_buffer(name, tensor)).collect();
        write_weights(dir, &buffers, options.max_shard_bytes)?;
        for file in tokenizer.save(dir)? {
            crate::run::durable::sync(&file)?;
        }
        let architecture = config.architecture();
        let hf = architecture.to_hf(torch_dtype(precision));
        write_generation_config(dir, tokenizer, hf.get("bos_token_id").and_then(Value::as_i64))?;
        for (name, contents) in extra {
            crate::run::durable::write_file(&dir.join(name), contents)?;
        }
        let mut hf = hf;
        if let Some(quantization) = &options.quantization {
            hf["quantization_config"] = quantization.clone();
        }
        write_config(dir, hf, architecture.hf_class(options.head), options.head, tokenizer.pad_id())
    };
    crate::run::durable::replace_dir(dir, write, &|_| {})
}

/// What `load_weights` did not take from the file.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Variables of the model absent from the file (only for the allowed prefixes).
    pub missing: Vec<String>,
    /// Tensors of the file the model has no use for.
    pub unused: Vec<String>,
}

/// Tensors HF writes that carry no learned state: the causal-mask buffers of old `transformers`
/// versions' GPT-2. (A tied LM head's copy, `lm_head.weight`, has no variable here and is
/// reported unused.)
fn is_derived_tensor(name: &str) -> bool {
    name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias")
}

/// Copies the tensors of `model.safetensors` in `dir` into the variables of `vs`. File names may
/// carry the `transformer.` prefix or not. Variables whose name starts with one of
/// `may_be_missing` (e.g. a fresh reward head on an SFT checkpoint) keep their initial values when
/// absent; any other absence, or a shape mismatch, is an error naming the tensor. Tensors are read
/// from the files one at a time, so that loading holds one tensor beside the model, not a second
/// copy of it.
pub fn load_weights(vs: &mut VarStore, dir: &Path, may_be_missing: &[&str]) -> Result<LoadReport, CheckpointError> {
    load_weights_from(vs, &mut WeightReader::open(dir)?, may_be_missing)
}

/// [`load_weights`] from files already open (a quantized checkpoint reads more from them after).
pub(crate) fn load_weights_from(
    vs: &mut VarStore,
    reader: &mut WeightReader,
    may_be_missing: &[&str],
) -> Result<LoadReport, CheckpointError> {
    let mut report = LoadReport::default();
    let _no_grad = tch::no_grad_guard();
    for (name, mut variable) in vs.variables() {
        if !reader.has(&name) {
            if may_be_missing.iter().any(|prefix| name.starts_with(prefix)) {
                report.missing.push(name);
                continue;
            }
            return Err(CheckpointError::MissingTensor { path: reader.path.clone(), name });
        }
        let tensor = reader.read(&name, &variable.size())?;
        variable.copy_(&tensor.to_kind(variable.kind()).to_device(variable.device()));
    }
    report.unused = reader.unread();
    Ok(report)
}

/// The tensors of a checkpoint's weight files (one file or shards), read one at a time by our
/// variable names.
pub(crate) struct WeightReader {
    files: Vec<WeightFile>,
    by_name: HashMap<String, (usize, String)>,
    read: std::collections::HashSet<String>,
    /// The file, or the shards' index, that errors name.
    pub(crate) path: PathBuf,
}

impl WeightReader {
    pub(crate) fn open(dir: &Path) -> Result<Self, CheckpointError> {
        let paths = weight_paths(dir)?;
        let files = paths.iter().map(|path| WeightFile::open(path)).collect::<Result<Vec<_>, _>>()?;
        let mut by_name: HashMap<String, (usize, String)> = HashMap::new();
        for (index, file) in files.iter().enumerate() {
            for name in file.tensors.keys().filter(|name| !is_derived_tensor(name)) {
                by_name.insert(canonical_name(name), (index, name.clone()));
            }
        }
        let path = if paths.len() == 1 { paths[0].clone() } else { dir.join(WEIGHTS_INDEX_FILE) };
        Ok(WeightReader { files, by_name, read: Default::default(), path })
    }

    pub(crate) fn has(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// Tensor `name` (our variable name, or HF's), which must have shape `expected`.
    pub(crate) fn read(&mut self, name: &str, expected: &[i64]) -> Result<Tensor, CheckpointError> {
        let canonical = canonical_name(name);
        let Some((file_index, file_name)) = self.by_name.get(&canonical) else {
            return Err(CheckpointError::MissingTensor { path: self.path.clone(), name: name.to_string() });
        };
        let tensor = self.files[*file_index].read(file_name, expected)?;
        self.read.insert(canonical);
        Ok(tensor)
    }

    /// The tensors not read, by name.
    fn unread(&self) -> Vec<String> {
        let mut unread: Vec<String> = self.by_name.keys().filter(|name| !self.read.contains(*name)).cloned().collect();
        unread.sort();
        unread
    }
}

/// An open safetensors file and its header: where each tensor's bytes are.
pub(crate) struct WeightFile {
    path: PathBuf,
    file: std::fs::File,
    /// Where the tensors' bytes begin: after the 8-byte header length and the header.
    data_start: u64,
    pub(crate) tensors: HashMap<String, safetensors::tensor::TensorInfo>,
}

impl WeightFile {
    pub(crate) fn open(path: &Path) -> Result<Self, CheckpointError> {
        use std::io::Read;
        let io = |source| CheckpointError::Io { path: path.to_path_buf(), source };
        let bad = |message: String| CheckpointError::Safetensors { path: path.to_path_buf(), message };
        let mut file = std::fs::File::open(path).map_err(io)?;
        let file_length = file.metadata().map_err(io)?.len();
        let mut length = [0u8; 8];
        file.read_exact(&mut length).map_err(|_| bad("shorter than its 8-byte header length".into()))?;
        let header_length = u64::from_le_bytes(length);
        if header_length > file_length.saturating_sub(8) || header_length > 100_000_000 {
            return Err(bad(format!("a header of {header_length} bytes does not fit the file")));
        }
        let mut header = vec![0u8; header_length as usize];
        file.read_exact(&mut header).map_err(io)?;
        let metadata: safetensors::tensor::Metadata = serde_json::from_slice(&header).map_err(|e| bad(format!("invalid header: {e}")))?;
        let data_start = 8 + header_length;
        let tensors: HashMap<String, safetensors::tensor::TensorInfo> =
            metadata.tensors().into_iter().map(|(name, info)| (name, info.clone())).collect();
        if let Some((name, _)) = tensors.iter().find(|(_, info)| data_start + info.data_offsets.1 as u64 > file_length) {
            return Err(bad(format!("tensor `{name}` lies past the end of the file (truncated?)")));
        }
        Ok(WeightFile { path: path.to_path_buf(), file, data_start, tensors })
    }

    /// Reads tensor `name` (one the file lists), which must have shape `expected`.
    pub(crate) fn read(&mut self, name: &str, expected: &[i64]) -> Result<Tensor, CheckpointError> {
        use std::io::{Read, Seek, SeekFrom};
        let path = self.path.clone();
        let info = &self.tensors[name];
        let kind = match info.dtype {
            Dtype::F32 => Kind::Float,
            Dtype::F16 => Kind::Half,
            Dtype::BF16 => Kind::BFloat16,
            Dtype::I8 => Kind::Int8,
            Dtype::U8 => Kind::Uint8,
            dtype => return Err(CheckpointError::UnsupportedDtype { path, name: name.into(), dtype }),
        };
        let found: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
        if found != expected {
            return Err(CheckpointError::ShapeMismatch { path, name: name.into(), found, expected: expected.to_vec() });
        }
        let (start, end) = info.data_offsets;
        let mut bytes = vec![0u8; end - start];
        self.file
            .seek(SeekFrom::Start(self.data_start + start as u64))
            .map_err(|source| CheckpointError::Io { path: path.clone(), source })?;
        self.file.read_exact(&mut bytes).map_err(|source| CheckpointError::Io { path: path.clone(), source })?;
        Tensor::f_from_data_size(&bytes, &found, kind).map_err(|e| CheckpointError::Safetensors { path, message: e.to_string() })
    }
}

/// The weight files of a checkpoint: `model.safetensors`, or every shard the index names.
fn weight_paths(dir: &Path) -> Result<Vec<PathBuf>, CheckpointError> {
    if dir.join(WEIGHTS_FILE).is_file() || !dir.join(WEIGHTS_INDEX_FILE).is_file() {
        Ok(vec![require(dir, WEIGHTS_FILE)?])
    } else {
        shard_paths(dir)
    }
}

/// The shard files `model.safetensors.index.json` lists, in order, each once.
fn shard_paths(dir: &Path) -> Result<Vec<PathBuf>, CheckpointError> {
    let index_path = dir.join(WEIGHTS_INDEX_FILE);
    let index = read_json(&index_path)?;
    let bad = |expected| CheckpointError::BadKey { path: index_path.clone(), key: "weight_map".into(), expected };
    let map =
        index.get("weight_map").and_then(Value::as_object).ok_or_else(|| bad("must be an object mapping tensor names to shard files"))?;
    let mut files: Vec<&str> = Vec::new();
    for file in map.values() {
        let file = file.as_str().ok_or_else(|| bad("must map each tensor name to a file name (a string)"))?;
        if file.contains('/') || file.contains('\\') || file.starts_with('.') {
            return Err(bad("names a shard outside the checkpoint directory"));
        }
        if !files.contains(&file) {
            files.push(file);
        }
    }
    files.sort_unstable();
    files
        .into_iter()
        .map(|file| {
            let path = dir.join(file);
            if path.is_file() {
                Ok(path)
            } else {
                Err(CheckpointError::Io {
                    path,
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("a shard that `{WEIGHTS_INDEX_FILE}` lists is missing"),
                    ),
                })
            }
        })
        .collect()
}

/// Our variable name for a file's tensor: transformer weights always under `transformer.`.
fn canonical_name(name: &str) -> String {
    const TRANSFORMER_PARTS: [&str; 4] = ["wte.", "wpe.", "h.", "ln_f."];
    if TRANSFORMER_PARTS.iter().any(|part| name.starts_with(part)) {
        format!("transformer.{name}")
    } else {
        name.to_string()
    }
}

/// Writes `generation_config.json`: the ids that end a generation (the tokenizer's stop ids) and
/// the padding and beginning ids, as `generate` reads them.
pub fn write_generation_config(dir: &Path, tokenizer: &TextTokenizer, bos_token_id: Option<i64>) -> Result<(), CheckpointError> {
    let stop_ids = tokenizer.stop_ids();
    let generation = serde_json::json!({
        "bos_token_id": bos_token_id,
        "eos_token_id": if stop_ids.len() == 1 { serde_json::json!(stop_ids[0]) } else { serde_json::json!(stop_ids) },
        "pad_token_id": tokenizer.pad_id(),
    });
    let text = serde_json::to_string_pretty(&generation).expect("JSON serialises");
    Ok(crate::run::durable::write_file(&dir.join(GENERATION_CONFIG_FILE), text.as_bytes())?)
}

/// The ids a `generation_config.json` lists as `eos_token_id`.
pub fn read_stop_ids(path: &Path) -> Result<Vec<i64>, CheckpointError> {
    eos_ids(&read_json(path)?, path)
}

/// Reads `tokenizer.json` of a checkpoint and checks it fits the model's vocabulary.
/// Generation then stops at any id `generation_config.json` lists as `eos_token_id` (or, without
/// that file, `config.json` does), besides the tokenizer's end-of-sequence token.
pub fn read_tokenizer(dir: &Path, config: &ModelConfig) -> Result<TextTokenizer, CheckpointError> {
    let mut tokenizer = TextTokenizer::load(&require(dir, TOKENIZER_FILE)?)?;
    tokenizer.check_fits(config.vocab_size())?;
    let generation_path = dir.join(GENERATION_CONFIG_FILE);
    let stop_ids = if generation_path.is_file() { read_stop_ids(&generation_path)? } else { config.architecture().eos_token_ids() };
    if let Some(&id) = stop_ids.iter().find(|&&id| id < 0 || id >= config.vocab_size()) {
        return Err(CheckpointError::BadKey {
            path: if generation_path.is_file() { generation_path } else { dir.join(CONFIG_FILE) },
            key: "eos_token_id".into(),
            expected: if id < 0 { "must not be negative" } else { "names an id outside the model's vocabulary" },
        });
    }
    tokenizer.add_stop_ids(&stop_ids);
    Ok(tokenizer)
}
