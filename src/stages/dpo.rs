//! `kind = "dpo"`: Direct Preference Optimization (Rafailov et al. 2023): the policy learns from
//! preference pairs directly, no reward model and no sampling, with the implicit reward
//! β·(log π(y|x) − log π_ref(y|x)). `loss` = `sigmoid` (eq. 7; with `label_smoothing` ε the
//! conservative DPO of Mitchell 2023, −(1−ε)·log σ(h) − ε·log σ(−h)) or `ipo` (Azar et al. 2023,
//! eq. 17: (h/β − 1/(2β))²); `rpo_alpha` adds α × the NLL of the chosen response (Pang et al.
//! 2024). The reference's log-probs are computed once, before training. Pairs come from the
//! reward stage's sources; ties carry no preference and are left out.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::preferences::{preference_pairs, PolicySampler, PreferenceData};
use super::rl::{
    check_generation_lengths, check_positive, evaluate_policy, evaluation_prompts, final_summary, StartState, POLICY_READINGS,
};
use super::{check_lora, Composite, Frontier, Reading, StageContext, StageError, StageFigures, StageSettings, Training, CHECKPOINT_DIR};
use crate::data::preferences::PreferencePair;
use crate::distributed;
use crate::model::{DeviceSpec, LanguageModel, LoraSettings, Precision, ReferenceModel};
use crate::rng::epoch_items;
use crate::run::metrics::SampleLog;
use crate::run::Metrics;
use crate::train::alerts::Watched;
use crate::train::optimizer::{AdamW, AdamWConfig};
use crate::train::rollout::{response_logprobs, response_states, Decoding, Judges, RolloutTokens, Scorer};
use crate::train::schedule::{LrSchedule, Schedule};
use crate::train::stage_loop::{self, Trainer};
use crate::train::state::{Part, PartMut};

/// What reports and logs show of `dpo` stages.
pub const FIGURES: StageFigures = StageFigures {
    headline: &["eval/rewards/accuracies", "eval/rewards/margins", "eval/gold_score", "eval/kl"],
    curves: &["train/loss", "rewards/margins", "rewards/accuracies", "eval/rewards/accuracies", "eval/gold_score", "eval/kl"],
    primary: &["eval/gold_score", "eval/rewards/accuracies"],
    readings: &[POLICY_READINGS[0], POLICY_READINGS[1], POLICY_READINGS[2], ("eval/rewards/accuracies", Reading::Higher)],
    frontier: Some(Frontier { kl: "eval/kl", proxy: "eval/rm_score", gold: "eval/gold_score" }),
    shown: &["train/loss", "rewards/accuracies"],
    logged: &["eval/rewards/accuracies", "eval/gold_score", "eval/kl"],
    step_name: "step",
    watched: Watched {
        train_loss: Some("train/loss"),
        eval_loss: Some("eval/loss"),
        preference_accuracy: Some("eval/rewards/accuracies"),
        ..Watched::NOTHING
    },
};

/// A DPO stage's settings: where its pairs come from, and its own keys.
pub type DpoSettings = Composite<PreferenceData, DpoKeys>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DpoLoss {
    Sigmoid,
    Ipo,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpoKeys {
    /// The trained policy starts from this model (usually the SFT stage).
    pub policy: String,
    /// The frozen reference; by default the model the policy starts from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// A reward model (or `gold`, `verifier`) that scores the held-out evaluation's responses;
    /// DPO does not train on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward: Option<String>,
    /// β: the strength of the KL regularisation (higher stays closer to the reference).
    #[serde(default = "defaults::beta")]
    pub beta: f64,
    #[serde(default = "defaults::loss")]
    pub loss: DpoLoss,
    /// ε: the assumed probability that a label is flipped (`sigmoid` only).
    #[serde(default)]
    pub label_smoothing: f64,
    /// α of the NLL on the chosen responses added to the loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_alpha: Option<f64>,
    #[serde(default = "defaults::steps")]
    pub steps: u64,
    /// Pairs per step.
    #[serde(default = "defaults::batch_size")]
    pub batch_size: usize,
    #[serde(default = "defaults::lr")]
    pub lr: f64,
    #[serde(default = "defaults::warmup_steps")]
    pub warmup_steps: u64,
    #[serde(default = "defaults::schedule")]
    pub schedule: Schedule,
    #[serde(default = "defaults::grad_clip")]
    pub grad_clip: f64,
    #[serde(default = "defaults::eval_every")]
    pub eval_every: u64,
    /// Held-out prompts the policy answers at each evaluation (gold score, KL, reward).
    #[serde(default = "defaults::eval_prompts")]
    pub eval_prompts: usize,
    #[serde(default = "defaults::max_new_tokens")]
    pub max_new_tokens: i64,
    #[serde(default = "defaults::temperature")]
    pub temperature: f64,
    /// Evaluated responses written to samples.jsonl at each evaluation.
    #[serde(default = "defaults::samples")]
    pub samples: usize,
    #[serde(default)]
    pub device: DeviceSpec,
    #[serde(default)]
    pub dtype: Precision,
    /// Train low-rank adapters on the frozen model instead of all its weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraSettings>,
    /// Recompute each block's activations in the backward pass instead of keeping them.
    #[serde(default)]
    pub gradient_checkpointing: bool,
}

#[rustfmt::skip]
mod defaults {
    use super::{DpoLoss, Schedule};
    pub fn beta() -> f64 { 0.1 }
    pub fn loss() -> DpoLoss { DpoLoss::Sigmoid }
    pub fn steps() -> u64 { 300 }
    pub fn batch_size() -> usize { 16 }
    pub fn lr() -> f64 { 1e-6 }
    pub fn warmup_steps() -> u64 { 10 }
    pub fn schedule() -> Schedule { Schedule::Cosine }
    pub fn grad_clip() -> f64 { 1.0 }
    pub fn eval_every() -> u64 { 100 }
    pub fn eval_prompts() -> usize { 64 }
    pub fn max_new_tokens() -> i64 { 48 }
    pub fn temperature() -> f64 { 1.0 }
    pub fn samples() -> usize { 8 }
}

impl DpoKeys {
    fn reference(&self) -> &str {
        self.reference.as_deref().unwrap_or(&self.policy)
    }
}

impl StageSettings for DpoSettings {
    fn inputs(&self) -> Vec<(&'static str, &str)> {
        let own = &self.own;
        let mut inputs = vec![("policy", own.policy.as_str()), ("reference", own.reference())];
        inputs.extend(own.reward.as_deref().filter(|r| !super::is_programmatic_reward(r)).map(|reward| ("reward", reward)));
        inputs
    }

    fn check(&self) -> Result<(), (&'static str, String)> {
        self.shared.check()?;
        let own = &self.own;
        check_lora(&own.lora)?;
        check_positive(&[
            ("beta", own.beta),
            ("steps", own.steps as f64),
            ("batch_size", own.batch_size as f64),
            ("lr", own.lr),
            ("grad_clip", own.grad_clip),
            ("eval_every", own.eval_every as f64),
            ("eval_prompts", own.eval_prompts as f64),
            ("max_new_tokens", own.max_new_tokens as f64),
            ("temperature", own.temperature),
        ])?;
        if !(0.0..0.5).contains(&own.label_smoothing) {
            return Err(("label_smoothing", format!("a value in [0, 0.5), got {}", own.label_smoothing)));
        }
        if own.loss == DpoLoss::Ipo && own.label_smoothing > 0.0 {
            return Err(("label_smoothing", "0 with loss = \"ipo\" (label smoothing is conservative DPO, a sigmoid loss)".into()));
        }
        if let Some(alpha) = own.rpo_alpha.filter(|a| !(*a >= 0.0 && a.is_finite())) {
            return Err(("rpo_alpha", format!("a value ≥ 0, got {alpha}")));
        }
        Ok(())
    }

    fn base_model(&self) -> &str {
        &self.own.policy
    }

    fn check_lengths(&self, longest_prompt: i64, context_of: &dyn Fn(&str) -> Option<i64>) -> Result<(), (&'static str, String)> {
        check_generation_lengths(&self.inputs(), self.own.max_new_tokens, longest_prompt, context_of)
    }

    fn devices(&self) -> Vec<(&'static str, DeviceSpec)> {
        vec![("policy", self.own.device), ("reference", self.own.device)]
    }

    fn run(&self, context: &StageContext) -> Result<Metrics, StageError> {
        train(context, &self.shared, &self.own)
    }
}

/// The per-pair DPO loss `[B]` from sequence log-probs of the chosen and rejected responses
/// under the policy and the reference.
pub fn dpo_loss(policy: (&Tensor, &Tensor), reference: (&Tensor, &Tensor), beta: f64, loss: DpoLoss, label_smoothing: f64) -> Tensor {
    // h/β: how much more the policy prefers the chosen response than the reference does.
    let logits = (policy.0 - policy.1) - (reference.0 - reference.1);
    match loss {
        DpoLoss::Sigmoid => {
            let scaled = &logits * beta;
            -(1.0 - label_smoothing) * scaled.log_sigmoid() - label_smoothing * (-scaled).log_sigmoid()
        }
        DpoLoss::Ipo => (logits - 1.0 / (2.0 * beta)).square(),
    }
}

/// RPO's term (Pang et al. 2024): the mean negative log-likelihood per token of the chosen
/// responses, from their per-token log-probs `[B, T]` and mask.
pub fn chosen_nll(token_logprobs: &Tensor, mask: &Tensor) -> Tensor {
    -(token_logprobs * mask).sum(Kind::Float) / mask.sum(Kind::Float).clamp_min(1.0)
}

/// A pair tokenised for scoring: the prompt, and each response followed by end-of-text.
struct EncodedPair {
    prompt: Vec<i64>,
    chosen: Vec<i64>,
    rejected: Vec<i64>,
}

/// Log-probs of the chosen and rejected responses of `pairs` under `model`: sums `[B]` each, and
/// the chosen responses' per-token log-probs `[B, T]` with their mask (for the NLL term).
fn pair_logprobs(model: &LanguageModel, pairs: &[&EncodedPair]) -> (Tensor, Tensor, (Tensor, Tensor)) {
    let prompts: Vec<Vec<i64>> = pairs.iter().chain(pairs).map(|p| p.prompt.clone()).collect();
    let responses: Vec<Vec<i64>> = pairs.iter().map(|p| p.chosen.clone()).chain(pairs.iter().map(|p| p.rejected.clone())).collect();
    let tokens = RolloutTokens::from_pairs(&prompts, &responses, model.tokenizer.eos_id());
    let states = response_states(model.transformer.as_ref(), &tokens);
    let (logprobs, _) = response_logprobs(model.transformer.as_ref(), &states, &tokens, 1.0, false);
    let mask = tokens.response_mask.to_kind(Kind::Float).to(model.device());
    let sums = (&logprobs * &mask).sum_dim_intlist(1, false, Kind::Float);
    let n = pairs.len() as i64;
    (sums.narrow(0, 0, n), sums.narrow(0, n, n), (logprobs.narrow(0, 0, n), mask.narrow(0, 0, n)))
}

/// Sums of the reference's log-probs `(chosen, rejected)` for each pair, computed once.
fn reference_logprobs(reference: &ReferenceModel, policy: &LanguageModel, pairs: &[EncodedPair], batch_size: usize) -> Vec<(f64, f64)> {
    let _no_grad = tch::no_grad_guard();
    let refs: Vec<&EncodedPair> = pairs.iter().collect();
    let mut sums = Vec::with_capacity(pairs.len());
    for chunk in refs.chunks(batch_size) {
        let (chosen, rejected, _) = reference.with(policy, |model| pair_logprobs(model, chunk));
        let column = |t: Tensor| Vec::<f64>::try_from(t.to_kind(Kind::Double).to_device(Device::Cpu)).expect("1-D");
        sums.extend(column(chosen).into_iter().zip(column(rejected)));
    }
    sums
}

const DATA_SEED: u64 = 31;

struct DpoTrainer<'a> {
    context: &'a StageContext<'a>,
    settings: &'a DpoKeys,
    policy: LanguageModel,
    reference: ReferenceModel,
    reward: Option<Box<dyn Scorer>>,
    optimizer: AdamW,
    schedule: LrSchedule,
    train_pairs: Vec<(EncodedPair, (f64, f64))>,
    eval_pairs: Vec<(EncodedPair, (f64, f64))>,
    eval_prompts: Vec<String>,
    start: Metrics,
    /// Seconds spent on the reference's log-probs before training.
    reference_seconds: f64,
}

impl DpoTrainer<'_> {
    /// The loss of a batch and its figures, named as TRL names them.
    fn batch_loss(&self, batch: &[&(EncodedPair, (f64, f64))]) -> (Tensor, Metrics) {
        let settings = self.settings;
        let device = self.policy.device();
        let pairs: Vec<&EncodedPair> = batch.iter().map(|(pair, _)| pair).collect();
        let (chosen, rejected, (chosen_tokens, chosen_mask)) = pair_logprobs(&self.policy, &pairs);
        let reference =
            |pick: fn(&(f64, f64)) -> f64| Tensor::from_slice(&batch.iter().map(|(_, r)| pick(r) as f32).collect::<Vec<_>>()).to(device);
        let (reference_chosen, reference_rejected) = (reference(|r| r.0), reference(|r| r.1));
        let per_pair = dpo_loss(
            (&chosen, &rejected),
            (&reference_chosen, &reference_rejected),
            settings.beta,
            settings.loss,
            settings.label_smoothing,
        );
        let mut loss = per_pair.mean(Kind::Float);
        let mut metrics = Metrics::new();
        if let Some(alpha) = settings.rpo_alpha {
            let nll = chosen_nll(&chosen_tokens, &chosen_mask);
            metrics.insert("nll_loss".into(), nll.double_value(&[]));
            loss += alpha * nll;
        }
        let chosen_rewards = (chosen.detach() - &reference_chosen) * settings.beta;
        let rejected_rewards = (rejected.detach() - &reference_rejected) * settings.beta;
        let figure = |t: &Tensor| t.mean(Kind::Float).double_value(&[]);
        metrics.extend([
            ("rewards/chosen".to_string(), figure(&chosen_rewards)),
            ("rewards/rejected".to_string(), figure(&rejected_rewards)),
            ("rewards/accuracies".to_string(), figure(&chosen_rewards.gt_tensor(&rejected_rewards).to_kind(Kind::Float))),
            ("rewards/margins".to_string(), figure(&(&chosen_rewards - &rejected_rewards))),
            ("logps/chosen".to_string(), figure(&chosen.detach())),
            ("logps/rejected".to_string(), figure(&rejected.detach())),
        ]);
        (loss, metrics)
    }

    fn evaluate_and_log(&self, step: u64, samples: &mut SampleLog) -> Result<Metrics, StageError> {
        let mut sums: Metrics = Metrics::new();
        let mut batches = 0.0;
        {
            let _no_grad = tch::no_grad_guard();
            let refs: Vec<&(EncodedPair, (f64, f64))> = self.eval_pairs.iter().collect();
            for chunk in refs.chunks(self.settings.batch_size) {
                let (loss, figures) = self.batch_loss(chunk);
                let weight = chunk.len() as f64;
                *sums.entry("loss".into()).or_default() += loss.double_value(&[]) * weight;
                for (name, value) in figures {
                    *sums.entry(name).or_default() += value * weight;
                }
                batches += weight;
            }
        }
        let mut metrics: Metrics = sums.into_iter().map(|(name, sum)| (format!("eval/{name}"), sum / batches.max(1.0))).collect();
        let judges = Judges { reward: self.reward.as_deref(), reference: Some(&self.reference), oracle: self.context.task.oracle };
        let decoding = Decoding { temperature: self.settings.temperature, max_new_tokens: self.settings.max_new_tokens };
        let (generated, _) = evaluate_policy(
            self.context,
            &self.policy,
            &judges,
            &self.eval_prompts,
            decoding,
            None,
            step,
            (samples, self.settings.samples),
        )?;
        metrics.extend(generated);
        Ok(metrics)
    }
}

impl Trainer for DpoTrainer<'_> {
    type State = StartState;
    type Error = StageError;

    fn parts(&self) -> Vec<Part<'_>> {
        vec![Part { name: "policy", vs: self.policy.trained_vs(), optimizer: &self.optimizer }]
    }

    fn parts_mut(&mut self) -> Vec<PartMut<'_>> {
        vec![PartMut { name: "policy", vs: self.policy.trained_vs_mut(), optimizer: &mut self.optimizer }]
    }

    fn state(&self) -> StartState {
        StartState { start: self.start.clone() }
    }

    fn restore(&mut self, state: StartState) {
        self.start = state.start;
    }

    /// The starting policy's evaluation, and the cost of the reference's log-probs, computed
    /// before the first step: both responses of every pair.
    fn start(&mut self, samples: &mut SampleLog) -> Result<Option<Metrics>, StageError> {
        self.start = self.evaluate_and_log(0, samples)?;
        let mut start = self.start.clone();
        start.insert("cost/forward_passes".into(), 2.0 * (self.train_pairs.len() + self.eval_pairs.len()) as f64);
        start.insert("time/step_s".into(), self.reference_seconds);
        Ok(Some(start))
    }

    fn step(&mut self, step: u64) -> Result<Metrics, StageError> {
        let started = std::time::Instant::now();
        let size = self.settings.batch_size;
        let global_batch = epoch_items(&self.train_pairs, (step - 1) as usize * size, size, self.context.seed(), DATA_SEED);
        // Under data parallelism: this rank's pairs; its loss and figures, their share of the
        // batch's means, sum over the ranks.
        let world = distributed::world();
        let batch = &global_batch[world.shard(size)];
        let share = batch.len() as f64 / size as f64;
        let (loss, mut metrics) = self.batch_loss(batch);
        metrics.insert("train/loss".to_string(), loss.double_value(&[]));
        crate::model::blocks::backward(&(loss * (share * self.optimizer.loss_scale())));
        let lr = self.schedule.at(step);
        let grad_norm = self.optimizer.update(lr, self.settings.grad_clip)?;
        let mut metrics = world.sum_weighted(metrics, share)?;
        let seconds = started.elapsed().as_secs_f64();
        metrics.extend([
            ("grad_norm".to_string(), grad_norm),
            ("lr".to_string(), lr),
            ("pairs_per_s".to_string(), size as f64 / seconds),
            ("time/step_s".to_string(), seconds),
            // The policy reads both responses of each pair, forward and backward.
            ("cost/forward_passes".to_string(), 2.0 * size as f64),
            ("cost/backward_passes".to_string(), 2.0 * size as f64),
        ]);
        Ok(metrics)
    }

    fn evaluate(&mut self, step: u64, samples: &mut SampleLog) -> Result<Metrics, StageError> {
        self.evaluate_and_log(step, samples)
    }
}

/// Tokenises pairs, leaving out ties (no preference to learn) and cutting responses to the
/// model's context.
fn encode_pairs(context: &StageContext, pairs: Vec<PreferencePair>, context_length: i64) -> Result<Vec<EncodedPair>, StageError> {
    let tokenizer = context.tokenizer;
    let mut encoded = Vec::with_capacity(pairs.len());
    for pair in pairs.into_iter().filter(|pair| !pair.tie) {
        let prompt = tokenizer.encode(&pair.prompt)?;
        let room = (context_length - prompt.len() as i64).max(0) as usize;
        if room < 2 {
            return Err(context.invalid(format!(
                "a preference prompt of {} tokens leaves no room for a response in the model's context ({context_length})",
                prompt.len()
            )));
        }
        let response = |text: &str| -> Result<Vec<i64>, StageError> {
            let mut ids = tokenizer.encode(text)?;
            ids.truncate(room - 1);
            ids.push(tokenizer.eos_id());
            Ok(ids)
        };
        encoded.push(EncodedPair { chosen: response(&pair.chosen)?, rejected: response(&pair.rejected)?, prompt });
    }
    Ok(encoded)
}

fn train(context: &StageContext, data: &PreferenceData, settings: &DpoKeys) -> Result<Metrics, StageError> {
    super::check_shardable(context, "batch_size", settings.batch_size)?;
    let sampler = PolicySampler { reference: &settings.policy, device: settings.device, dtype: settings.dtype };
    let (train_pairs, eval_pairs) = preference_pairs(context, data, &sampler)?;
    let training = Training { lora: settings.lora.as_ref(), gradient_checkpointing: settings.gradient_checkpointing };
    let policy = context.load_trained_model(&settings.policy, settings.device, settings.dtype, &training)?;
    let reference = context.load_reference(settings.reference(), &settings.policy, &training, settings.device, settings.dtype)?;
    let context_length = policy.transformer.config().context_length();
    let (train_pairs, eval_pairs) =
        (encode_pairs(context, train_pairs, context_length)?, encode_pairs(context, eval_pairs, context_length)?);
    if train_pairs.is_empty() || eval_pairs.is_empty() {
        return Err(context.invalid("no preference pairs to train or evaluate on (ties carry no preference and are left out)"));
    }
    tracing::info!(train = train_pairs.len(), eval = eval_pairs.len(), "preference pairs");
    let started = std::time::Instant::now();
    let with_reference = |pairs: Vec<EncodedPair>| {
        let sums = reference_logprobs(&reference, &policy, &pairs, settings.batch_size);
        pairs.into_iter().zip(sums).collect::<Vec<_>>()
    };
    let (train_pairs, eval_pairs) = (with_reference(train_pairs), with_reference(eval_pairs));
    let reference_seconds = started.elapsed().as_secs_f64();
    let reward = settings.reward.as_deref().map(|reward| context.load_reward(reward, settings.device, settings.dtype)).transpose()?;
    let adam = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
    let mut trainer = DpoTrainer {
        context,
        settings,
        optimizer: AdamW::new(policy.trained_vs(), adam),
        policy,
        reference,
        reward,
        schedule: LrSchedule {
            lr: settings.lr,
            min_lr_ratio: 0.1,
            warmup_steps: settings.warmup_steps,
            total_steps: settings.steps,
            shape: settings.schedule,
        },
        train_pairs,
        eval_pairs,
        eval_prompts: evaluation_prompts(context, settings.eval_prompts)?,
        start: Metrics::new(),
        reference_seconds,
    };
    let outcome = stage_loop::run(&mut trainer, &context.loop_settings(settings.steps, settings.eval_every, &FIGURES))?;
    trainer.policy.save(&context.dir().join(CHECKPOINT_DIR))?;
    let mut summary = final_summary(&outcome.last_evaluated, &trainer.start, outcome.steps);
    summary.remove("iterations");
    summary.insert("steps".into(), outcome.steps as f64);
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::tensor_testing::{assert_close, values};

    fn scalars(values: &[f32]) -> Tensor {
        Tensor::from_slice(values)
    }

    fn log_sigmoid(x: f64) -> f64 {
        -(1.0 + (-x).exp()).ln()
    }

    #[test]
    fn dpo_losses_match_hand_computation() {
        // pair 0: policy prefers chosen by 3 − 1 = 2 nats more than the reference's 1 − 0 … h = 1
        // pair 1: h = (−2 − −1) − (0 − 0) = −1
        let policy = (scalars(&[-1.0, -2.0]), scalars(&[-3.0, -1.0]));
        let reference = (scalars(&[-2.0, -3.0]), scalars(&[-3.0, -3.0]));
        let h = [(-1.0 + 3.0) - (-2.0 + 3.0), (-2.0 + 1.0) - (-3.0 + 3.0)];
        assert_eq!(h, [1.0, -1.0]);
        let beta = 0.5;
        let sigmoid = dpo_loss((&policy.0, &policy.1), (&reference.0, &reference.1), beta, DpoLoss::Sigmoid, 0.0);
        assert_close(&values(&sigmoid), &[-log_sigmoid(0.5), -log_sigmoid(-0.5)]);
        // conservative DPO, ε = 0.1: −0.9·log σ(βh) − 0.1·log σ(−βh)
        let smoothed = dpo_loss((&policy.0, &policy.1), (&reference.0, &reference.1), beta, DpoLoss::Sigmoid, 0.1);
        assert_close(
            &values(&smoothed),
            &[-0.9 * log_sigmoid(0.5) - 0.1 * log_sigmoid(-0.5), -0.9 * log_sigmoid(-0.5) - 0.1 * log_sigmoid(0.5)],
        );
        // IPO: (h − 1/(2β))² = (1 − 1)², (−1 − 1)²
        let ipo = dpo_loss((&policy.0, &policy.1), (&reference.0, &reference.1), beta, DpoLoss::Ipo, 0.0);
        assert_close(&values(&ipo), &[0.0, 4.0]);
    }

    #[test]
    fn the_rpo_term_is_the_chosen_tokens_mean_nll() {
        // 3 real tokens (−1, −2, −0.5) and 1 (−3); the padding's −9 does not count: 6.5 / 4
        let logprobs = Tensor::from_slice(&[-1.0f32, -2.0, -0.5, -3.0, -9.0, -9.0]).view([2, 3]);
        let mask = Tensor::from_slice(&[1.0f32, 1.0, 1.0, 1.0, 0.0, 0.0]).view([2, 3]);
        assert_close(&[chosen_nll(&logprobs, &mask).double_value(&[])], &[6.5 / 4.0]);
    }
}
