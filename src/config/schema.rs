//! The experiment file's shape. Every table rejects unknown keys; defaults are filled in so that
//! the serialised form is the fully resolved config a run records.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::data::augment::AugmentSettings;
use crate::model::{DeviceSpec, Precision};
use crate::stages::StageSettings;

#[derive(Debug, Serialize)]
pub struct Experiment {
    pub name: String,
    pub seed: u64,
    /// CPU threads for libtorch (absent: libtorch's default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<i32>,
    /// CPU threads for generation (absent: chosen per generation, see `model::threads`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation_threads: Option<i32>,
    /// Each stage writes TensorBoard's event file beside its metrics.jsonl.
    pub tensorboard: bool,
    pub task: TaskConfig,
    pub tokenizer: TokenizerConfig,
    pub models: BTreeMap<String, ModelSection>,
    pub stages: Vec<StageConfig>,
    /// The thresholds of the alerts raised while stages train.
    pub alerts: crate::train::alerts::AlertSettings,
    /// The expanded `[sweep]` table: a sweep runs one experiment per variant, recorded
    /// without it.
    #[serde(skip)]
    pub sweep: Option<super::Sweep>,
}

/// Which data the experiment trains on.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    pub kind: TaskKind,
    /// Synthetic task: number of corpus texts to generate.
    #[serde(default = "defaults::corpus_size")]
    pub corpus_size: usize,
    /// Synthetic task: number of demonstrations (prompt → good response).
    #[serde(default = "defaults::demonstrations")]
    pub demonstrations_size: usize,
    /// Synthetic task: number of held-out prompts.
    #[serde(default = "defaults::prompts")]
    pub prompts_size: usize,
    /// Synthetic reviews task: demonstrations and prompts as conversations (a user turn, the
    /// assistant's answer), rendered with the tokenizer's chat template.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub chat: bool,
    /// Arithmetic task: the largest operand (operands are drawn from 0..=max_operand).
    #[serde(default = "defaults::max_operand", skip_serializing_if = "defaults::is_max_operand")]
    pub max_operand: u64,
    /// Arithmetic task: the most operands a problem has; each problem has 2..=terms of them.
    #[serde(default = "defaults::terms", skip_serializing_if = "defaults::is_terms")]
    pub terms: usize,
    /// Arithmetic task: the verifier's reward for an answer in the answer format (` <number>`)
    /// whether or not it is correct, added to 1 for a correct one.
    #[serde(default, skip_serializing_if = "defaults::is_zero")]
    pub format_reward: f64,
    /// JSONL task: `{"text"}` lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corpus: Option<PathBuf>,
    /// JSONL task: `{"prompt", "response"}` lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub demonstrations: Option<PathBuf>,
    /// JSONL task: `{"prompt"}` lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompts: Option<PathBuf>,
    /// Fraction of each data set held out for evaluation.
    #[serde(default = "defaults::eval_fraction")]
    pub eval_fraction: f64,
    /// Seed of the evaluation set (the synthetic task's held-out data, the JSONL task's split,
    /// the reward stage's held-out pairs, evaluation sampling), independent of the experiment's
    /// `seed` so that runs of one task are evaluated alike.
    #[serde(default = "defaults::eval_seed")]
    pub eval_seed: u64,
    /// JSONL task: skip (and count) malformed lines instead of stopping at the first one.
    #[serde(default)]
    pub skip_bad_lines: bool,
    /// JSONL task: records shorter than this (in characters, all fields together) are dropped.
    #[serde(default = "defaults::min_chars")]
    pub min_chars: usize,
    /// JSONL task: records longer than this are dropped.
    #[serde(default = "defaults::max_chars")]
    pub max_chars: usize,
    /// JSONL task: word-trigram Jaccard similarity from which a record is a near-duplicate of an
    /// earlier one (1.0 keeps near-duplicates).
    #[serde(default = "defaults::near_duplicate_threshold")]
    pub near_duplicate_threshold: f64,
    /// EDA-style augmentation of the training demonstrations (`data::augment`); last, as TOML
    /// wants tables after plain values.
    #[serde(default, skip_serializing_if = "AugmentSettings::is_default")]
    pub augment: AugmentSettings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskKind {
    /// The embedded task generated from the seed, with a gold oracle.
    SyntheticReviews,
    /// Addition and subtraction problems generated from the seed, with an exact-match oracle
    /// and verifier.
    SyntheticArithmetic,
    /// The user's JSONL files.
    Jsonl,
}

/// Where token ids come from: trained on the task's corpus, or an existing `tokenizer.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<PathBuf>,
    /// Size of the byte-level BPE trained on the corpus when `from` is absent.
    #[serde(default = "defaults::vocab_size")]
    pub vocab_size: usize,
    /// The chat template of a trained tokenizer: `"chatml"` (the project's own, in ChatML's
    /// format, which adds `<|im_start|>` and `<|im_end|>`) or a `.jinja` file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<String>,
    /// Special tokens added to a trained tokenizer's vocabulary (those a template file prints).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub special_tokens: Vec<String>,
    /// Tokens that end a generation besides `<|endoftext|>` (`chatml`: `<|im_end|>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop_tokens: Vec<String>,
}

impl Default for TokenizerConfig {
    fn default() -> Self {
        TokenizerConfig {
            from: None,
            vocab_size: defaults::vocab_size(),
            chat_template: None,
            special_tokens: Vec::new(),
            stop_tokens: Vec::new(),
        }
    }
}

/// The architectures a fresh model may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    #[default]
    Gpt2,
    Llama,
    Qwen2,
    Qwen3,
}

/// A model section: a fresh model of the given architecture and shape, or a checkpoint directory
/// (`from`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<PathBuf>,
    #[serde(default)]
    pub arch: Arch,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_layer: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_head: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_embd: Option<i64>,
    /// Context length (GPT-2's `n_positions`, the Llama family's `max_position_embeddings`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_ctx: Option<i64>,
    /// MLP width (`n_inner`, `intermediate_size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_inner: Option<i64>,
    /// Llama family: key-value heads (grouped-query attention); `n_head` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_kv_head: Option<i64>,
    /// Llama family: width of a head; `n_embd / n_head` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<i64>,
    /// Llama family: the rotary base θ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// Llama family: the LM head shares the token embedding's weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tie_embeddings: Option<bool>,
    /// Llama family: RMSNorm's ε.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub norm_eps: Option<f64>,
    /// Dropout probability for embeddings, attention and residuals while training.
    #[serde(default)]
    pub dropout: f64,
    #[serde(default)]
    pub device: DeviceSpec,
    #[serde(default)]
    pub dtype: Precision,
}

/// One `[[stages]]` entry: its name, kind and the kind's settings.
#[derive(Debug)]
pub struct StageConfig {
    pub name: String,
    pub kind: String,
    pub settings: Box<dyn StageSettings>,
    /// The settings with defaults filled in, as recorded in a run's config.toml.
    pub resolved: toml::Table,
}

impl Serialize for StageConfig {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.resolved.len() + 2))?;
        map.serialize_entry("name", &self.name)?;
        map.serialize_entry("kind", &self.kind)?;
        // Plain values first: TOML requires them before sub-tables.
        let (tables, values): (Vec<_>, Vec<_>) = self.resolved.iter().partition(|(_, v)| v.is_table());
        for (key, value) in values.into_iter().chain(tables) {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

// One default a line: the table reads better than rustfmt's four lines per function.
#[rustfmt::skip]
pub(super) mod defaults {
    pub fn seed() -> u64 { 1 }
    pub fn corpus_size() -> usize { 4000 }
    pub fn demonstrations() -> usize { 2000 }
    pub fn prompts() -> usize { 200 }
    pub fn eval_fraction() -> f64 { 0.05 }
    pub fn eval_seed() -> u64 { 0 }
    pub fn min_chars() -> usize { 1 }
    pub fn max_chars() -> usize { 20_000 }
    pub fn near_duplicate_threshold() -> f64 { 0.9 }
    pub fn vocab_size() -> usize { 1024 }
    pub fn max_operand() -> u64 { 99 }
    pub fn terms() -> usize { 2 }
    pub fn is_max_operand(value: &u64) -> bool { *value == max_operand() }
    pub fn is_terms(value: &usize) -> bool { *value == terms() }
    pub fn is_zero(value: &f64) -> bool { *value == 0.0 }
    pub fn yes() -> bool { true }
}
