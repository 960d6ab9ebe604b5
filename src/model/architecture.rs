//! The one interface every architecture offers the rest of the crate: a decoder-only transformer
//! that turns token ids into hidden states (with a KV cache) and hidden states into next-token
//! logits, built from a configuration read from and written to a Hugging Face `config.json`.
//! Stages, generation and the scalar heads use only this; none knows which architecture it runs.

use serde_json::Value;
use tch::nn::Path;
use tch::{Device, Kind, Tensor};

use super::attention::{CacheShape, KvCache};
use super::blocks::Blocks;
use super::gpt2::Gpt2Config;
use super::llama::LlamaConfig;

/// A decoder-only transformer with its LM head.
pub trait Transformer: std::fmt::Debug {
    fn config(&self) -> &ModelConfig;

    /// Hidden states after the final norm, `[batch, time, hidden_size]`.
    ///
    /// `attention_mask` (`[batch, past + time]`, 1 for real tokens, 0 for padding) covers the
    /// cached positions and the new ones; positions count real tokens only, so a left-padded row
    /// gives the outputs of the row unpadded.
    fn forward(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, cache: Option<&mut KvCache>, train: bool) -> Tensor;

    /// Next-token logits `[…, vocab_size]` from hidden states.
    fn logits(&self, hidden: &Tensor) -> Tensor;

    /// Where the weights live.
    fn device(&self) -> Device;

    /// The dtype of the weights (and so of the activations).
    fn kind(&self) -> Kind;

    /// The transformer blocks: where adapters attach and checkpointing is switched.
    fn blocks(&self) -> &Blocks;

    /// `forward` then `logits`: `[batch, time, vocab_size]`.
    fn forward_logits(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, train: bool) -> Tensor {
        self.logits(&self.forward(input_ids, attention_mask, None, train))
    }

    /// An empty cache for `batch` rows of up to `capacity` positions.
    fn new_cache(&self, batch: i64, capacity: i64) -> KvCache {
        KvCache::new(self.config().cache_shape(), batch, capacity, self.kind(), self.device())
    }
}

/// What sits on a backbone, as transformers' model classes name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HfHead {
    /// The language-modeling head (`*ForCausalLM`, GPT-2's `GPT2LMHeadModel`).
    CausalLm,
    /// A linear `score` head without bias, read at the last token (`*ForSequenceClassification`).
    SequenceClassification,
}

/// What each architecture's configuration answers.
pub trait ArchitectureConfig {
    /// The transformers class of the model with `head` (`LlamaForCausalLM`, …), which
    /// `config.json`'s `architectures` names.
    fn hf_class(&self, head: HfHead) -> &'static str;
    fn vocab_size(&self) -> i64;
    /// The longest sequence (prompt and response) the model takes.
    fn context_length(&self) -> i64;
    /// The width of the hidden states `forward` returns.
    fn hidden_size(&self) -> i64;
    fn cache_shape(&self) -> CacheShape;
    /// The ids `config.json` says end a sequence.
    fn eos_token_ids(&self) -> Vec<i64>;
    /// The `config.json` transformers reads, the weights' dtype given (`float32`, `bfloat16`, …).
    fn to_hf(&self, torch_dtype: &str) -> Value;
    /// The model, its variables created under `root` with the architecture's initialisation.
    fn build(&self, root: &Path, config: &ModelConfig) -> Box<dyn Transformer>;
}

/// A model's configuration, one variant per architecture.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    Gpt2(Gpt2Config),
    /// Llama, Qwen2 and Qwen3.
    Llama(LlamaConfig),
}

/// The `model_type`s a `config.json` may name.
pub const SUPPORTED_MODEL_TYPES: &str = "gpt2, llama, qwen2, qwen3";

impl ModelConfig {
    /// Reads a Hugging Face `config.json`; an error says what is not supported, and why.
    pub fn from_hf(json: &Value) -> Result<Self, String> {
        match json.get("model_type").and_then(Value::as_str).unwrap_or("gpt2") {
            "gpt2" => Gpt2Config::from_hf(json).map(ModelConfig::Gpt2),
            "llama" | "qwen2" | "qwen3" => LlamaConfig::from_hf(json).map(ModelConfig::Llama),
            other => Err(format!("model_type is `{other}`; supported: {SUPPORTED_MODEL_TYPES}")),
        }
    }

    /// The `model_type` of `config.json`.
    pub fn model_type(&self) -> &'static str {
        match self {
            ModelConfig::Gpt2(_) => "gpt2",
            ModelConfig::Llama(config) => config.family.model_type(),
        }
    }

    pub fn architecture(&self) -> &dyn ArchitectureConfig {
        match self {
            ModelConfig::Gpt2(config) => config,
            ModelConfig::Llama(config) => config,
        }
    }

    pub fn vocab_size(&self) -> i64 {
        self.architecture().vocab_size()
    }

    pub fn context_length(&self) -> i64 {
        self.architecture().context_length()
    }

    pub fn hidden_size(&self) -> i64 {
        self.architecture().hidden_size()
    }

    pub fn cache_shape(&self) -> CacheShape {
        self.architecture().cache_shape()
    }

    pub fn build(&self, root: &Path) -> Box<dyn Transformer> {
        self.architecture().build(root, self)
    }
}

impl From<Gpt2Config> for ModelConfig {
    fn from(config: Gpt2Config) -> Self {
        ModelConfig::Gpt2(config)
    }
}

impl From<&Gpt2Config> for ModelConfig {
    fn from(config: &Gpt2Config) -> Self {
        ModelConfig::Gpt2(config.clone())
    }
}

impl From<&ModelConfig> for ModelConfig {
    fn from(config: &ModelConfig) -> Self {
        config.clone()
    }
}

impl From<LlamaConfig> for ModelConfig {
    fn from(config: LlamaConfig) -> Self {
        ModelConfig::Llama(config)
    }
}
