//! `kind = "ppo"`: RLHF with PPO (Schulman et al. 2017) against a frozen reward model, with a
//! per-token KL penalty to a frozen reference policy (Ziegler et al. 2019; Stiennon et al. 2020;
//! Ouyang et al. 2022). Implementation details follow Huang et al. 2024, "The N+ Implementation
//! Details of RLHF with PPO": log-probs recomputed after generation, the score placed on the last
//! response token, no loss after end-of-text, whitened advantages, clipped value loss.
//!
//! One iteration, in order:
//! 1. rollout: sample prompts, generate with the policy (KV cache, temperature `temperature`);
//! 2. scoring: policy and reference log-probs of the responses, values, reward-model score;
//! 3. rewards: −β·(log π − log π_ref) per token, plus the normalised score on the last token;
//! 4. advantages by GAE, whitened; returns = advantages + values;
//! 5. `ppo_epochs` passes over shuffled minibatches: clipped surrogate, clipped value loss.

use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::rl::{
    check_generation_lengths, check_positive, check_vocabularies, draw_prompts, evaluate_policy, evaluation_prompts, model_inputs,
    training_prompts, POLICY_READINGS,
};
use super::{check_lora, Frontier, StageContext, StageError, StageFigures, StageSettings, Training, CHECKPOINT_DIR};
use crate::data::synthetic::oracle::GoldOracle;
use crate::distributed;
use crate::model::blocks;
use crate::model::generate::Generation;
use crate::model::reward::{RewardModel, RewardNormalization};
use crate::model::{DeviceSpec, LanguageModel, LoraSettings, Precision, ReferenceModel, ScalarHead};
use crate::rng::step_seed;
use crate::run::metrics::SampleLog;
use crate::run::Metrics;
use crate::train::alerts::Watched;
use crate::train::optimizer::{AdamW, AdamWConfig};
pub use crate::train::rollout::Scorer;
use crate::train::rollout::{
    gather_rows, response_logprobs, response_states, sample_and_score, sample_responses, Decoding, Judges, PolicyLogprobs, RolloutTokens,
};
use crate::train::schedule::{LrSchedule, Schedule};
use crate::train::stage_loop::{self, LoopSettings, Trainer};
use crate::train::state::{Part, PartMut};

/// What reports and logs show of `ppo` stages.
pub const FIGURES: StageFigures = StageFigures {
    headline: &["eval/rm_score", "eval/gold_score", "eval/kl", "kl_coef"],
    curves: &[
        "objective/scores",
        "objective/kl",
        "objective/entropy",
        "policy/clipfrac_avg",
        "val/clipfrac_avg",
        "kl_coef",
        "eval/rm_score",
        "eval/gold_score",
        "eval/kl",
    ],
    primary: &["eval/gold_score", "eval/rm_score"],
    readings: &POLICY_READINGS,
    frontier: Some(Frontier { kl: "eval/kl", proxy: "eval/rm_score", gold: "eval/gold_score" }),
    shown: &["objective/scores", "objective/kl"],
    logged: &["eval/rm_score", "eval/gold_score", "eval/kl"],
    step_name: "iteration",
    watched: Watched {
        kl: Some("objective/kl"),
        clip_fraction: Some("policy/clipfrac_avg"),
        entropy: Some("objective/entropy"),
        ..Watched::NOTHING
    },
};

/// A setting per model role.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerModel<T> {
    #[serde(default)]
    pub policy: T,
    #[serde(default)]
    pub reference: T,
    #[serde(default)]
    pub reward: T,
    #[serde(default)]
    pub value: T,
}

/// Where PPO's reward normalisation (score − mean) / std takes its statistics from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormalizationSource {
    /// Measured before the first iteration on the starting policy's own responses, at this
    /// stage's temperature and length (kept in the resume state).
    Policy,
    /// The statistics the reward stage stored beside its checkpoint (`reward.json`), measured on
    /// its init policy's samples at its own sampling settings.
    Stored,
    /// Raw scores.
    None,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PpoSettings {
    /// The trained policy starts from this model (usually the SFT stage).
    pub policy: String,
    /// The frozen model of the KL penalty (usually the same as `policy`).
    pub reference: String,
    /// A reward stage's checkpoint: frozen, its scores normalised with its stored mean and std.
    pub reward: String,
    /// The value model starts from this checkpoint: a reward model (its head included) or an LM
    /// (a fresh head). Not used with `shared_backbone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Instead of a separate value model, a value head on the policy's backbone: one forward
    /// pass and one model in memory fewer; the value loss, weighted by `vf_coef`, then trains the
    /// backbone with the policy loss at `policy_lr`.
    #[serde(default)]
    pub shared_backbone: bool,
    #[serde(default = "defaults::vf_coef")]
    pub vf_coef: f64,
    #[serde(default)]
    pub devices: PerModel<DeviceSpec>,
    #[serde(default)]
    pub dtypes: PerModel<Precision>,

    /// PPO iterations (rollout + optimisation).
    #[serde(default = "defaults::iterations")]
    pub iterations: u64,
    /// Prompts (and so responses) per iteration.
    #[serde(default = "defaults::rollout_batch")]
    pub rollout_batch: usize,
    /// Responses per optimizer step.
    #[serde(default = "defaults::minibatch_size")]
    pub minibatch_size: usize,
    /// Each minibatch is split into this many micro-batches whose gradients add up.
    #[serde(default = "defaults::one")]
    pub grad_accum: usize,
    #[serde(default = "defaults::ppo_epochs")]
    pub ppo_epochs: usize,
    #[serde(default = "defaults::max_new_tokens")]
    pub max_new_tokens: i64,
    /// Sampling temperature; log-probs are computed at the same temperature.
    #[serde(default = "defaults::one_f")]
    pub temperature: f64,

    /// β of the KL penalty (the initial β with `adaptive_kl`).
    #[serde(default = "defaults::kl_coef")]
    pub kl_coef: f64,
    /// Adapt β to keep the KL near `kl_target` (Ziegler et al. 2019, §2.2).
    #[serde(default)]
    pub adaptive_kl: bool,
    #[serde(default = "defaults::kl_target")]
    pub kl_target: f64,
    #[serde(default = "defaults::kl_horizon")]
    pub kl_horizon: f64,
    /// Where the mean and std that normalise reward-model scores come from.
    #[serde(default = "defaults::reward_normalization")]
    pub reward_normalization: NormalizationSource,
    /// `reward_normalization = "policy"`: responses of the starting policy measured.
    #[serde(default = "defaults::normalization_samples")]
    pub normalization_samples: usize,
    /// Subtracted from the normalised score of a response that ends without end-of-text.
    #[serde(default = "defaults::missing_eos_penalty")]
    pub missing_eos_penalty: f64,
    /// Clip normalised scores to ±`score_clip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_clip: Option<f64>,
    /// Whiten the per-token rewards of a rollout before GAE.
    #[serde(default)]
    pub whiten_rewards: bool,

    #[serde(default = "defaults::one_f")]
    pub gamma: f64,
    #[serde(default = "defaults::lam")]
    pub lam: f64,
    /// ε of the clipped surrogate.
    #[serde(default = "defaults::clip")]
    pub cliprange: f64,
    /// ε of the clipped value loss.
    #[serde(default = "defaults::clip")]
    pub cliprange_value: f64,
    #[serde(default)]
    pub entropy_coef: f64,
    /// Stop an iteration's remaining epochs once a minibatch's approximate KL to the rollout
    /// policy exceeds this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_approx_kl: Option<f64>,

    #[serde(default = "defaults::policy_lr")]
    pub policy_lr: f64,
    #[serde(default = "defaults::value_lr")]
    pub value_lr: f64,
    #[serde(default = "defaults::schedule")]
    pub schedule: Schedule,
    #[serde(default)]
    pub warmup_iterations: u64,
    #[serde(default = "defaults::grad_clip")]
    pub grad_clip: f64,

    /// Evaluate on held-out prompts every this many iterations (and before the first).
    #[serde(default = "defaults::eval_every")]
    pub eval_every: u64,
    #[serde(default = "defaults::eval_prompts")]
    pub eval_prompts: usize,
    /// Evaluated responses written to samples.jsonl at each evaluation.
    #[serde(default = "defaults::samples")]
    pub samples: usize,
    /// Train low-rank adapters on the frozen policy instead of all its weights (a separate value
    /// model trains all of its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraSettings>,
    /// Recompute each block's activations in the backward pass instead of keeping them (policy
    /// and value model).
    #[serde(default)]
    pub gradient_checkpointing: bool,
}

// One default a line: the table reads better than rustfmt's four lines per function.
#[rustfmt::skip]
mod defaults {
    use super::{NormalizationSource, Schedule};
    pub fn iterations() -> u64 { 100 }
    pub fn rollout_batch() -> usize { 64 }
    pub fn minibatch_size() -> usize { 16 }
    pub fn one() -> usize { 1 }
    pub fn one_f() -> f64 { 1.0 }
    pub fn ppo_epochs() -> usize { 4 }
    pub fn max_new_tokens() -> i64 { 48 }
    pub fn kl_coef() -> f64 { 0.05 }
    pub fn kl_target() -> f64 { 6.0 }
    pub fn kl_horizon() -> f64 { 10_000.0 }
    pub fn missing_eos_penalty() -> f64 { 1.0 }
    pub fn reward_normalization() -> NormalizationSource { NormalizationSource::Policy }
    pub fn normalization_samples() -> usize { 256 }
    pub fn vf_coef() -> f64 { 0.1 }
    pub fn lam() -> f64 { 0.95 }
    pub fn clip() -> f64 { 0.2 }
    pub fn policy_lr() -> f64 { 1e-5 }
    pub fn value_lr() -> f64 { 1e-4 }
    pub fn schedule() -> Schedule { Schedule::Constant }
    pub fn grad_clip() -> f64 { 1.0 }
    pub fn eval_every() -> u64 { 10 }
    pub fn eval_prompts() -> usize { 64 }
    pub fn samples() -> usize { 8 }
}

impl StageSettings for PpoSettings {
    fn inputs(&self) -> Vec<(&'static str, &str)> {
        let mut inputs = model_inputs(&self.policy, &self.reference, &self.reward);
        inputs.extend(self.value.as_deref().map(|value| ("value", value)));
        inputs
    }

    fn check(&self) -> Result<(), (&'static str, String)> {
        check_lora(&self.lora)?;
        check_positive(&[
            ("iterations", self.iterations as f64),
            ("rollout_batch", self.rollout_batch as f64),
            ("minibatch_size", self.minibatch_size as f64),
            ("grad_accum", self.grad_accum as f64),
            ("ppo_epochs", self.ppo_epochs as f64),
            ("max_new_tokens", self.max_new_tokens as f64),
            ("temperature", self.temperature),
            ("kl_target", self.kl_target),
            ("kl_horizon", self.kl_horizon),
            ("cliprange", self.cliprange),
            ("cliprange_value", self.cliprange_value),
            ("policy_lr", self.policy_lr),
            ("value_lr", self.value_lr),
            ("grad_clip", self.grad_clip),
            ("eval_every", self.eval_every as f64),
            ("eval_prompts", self.eval_prompts as f64),
            ("normalization_samples", self.normalization_samples as f64),
        ])?;
        let non_negative = [
            ("vf_coef", self.vf_coef),
            ("kl_coef", self.kl_coef),
            ("entropy_coef", self.entropy_coef),
            ("missing_eos_penalty", self.missing_eos_penalty),
        ];
        if let Some((key, value)) = non_negative.into_iter().find(|(_, v)| !(*v >= 0.0 && v.is_finite())) {
            return Err((key, format!("a value ≥ 0, got {value}")));
        }
        if let Some((key, value)) = [("gamma", self.gamma), ("lam", self.lam)].into_iter().find(|(_, v)| !(0.0..=1.0).contains(v)) {
            return Err((key, format!("a value in [0, 1], got {value}")));
        }
        match (&self.value, self.shared_backbone) {
            (None, false) => return Err(("value", "the value model's starting checkpoint (or shared_backbone = true)".into())),
            (Some(_), true) => {
                return Err(("value", "no value model with shared_backbone = true (the value head sits on the policy)".into()))
            }
            _ => {}
        }
        if !self.rollout_batch.is_multiple_of(self.minibatch_size) {
            return Err(("minibatch_size", format!("a divisor of rollout_batch = {}, got {}", self.rollout_batch, self.minibatch_size)));
        }
        if !self.minibatch_size.is_multiple_of(self.grad_accum) {
            return Err(("grad_accum", format!("a divisor of minibatch_size = {}, got {}", self.minibatch_size, self.grad_accum)));
        }
        if let Some(clip) = self.score_clip.filter(|c| !(*c > 0.0)) {
            return Err(("score_clip", format!("a value > 0, got {clip}")));
        }
        if let Some(kl) = self.target_approx_kl.filter(|k| !(*k > 0.0)) {
            return Err(("target_approx_kl", format!("a value > 0, got {kl}")));
        }
        Ok(())
    }

    fn base_model(&self) -> &str {
        &self.policy
    }

    fn check_lengths(&self, longest_prompt: i64, context_of: &dyn Fn(&str) -> Option<i64>) -> Result<(), (&'static str, String)> {
        check_generation_lengths(&self.inputs(), self.max_new_tokens, longest_prompt, context_of)
    }

    fn devices(&self) -> Vec<(&'static str, DeviceSpec)> {
        let d = &self.devices;
        let mut devices = vec![("policy", d.policy), ("reference", d.reference), ("reward", d.reward)];
        if !self.shared_backbone {
            devices.push(("value", d.value));
        }
        devices
    }

    fn run(&self, context: &StageContext) -> Result<Metrics, StageError> {
        train(context, self)
    }
}

// ---------------------------------------------------------------------------------------------
// The algorithm's pieces, on tensors: masks are 1 for response tokens up to and including
// end-of-text, 0 after.

/// Mean of `values` where `mask` is 1.
pub fn masked_mean(values: &Tensor, mask: &Tensor) -> Tensor {
    (values * mask).sum(Kind::Float) / mask.sum(Kind::Float).clamp_min(1.0)
}

/// `values` shifted and scaled to mean 0, variance 1 over the masked entries (`shift_mean =
/// false` keeps the mean, as for rewards, whose sign matters).
pub fn whiten(values: &Tensor, mask: &Tensor, shift_mean: bool) -> Tensor {
    let mean = masked_mean(values, mask);
    let variance = masked_mean(&(values - &mean).square(), mask);
    let whitened = (values - &mean) * (variance + 1e-8).rsqrt();
    let whitened = if shift_mean { whitened } else { whitened + mean };
    whitened * mask
}

/// Per-token rewards `[B, T]`: −β·(log π − log π_ref) on every response token, plus each row's
/// score on its last response token (Ziegler et al. 2019, eq. 2; Stiennon et al. 2020, eq. 1).
/// Returns `(rewards, per-token KL)`.
pub fn shaped_rewards(logprobs: &Tensor, reference_logprobs: &Tensor, mask: &Tensor, scores: &Tensor, kl_coef: f64) -> (Tensor, Tensor) {
    let kl = (logprobs - reference_logprobs) * mask;
    let last_token = (mask.sum_dim_intlist(1, false, Kind::Int64) - 1).clamp_min(0).unsqueeze(1);
    let score_on_last = Tensor::zeros_like(&kl).scatter(1, &last_token, &scores.unsqueeze(1).to_kind(Kind::Float));
    (-kl_coef * &kl + score_on_last * mask, kl)
}

/// Generalised advantage estimation (Schulman et al. 2016, eq. 16): with
/// δ_t = r_t + γ·V_{t+1} − V_t, A_t = δ_t + γλ·A_{t+1}; the value after the last token is 0.
/// Returns `(advantages, returns = advantages + values)`, both zero after each row's end.
pub fn gae(rewards: &Tensor, values: &Tensor, mask: &Tensor, gamma: f64, lam: f64) -> (Tensor, Tensor) {
    let values = values * mask;
    let rewards = rewards * mask;
    let length = rewards.size()[1];
    let mut advantages = Vec::with_capacity(length as usize);
    let mut next_advantage = Tensor::zeros_like(&rewards.select(1, 0));
    for t in (0..length).rev() {
        let next_value = if t + 1 < length { values.select(1, t + 1) } else { Tensor::zeros_like(&next_advantage) };
        let delta = rewards.select(1, t) + gamma * next_value - values.select(1, t);
        next_advantage = (delta + gamma * lam * &next_advantage) * mask.select(1, t);
        advantages.push(next_advantage.shallow_clone());
    }
    advantages.reverse();
    let advantages = Tensor::stack(&advantages, 1);
    let returns = &advantages + values;
    (advantages, returns)
}

/// PPO's clipped surrogate (Schulman et al. 2017, eq. 7), as a loss to minimise:
/// mean over tokens of max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)) with ρ = π/π_old.
/// Returns `(loss, clip fraction, approximate KL ½·mean((log π − log π_old)²))`.
pub fn clipped_policy_loss(
    logprobs: &Tensor,
    old_logprobs: &Tensor,
    advantages: &Tensor,
    mask: &Tensor,
    cliprange: f64,
) -> (Tensor, Tensor, Tensor) {
    let log_ratio = logprobs - old_logprobs;
    let ratio = log_ratio.exp();
    let unclipped = -advantages * &ratio;
    let clipped = -advantages * ratio.clamp(1.0 - cliprange, 1.0 + cliprange);
    let loss = masked_mean(&unclipped.maximum(&clipped), mask);
    let clip_fraction = masked_mean(&clipped.gt_tensor(&unclipped).to_kind(Kind::Float), mask);
    let approx_kl = 0.5 * masked_mean(&log_ratio.square(), mask);
    (loss, clip_fraction, approx_kl)
}

/// The clipped value loss of PPO implementations (Huang et al. 2024, detail 9):
/// ½·mean(max((V − R)², (V_old + clip(V − V_old, −ε, ε) − R)²)). Returns `(loss, clip fraction)`.
pub fn clipped_value_loss(values: &Tensor, old_values: &Tensor, returns: &Tensor, mask: &Tensor, cliprange: f64) -> (Tensor, Tensor) {
    let clipped_values = old_values + (values - old_values).clamp(-cliprange, cliprange);
    let unclipped_error = (values - returns).square();
    let clipped_error = (clipped_values - returns).square();
    let loss = 0.5 * masked_mean(&unclipped_error.maximum(&clipped_error), mask);
    let clip_fraction = masked_mean(&clipped_error.gt_tensor(&unclipped_error).to_kind(Kind::Float), mask);
    (loss, clip_fraction)
}

/// The score PPO optimises for each response `[B]`: the normalised reward-model score, less
/// `missing_eos_penalty` for a response cut off by `max_new_tokens` (`stopped` false; Huang et
/// al. 2024, detail 23), then clipped to ±`score_clip` when set.
pub fn final_scores(scores: &Tensor, stopped: &[bool], settings: &PpoSettings) -> Tensor {
    let penalised = scores.where_self(&Tensor::from_slice(stopped), &(scores - settings.missing_eos_penalty));
    match settings.score_clip {
        Some(clip) => penalised.clamp(-clip, clip),
        None => penalised,
    }
}

/// What a rollout's optimisation fits, `[B, T]`.
pub struct Targets {
    /// Per-token rewards: the KL penalty on every token, the score on the last (whitened, keeping
    /// their mean, with `whiten_rewards`).
    pub rewards: Tensor,
    /// log π − log π_ref per token.
    pub token_kl: Tensor,
    /// GAE advantages, whitened.
    pub advantages: Tensor,
    /// Value targets: advantages (before whitening) + values.
    pub returns: Tensor,
}

/// Steps 3–4 of an iteration: rewards shaped by β = `kl_coef`, then advantages and returns.
pub fn targets(
    scores: &Tensor,
    logprobs: &Tensor,
    reference_logprobs: &Tensor,
    values: &Tensor,
    mask: &Tensor,
    settings: &PpoSettings,
    kl_coef: f64,
) -> Targets {
    let (rewards, token_kl) = shaped_rewards(logprobs, reference_logprobs, mask, scores, kl_coef);
    let rewards = if settings.whiten_rewards { whiten(&rewards, mask, false) } else { rewards };
    let (advantages, returns) = gae(&rewards, values, mask, settings.gamma, settings.lam);
    Targets { advantages: whiten(&advantages, mask, true), rewards, token_kl, returns }
}

/// The KL coefficient β: fixed, or adapted towards a target KL (Ziegler et al. 2019, §2.2):
/// e = clip(KL/target − 1, −0.2, 0.2), β ← β·(1 + e·n/horizon) after a batch of n responses.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KlController {
    pub coef: f64,
    pub target: Option<f64>,
    pub horizon: f64,
}

impl KlController {
    pub fn update(&mut self, kl: f64, responses: usize) {
        if let Some(target) = self.target {
            let error = (kl / target - 1.0).clamp(-0.2, 0.2);
            self.coef *= 1.0 + error * responses as f64 / self.horizon;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Models and rollouts.

/// How many tokens a response mask counts; at least 1.
fn token_count(mask: &Tensor) -> f64 {
    mask.sum(Kind::Float).double_value(&[]).max(1.0)
}

/// What one rollout yields for optimisation (all on the CPU) and for the metrics.
struct Rollout {
    tokens: RolloutTokens,
    logprobs: Tensor,
    values: Tensor,
    advantages: Tensor,
    returns: Tensor,
    metrics: Metrics,
}

/// Scores as they are: `reward_normalization = "none"`, or before statistics are measured.
const RAW_SCORES: RewardNormalization = RewardNormalization { mean: 0.0, std: 1.0 };

/// Where values come from.
pub enum Critic {
    /// A separate model with a reward model's shape (backbone and scalar head), read at every
    /// position instead of the last.
    Model(Box<RewardModel>),
    /// A head on the policy's backbone (its variables live in the policy's `VarStore`).
    SharedHead(ScalarHead),
}

/// The models of the stage.
pub struct Models {
    pub policy: LanguageModel,
    pub reference: ReferenceModel,
    pub reward: Box<dyn Scorer>,
    pub critic: Critic,
}

impl Models {
    /// Values `[B, T]` of the states before each response token; `policy_states` are the
    /// policy's (a shared head needs them).
    fn values(&self, rollout: &RolloutTokens, policy_states: Option<&Tensor>) -> Tensor {
        match &self.critic {
            Critic::Model(model) => model.head.forward(&response_states(model.transformer.as_ref(), rollout)).to_kind(Kind::Float),
            Critic::SharedHead(head) => {
                head.forward(policy_states.expect("a shared value head reads the policy's states")).to_kind(Kind::Float)
            }
        }
    }

    /// Where a rollout's old log-probs come from. With a separate value model nothing else needs
    /// the policy's hidden states, and in fp32 the sampler's log-probs are the policy's own up to
    /// rounding (same weights, same temperature, dropout off in both; `sampling_logprob_gap`
    /// stays below 1e-5): a pass over the whole rollout is saved, as TRL's PPO does. A shared
    /// head needs the states anyway, and in bf16 or fp16 the KV cache's rounding differs from a
    /// full pass's by far more than PPO's ratios should see, so those recompute (Huang et al.
    /// 2024, detail 6).
    fn policy_logprobs(&self) -> PolicyLogprobs {
        let fp32 = self.policy.transformer.kind() == Kind::Float;
        match &self.critic {
            Critic::Model(_) if fp32 => PolicyLogprobs::Sampled,
            _ => PolicyLogprobs::Recomputed,
        }
    }
}

#[derive(Debug, Default)]
struct Timings {
    generation: f64,
    scoring: f64,
    training: f64,
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

fn fraction(flags: &[bool]) -> f64 {
    flags.iter().filter(|&&f| f).count() as f64 / flags.len().max(1) as f64
}

fn scalar(t: &Tensor) -> f64 {
    t.double_value(&[])
}

/// PPO's state between iterations: the models, their optimizers and the KL coefficient.
pub struct Ppo<'a> {
    settings: &'a PpoSettings,
    pub models: Models,
    policy_optimizer: AdamW,
    /// The separate value model's; a shared head trains with the policy.
    value_optimizer: Option<AdamW>,
    pub kl: KlController,
    /// Scores are used as (score − mean) / std.
    pub normalization: RewardNormalization,
    /// Scores responses by the task's gold oracle, when it has one.
    oracle: Option<GoldOracle>,
}

impl<'a> Ppo<'a> {
    pub fn new(settings: &'a PpoSettings, models: Models, oracle: Option<GoldOracle>) -> Self {
        let adam = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
        Ppo {
            policy_optimizer: AdamW::new(models.policy.trained_vs(), adam),
            value_optimizer: match &models.critic {
                Critic::Model(model) => Some(AdamW::new(&model.vs, adam)),
                Critic::SharedHead(_) => None,
            },
            kl: KlController {
                coef: settings.kl_coef,
                target: settings.adaptive_kl.then_some(settings.kl_target),
                horizon: settings.kl_horizon,
            },
            normalization: match settings.reward_normalization {
                NormalizationSource::Stored => models.reward.stored_normalization().unwrap_or_else(|| {
                    tracing::warn!(
                        "reward_normalization = \"stored\" but the reward model stores no score statistics; raw scores are used"
                    );
                    RAW_SCORES
                }),
                NormalizationSource::Policy | NormalizationSource::None => RAW_SCORES,
            },
            settings,
            models,
            oracle,
        }
    }

    /// Generates one response per prompt with the policy as a rollout does (temperature,
    /// `max_new_tokens`, seeded); returns the prompts' token ids and the generation.
    fn generate(&self, prompts: &[String], seed: u64) -> Result<(Vec<Vec<i64>>, Generation), StageError> {
        Ok(sample_responses(&self.models.policy, prompts, self.decoding(), seed)?)
    }

    fn decoding(&self) -> Decoding {
        Decoding { temperature: self.settings.temperature, max_new_tokens: self.settings.max_new_tokens }
    }

    /// Measures the mean and std of the reward model's raw scores on the policy's responses to
    /// `prompts` — sampled exactly as rollouts sample them, each scored as a rollout scores it
    /// (the response up to its end-of-text; a response cut off by `max_new_tokens` as it
    /// stands, its penalty applied afterwards in normalised units) — and normalises scores
    /// with them from now on, so that the starting policy's scores have mean 0 and std 1
    /// (Ziegler et al. 2019, §2; Stiennon et al. 2020).
    pub fn measure_reward_normalization(&mut self, prompts: &[String], seed: u64) -> Result<RewardNormalization, StageError> {
        let mut scores: Vec<f64> = Vec::with_capacity(prompts.len());
        for (index, chunk) in prompts.chunks(self.settings.rollout_batch).enumerate() {
            let (encoded, generation) = self.generate(chunk, step_seed(seed, NORMALIZATION_SEED, index as u64))?;
            let _no_grad = tch::no_grad_guard();
            let batch = self.models.reward.score(&encoded, &generation.completions());
            scores.extend(Vec::<f64>::try_from(batch.to_kind(Kind::Double)).expect("1-D scores"));
        }
        self.normalization = RewardNormalization::of_scores(&scores);
        Ok(self.normalization)
    }

    /// The trained weights and optimizers, as the resume state names them.
    fn state_parts(&self) -> Vec<Part<'_>> {
        let mut parts = vec![Part { name: "policy", vs: self.models.policy.trained_vs(), optimizer: &self.policy_optimizer }];
        if let (Critic::Model(model), Some(optimizer)) = (&self.models.critic, &self.value_optimizer) {
            parts.push(Part { name: "value", vs: &model.vs, optimizer });
        }
        parts
    }

    fn state_parts_mut(&mut self) -> Vec<PartMut<'_>> {
        let Ppo { models, policy_optimizer, value_optimizer, .. } = self;
        let mut parts = vec![PartMut { name: "policy", vs: models.policy.trained_vs_mut(), optimizer: policy_optimizer }];
        if let (Critic::Model(model), Some(optimizer)) = (&mut models.critic, value_optimizer) {
            parts.push(PartMut { name: "value", vs: &mut model.vs, optimizer });
        }
        parts
    }

    /// Steps 1–4 of an iteration.
    fn rollout(&self, prompts: &[String], seed: u64, timings: &mut Timings) -> Result<Rollout, StageError> {
        let (settings, models) = (self.settings, &self.models);
        let judges = Judges { reward: Some(models.reward.as_ref()), reference: Some(&models.reference), oracle: self.oracle };
        let scored = sample_and_score(&models.policy, prompts, &judges, self.decoding(), seed, models.policy_logprobs())?;
        timings.generation += scored.seconds.0;
        timings.scoring += scored.seconds.1;
        let started = Instant::now();
        let _no_grad = tch::no_grad_guard();
        // Each rank's values of its rows (a shared head reads the states of those only).
        let own_values = models.values(&scored.own_tokens(), scored.policy_states.as_ref()).to_device(Device::Cpu);
        let tokens = scored.tokens;
        let mask = tokens.response_mask.to_kind(Kind::Float);
        let values = gather_rows(&scored.rows, own_values, prompts.len())? * &mask;

        let normalization = self.normalization;
        let normalised = (scored.raw_scores.expect("a reward judge") - normalization.mean) / normalization.std;
        let scores = final_scores(&normalised, &scored.stopped, settings);
        let reference_logprobs = scored.reference_logprobs.expect("a reference judge");
        let Targets { token_kl, advantages, returns, .. } =
            targets(&scores, &scored.logprobs, &reference_logprobs, &values, &mask, settings, self.kl.coef);
        timings.scoring += started.elapsed().as_secs_f64();

        let sequence_kl = token_kl.sum_dim_intlist(1, false, Kind::Float);
        let mut metrics = Metrics::from([
            ("objective/scores".to_string(), scalar(&scores.mean(Kind::Float))),
            ("objective/scores_std".to_string(), scalar(&scores.std(false))),
            ("objective/kl".to_string(), scalar(&sequence_kl.mean(Kind::Float))),
            ("objective/rlhf_reward".to_string(), scalar(&(&scores - self.kl.coef * &sequence_kl).mean(Kind::Float))),
            ("objective/entropy".to_string(), scalar(&(-&scored.logprobs).sum_dim_intlist(1, false, Kind::Float).mean(Kind::Float))),
            ("objective/eos_fraction".to_string(), fraction(&scored.stopped)),
            ("objective/response_length".to_string(), scalar(&mask.sum_dim_intlist(1, false, Kind::Float).mean(Kind::Float))),
            ("val/mean".to_string(), scalar(&masked_mean(&values, &mask))),
        ]);
        if scored.policy_states.is_some() {
            let sampling_gap = (&scored.generation.logprobs.to_device(Device::Cpu) * &mask - &scored.logprobs).abs().max();
            metrics.insert("rollout/sampling_logprob_gap".into(), scalar(&sampling_gap));
        }
        if let Some(gold) = &scored.gold {
            metrics.insert("objective/gold_score".into(), mean(gold));
        }
        Ok(Rollout { tokens, logprobs: scored.logprobs, values, advantages, returns, metrics })
    }

    /// Step 5: PPO epochs over shuffled minibatches. Returns the averaged losses and statistics.
    fn optimise(&mut self, rollout: &Rollout, lrs: (f64, f64), seed: u64) -> Result<Metrics, StageError> {
        let settings = self.settings;
        let models = &self.models;
        let policy_device = models.policy.device();
        let micro_size = settings.minibatch_size / settings.grad_accum;
        let world = distributed::world();
        let mut sums: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
        let mut stopped_early = false;
        let mut order: Vec<i64> = (0..rollout.tokens.sequence.size()[0]).collect();
        let mut trained_sequences = 0usize;
        'epochs: for epoch in 0..settings.ppo_epochs {
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(step_seed(seed, SHUFFLE_SEED, epoch as u64)));
            for minibatch in order.chunks(settings.minibatch_size) {
                let mut approx_kl_sum = 0.0;
                let policy_scale = self.policy_optimizer.loss_scale();
                let minibatch_tokens = token_count(&rollout.tokens.response_mask.index_select(0, &Tensor::from_slice(minibatch)));
                // Under data parallelism each rank takes its share of the micro-batches (every
                // rank holds the whole rollout); the optimizer sums their gradients.
                let micros: Vec<&[i64]> = minibatch.chunks(micro_size).collect();
                trained_sequences += minibatch.len();
                for micro in &micros[world.shard(micros.len())] {
                    let index = Tensor::from_slice(micro);
                    let tokens = rollout.tokens.rows(&index);
                    let mask = tokens.response_mask.to_kind(Kind::Float);
                    // Each loss is a mean over this micro-batch's response tokens; weighted by
                    // their share of the minibatch's, the accumulated gradient is exactly the
                    // gradient of the minibatch's token mean, however it is split (a plain
                    // 1/grad_accum weighting favours the tokens of short micro-batches).
                    let share = token_count(&tokens.response_mask) / minibatch_tokens;
                    let rows = |t: &Tensor, device: Device| t.index_select(0, &index).to(device);

                    let states = response_states(models.policy.transformer.as_ref(), &tokens);
                    let (logprobs, entropy) =
                        response_logprobs(models.policy.transformer.as_ref(), &states, &tokens, settings.temperature, true);
                    let policy_mask = mask.to(policy_device);
                    let (policy_loss, clip_fraction, approx_kl) = clipped_policy_loss(
                        &logprobs,
                        &rows(&rollout.logprobs, policy_device),
                        &rows(&rollout.advantages, policy_device),
                        &policy_mask,
                        settings.cliprange,
                    );
                    let entropy = masked_mean(&entropy.expect("asked for"), &policy_mask);
                    // Without an entropy bonus the entropy is a figure only: kept out of the loss,
                    // backward does not run through it (over the whole vocabulary at every token).
                    let policy_objective = if settings.entropy_coef == 0.0 {
                        policy_loss.shallow_clone()
                    } else {
                        &policy_loss - settings.entropy_coef * &entropy
                    };

                    let values = models.values(&tokens, Some(&states));
                    let value_device = values.device();
                    let (value_loss, value_clip_fraction) = clipped_value_loss(
                        &values,
                        &rows(&rollout.values, value_device),
                        &rows(&rollout.returns, value_device),
                        &mask.to(value_device),
                        settings.cliprange_value,
                    );
                    let loss = match &models.critic {
                        // Two models, each its own loss scale; one backward pass over both (their
                        // weights are apart, so each gets its own loss's gradient).
                        Critic::Model(_) => {
                            let value_scale = self.value_optimizer.as_ref().map_or(1.0, AdamW::loss_scale);
                            let value_term = (&value_loss * (value_scale * share)).to_device(policy_objective.device());
                            policy_objective * (policy_scale * share) + value_term
                        }
                        // One backbone: one loss, the value term weighted by vf_coef.
                        Critic::SharedHead(_) => (policy_objective + settings.vf_coef * &value_loss) * (policy_scale * share),
                    };
                    blocks::backward(&loss);

                    let approx_kl = scalar(&approx_kl);
                    approx_kl_sum += approx_kl;
                    for (name, value) in [
                        ("policy/approxkl_avg", approx_kl),
                        ("policy/clipfrac_avg", scalar(&clip_fraction)),
                        ("policy/entropy_avg", scalar(&entropy)),
                        ("loss/policy_avg", scalar(&policy_loss)),
                        ("loss/value_avg", scalar(&value_loss)),
                        ("val/clipfrac_avg", scalar(&value_clip_fraction)),
                    ] {
                        sums.entry(name).or_default().push(value);
                    }
                }
                let policy_grad_norm = self.policy_optimizer.update(lrs.0, settings.grad_clip)?;
                sums.entry("policy/grad_norm").or_default().push(policy_grad_norm);
                if let Some(value_optimizer) = &mut self.value_optimizer {
                    let value_grad_norm = value_optimizer.update(lrs.1, settings.grad_clip)?;
                    sums.entry("val/grad_norm").or_default().push(value_grad_norm);
                }
                // Stop once the policy has moved too far from the one that made the rollout.
                let mut approx_kl_sum = [approx_kl_sum];
                world.all_reduce_values(&mut approx_kl_sum)?;
                let minibatch_kl = approx_kl_sum[0] / micros.len() as f64;
                if settings.target_approx_kl.is_some_and(|target| minibatch_kl > target) {
                    stopped_early = true;
                    break 'epochs;
                }
            }
        }
        let mut metrics = world.means(&sums)?;
        metrics.insert("policy/early_stop".into(), f64::from(u8::from(stopped_early)));
        // The policy (and a separate value model) each take a forward and a backward pass per
        // trained sequence.
        let models = if self.value_optimizer.is_some() { 2.0 } else { 1.0 };
        metrics.insert("cost/forward_passes".into(), models * trained_sequences as f64);
        metrics.insert("cost/backward_passes".into(), models * trained_sequences as f64);
        Ok(metrics)
    }

    /// One PPO iteration on `prompts` (one response each): rollout, then optimisation at the
    /// learning rates `lrs` (policy, value), then the KL controller's update. Everything random
    /// is drawn from `seed`.
    pub fn iteration(&mut self, prompts: &[String], lrs: (f64, f64), seed: u64) -> Result<Metrics, StageError> {
        let started = Instant::now();
        let mut timings = Timings::default();
        let rollout = self.rollout(prompts, step_seed(seed, ROLLOUT_SEED, 0), &mut timings)?;
        let training_started = Instant::now();
        let optimisation = self.optimise(&rollout, lrs, step_seed(seed, SHUFFLE_SEED, 0))?;
        timings.training = training_started.elapsed().as_secs_f64();

        let kl_coef = self.kl.coef;
        self.kl.update(rollout.metrics["objective/kl"], prompts.len());
        let generated_tokens = rollout.metrics["objective/response_length"] * prompts.len() as f64;
        let step_seconds = started.elapsed().as_secs_f64();
        let mut metrics = rollout.metrics;
        // Scoring read every response with the reference, a reward model, a separate value model
        // and, unless its sampled log-probs were kept, the policy.
        let scoring_models = 1
            + usize::from(self.models.policy_logprobs() == PolicyLogprobs::Recomputed)
            + usize::from(self.models.reward.vocab_size().is_some())
            + usize::from(self.value_optimizer.is_some());
        let scoring_passes = (scoring_models * prompts.len()) as f64;
        metrics.extend(optimisation);
        *metrics.entry("cost/forward_passes".into()).or_default() += scoring_passes;
        metrics.insert("cost/generated_tokens".into(), generated_tokens);
        metrics.extend([
            ("kl_coef".to_string(), kl_coef),
            ("lr".to_string(), lrs.0),
            ("time/step_s".to_string(), step_seconds),
            ("time/generation_s".to_string(), timings.generation),
            ("time/scoring_s".to_string(), timings.scoring),
            ("time/training_s".to_string(), timings.training),
            ("tokens_per_s".to_string(), generated_tokens / step_seconds),
        ]);
        if self.value_optimizer.is_some() {
            metrics.insert("val/lr".into(), lrs.1);
        }
        Ok(metrics)
    }
}

const PROMPT_SEED: u64 = 21;
const ROLLOUT_SEED: u64 = 22;
const SHUFFLE_SEED: u64 = 23;
const NORMALIZATION_SEED: u64 = 24;
const ITERATION_SEED: u64 = 26;

fn load_models(context: &StageContext, settings: &PpoSettings) -> Result<Models, StageError> {
    let (devices, dtypes) = (&settings.devices, &settings.dtypes);
    let training = Training { lora: settings.lora.as_ref(), gradient_checkpointing: settings.gradient_checkpointing };
    let mut policy = context.load_trained_model(&settings.policy, devices.policy, dtypes.policy, &training)?;
    let reference = context.load_reference(&settings.reference, &settings.policy, &training, devices.reference, dtypes.reference)?;
    let checkpoint = |key: &str, reference: &str| {
        context
            .checkpoint_dir(reference)
            .ok_or_else(|| context.invalid(format!("`{key}` must be a trained checkpoint, not a fresh [models] section")))
    };
    let reward = context.load_reward(&settings.reward, devices.reward, dtypes.reward)?;
    check_vocabularies(context, &policy, &reference, reward.as_ref())?;
    // The value head's initialisation is drawn from the stage's seed.
    tch::manual_seed(step_seed(context.seed(), ROLLOUT_SEED, 0) as i64);
    let critic = match &settings.value {
        Some(value) => {
            let model = RewardModel::load(&checkpoint("value", value)?, devices.value.resolve()?, dtypes.value, true)?;
            model.transformer.blocks().set_checkpointing(settings.gradient_checkpointing);
            Critic::Model(Box::new(model))
        }
        None => Critic::SharedHead(shared_value_head(&mut policy, dtypes.policy)),
    };
    Ok(Models { policy, reference, reward, critic })
}

/// Name of the value head's variables when it sits on the policy (saved beside its weights).
pub const VALUE_HEAD: &str = "value_head";

/// A value head on the policy's backbone, initialised small like the reward head.
pub fn shared_value_head(policy: &mut LanguageModel, precision: Precision) -> ScalarHead {
    let n_embd = policy.transformer.config().hidden_size();
    // With adapters, the head trains beside them (in fp32), on the frozen base.
    let head = ScalarHead::new(&(policy.trained_vs().root() / VALUE_HEAD), n_embd, 1.0 / ((n_embd + 1) as f64).sqrt());
    if policy.adapters.is_none() {
        precision.cast(&mut policy.vs);
    }
    head
}

/// What a resumed PPO stage needs besides the weights and optimizers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PpoState {
    kl: Option<KlController>,
    normalization: Option<RewardNormalization>,
    /// The starting policy's evaluation, reported beside the final one.
    #[serde(deserialize_with = "crate::run::metrics::metrics_with_nulls")]
    start: Metrics,
}

/// A PPO stage in training: the algorithm's state and the prompts it draws from.
struct PpoTrainer<'a> {
    context: &'a StageContext<'a>,
    settings: &'a PpoSettings,
    ppo: Ppo<'a>,
    train_prompts: Vec<String>,
    eval_prompts: Vec<String>,
    schedules: (LrSchedule, LrSchedule),
    start: Metrics,
}

impl PpoTrainer<'_> {
    fn evaluate_and_log(&self, step: u64, samples: &mut SampleLog) -> Result<Metrics, StageError> {
        let models = &self.ppo.models;
        let judges = Judges { reward: Some(models.reward.as_ref()), reference: Some(&models.reference), oracle: self.ppo.oracle };
        let (metrics, _) = evaluate_policy(
            self.context,
            &models.policy,
            &judges,
            &self.eval_prompts,
            self.ppo.decoding(),
            Some(self.ppo.normalization),
            step,
            (samples, self.settings.samples),
        )?;
        Ok(metrics)
    }
}

impl Trainer for PpoTrainer<'_> {
    type State = PpoState;
    type Error = StageError;

    fn parts(&self) -> Vec<Part<'_>> {
        self.ppo.state_parts()
    }

    fn parts_mut(&mut self) -> Vec<PartMut<'_>> {
        self.ppo.state_parts_mut()
    }

    fn state(&self) -> PpoState {
        PpoState { kl: Some(self.ppo.kl), normalization: Some(self.ppo.normalization), start: self.start.clone() }
    }

    fn restore(&mut self, state: PpoState) {
        self.ppo.kl = state.kl.unwrap_or(self.ppo.kl);
        self.ppo.normalization = state.normalization.unwrap_or(self.ppo.normalization);
        self.start = state.start;
    }

    /// Reward statistics of the starting policy (with `reward_normalization = "policy"`), then
    /// its evaluation: the baseline every later evaluation is read against.
    fn start(&mut self, samples: &mut SampleLog) -> Result<Option<Metrics>, StageError> {
        let settings = self.settings;
        if settings.reward_normalization == NormalizationSource::Policy {
            let prompts =
                draw_prompts(&self.train_prompts, settings.normalization_samples, step_seed(self.context.seed(), NORMALIZATION_SEED, 0));
            let normalization = self.ppo.measure_reward_normalization(&prompts, step_seed(self.context.seed(), NORMALIZATION_SEED, 1))?;
            tracing::info!(
                stage = self.context.name(),
                mean = normalization.mean,
                std = normalization.std,
                "reward normalisation measured on the starting policy"
            );
        }
        let mut start = self.evaluate_and_log(0, samples)?;
        tracing::info!(stage = self.context.name(), "evaluated the starting policy {}", stage_loop::describe(&start, FIGURES.logged));
        self.start = start.clone();
        start.insert("reward/mean".into(), self.ppo.normalization.mean);
        start.insert("reward/std".into(), self.ppo.normalization.std);
        Ok(Some(start))
    }

    fn step(&mut self, iteration: u64) -> Result<Metrics, StageError> {
        let seed = self.context.seed();
        let prompts = draw_prompts(&self.train_prompts, self.settings.rollout_batch, step_seed(seed, PROMPT_SEED, iteration));
        let lrs = (self.schedules.0.at(iteration), self.schedules.1.at(iteration));
        self.ppo.iteration(&prompts, lrs, step_seed(seed, ITERATION_SEED, iteration))
    }

    fn evaluate(&mut self, step: u64, samples: &mut SampleLog) -> Result<Metrics, StageError> {
        self.evaluate_and_log(step, samples)
    }
}

fn train(context: &StageContext, settings: &PpoSettings) -> Result<Metrics, StageError> {
    super::check_shardable(context, "grad_accum", settings.grad_accum)?;
    let dir = context.dir();
    let task = context.task;
    let (train_prompts, eval_prompts) = (training_prompts(context)?, evaluation_prompts(context, settings.eval_prompts)?);
    let models = load_models(context, settings)?;
    let schedule = |lr: f64| LrSchedule {
        lr,
        min_lr_ratio: 0.0,
        warmup_steps: settings.warmup_iterations,
        total_steps: settings.iterations,
        shape: settings.schedule,
    };
    let mut trainer = PpoTrainer {
        context,
        settings,
        ppo: Ppo::new(settings, models, task.oracle),
        train_prompts,
        eval_prompts,
        schedules: (schedule(settings.policy_lr), schedule(settings.value_lr)),
        start: Metrics::new(),
    };
    let loop_settings = LoopSettings {
        kl_target: settings.adaptive_kl.then_some(settings.kl_target),
        ..context.loop_settings(settings.iterations, settings.eval_every, &FIGURES)
    };
    let outcome = stage_loop::run(&mut trainer, &loop_settings)?;
    trainer.ppo.models.policy.save(&dir.join(CHECKPOINT_DIR))?;
    let mut summary: Metrics = outcome.last_evaluated.into_iter().filter(|(name, _)| name.starts_with("eval/")).collect();
    summary.extend(trainer.start.iter().map(|(name, value)| (name.replacen("eval/", "start/", 1), *value)));
    summary.insert("kl_coef".into(), trainer.ppo.kl.coef);
    summary.insert("iterations".into(), outcome.steps as f64);
    summary.insert("reward/mean".into(), trainer.ppo.normalization.mean);
    summary.insert("reward/std".into(), trainer.ppo.normalization.std);
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::tensor_testing::{assert_close, t, values};

    #[test]
    fn gae_and_returns_match_hand_computation() {
        // one row of 3 tokens, then a row that ended after 2 (its third token is after the end)
        let rewards = t(&[&[0.0, 0.0, 1.0], &[0.5, 2.0, 9.0]]);
        let value = t(&[&[0.1, 0.2, 0.3], &[0.4, 0.5, 9.0]]);
        let mask = t(&[&[1.0, 1.0, 1.0], &[1.0, 1.0, 0.0]]);
        let (gamma, lam) = (0.9, 0.8);
        let (advantages, returns) = gae(&rewards, &value, &mask, gamma, lam);
        // row 0: δ2 = 1 − 0.3 = 0.7; δ1 = 0 + 0.9·0.3 − 0.2 = 0.07; δ0 = 0 + 0.9·0.2 − 0.1 = 0.08
        //        A2 = 0.7; A1 = 0.07 + 0.72·0.7 = 0.574; A0 = 0.08 + 0.72·0.574 = 0.49328
        // row 1: δ1 = 2 − 0.5 = 1.5; δ0 = 0.5 + 0.9·0.5 − 0.4 = 0.55; A1 = 1.5; A0 = 0.55 + 0.72·1.5 = 1.63
        assert_close(&values(&advantages), &[0.49328, 0.574, 0.7, 1.63, 1.5, 0.0]);
        assert_close(&values(&returns), &[0.59328, 0.774, 1.0, 2.03, 2.0, 0.0]);
    }

    #[test]
    fn kl_penalty_on_every_token_and_the_score_on_the_last() {
        let logprobs = t(&[&[-1.0, -2.0, -0.5], &[-1.0, -1.0, -7.0]]);
        let reference = t(&[&[-1.5, -1.0, -0.5], &[-2.0, -1.0, -1.0]]);
        let mask = t(&[&[1.0, 1.0, 1.0], &[1.0, 1.0, 0.0]]);
        let scores = Tensor::from_slice(&[3.0f32, -1.0]);
        let (rewards, kl) = shaped_rewards(&logprobs, &reference, &mask, &scores, 0.1);
        assert_close(&values(&kl), &[0.5, -1.0, 0.0, 1.0, 0.0, 0.0]);
        // −0.1·kl, plus the score on each row's last real token (index 2, then index 1)
        assert_close(&values(&rewards), &[-0.05, 0.1, 3.0, -0.1, -1.0, 0.0]);
    }

    fn settings_with(extra: &str) -> PpoSettings {
        toml::from_str(&format!("policy = \"p\"\nreference = \"p\"\nreward = \"r\"\nvalue = \"p\"\n{extra}")).unwrap()
    }

    #[test]
    fn a_response_cut_off_pays_the_missing_eos_penalty_before_the_clip() {
        let scores = Tensor::from_slice(&[3.0f32, 3.0, -0.5, -0.5]);
        let stopped = [true, false, true, false];
        let scored = |extra: &str| values(&final_scores(&scores, &stopped, &settings_with(extra)));
        assert_close(&scored("missing_eos_penalty = 1.0"), &[3.0, 2.0, -0.5, -1.5]);
        assert_close(&scored("missing_eos_penalty = 0.0"), &[3.0, 3.0, -0.5, -0.5]);
        // penalised first: the cut-off 3.0 becomes 2.0, then both 3.0 and 2.0 clip to 1.0
        assert_close(&scored("missing_eos_penalty = 1.0\nscore_clip = 1.0"), &[1.0, 1.0, -0.5, -1.0]);
    }

    #[test]
    fn whitened_rewards_keep_their_mean_and_advantages_are_whitened() {
        let logprobs = t(&[&[-1.0, -2.0, -0.5], &[-1.0, -1.0, -7.0]]);
        let reference = t(&[&[-1.5, -1.0, -0.5], &[-2.0, -1.0, -1.0]]);
        let mask = t(&[&[1.0, 1.0, 1.0], &[1.0, 1.0, 0.0]]);
        let state_values = t(&[&[0.1, 0.2, 0.3], &[0.4, 0.5, 9.0]]);
        let scores = Tensor::from_slice(&[3.0f32, -1.0]);
        // Shaped as in kl_penalty_on_every_token_and_the_score_on_the_last.
        let raw = [-0.05, 0.1, 3.0, -0.1, -1.0];
        let plain = targets(&scores, &logprobs, &reference, &state_values, &mask, &settings_with(""), 0.1);
        assert_close(&values(&plain.rewards), &[-0.05, 0.1, 3.0, -0.1, -1.0, 0.0]);
        assert_close(&values(&plain.token_kl), &[0.5, -1.0, 0.0, 1.0, 0.0, 0.0]);

        let whitened = targets(&scores, &logprobs, &reference, &state_values, &mask, &settings_with("whiten_rewards = true"), 0.1);
        // (r − μ)/σ + μ over the five real tokens: μ = 0.39, σ² = mean((r − μ)²) = 9.262 / 5
        let (mu, sigma) = (0.39, (9.262f64 / 5.0).sqrt());
        let mut expected: Vec<f64> = raw.iter().map(|r| (r - mu) / sigma + mu).collect();
        expected.insert(5, 0.0);
        assert_close(&values(&whitened.rewards), &expected);
        // the advantages and returns are GAE's on the whitened rewards (γ = 1, λ = 0.95)
        let (advantages, returns) = gae(&whitened.rewards, &state_values, &mask, 1.0, 0.95);
        assert_close(&values(&whitened.returns), &values(&returns));
        assert_close(&values(&whitened.advantages), &values(&whiten(&advantages, &mask, true)));
        for result in [&plain, &whitened] {
            let (mean, variance) =
                (scalar(&masked_mean(&result.advantages, &mask)), scalar(&masked_mean(&result.advantages.square(), &mask)));
            assert!(mean.abs() < 1e-6 && (variance - 1.0).abs() < 1e-5, "advantages: mean {mean}, variance {variance}");
        }
    }

    #[test]
    fn nothing_after_the_end_counts() {
        let mask = t(&[&[1.0, 1.0, 0.0, 0.0]]);
        let old = t(&[&[-1.0, -1.0, -1.0, -1.0]]);
        let advantages = t(&[&[1.0, -1.0, 100.0, 100.0]]);
        // after the end the new log-probs are wild; they must not move the loss
        let new_a = t(&[&[-0.9, -1.1, 5.0, -50.0]]);
        let new_b = t(&[&[-0.9, -1.1, -1.0, -1.0]]);
        let (loss_a, clip_a, kl_a) = clipped_policy_loss(&new_a, &old, &advantages, &mask, 0.2);
        let (loss_b, clip_b, kl_b) = clipped_policy_loss(&new_b, &old, &advantages, &mask, 0.2);
        assert_close(&[scalar(&loss_a), scalar(&clip_a), scalar(&kl_a)], &[scalar(&loss_b), scalar(&clip_b), scalar(&kl_b)]);
        let (_, returns) = gae(&t(&[&[0.0, 1.0, 5.0, 5.0]]), &t(&[&[0.0, 0.0, 3.0, 3.0]]), &mask, 1.0, 1.0);
        assert_close(&values(&returns), &[1.0, 1.0, 0.0, 0.0]);
        let whitened = whiten(&t(&[&[1.0, 3.0, 100.0, -100.0]]), &mask, true);
        assert_close(&values(&whitened), &[-1.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn policy_clipping_on_crafted_numbers() {
        // ratios e^0.5 ≈ 1.6487 (A = 1: clipped to 1.2), e^−0.5 ≈ 0.6065 (A = 1: not clipped,
        // the min keeps the lower ratio), 1.1 (A = −2: inside the range), e^-0.5 (A = −1: clipped to 0.8)
        let old = t(&[&[0.0, 0.0, 0.0, 0.0]]);
        let new = t(&[&[0.5, -0.5, (1.1f32).ln(), -0.5]]);
        let advantages = t(&[&[1.0, 1.0, -2.0, -1.0]]);
        let mask = t(&[&[1.0, 1.0, 1.0, 1.0]]);
        let (loss, clip_fraction, approx_kl) = clipped_policy_loss(&new, &old, &advantages, &mask, 0.2);
        let r = [0.5f64.exp(), (-0.5f64).exp(), 1.1, (-0.5f64).exp()];
        let per_token = [-1.2, -r[1], 2.0 * r[2], 0.8];
        assert_close(&[scalar(&loss)], &[per_token.iter().sum::<f64>() / 4.0]);
        assert_close(&[scalar(&clip_fraction)], &[0.5]);
        let log_ratio_sq = [0.25, 0.25, 1.1f64.ln().powi(2), 0.25];
        assert_close(&[scalar(&approx_kl)], &[0.5 * log_ratio_sq.iter().sum::<f64>() / 4.0]);
    }

    #[test]
    fn value_clipping_on_crafted_numbers() {
        let old = t(&[&[1.0, 1.0, 1.0]]);
        let new = t(&[&[2.0, 1.1, 0.0]]);
        let returns = t(&[&[3.0, 0.0, 0.5]]);
        let mask = t(&[&[1.0, 1.0, 1.0]]);
        let (loss, clip_fraction) = clipped_value_loss(&new, &old, &returns, &mask, 0.2);
        // token 0: unclipped (2 − 3)² = 1, clipped (1.2 − 3)² = 3.24 → 3.24 (clipped counts)
        // token 1: (1.1 − 0)² = 1.21, clipped 1.1 (inside) → 1.21
        // token 2: (0 − 0.5)² = 0.25, clipped (0.8 − 0.5)² = 0.09 → 0.25
        assert_close(&[scalar(&loss)], &[0.5 * (3.24 + 1.21 + 0.25) / 3.0]);
        assert_close(&[scalar(&clip_fraction)], &[1.0 / 3.0]);
    }

    #[test]
    fn adaptive_kl_controller_moves_towards_the_target() {
        let mut controller = KlController { coef: 0.1, target: Some(6.0), horizon: 10_000.0 };
        controller.update(9.0, 100); // error clipped to 0.2: β · (1 + 0.2 · 100 / 10000)
        assert!((controller.coef - 0.1 * 1.002).abs() < 1e-12);
        controller.update(5.4, 1000); // error −0.1: β · (1 − 0.1 · 0.1)
        assert!((controller.coef - 0.1 * 1.002 * 0.99).abs() < 1e-12);
        let mut fixed = KlController { coef: 0.1, target: None, horizon: 10_000.0 };
        fixed.update(100.0, 1000);
        assert_eq!(fixed.coef, 0.1);
    }
}
