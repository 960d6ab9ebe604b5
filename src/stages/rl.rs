//! What the RL stage kinds share above the rollout machinery: the keys of the critic-free
//! policy-gradient stages (`grpo`, `rloo`), their models (a trained policy, a frozen reference
//! and a reward), the prompts they train on, the held-out evaluation every RL stage writes
//! (`eval/*`, samples.jsonl, eval_final.jsonl), and the trainer of group methods, which differ
//! only in their advantages and loss ([`GroupAlgorithm`]).

use rand::seq::IndexedRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::{
    check_lora, is_programmatic_reward, Composite, Reading, StageContext, StageError, StageFigures, StageSettings, Training, CHECKPOINT_DIR,
};
use crate::data::synthetic::GoldOracle;
use crate::model::reward::RewardNormalization;
use crate::model::{DeviceSpec, LanguageModel, LoraSettings, Precision, ReferenceModel};
use crate::rng::step_seed;
use crate::run::metrics::{evaluation_lines, write_evaluation, SampleLog};
use crate::run::Metrics;
use crate::train::optimizer::{AdamW, AdamWConfig};
use crate::train::policy_gradient::{optimise, MicroBatch, Normaliser, Passes, PolicyRollout};
use crate::train::rollout::{
    evaluate, evaluation_figures, sample_and_score, Decoding, EvaluatedResponse, EvaluationSettings, Judges, PolicyLogprobs, ScoredRollout,
    Scorer,
};
use crate::train::schedule::{LrSchedule, Schedule};
use crate::train::stage_loop::{self, Trainer};
use crate::train::state::{Part, PartMut};

/// How reports read an RL stage's evaluation: gold is the truth; a reward model's score
/// compares only between stages scored by the same one.
pub const POLICY_READINGS: [(&str, Reading); 3] = [
    ("eval/gold_score", Reading::Higher),
    ("eval/rm_score", Reading::HigherOnSameModel("reward")),
    ("eval/raw_rm_score", Reading::HigherOnSameModel("reward")),
];

/// A setting per model of an RL stage without a critic.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRoles<T> {
    #[serde(default)]
    pub policy: T,
    #[serde(default)]
    pub reference: T,
    #[serde(default)]
    pub reward: T,
}

/// The keys `grpo` and `rloo` share, named as PPO names them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyGradientKeys {
    /// The trained policy starts from this model (usually the SFT stage).
    pub policy: String,
    /// The frozen model of the KL term (usually the same as `policy`).
    pub reference: String,
    /// A reward stage, a reward-model checkpoint (an HF sequence-classification directory
    /// included), `gold` (the task's gold oracle: the true objective) or `verifier`.
    pub reward: String,
    #[serde(default)]
    pub devices: PolicyRoles<DeviceSpec>,
    #[serde(default)]
    pub dtypes: PolicyRoles<Precision>,
    /// Iterations (rollout + optimisation).
    #[serde(default = "defaults::iterations")]
    pub iterations: u64,
    /// Responses per iteration (prompts × responses per prompt), as in PPO.
    #[serde(default = "defaults::rollout_batch")]
    pub rollout_batch: usize,
    /// Responses per optimizer step.
    #[serde(default = "defaults::minibatch_size")]
    pub minibatch_size: usize,
    /// Each minibatch is split into this many micro-batches whose gradients add up.
    #[serde(default = "defaults::one")]
    pub grad_accum: usize,
    /// Passes over each rollout; after the first the importance ratio to the rollout's policy
    /// is no longer 1 and clipping takes effect.
    #[serde(default = "defaults::one")]
    pub updates_per_rollout: usize,
    #[serde(default = "defaults::max_new_tokens")]
    pub max_new_tokens: i64,
    /// Sampling temperature; log-probs are computed at the same temperature.
    #[serde(default = "defaults::one_f")]
    pub temperature: f64,
    #[serde(default = "defaults::policy_lr")]
    pub policy_lr: f64,
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
    /// Train low-rank adapters on the frozen model instead of all its weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraSettings>,
    /// Recompute each block's activations in the backward pass instead of keeping them.
    #[serde(default)]
    pub gradient_checkpointing: bool,
}

// One default a line: the table reads better than rustfmt's four lines per function.
#[rustfmt::skip]
mod defaults {
    use super::Schedule;
    pub fn iterations() -> u64 { 100 }
    pub fn rollout_batch() -> usize { 64 }
    pub fn minibatch_size() -> usize { 64 }
    pub fn one() -> usize { 1 }
    pub fn one_f() -> f64 { 1.0 }
    pub fn max_new_tokens() -> i64 { 48 }
    pub fn policy_lr() -> f64 { 1e-5 }
    pub fn schedule() -> Schedule { Schedule::Constant }
    pub fn grad_clip() -> f64 { 1.0 }
    pub fn eval_every() -> u64 { 10 }
    pub fn eval_prompts() -> usize { 64 }
    pub fn samples() -> usize { 8 }
}

/// The keys of a stage that names a policy, a reference and a reward, as `(key, value)`; a
/// programmatic reward names no model.
pub fn model_inputs<'a>(policy: &'a str, reference: &'a str, reward: &'a str) -> Vec<(&'static str, &'a str)> {
    let mut inputs = vec![("policy", policy), ("reference", reference)];
    if !is_programmatic_reward(reward) {
        inputs.push(("reward", reward));
    }
    inputs
}

/// `(key, value)` pairs that must be > 0 and finite: the first that is not, as a `check` error.
pub fn check_positive(values: &[(&'static str, f64)]) -> Result<(), (&'static str, String)> {
    match values.iter().find(|(_, v)| !(*v > 0.0 && v.is_finite())) {
        Some((key, value)) => Err((key, format!("a value > 0, got {value}"))),
        None => Ok(()),
    }
}

/// Checks that the longest prompt plus `max_new_tokens` fits the context of every model named.
pub fn check_generation_lengths(
    models: &[(&'static str, &str)],
    max_new_tokens: i64,
    longest_prompt: i64,
    context_of: &dyn Fn(&str) -> Option<i64>,
) -> Result<(), (&'static str, String)> {
    let needed = longest_prompt + max_new_tokens;
    for (role, reference) in models {
        if let Some(context) = context_of(reference).filter(|&context| needed > context) {
            return Err((
                "max_new_tokens",
                format!(
                    "the longest prompt ({longest_prompt} tokens) + max_new_tokens ({max_new_tokens}) = {needed} tokens exceed the context of the {role} model `{role}` = \"{reference}\" ({context} tokens)"
                ),
            ));
        }
    }
    Ok(())
}

impl PolicyGradientKeys {
    /// The shared checks, with the kind's number of responses per prompt (`group_size`, `k`).
    pub fn check(&self, group: (&'static str, usize)) -> Result<(), (&'static str, String)> {
        check_lora(&self.lora)?;
        check_positive(&[
            ("iterations", self.iterations as f64),
            ("rollout_batch", self.rollout_batch as f64),
            ("minibatch_size", self.minibatch_size as f64),
            ("grad_accum", self.grad_accum as f64),
            ("updates_per_rollout", self.updates_per_rollout as f64),
            ("max_new_tokens", self.max_new_tokens as f64),
            ("temperature", self.temperature),
            ("policy_lr", self.policy_lr),
            ("grad_clip", self.grad_clip),
            ("eval_every", self.eval_every as f64),
            ("eval_prompts", self.eval_prompts as f64),
        ])?;
        let (key, size) = group;
        if size < 2 {
            return Err((key, format!("at least 2 responses per prompt (a group of one has no baseline), got {size}")));
        }
        if !self.rollout_batch.is_multiple_of(size) {
            return Err(("rollout_batch", format!("a multiple of {key} = {size} (responses per iteration), got {}", self.rollout_batch)));
        }
        if !self.rollout_batch.is_multiple_of(self.minibatch_size) {
            return Err(("minibatch_size", format!("a divisor of rollout_batch = {}, got {}", self.rollout_batch, self.minibatch_size)));
        }
        if !self.minibatch_size.is_multiple_of(self.grad_accum) {
            return Err(("grad_accum", format!("a divisor of minibatch_size = {}, got {}", self.minibatch_size, self.grad_accum)));
        }
        Ok(())
    }

    fn decoding(&self) -> Decoding {
        Decoding { temperature: self.temperature, max_new_tokens: self.max_new_tokens }
    }
}

/// `StageSettings` for a group method's settings, its own keys providing the rest.
impl<O: GroupKeys> StageSettings for Composite<PolicyGradientKeys, O> {
    fn inputs(&self) -> Vec<(&'static str, &str)> {
        model_inputs(&self.shared.policy, &self.shared.reference, &self.shared.reward)
    }

    fn check(&self) -> Result<(), (&'static str, String)> {
        self.shared.check(self.own.group())?;
        self.own.check()
    }

    fn base_model(&self) -> &str {
        &self.shared.policy
    }

    fn check_lengths(&self, longest_prompt: i64, context_of: &dyn Fn(&str) -> Option<i64>) -> Result<(), (&'static str, String)> {
        check_generation_lengths(&self.inputs(), self.shared.max_new_tokens, longest_prompt, context_of)
    }

    fn devices(&self) -> Vec<(&'static str, DeviceSpec)> {
        let d = &self.shared.devices;
        vec![("policy", d.policy), ("reference", d.reference), ("reward", d.reward)]
    }

    fn run(&self, context: &StageContext) -> Result<Metrics, StageError> {
        train_group(context, &self.shared, self.own.algorithm(&self.shared).as_ref(), self.own.figures())
    }
}

/// A group method's own keys.
pub trait GroupKeys: std::fmt::Debug + Send + Sync {
    /// The key and value of the number of responses per prompt.
    fn group(&self) -> (&'static str, usize);
    fn check(&self) -> Result<(), (&'static str, String)>;
    fn algorithm(&self, shared: &PolicyGradientKeys) -> Box<dyn GroupAlgorithm>;
    fn figures(&self) -> &'static StageFigures;
}

/// What a group method computes from a scored rollout of consecutive groups of responses.
pub trait GroupAlgorithm {
    fn group_size(&self) -> usize;

    /// Advantages `[B]`, the mask `[B, T]` of the tokens the loss sees, and the figures of the
    /// rollout particular to the method.
    fn advantages(&self, rollout: &ScoredRollout, scores: &Tensor, reference_logprobs: &Tensor) -> (Tensor, Tensor, Metrics);

    /// How the loss of a minibatch is normalised.
    fn normaliser(&self) -> Normaliser;

    /// A micro-batch's loss, summed as `normaliser` weighs it, and figures to average.
    fn loss(&self, batch: &MicroBatch) -> (Tensor, Vec<(&'static str, Tensor)>);
}

/// A trained policy with a frozen reference and a reward.
pub struct RlModels {
    pub policy: LanguageModel,
    pub reference: ReferenceModel,
    pub reward: Box<dyn Scorer>,
}

impl RlModels {
    pub fn load(
        context: &StageContext,
        names: [&str; 3],
        devices: &PolicyRoles<DeviceSpec>,
        dtypes: &PolicyRoles<Precision>,
        training: &Training,
    ) -> Result<Self, StageError> {
        let [policy_name, reference, reward] = names;
        let policy = context.load_trained_model(policy_name, devices.policy, dtypes.policy, training)?;
        let reference = context.load_reference(reference, policy_name, training, devices.reference, dtypes.reference)?;
        let reward = context.load_reward(reward, devices.reward, dtypes.reward)?;
        check_vocabularies(context, &policy, &reference, reward.as_ref())?;
        Ok(RlModels { policy, reference, reward })
    }

    pub fn judges(&self, context: &StageContext) -> Judges<'_> {
        Judges { reward: Some(self.reward.as_ref()), reference: Some(&self.reference), oracle: context.task.oracle }
    }
}

/// The reference's and a reward model's vocabularies must be the policy's: they read its tokens.
pub fn check_vocabularies(
    context: &StageContext,
    policy: &LanguageModel,
    reference: &ReferenceModel,
    reward: &dyn Scorer,
) -> Result<(), StageError> {
    let vocab = policy.transformer.config().vocab_size();
    let reference_vocab = reference.with(policy, |model| model.transformer.config().vocab_size());
    for (role, other) in [("reference", Some(reference_vocab)), ("reward", reward.vocab_size())] {
        if let Some(other) = other.filter(|&other| other != vocab) {
            return Err(context.invalid(format!("the {role} model's vocabulary ({other}) differs from the policy's ({vocab})")));
        }
    }
    Ok(())
}

/// The prompts an RL stage trains on: the task's training prompts and its (original) training
/// demonstrations' prompts.
pub fn training_prompts(context: &StageContext) -> Result<Vec<String>, StageError> {
    let prompts: Vec<String> = context.task.training_prompts().cloned().collect();
    if prompts.is_empty() {
        return Err(context.invalid("the task has no prompts to train on"));
    }
    Ok(prompts)
}

/// The task's first `count` held-out prompts.
pub fn evaluation_prompts(context: &StageContext, count: usize) -> Result<Vec<String>, StageError> {
    let prompts = context.task.evaluation_prompts(count);
    if prompts.is_empty() {
        return Err(context.invalid("the task has no held-out prompts to evaluate on"));
    }
    Ok(prompts)
}

/// `count` prompts drawn with replacement from `prompts` by `seed`.
pub fn draw_prompts(prompts: &[String], count: usize, seed: u64) -> Vec<String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..count).map(|_| prompts.choose(&mut rng).expect("non-empty").clone()).collect()
}

/// Purpose of the sampling seed of held-out evaluations.
const EVAL_SEED: u64 = 25;

/// The sampling seed of every held-out evaluation of a policy on a task (`rlhf eval` uses it
/// too, so that it reproduces a run's own figures).
pub fn evaluation_sampling_seed(eval_seed: u64) -> u64 {
    step_seed(eval_seed, EVAL_SEED, 0)
}

/// The held-out evaluation every RL stage runs: one response per prompt, drawn in one batch with
/// the task's evaluation seed (the same draw at every evaluation and in every run of the task:
/// differences come from the policy), judged by the reward (its score normalised when the stage
/// normalises), the reference and the gold oracle. Writes samples.jsonl and eval_final.jsonl.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_policy(
    context: &StageContext,
    policy: &LanguageModel,
    judges: &Judges,
    prompts: &[String],
    decoding: Decoding,
    normalization: Option<RewardNormalization>,
    step: u64,
    samples: (&mut SampleLog, usize),
) -> Result<(Metrics, Vec<EvaluatedResponse>), StageError> {
    let settings =
        EvaluationSettings { decoding, seed: evaluation_sampling_seed(context.experiment.task.eval_seed), batch_size: prompts.len() };
    let mut responses = evaluate(policy, prompts, judges, &settings)?;
    for response in &mut responses {
        response.score = match normalization {
            // In fp32, as rollouts normalise their score tensors.
            Some(RewardNormalization { mean, std }) => response.raw_score.map(|raw| f64::from((raw as f32 - mean as f32) / std as f32)),
            None => response.raw_score,
        };
    }
    log_evaluation(context, step, &responses, samples)?;
    Ok((evaluation_figures(&responses), responses))
}

/// Writes the first `samples.1` evaluated responses to samples.jsonl and all of them to
/// eval_final.jsonl.
pub fn log_evaluation(
    context: &StageContext,
    step: u64,
    responses: &[EvaluatedResponse],
    samples: (&mut SampleLog, usize),
) -> Result<(), StageError> {
    let (log, count) = samples;
    for line in evaluation_lines(step, &responses[..count.min(responses.len())]) {
        log.log_object(line)?;
    }
    write_evaluation(&context.dir(), step, responses)?;
    Ok(())
}

/// The figures of a scored rollout every RL stage logs, named as PPO names them.
pub fn rollout_figures(rollout: &ScoredRollout, scores: &Tensor) -> Metrics {
    let mask = rollout.tokens.response_mask.to_kind(Kind::Float);
    let stopped = rollout.stopped.iter().filter(|&&s| s).count() as f64 / rollout.stopped.len().max(1) as f64;
    let mut metrics = Metrics::from([
        ("objective/scores".to_string(), scores.mean(Kind::Float).double_value(&[])),
        ("objective/scores_std".to_string(), scores.std(false).double_value(&[])),
        ("objective/entropy".to_string(), (-&rollout.logprobs).sum_dim_intlist(1, false, Kind::Float).mean(Kind::Float).double_value(&[])),
        ("objective/eos_fraction".to_string(), stopped),
        ("objective/response_length".to_string(), mask.sum_dim_intlist(1, false, Kind::Float).mean(Kind::Float).double_value(&[])),
    ]);
    if let Some(kl) = rollout.sequence_kl() {
        metrics.insert("objective/kl".into(), kl.mean(Kind::Double).double_value(&[]));
    }
    if let Some(gold) = &rollout.gold {
        metrics.insert("objective/gold_score".into(), gold.iter().sum::<f64>() / gold.len().max(1) as f64);
    }
    metrics
}

/// What a resumed RL stage without other state needs besides the policy and its optimizer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StartState {
    /// The starting policy's evaluation, reported beside the final one.
    #[serde(deserialize_with = "crate::run::metrics::metrics_with_nulls")]
    pub start: Metrics,
}

const PROMPT_SEED: u64 = 21;
const ROLLOUT_SEED: u64 = 22;
const SHUFFLE_SEED: u64 = 23;

/// A group method in training, apart from any stage: the models, the optimizer and one
/// iteration at a time.
pub struct GroupLearner<'a> {
    keys: &'a PolicyGradientKeys,
    algorithm: &'a dyn GroupAlgorithm,
    pub models: RlModels,
    optimizer: AdamW,
    oracle: Option<GoldOracle>,
}

impl<'a> GroupLearner<'a> {
    pub fn new(keys: &'a PolicyGradientKeys, algorithm: &'a dyn GroupAlgorithm, models: RlModels, oracle: Option<GoldOracle>) -> Self {
        let adam = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
        GroupLearner { keys, algorithm, optimizer: AdamW::new(models.policy.trained_vs(), adam), models, oracle }
    }

    pub fn judges(&self) -> Judges<'_> {
        Judges { reward: Some(self.models.reward.as_ref()), reference: Some(&self.models.reference), oracle: self.oracle }
    }

    /// One iteration: `group_size` responses to each of `prompts` (in consecutive rows),
    /// scored, then the method's advantages and `updates_per_rollout` passes at learning rate
    /// `lr`. Everything random is drawn from `seed`.
    pub fn iteration(&mut self, prompts: &[String], lr: f64, seed: u64) -> Result<Metrics, StageError> {
        let started = std::time::Instant::now();
        let (keys, algorithm) = (self.keys, self.algorithm);
        let group_size = algorithm.group_size();
        let prompts: Vec<String> = prompts.iter().flat_map(|prompt| std::iter::repeat_n(prompt.clone(), group_size)).collect();
        // One optimizer step on the rollout just drawn: the sampler's log-probs serve as the old
        // ones, and the policy's scoring pass is saved.
        let on_policy = keys.updates_per_rollout == 1 && keys.minibatch_size == keys.rollout_batch;
        let policy_logprobs = if on_policy { PolicyLogprobs::Sampled } else { PolicyLogprobs::Recomputed };
        let rollout_seed = step_seed(seed, ROLLOUT_SEED, 0);
        let scored = sample_and_score(&self.models.policy, &prompts, &self.judges(), keys.decoding(), rollout_seed, policy_logprobs)?;
        let scores = scored.raw_scores.as_ref().expect("a reward judge").to_kind(Kind::Float);
        let reference_logprobs = scored.reference_logprobs.as_ref().expect("a reference judge");
        let (advantages, loss_mask, mut metrics) = algorithm.advantages(&scored, &scores, reference_logprobs);
        metrics.extend(rollout_figures(&scored, &scores));

        let training_started = std::time::Instant::now();
        let rollout = PolicyRollout {
            old_logprobs: scored.logprobs.shallow_clone(),
            reference_logprobs: reference_logprobs.shallow_clone(),
            advantages,
            loss_mask,
            tokens: scored.tokens,
        };
        let passes = Passes {
            updates_per_rollout: keys.updates_per_rollout,
            minibatch_size: keys.minibatch_size,
            grad_accum: keys.grad_accum,
            temperature: keys.temperature,
            grad_clip: keys.grad_clip,
            normaliser: algorithm.normaliser(),
        };
        let shuffle_seed = step_seed(seed, SHUFFLE_SEED, 0);
        metrics.extend(optimise(&self.models.policy, &mut self.optimizer, &rollout, passes, lr, shuffle_seed, &|batch| {
            algorithm.loss(batch)
        })?);
        let generated_tokens = metrics["objective/response_length"] * prompts.len() as f64;
        let step_seconds = started.elapsed().as_secs_f64();
        // Scoring reads every response with the reference, a reward model and (unless on
        // policy) the policy; each pass of the optimisation once more with the policy, forward
        // and backward.
        let scoring_models = usize::from(!on_policy) + 1 + usize::from(self.models.reward.vocab_size().is_some());
        let trained = (keys.updates_per_rollout * prompts.len()) as f64;
        metrics.extend([
            ("cost/generated_tokens".to_string(), generated_tokens),
            ("cost/forward_passes".to_string(), (scoring_models * prompts.len()) as f64 + trained),
            ("cost/backward_passes".to_string(), trained),
            ("lr".to_string(), lr),
            ("time/step_s".to_string(), step_seconds),
            ("time/generation_s".to_string(), scored.seconds.0),
            ("time/scoring_s".to_string(), scored.seconds.1),
            ("time/training_s".to_string(), training_started.elapsed().as_secs_f64()),
            ("tokens_per_s".to_string(), generated_tokens / step_seconds),
        ]);
        Ok(metrics)
    }
}

/// A group method's stage on the shared stage loop.
struct GroupTrainer<'a> {
    context: &'a StageContext<'a>,
    learner: GroupLearner<'a>,
    schedule: LrSchedule,
    train_prompts: Vec<String>,
    eval_prompts: Vec<String>,
    start: Metrics,
}

impl GroupTrainer<'_> {
    fn evaluate_and_log(&self, step: u64, samples: &mut SampleLog) -> Result<Metrics, StageError> {
        let keys = self.learner.keys;
        let (metrics, _) = evaluate_policy(
            self.context,
            &self.learner.models.policy,
            &self.learner.judges(),
            &self.eval_prompts,
            keys.decoding(),
            None,
            step,
            (samples, keys.samples),
        )?;
        Ok(metrics)
    }
}

impl Trainer for GroupTrainer<'_> {
    type State = StartState;
    type Error = StageError;

    fn parts(&self) -> Vec<Part<'_>> {
        vec![Part { name: "policy", vs: self.learner.models.policy.trained_vs(), optimizer: &self.learner.optimizer }]
    }

    fn parts_mut(&mut self) -> Vec<PartMut<'_>> {
        let learner = &mut self.learner;
        vec![PartMut { name: "policy", vs: learner.models.policy.trained_vs_mut(), optimizer: &mut learner.optimizer }]
    }

    fn state(&self) -> StartState {
        StartState { start: self.start.clone() }
    }

    fn restore(&mut self, state: StartState) {
        self.start = state.start;
    }

    fn start(&mut self, samples: &mut SampleLog) -> Result<Option<Metrics>, StageError> {
        self.start = self.evaluate_and_log(0, samples)?;
        Ok(Some(self.start.clone()))
    }

    /// Draws `rollout_batch / group_size` training prompts and runs one iteration on them.
    fn step(&mut self, iteration: u64) -> Result<Metrics, StageError> {
        let seed = self.context.seed();
        let keys = self.learner.keys;
        let prompts = draw_prompts(
            &self.train_prompts,
            keys.rollout_batch / self.learner.algorithm.group_size(),
            step_seed(seed, PROMPT_SEED, iteration),
        );
        self.learner.iteration(&prompts, self.schedule.at(iteration), step_seed(seed, ROLLOUT_SEED, iteration))
    }

    fn evaluate(&mut self, step: u64, samples: &mut SampleLog) -> Result<Metrics, StageError> {
        self.evaluate_and_log(step, samples)
    }
}

/// Runs a group method's stage: its iterations on the shared stage loop, then the policy's
/// checkpoint; returns the final evaluation with the starting policy's as `start/*`.
fn train_group(
    context: &StageContext,
    keys: &PolicyGradientKeys,
    algorithm: &dyn GroupAlgorithm,
    figures: &'static StageFigures,
) -> Result<Metrics, StageError> {
    super::check_shardable(context, "grad_accum", keys.grad_accum)?;
    let train_prompts = training_prompts(context)?;
    let eval_prompts = evaluation_prompts(context, keys.eval_prompts)?;
    let training = Training { lora: keys.lora.as_ref(), gradient_checkpointing: keys.gradient_checkpointing };
    let models = RlModels::load(context, [&keys.policy, &keys.reference, &keys.reward], &keys.devices, &keys.dtypes, &training)?;
    let mut trainer = GroupTrainer {
        context,
        learner: GroupLearner::new(keys, algorithm, models, context.task.oracle),
        schedule: LrSchedule {
            lr: keys.policy_lr,
            min_lr_ratio: 0.0,
            warmup_steps: keys.warmup_iterations,
            total_steps: keys.iterations,
            shape: keys.schedule,
        },
        train_prompts,
        eval_prompts,
        start: Metrics::new(),
    };
    let outcome = stage_loop::run(&mut trainer, &context.loop_settings(keys.iterations, keys.eval_every, figures))?;
    trainer.learner.models.policy.save(&context.dir().join(CHECKPOINT_DIR))?;
    Ok(final_summary(&outcome.last_evaluated, &trainer.start, outcome.steps))
}

/// An RL stage's summary: its last evaluation, the starting policy's as `start/*`, and the
/// iterations taken.
pub fn final_summary(last_evaluated: &Metrics, start: &Metrics, iterations: u64) -> Metrics {
    let mut summary: Metrics = last_evaluated.iter().filter(|(name, _)| name.starts_with("eval/")).map(|(n, v)| (n.clone(), *v)).collect();
    summary.extend(start.iter().map(|(name, value)| (name.replacen("eval/", "start/", 1), *value)));
    summary.insert("iterations".into(), iterations as f64);
    summary
}
