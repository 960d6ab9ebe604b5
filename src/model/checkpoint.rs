//! Checkpoints are Hugging Face model directories: `model.safetensors` (the architecture's HF
//! tensor names), `config.json` (its `model_type` names the architecture, which reads and writes
//! its own keys) and `tokenizer.json`. Scalar heads are extra tensors in the same file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use tch::nn::VarStore;
use tch::{Kind, Tensor};

use super::architecture::ModelConfig;
use crate::data::tokenizer::{TextTokenizer, TokenizerError};

pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const CONFIG_FILE: &str = "config.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint directory `{dir}` has no `{file}` (a checkpoint holds {WEIGHTS_FILE}, {CONFIG_FILE} and {TOKENIZER_FILE})")]
    MissingFile { dir: PathBuf, file: &'static str },
    #[error("cannot read `{path}`: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("`{path}` is not valid JSON: {source}")]
    ConfigJson { path: PathBuf, source: serde_json::Error },
    #[error("`{path}`: unsupported model: {reason}")]
    Unsupported { path: PathBuf, reason: String },
    #[error("`{path}` is not a safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error("`{path}` has no tensor `{name}` (nor `{}`)", name.strip_prefix("transformer.").unwrap_or(name))]
    MissingTensor { path: PathBuf, name: String },
    #[error("`{path}`: tensor `{name}` has shape {found:?}, the model expects {expected:?}")]
    ShapeMismatch { path: PathBuf, name: String, found: Vec<i64>, expected: Vec<i64> },
    #[error("`{path}`: tensor `{name}` has dtype {dtype:?}; expected F32, F16 or BF16")]
    UnsupportedDtype { path: PathBuf, name: String, dtype: Dtype },
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

/// Reads `config.json`: the architecture its `model_type` names (GPT-2 when absent).
pub fn read_config(dir: &Path) -> Result<ModelConfig, CheckpointError> {
    let path = require(dir, CONFIG_FILE)?;
    let text = std::fs::read_to_string(&path).map_err(|source| CheckpointError::Io { path: path.clone(), source })?;
    let json: Value = serde_json::from_str(&text).map_err(|source| CheckpointError::ConfigJson { path: path.clone(), source })?;
    ModelConfig::from_hf(&json).map_err(|reason| CheckpointError::Unsupported { path, reason })
}

/// Writes `config.json` with the keys transformers reads for the architecture.
pub fn write_config(dir: &Path, config: &ModelConfig, precision: Kind) -> Result<(), CheckpointError> {
    let json = config.architecture().to_hf(torch_dtype(precision));
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

/// Writes every variable of `vs` (model and scalar heads) to `model.safetensors`, plus the
/// tokenizer, the `extra` files (name, contents) and the config. The directory is replaced as a
/// whole (`run::durable`): a crash never leaves a half-written checkpoint looking complete, and
/// `config.json`, written last, is what marks it complete.
pub fn save(
    dir: &Path,
    vs: &VarStore,
    config: &ModelConfig,
    tokenizer: &TextTokenizer,
    extra: &[(&str, String)],
) -> Result<(), CheckpointError> {
    let write = |dir: &Path| -> Result<(), CheckpointError> {
        let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        let precision = variables.first().map_or(Kind::Float, |(_, t)| t.kind());

        let buffers: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = variables
            .iter()
            .map(|(name, tensor)| {
                let tensor = tensor.detach().to_device(tch::Device::Cpu).contiguous();
                let (kind, dtype) = match tensor.kind() {
                    Kind::BFloat16 => (Kind::BFloat16, Dtype::BF16),
                    Kind::Half => (Kind::Half, Dtype::F16),
                    _ => (Kind::Float, Dtype::F32),
                };
                let tensor = tensor.to_kind(kind);
                let numel = tensor.numel();
                let mut bytes = vec![0u8; numel * kind.elt_size_in_bytes()];
                tensor.copy_data_u8(&mut bytes, numel);
                let shape = tensor.size().iter().map(|&d| d as usize).collect();
                (name.clone(), dtype, shape, bytes)
            })
            .collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> = buffers
            .iter()
            .map(|(name, dtype, shape, bytes)| {
                let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes).expect("shape matches byte count");
                (name.clone(), view)
            })
            .collect();
        // transformers refuses safetensors files whose metadata lacks `format`.
        let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
        let weights = dir.join(WEIGHTS_FILE);
        safetensors::serialize_to_file(views, metadata, &weights)
            .map_err(|e| CheckpointError::Safetensors { path: weights.clone(), message: e.to_string() })?;
        crate::run::durable::sync(&weights)?;
        tokenizer.save(&dir.join(TOKENIZER_FILE))?;
        crate::run::durable::sync(&dir.join(TOKENIZER_FILE))?;
        for (name, contents) in extra {
            crate::run::durable::write_file(&dir.join(name), contents.as_bytes())?;
        }
        write_config(dir, config, precision)
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
/// absent; any other absence, or a shape mismatch, is an error naming the tensor.
pub fn load_weights(vs: &mut VarStore, dir: &Path, may_be_missing: &[&str]) -> Result<LoadReport, CheckpointError> {
    let path = require(dir, WEIGHTS_FILE)?;
    let bytes = std::fs::read(&path).map_err(|source| CheckpointError::Io { path: path.clone(), source })?;
    let file = SafeTensors::deserialize(&bytes).map_err(|e| CheckpointError::Safetensors { path: path.clone(), message: e.to_string() })?;
    let by_name: HashMap<String, String> =
        file.names().into_iter().filter(|name| !is_derived_tensor(name)).map(|name| (canonical_name(name), name.to_string())).collect();

    let mut report = LoadReport::default();
    let mut used = std::collections::HashSet::new();
    let _no_grad = tch::no_grad_guard();
    for (name, mut variable) in vs.variables() {
        let Some(file_name) = by_name.get(&name) else {
            if may_be_missing.iter().any(|prefix| name.starts_with(prefix)) {
                report.missing.push(name);
                continue;
            }
            return Err(CheckpointError::MissingTensor { path, name });
        };
        let view = file.tensor(file_name).expect("name listed by the file");
        let kind = match view.dtype() {
            Dtype::F32 => Kind::Float,
            Dtype::F16 => Kind::Half,
            Dtype::BF16 => Kind::BFloat16,
            dtype => return Err(CheckpointError::UnsupportedDtype { path, name: file_name.clone(), dtype }),
        };
        let found: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        if found != variable.size() {
            return Err(CheckpointError::ShapeMismatch { path, name: file_name.clone(), found, expected: variable.size() });
        }
        let tensor = Tensor::f_from_data_size(view.data(), &found, kind)
            .map_err(|e| CheckpointError::Safetensors { path: path.clone(), message: e.to_string() })?;
        variable.copy_(&tensor.to_kind(variable.kind()).to_device(variable.device()));
        used.insert(name);
    }
    report.unused = by_name.keys().filter(|name| !used.contains(*name)).cloned().collect();
    report.unused.sort();
    Ok(report)
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

/// Reads `tokenizer.json` of a checkpoint and checks it fits the model's vocabulary.
pub fn read_tokenizer(dir: &Path, config: &ModelConfig) -> Result<TextTokenizer, CheckpointError> {
    let tokenizer = TextTokenizer::from_file(&require(dir, TOKENIZER_FILE)?)?;
    tokenizer.check_fits(config.vocab_size())?;
    Ok(tokenizer)
}
