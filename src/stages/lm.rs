//! Language-model training: `lm` (next-token pretraining on the task's corpus) and `sft`
//! (supervised fine-tuning on demonstrations, loss on response tokens only).

use serde::{Deserialize, Serialize};

use super::StageSettings;
use crate::model::{DeviceSpec, Precision};

/// How the learning rate moves after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Cosine,
    Linear,
    Constant,
}

/// Optimisation settings shared by `lm` and `sft`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSettings {
    /// Start from a `[models.X]` section (a fresh or pretrained model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Start from an earlier stage's output, `run:RUN_DIR/STAGE` or a checkpoint path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<String>,
    #[serde(default = "defaults::steps")]
    pub steps: u64,
    #[serde(default = "defaults::batch_size")]
    pub batch_size: usize,
    /// Micro-batches per optimizer step (the effective batch is batch_size × grad_accum).
    #[serde(default = "defaults::one")]
    pub grad_accum: usize,
    #[serde(default = "defaults::lr")]
    pub lr: f64,
    /// The schedule decays to lr × min_lr_ratio.
    #[serde(default = "defaults::min_lr_ratio")]
    pub min_lr_ratio: f64,
    #[serde(default = "defaults::warmup_steps")]
    pub warmup_steps: u64,
    #[serde(default = "defaults::schedule")]
    pub schedule: Schedule,
    #[serde(default = "defaults::weight_decay")]
    pub weight_decay: f64,
    #[serde(default = "defaults::beta1")]
    pub beta1: f64,
    #[serde(default = "defaults::beta2")]
    pub beta2: f64,
    /// Clip the global gradient norm to this value (0 disables clipping).
    #[serde(default = "defaults::grad_clip")]
    pub grad_clip: f64,
    /// Training sequence length in tokens (at most the model's context).
    #[serde(default = "defaults::seq_len")]
    pub seq_len: i64,
    #[serde(default = "defaults::eval_every")]
    pub eval_every: u64,
    #[serde(default = "defaults::eval_batches")]
    pub eval_batches: usize,
    /// Stop after this many evaluations without a better eval loss (absent: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patience: Option<u64>,
    /// Generations written to samples.jsonl at each evaluation.
    #[serde(default = "defaults::samples")]
    pub samples: usize,
    #[serde(default)]
    pub device: DeviceSpec,
    #[serde(default)]
    pub dtype: Precision,
}

mod defaults {
    use super::Schedule;
    pub fn steps() -> u64 { 200 }
    pub fn batch_size() -> usize { 16 }
    pub fn one() -> usize { 1 }
    pub fn lr() -> f64 { 3e-4 }
    pub fn min_lr_ratio() -> f64 { 0.1 }
    pub fn warmup_steps() -> u64 { 10 }
    pub fn schedule() -> Schedule { Schedule::Cosine }
    pub fn weight_decay() -> f64 { 0.1 }
    pub fn beta1() -> f64 { 0.9 }
    pub fn beta2() -> f64 { 0.95 }
    pub fn grad_clip() -> f64 { 1.0 }
    pub fn seq_len() -> i64 { 128 }
    pub fn eval_every() -> u64 { 50 }
    pub fn eval_batches() -> usize { 4 }
    pub fn samples() -> usize { 4 }
}

impl TrainSettings {
    fn inputs(&self) -> Vec<(&'static str, &str)> {
        let mut inputs = Vec::new();
        if let Some(model) = &self.model {
            inputs.push(("model", model.as_str()));
        }
        if let Some(init) = &self.init {
            inputs.push(("init", init.as_str()));
        }
        inputs
    }

    fn check(&self) -> Result<(), (&'static str, String)> {
        match (&self.model, &self.init) {
            (Some(_), Some(_)) => return Err(("init", "either `model` or `init`, not both".into())),
            (None, None) => return Err(("model", "a `model` (a [models.X] section) or an `init` (an earlier stage or a checkpoint)".into())),
            _ => {}
        }
        let positive = [("steps", self.steps as f64), ("batch_size", self.batch_size as f64), ("grad_accum", self.grad_accum as f64), ("lr", self.lr), ("eval_every", self.eval_every as f64), ("seq_len", self.seq_len as f64)];
        if let Some((key, value)) = positive.into_iter().find(|(_, value)| !(*value > 0.0)) {
            return Err((key, format!("a value > 0, got {value}")));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(("min_lr_ratio", format!("a value in [0, 1], got {}", self.min_lr_ratio)));
        }
        for (key, beta) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return Err((key, format!("a value in [0, 1), got {beta}")));
            }
        }
        if self.weight_decay < 0.0 || self.grad_clip < 0.0 {
            return Err(("weight_decay", "weight_decay and grad_clip ≥ 0".into()));
        }
        Ok(())
    }
}

/// `kind = "lm"`: next-token prediction on the corpus.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LmSettings(pub TrainSettings);

/// `kind = "sft"`: next-token prediction on demonstrations, loss on response tokens only.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SftSettings(pub TrainSettings);

impl StageSettings for LmSettings {
    fn inputs(&self) -> Vec<(&'static str, &str)> {
        self.0.inputs()
    }
    fn check(&self) -> Result<(), (&'static str, String)> {
        self.0.check()
    }
}

impl StageSettings for SftSettings {
    fn inputs(&self) -> Vec<(&'static str, &str)> {
        self.0.inputs()
    }
    fn check(&self) -> Result<(), (&'static str, String)> {
        self.0.check()
    }
}
