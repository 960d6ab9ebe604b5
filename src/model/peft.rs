//! Adapters in PEFT's format (what `PeftModel.save_pretrained` writes and `from_pretrained`
//! reads): `adapter_config.json` and `adapter_model.safetensors`, whose tensors are named
//! `base_model.model.<module>.lora_A.weight` (`[r, in]`) and `…lora_B.weight` (`[out, r]`) after
//! the HF module they adapt. `base_model_name_or_path` names the base checkpoint, which may
//! itself be an adapter directory: loading one here loads its base (recursively), adds the
//! adapters into the weights, and gives a plain model. The tokenizer's files and
//! `generation_config.json` sit beside the adapters so that the directory is a model wherever a
//! checkpoint is read here.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{json, Value};
use tch::nn::Init;
use tch::{Device, Kind, Tensor};

use super::checkpoint::{self, CheckpointError, WeightFile};
use super::lora::{Adapters, LoraSettings};
use super::reward::REWARD_HEAD;
use super::{LanguageModel, Precision, Transformer};
use crate::data::tokenizer::TextTokenizer;

pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// What PEFT puts before a module's name in the adapter file.
const PREFIX: &str = "base_model.model.";

/// Whether `dir` holds adapters (rather than a full checkpoint).
pub fn is_adapter_dir(dir: &Path) -> bool {
    dir.join(ADAPTER_CONFIG_FILE).is_file() && !dir.join(checkpoint::CONFIG_FILE).is_file()
}

/// What an adapter directory holds besides the adapters.
pub struct AdapterFiles<'a> {
    pub transformer: &'a dyn Transformer,
    pub tokenizer: &'a TextTokenizer,
    /// The checkpoint the adapters are saved over: the one the model was loaded from.
    pub base_dir: Option<&'a Path>,
    /// A reward model's `score` head, trained beside the adapters (PEFT's `modules_to_save`):
    /// the directory is then a sequence-classification adapter.
    pub score: Option<&'a Tensor>,
    /// Other files written beside them (name, contents).
    pub extra: &'a [(&'a str, Vec<u8>)],
}

/// Writes `adapters` to `dir` as PEFT does, with `files`.
pub fn save(dir: &Path, adapters: &Adapters, files: AdapterFiles) -> Result<(), CheckpointError> {
    let Some(base_dir) = files.base_dir else {
        return Err(CheckpointError::Unsupported {
            path: dir.to_path_buf(),
            reason: "adapters on a model that was not loaded from a checkpoint have no base to be saved over".into(),
        });
    };
    let base = std::fs::canonicalize(base_dir).map_err(|source| CheckpointError::Io { path: base_dir.to_path_buf(), source })?;
    let gpt2 = files.transformer.config().model_type() == "gpt2";
    let config = json!({
        "peft_type": "LORA",
        "task_type": if files.score.is_some() { "SEQ_CLS" } else { "CAUSAL_LM" },
        "base_model_name_or_path": base,
        "r": adapters.settings.r,
        "lora_alpha": adapters.settings.alpha(),
        "lora_dropout": adapters.settings.dropout,
        // Full module names: PEFT matches a name or a suffix, and GPT-2's `c_proj` alone would
        // also take the MLP's.
        "target_modules": adapters.modules,
        "fan_in_fan_out": gpt2,
        "bias": "none",
        "use_rslora": false,
        "use_dora": false,
        "modules_to_save": files.score.map(|_| vec![REWARD_HEAD]),
        "init_lora_weights": true,
        "rank_pattern": {},
        "alpha_pattern": {},
        "inference_mode": true,
    });
    // The adapters alone: a value head trained beside them is not the language model's.
    let mut variables: Vec<(String, Tensor)> = adapters
        .vs
        .variables()
        .into_iter()
        .filter(|(name, _)| name.contains(".lora_"))
        .map(|(name, tensor)| (format!("{PREFIX}{name}"), tensor))
        .collect();
    if let Some(score) = files.score {
        variables.push((score_tensor_name(), score.shallow_clone()));
    }
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    let named: Vec<(&str, &Tensor)> = variables.iter().map(|(name, tensor)| (name.as_str(), tensor)).collect();
    let weights = checkpoint::safetensors_bytes(&named);
    let write = |dir: &Path| -> Result<(), CheckpointError> {
        crate::run::durable::write_file(&dir.join(ADAPTER_WEIGHTS_FILE), &weights)?;
        for file in files.tokenizer.save(dir)? {
            crate::run::durable::sync(&file)?;
        }
        let bos = files.transformer.config().architecture().to_hf("float32").get("bos_token_id").and_then(Value::as_i64);
        checkpoint::write_generation_config(dir, files.tokenizer, bos)?;
        for (name, contents) in files.extra {
            crate::run::durable::write_file(&dir.join(name), contents)?;
        }
        let text = serde_json::to_string_pretty(&config).expect("JSON serialises");
        // Written last: it marks the directory complete.
        Ok(crate::run::durable::write_file(&dir.join(ADAPTER_CONFIG_FILE), text.as_bytes())?)
    };
    crate::run::durable::replace_dir(dir, write, &|_| {})
}

/// PEFT's name of a sequence-classification head saved with the adapters.
fn score_tensor_name() -> String {
    format!("{PREFIX}{REWARD_HEAD}.weight")
}

/// The `score` head an adapter directory holds (a reward model's), if it holds one.
pub fn read_score(dir: &Path) -> Result<Option<Tensor>, CheckpointError> {
    let mut file = WeightFile::open(&dir.join(ADAPTER_WEIGHTS_FILE))?;
    let name = score_tensor_name();
    let Some(info) = file.tensors.get(&name) else { return Ok(None) };
    let shape: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
    Ok(Some(file.read(&name, &shape)?.to_kind(Kind::Float)))
}

/// Loads the base an adapter directory names and its adapters, merged into the weights.
pub fn load_merged(dir: &Path, device: Device, precision: Precision) -> Result<LanguageModel, CheckpointError> {
    let config_path = dir.join(ADAPTER_CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path).map_err(|source| CheckpointError::Io { path: config_path.clone(), source })?;
    let config: Value = serde_json::from_str(&text).map_err(|source| CheckpointError::ConfigJson { path: config_path.clone(), source })?;
    let bad = |key: &str, expected: &'static str| CheckpointError::BadKey { path: config_path.clone(), key: key.into(), expected };
    if config.get("peft_type").and_then(Value::as_str) != Some("LORA") {
        return Err(bad("peft_type", "must be \"LORA\" (the only adapter type supported)"));
    }
    for (key, expected) in
        [("use_dora", "must be false (DoRA is not supported)"), ("use_rslora", "must be false (rsLoRA is not supported)")]
    {
        if config.get(key).and_then(Value::as_bool) == Some(true) {
            return Err(bad(key, expected));
        }
    }
    for key in ["rank_pattern", "alpha_pattern"] {
        if config.get(key).and_then(Value::as_object).is_some_and(|pattern| !pattern.is_empty()) {
            return Err(bad(key, "must be empty (one rank and alpha for every module)"));
        }
    }
    if config.get("bias").and_then(Value::as_str).is_some_and(|bias| bias != "none") {
        return Err(bad("bias", "must be \"none\" (trained biases are not supported)"));
    }
    let r = config.get("r").and_then(Value::as_i64).filter(|&r| r > 0).ok_or_else(|| bad("r", "must be a positive integer"))?;
    let alpha = config.get("lora_alpha").and_then(Value::as_f64).ok_or_else(|| bad("lora_alpha", "must be a number"))?;
    let base = config
        .get("base_model_name_or_path")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("base_model_name_or_path", "must name the base checkpoint's directory"))?;
    let base_dir = dir.join(base); // an absolute path replaces `dir`
    let mut model = LanguageModel::load(&base_dir, device, precision)?;
    let settings = LoraSettings { r, alpha: Some(alpha), dropout: 0.0, targets: None, merge: true };
    let adapters = read_adapters(&dir.join(ADAPTER_WEIGHTS_FILE), &model, &settings)?;
    model.adapters = Some(adapters);
    model.merge_adapters();
    // Adapters made elsewhere may come without a tokenizer: the base's then serves.
    if dir.join(checkpoint::TOKENIZER_FILE).is_file() {
        model.tokenizer = checkpoint::read_tokenizer(dir, model.transformer.config())?;
    }
    model.base_dir = Some(dir.to_path_buf());
    Ok(model)
}

/// The adapters of `path` on `model`'s projections; a LoRA tensor for a module the model has no
/// projection of is an error.
fn read_adapters(path: &Path, model: &LanguageModel, settings: &LoraSettings) -> Result<Adapters, CheckpointError> {
    let bad = |message: String| CheckpointError::Safetensors { path: path.to_path_buf(), message };
    let mut file = WeightFile::open(path)?;
    // PEFT writes `…lora_A.weight`; some versions keep the adapter's name (`…lora_A.default.weight`).
    let by_name: HashMap<String, String> =
        file.tensors.keys().map(|name| (name.replace(".default.weight", ".weight"), name.clone())).collect();
    let mut tensor = |name: &str, shape: [i64; 2]| -> Result<Option<Tensor>, CheckpointError> {
        let Some(stored) = by_name.get(name) else { return Ok(None) };
        Ok(Some(file.read(stored, &shape)?.to_kind(Kind::Float)))
    };
    let mut adapters = Adapters::empty(settings, model.device());
    let mut used = Vec::new();
    for (module, _, projection) in model.transformer.blocks().projections() {
        let (n_in, n_out) = projection.widths();
        let (a_name, b_name) = (format!("{PREFIX}{module}.lora_A.weight"), format!("{PREFIX}{module}.lora_B.weight"));
        let (Some(a), Some(b)) = (tensor(&a_name, [settings.r, n_in])?, tensor(&b_name, [n_out, settings.r])?) else { continue };
        let (mut a_variable, mut b_variable) = adapters.add(module, projection, Init::Const(0.0), Init::Const(0.0));
        tch::no_grad(|| {
            a_variable.copy_(&a);
            b_variable.copy_(&b);
        });
        used.extend([a_name, b_name]);
    }
    if let Some(unused) = by_name.keys().find(|name| name.contains(".lora_") && !used.contains(name)) {
        return Err(bad(format!("`{unused}` adapts no projection of the blocks of this model (nor has its pair)")));
    }
    if adapters.modules.is_empty() {
        return Err(bad("holds no LoRA tensors for this model".into()));
    }
    Ok(adapters)
}
