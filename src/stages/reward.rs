//! `kind = "reward"`: a reward model trained on preference pairs with the Bradley–Terry loss
//! −log σ(r_chosen − r_rejected − margin) (Christiano et al. 2017; Ouyang et al. 2022), ties as
//! ½/½ targets, and an optional penalty (r_chosen + r_rejected)² keeping scores centred on zero
//! (Eisenstein et al. 2023). Pairs come from a preference file, the labeling database, or the
//! synthetic task's simulated annotators judging responses of the policy and of the task's
//! generator of varied quality. With `ensemble = K` it trains K heads on the shared backbone,
//! each on its own bootstrap resample of the pairs; their mean is the reward and their spread
//! its uncertainty.

use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::preferences::{preference_pairs, PolicySampler, PreferenceData};
use super::{Composite, Reading, StageContext, StageError, StageFigures, StageSettings, CHECKPOINT_DIR};
use crate::data::preferences::PreferencePair;
use crate::data::synthetic::annotators::sigmoid;
use crate::distributed;
use crate::model::generate::left_pad;
use crate::model::reward::{mean_and_population_std, RewardModel, RewardNormalization};
use crate::model::{DeviceSpec, LoraSettings, Precision};
use crate::rng::{epoch_items, step_seed};
use crate::run::metrics::SampleLog;
use crate::run::Metrics;
use crate::train::alerts::Watched;
use crate::train::optimizer::{AdamW, AdamWConfig};
use crate::train::schedule::{LrSchedule, Schedule};
use crate::train::stage_loop::{self, Trainer};
use crate::train::state::{Part, PartMut};

/// What reports and logs show of `reward` stages.
pub const FIGURES: StageFigures = StageFigures {
    headline: &["eval/accuracy", "eval/gold_agreement"],
    curves: &["train/loss", "train/accuracy", "eval/accuracy", "eval/gold_agreement"],
    primary: &["eval/gold_agreement", "eval/accuracy"],
    readings: &[("eval/accuracy", Reading::Higher), ("eval/gold_agreement", Reading::Higher)],
    frontier: None,
    shown: &["train/loss", "train/accuracy"],
    // The ensemble's figures exist only with `ensemble` > 1: logged when present.
    logged: &["eval/accuracy", "eval/gold_agreement", "eval/ensemble_std", "eval/ensemble_disagreement"],
    step_name: "step",
    watched: Watched {
        train_loss: Some("train/loss"),
        eval_loss: Some("eval/loss"),
        preference_accuracy: Some("eval/accuracy"),
        ..Watched::NOTHING
    },
};

/// A reward stage's settings: where its pairs come from, and its own keys.
pub type RewardSettings = Composite<PreferenceData, RewardKeys>;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardKeys {
    /// The model the backbone starts from (usually the SFT stage).
    pub init: String,

    /// Use the pairs' `margin` in the loss when they have one.
    #[serde(default = "defaults::yes")]
    pub use_margin: bool,
    /// Weight of the (r_chosen + r_rejected)² centring penalty.
    #[serde(default = "defaults::center_coef")]
    pub center_coef: f64,
    /// For this share of the training pairs, one extra pair whose rejected response was written
    /// for another prompt (see `add_off_prompt_pairs`); 0 trains on the given pairs alone.
    #[serde(default)]
    pub off_prompt_pairs: f64,
    /// Reward heads trained on bootstrap resamples of the pairs over the shared backbone; the
    /// reward is their mean, their spread the uncertainty. 1: a single head.
    #[serde(default = "defaults::ensemble")]
    pub ensemble: usize,

    #[serde(default = "defaults::steps")]
    pub steps: u64,
    /// Pairs per step (each pair is two sequences, scored in one batch).
    #[serde(default = "defaults::batch_size")]
    pub batch_size: usize,
    #[serde(default = "defaults::lr")]
    pub lr: f64,
    #[serde(default = "defaults::warmup_steps")]
    pub warmup_steps: u64,
    #[serde(default = "defaults::schedule")]
    pub schedule: Schedule,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default = "defaults::grad_clip")]
    pub grad_clip: f64,
    #[serde(default = "defaults::eval_every")]
    pub eval_every: u64,
    /// Policy samples scored at the end for `reward/mean` and `reward/std` (PPO's normalisation).
    #[serde(default = "defaults::normalization_samples")]
    pub normalization_samples: usize,
    #[serde(default)]
    pub device: DeviceSpec,
    #[serde(default)]
    pub dtype: Precision,
    /// Train low-rank adapters on the frozen backbone (and the head beside them) instead of all
    /// its weights.
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
    pub fn yes() -> bool { true }
    pub fn center_coef() -> f64 { 0.01 }
    pub fn ensemble() -> usize { 1 }
    pub fn steps() -> u64 { 300 }
    pub fn batch_size() -> usize { 16 }
    pub fn lr() -> f64 { 1e-4 }
    pub fn warmup_steps() -> u64 { 10 }
    pub fn schedule() -> Schedule { Schedule::Cosine }
    pub fn grad_clip() -> f64 { 1.0 }
    pub fn eval_every() -> u64 { 100 }
    pub fn normalization_samples() -> usize { 64 }
}

impl StageSettings for RewardSettings {
    fn inputs(&self) -> Vec<(&'static str, &str)> {
        vec![("init", self.own.init.as_str())]
    }

    fn base_model(&self) -> &str {
        &self.own.init
    }

    fn check(&self) -> Result<(), (&'static str, String)> {
        self.shared.check()?;
        let own = &self.own;
        super::check_lora(&own.lora)?;
        let positive =
            [("steps", own.steps as f64), ("batch_size", own.batch_size as f64), ("lr", own.lr), ("eval_every", own.eval_every as f64)];
        if let Some((key, value)) = positive.into_iter().find(|(_, v)| !(*v > 0.0)) {
            return Err((key, format!("a value > 0, got {value}")));
        }
        if !(0.0..=1.0).contains(&own.off_prompt_pairs) {
            return Err(("off_prompt_pairs", format!("a probability in [0, 1], got {}", own.off_prompt_pairs)));
        }
        if own.ensemble == 0 {
            return Err(("ensemble", "a number of reward heads ≥ 1, got 0".into()));
        }
        if own.ensemble > 1 && own.dtype == Precision::Fp16 {
            // The members' optimizer would need the backbone's loss scale, which moves on its own.
            return Err(("ensemble", format!("1 under dtype = \"fp16\" (use bf16 or fp32 for an ensemble of {})", own.ensemble)));
        }
        Ok(())
    }

    fn devices(&self) -> Vec<(&'static str, DeviceSpec)> {
        vec![("reward", self.own.device)]
    }

    fn run(&self, context: &StageContext) -> Result<Metrics, StageError> {
        train(context, &self.shared, &self.own)
    }
}

/// Per-pair Bradley–Terry loss, averaged (see `bradley_terry_per_pair`), plus `center_coef` ·
/// mean((r_c + r_r)²).
pub fn bradley_terry_loss(chosen: &Tensor, rejected: &Tensor, margin: &Tensor, tie: &Tensor, center_coef: f64) -> Tensor {
    bradley_terry_per_pair(chosen, rejected, margin, tie).mean(Kind::Float) + centring(chosen, rejected, center_coef)
}

/// −log σ(Δ − margin) for a preference and −½ log σ(Δ) − ½ log σ(−Δ) for a tie, with
/// Δ = r_chosen − r_rejected (margin and tie broadcast against the scores). A margin says how
/// much better `chosen` is, so it has no meaning for a tie and is ignored there (the tie's target
/// is Δ = 0 whatever its margin field holds).
fn bradley_terry_per_pair(chosen: &Tensor, rejected: &Tensor, margin: &Tensor, tie: &Tensor) -> Tensor {
    let delta = chosen - rejected;
    let preferred = -(&delta - margin).log_sigmoid();
    let tied = -(delta.log_sigmoid() + (-&delta).log_sigmoid()) * 0.5;
    tied.where_self(tie, &preferred)
}

fn centring(chosen: &Tensor, rejected: &Tensor, center_coef: f64) -> Tensor {
    (chosen + rejected).square().mean(Kind::Float) * center_coef
}

/// The bootstrap weights of an ensemble's pairs: `own` `[n, K]` for the n pairs scored here,
/// `totals` `[K]` each member's over the whole batch, and the share of the batch's pairs the n
/// are — all of it in one process, a rank's part under data parallelism.
pub struct BootstrapWeights {
    pub own: Tensor,
    pub totals: Tensor,
    pub share: f64,
}

impl BootstrapWeights {
    /// The weights of a whole batch.
    pub fn whole(weights: Tensor) -> Self {
        BootstrapWeights { totals: weights.sum_dim_intlist(0, false, Kind::Float), own: weights, share: 1.0 }
    }
}

/// The loss of an ensemble's scores `[n, K]`: member k's Bradley–Terry loss over the pairs,
/// pair i counted `weights[i, k]` times — its bootstrap resample — as Σ w ℓ / max(Σ w, 1), averaged
/// over the members; plus the centring penalty on the members' mean scores. For a rank's part of
/// a batch, its part of that loss: the sums over its pairs, divided by the whole batch's weights
/// (and the centring's mean taken as its share), so that the ranks' parts add up to the loss.
pub fn bootstrap_ensemble_loss(
    chosen: &Tensor,
    rejected: &Tensor,
    margin: &Tensor,
    tie: &Tensor,
    weights: &BootstrapWeights,
    center_coef: f64,
) -> Tensor {
    let per_pair = bradley_terry_per_pair(chosen, rejected, &margin.unsqueeze(1), &tie.unsqueeze(1));
    let per_member = (per_pair * &weights.own).sum_dim_intlist(0, false, Kind::Float) / weights.totals.clamp_min(1.0);
    let mean_scores = |scores: &Tensor| scores.mean_dim(1, false, Kind::Float);
    per_member.mean(Kind::Float) + centring(&mean_scores(chosen), &mean_scores(rejected), center_coef) * weights.share
}

/// How many times member `member` counts `pair` in its bootstrap resample: Poisson(1), the
/// online bootstrap (Oza & Russell 2001, "Online Bagging and Boosting"; Osband et al. 2016,
/// "Deep Exploration via Bootstrapped DQN") — a resample of n pairs counts each Binomial(n, 1/n)
/// times, Poisson(1) as n grows. Drawn from a hash of the pair's text, so it is fixed for the
/// whole run (a resumed run and every epoch see the same resample).
pub fn bootstrap_multiplicity(seed: u64, pair: &PreferencePair, member: usize) -> u32 {
    use sha2::{Digest, Sha256};
    let text = serde_json::json!([pair.prompt, pair.chosen, pair.rejected]).to_string();
    let digest = Sha256::digest(text.as_bytes());
    let hash = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
    let mut rng = ChaCha8Rng::seed_from_u64(step_seed(seed ^ hash, BOOTSTRAP_SEED, member as u64));
    // Inversion: the smallest x with P(X ≤ x) ≥ u (the cap only guards against rounding: P(X > 32) < 1e-35).
    let u: f64 = rng.random();
    let (mut x, mut probability) = (0u32, (-1.0f64).exp());
    let mut cumulative = probability;
    while u > cumulative && x < 32 {
        x += 1;
        probability /= f64::from(x);
        cumulative += probability;
    }
    x
}

/// Held-out figures of an ensemble from each pair's member scores `(chosen[k], rejected[k])`:
/// `eval/ensemble_std`, the std across members of a response's score averaged over the held-out
/// responses, and `eval/ensemble_disagreement`, the share of pairs whose order the members do not
/// all agree on. Empty without an ensemble.
pub fn ensemble_metrics(members: &[(Vec<f64>, Vec<f64>)]) -> Metrics {
    if members.is_empty() {
        return Metrics::new();
    }
    let std = |scores: &[f64]| mean_and_population_std(scores).1;
    let stds: f64 = members.iter().map(|(chosen, rejected)| std(chosen) + std(rejected)).sum();
    let split = members
        .iter()
        .filter(|(chosen, rejected)| {
            let wins = chosen.iter().zip(rejected).filter(|(c, r)| c > r).count();
            wins != 0 && wins != chosen.len()
        })
        .count();
    Metrics::from([
        ("eval/ensemble_std".to_string(), stds / (2 * members.len()) as f64),
        ("eval/ensemble_disagreement".to_string(), split as f64 / members.len() as f64),
    ])
}

/// For the share of pairs the model orders as labeled, ties left out (they have no right order)
/// as in `eval/accuracy`: the pairs judged and those ordered right, as counts that sum over
/// data-parallel ranks.
pub fn judged_and_right(chosen_wins: &[bool], ties: &[bool]) -> [f64; 2] {
    let judged: Vec<bool> = chosen_wins.iter().zip(ties).filter(|(_, &tie)| !tie).map(|(&wins, _)| wins).collect();
    [judged.len() as f64, judged.iter().filter(|&&wins| wins).count() as f64]
}

/// −log σ(−x) = log(1 + eˣ), without overflow.
fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

/// Held-out figures from the scores of each pair, `(r_chosen, r_rejected)`:
/// - `eval/loss`: the Bradley–Terry loss −log σ(Δ) (a tie: −½ log σ(Δ) − ½ log σ(−Δ));
/// - `eval/accuracy`: share of non-tied pairs where r_chosen > r_rejected;
/// - `eval/precision`, `eval/recall`, `eval/f1`: the pair shown in a random order (`flips[i]`
///   puts the rejected response first) as a binary task, "is the first one preferred?";
/// - `eval/ece`: expected calibration error of σ(r_first − r_second) over 10 bins;
/// - with gold scores, over pairs whose gold scores differ: `eval/gold_agreement` (the RM orders
///   the pair as gold does) and `eval/annotator_agreement` (the label orders it as gold does);
/// - `eval/noise_ceiling`: the accuracy the gold oracle itself gets against the labels on the
///   same pairs as `eval/accuracy` (a pair of equal gold counts ½, gold can only guess), so the
///   best accuracy any reward model can expect — the figure to read `eval/accuracy` against.
pub fn preference_metrics(scores: &[(f64, f64)], pairs: &[&PreferencePair], flips: &[bool]) -> Metrics {
    let judged: Vec<usize> = (0..scores.len()).filter(|&i| !pairs[i].tie).collect();
    let n = judged.len().max(1) as f64;
    let accuracy = judged.iter().filter(|&&i| scores[i].0 > scores[i].1).count() as f64 / n;

    let (mut tp, mut fp, mut fn_) = (0.0, 0.0, 0.0);
    let mut bins = [(0.0f64, 0.0f64, 0usize); 10];
    for &i in &judged {
        let (r_first, r_second, first_preferred) =
            if flips[i] { (scores[i].1, scores[i].0, false) } else { (scores[i].0, scores[i].1, true) };
        let predicted_first = r_first > r_second;
        match (predicted_first, first_preferred) {
            (true, true) => tp += 1.0,
            (true, false) => fp += 1.0,
            (false, true) => fn_ += 1.0,
            (false, false) => {}
        }
        let p = sigmoid(r_first - r_second);
        let bin = &mut bins[((p * 10.0) as usize).min(9)];
        bin.0 += p;
        bin.1 += f64::from(u8::from(first_preferred));
        bin.2 += 1;
    }
    let precision = if tp + fp > 0.0 { tp / (tp + fp) } else { 0.0 };
    let recall = if tp + fn_ > 0.0 { tp / (tp + fn_) } else { 0.0 };
    let f1 = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
    let ece = bins.iter().filter(|b| b.2 > 0).map(|(p, y, _)| (p - y).abs()).sum::<f64>() / n;

    // The held-out Bradley–Terry loss (margins and centring left out: it compares steps, not
    // settings), the figure in which a reward model's overfitting shows first.
    let loss = scores
        .iter()
        .zip(pairs)
        .map(|(&(chosen, rejected), pair)| {
            let delta = chosen - rejected;
            if pair.tie {
                0.5 * (softplus(-delta) + softplus(delta))
            } else {
                softplus(-delta)
            }
        })
        .sum::<f64>()
        / scores.len().max(1) as f64;
    let mut metrics = Metrics::from([
        ("eval/loss".to_string(), loss),
        ("eval/accuracy".to_string(), accuracy),
        ("eval/precision".to_string(), precision),
        ("eval/recall".to_string(), recall),
        ("eval/f1".to_string(), f1),
        ("eval/ece".to_string(), ece),
    ]);
    let golds: Vec<(usize, (f64, f64))> =
        (0..scores.len()).filter_map(|i| pairs[i].gold.map(|g| (i, g))).filter(|(_, g)| g.0 != g.1).collect();
    if !golds.is_empty() {
        let count = golds.len() as f64;
        let rm_agrees = golds.iter().filter(|(i, g)| (scores[*i].0 > scores[*i].1) == (g.0 > g.1)).count() as f64;
        let annotators_agree = golds.iter().filter(|(i, g)| !pairs[*i].tie && g.0 > g.1).count() as f64;
        metrics.insert("eval/gold_agreement".into(), rm_agrees / count);
        metrics.insert("eval/annotator_agreement".into(), annotators_agree / count);
    }
    let gold_accuracy: Option<f64> = judged
        .iter()
        .map(|&i| {
            pairs[i].gold.map(|(chosen, rejected)| {
                if chosen > rejected {
                    1.0
                } else if chosen == rejected {
                    0.5
                } else {
                    0.0
                }
            })
        })
        .sum();
    if let Some(correct) = gold_accuracy.filter(|_| !judged.is_empty()) {
        metrics.insert("eval/noise_ceiling".into(), correct / n);
    }
    metrics
}

/// A batch of pairs scored in one forward pass: chosen rows then rejected rows; `[n]` scores of
/// the model's head, or `[n, K]` of the ensemble's members.
fn score_pairs(model: &RewardModel, pairs: &[&PreferencePair], train: bool) -> Result<(Tensor, Tensor), StageError> {
    let mut rows = Vec::with_capacity(2 * pairs.len());
    for pair in pairs {
        rows.push(model.encode(&pair.prompt, &pair.chosen)?);
    }
    for pair in pairs {
        rows.push(model.encode(&pair.prompt, &pair.rejected)?);
    }
    let (ids, mask) = left_pad(&rows, model.tokenizer.eos_id(), model.vs.device());
    let scores = match model.member_scores(&ids, &mask, train) {
        Some(members) => members,
        None => model.scores(&ids, &mask, train),
    };
    let n = pairs.len() as i64;
    Ok((scores.narrow(0, 0, n), scores.narrow(0, n, n)))
}

const DATA_SEED: u64 = 11;
const PAIRS_SEED: u64 = 12;
const DROPOUT_SEED: u64 = 13;
const ENSEMBLE_SEED: u64 = 14;
const BOOTSTRAP_SEED: u64 = 15;

/// A reward stage in training: the model, its optimizer, and the pairs it learns from and is
/// evaluated on.
struct RewardTrainer<'a> {
    context: &'a StageContext<'a>,
    settings: &'a RewardKeys,
    /// Where the pairs came from (the synthetic source samples the init policy at its temperature).
    data: &'a PreferenceData,
    model: RewardModel,
    optimizer: AdamW,
    /// The optimizer of the ensemble's member heads, with `ensemble` > 1.
    ensemble_optimizer: Option<AdamW>,
    schedule: LrSchedule,
    train_pairs: Vec<PreferencePair>,
    eval_pairs: Vec<PreferencePair>,
    /// Which held-out pairs are shown rejected-first (for precision and recall).
    flips: Vec<bool>,
    /// `(r_chosen, r_rejected)` of each held-out pair at the last evaluation in this process.
    last_scores: Vec<(f64, f64)>,
    /// The final model's score statistics on policy samples, measured at the last evaluation.
    normalization: Option<RewardNormalization>,
}

impl Trainer for RewardTrainer<'_> {
    type State = Option<RewardNormalization>;
    type Error = StageError;

    fn parts(&self) -> Vec<Part<'_>> {
        let mut parts = vec![Part { name: "model", vs: self.model.trained_vs(), optimizer: &self.optimizer }];
        if let (Some(ensemble), Some(optimizer)) = (&self.model.ensemble, &self.ensemble_optimizer) {
            parts.push(Part { name: "ensemble", vs: &ensemble.vs, optimizer });
        }
        parts
    }

    fn parts_mut(&mut self) -> Vec<PartMut<'_>> {
        // The fields apart, to borrow the trained variables and the members together.
        let RewardModel { vs, adapters, ensemble, .. } = &mut self.model;
        let trained = adapters.as_mut().map_or(vs, |adapters| &mut adapters.vs);
        let mut parts = vec![PartMut { name: "model", vs: trained, optimizer: &mut self.optimizer }];
        if let (Some(ensemble), Some(optimizer)) = (ensemble, &mut self.ensemble_optimizer) {
            parts.push(PartMut { name: "ensemble", vs: &mut ensemble.vs, optimizer });
        }
        parts
    }

    fn state(&self) -> Option<RewardNormalization> {
        self.normalization
    }

    fn restore(&mut self, normalization: Option<RewardNormalization>) {
        self.normalization = normalization;
    }

    fn step(&mut self, step: u64) -> Result<Metrics, StageError> {
        let settings = self.settings;
        let started = Instant::now();
        let lr = self.schedule.at(step);
        tch::manual_seed(step_seed(self.context.seed(), DROPOUT_SEED, step) as i64);
        let global_batch =
            epoch_items(&self.train_pairs, (step - 1) as usize * settings.batch_size, settings.batch_size, self.context.seed(), DATA_SEED);
        // Under data parallelism: this rank's pairs, its loss their share of the batch's mean.
        let world = distributed::world();
        let batch = &global_batch[world.shard(global_batch.len())];
        let share = batch.len() as f64 / global_batch.len() as f64;
        let (chosen, rejected) = score_pairs(&self.model, batch, true)?;
        let device = chosen.device();
        let margins: Vec<f64> = batch.iter().map(|p| if settings.use_margin { p.margin.unwrap_or(0.0) } else { 0.0 }).collect();
        let ties: Vec<bool> = batch.iter().map(|p| p.tie).collect();
        let margins = Tensor::from_slice(&margins).to_kind(Kind::Float).to(device);
        let ties_tensor = Tensor::from_slice(&ties).to(device);
        let loss = if self.ensemble_optimizer.is_some() {
            let seed = self.context.seed();
            let weights: Vec<f32> = global_batch
                .iter()
                .flat_map(|pair| (0..settings.ensemble).map(move |k| bootstrap_multiplicity(seed, pair, k) as f32))
                .collect();
            let weights = Tensor::from_slice(&weights).view([global_batch.len() as i64, settings.ensemble as i64]).to(device);
            let own_rows = world.shard(global_batch.len());
            let own = weights.narrow(0, own_rows.start as i64, own_rows.len() as i64);
            let weights = BootstrapWeights { own, totals: weights.sum_dim_intlist(0, false, Kind::Float), share };
            bootstrap_ensemble_loss(&chosen, &rejected, &margins, &ties_tensor, &weights, settings.center_coef)
        } else {
            bradley_terry_loss(&chosen, &rejected, &margins, &ties_tensor, settings.center_coef) * share
        };
        crate::model::blocks::backward(&(&loss * self.optimizer.loss_scale()));
        let grad_norm = self.optimizer.update(lr, settings.grad_clip)?;
        if let Some(optimizer) = &mut self.ensemble_optimizer {
            optimizer.update(lr, settings.grad_clip)?;
            self.model.head_from_ensemble();
        }
        // The ensemble's order of a pair is its members' mean score's.
        let (chosen, rejected) = (mean_over_members(&chosen), mean_over_members(&rejected));
        let chosen_wins: Vec<bool> = Vec::try_from(chosen.gt_tensor(&rejected).to_device(tch::Device::Cpu)).expect("1-D");
        let [judged, right] = judged_and_right(&chosen_wins, &ties);
        let mut sums = [loss.double_value(&[]), judged, right];
        world.all_reduce_values(&mut sums)?;
        let [train_loss, judged, right] = sums;
        let mut metrics = Metrics::from([
            ("train/loss".to_string(), train_loss),
            ("lr".to_string(), lr),
            ("grad_norm".to_string(), grad_norm),
            ("pairs_per_s".to_string(), global_batch.len() as f64 / started.elapsed().as_secs_f64()),
        ]);
        if judged > 0.0 {
            metrics.insert("train/accuracy".into(), right / judged);
        }
        Ok(metrics)
    }

    fn evaluate(&mut self, step: u64, _samples: &mut SampleLog) -> Result<Metrics, StageError> {
        let eval_refs: Vec<&PreferencePair> = self.eval_pairs.iter().collect();
        let members;
        (self.last_scores, members) = eval_scores(&self.model, &eval_refs)?;
        let mut metrics = preference_metrics(&self.last_scores, &eval_refs, &self.flips);
        metrics.extend(ensemble_metrics(&members));
        if step == self.settings.steps {
            // Scores of policy samples, stored with the checkpoint: PPO's `stored` normalisation.
            let normalization = policy_score_statistics(self.context, self.settings, self.data, &self.model)?;
            metrics.insert("reward/mean".into(), normalization.mean);
            metrics.insert("reward/std".into(), normalization.std);
            self.normalization = Some(normalization);
        }
        Ok(metrics)
    }
}

fn train(context: &StageContext, data: &PreferenceData, settings: &RewardKeys) -> Result<Metrics, StageError> {
    super::check_shardable(context, "batch_size", settings.batch_size)?;
    let dir = context.dir();
    let seed = context.seed();
    let (mut train_pairs, eval_pairs) = preference_pairs(context, data, &sampler(settings))?;
    let labeled = train_pairs.len();
    add_off_prompt_pairs(&mut train_pairs, settings.off_prompt_pairs, &mut ChaCha8Rng::seed_from_u64(step_seed(seed, PAIRS_SEED, 5)));
    tracing::info!(train = labeled, off_prompt = train_pairs.len() - labeled, eval = eval_pairs.len(), "preference pairs");

    let source_dir = context.checkpoint_dir(&settings.init).ok_or_else(|| {
        context.invalid("`init` must be a trained checkpoint (an earlier stage or a directory), not a fresh [models] section")
    })?;
    tch::manual_seed(step_seed(seed, DATA_SEED, 0) as i64);
    let mut model = RewardModel::load(&source_dir, settings.device.resolve()?, settings.dtype, true)?;
    // Members of an init that was itself an ensemble are not this stage's: fresh ones, or none.
    model.ensemble = None;
    if let Some(lora) = &settings.lora {
        tch::manual_seed(step_seed(seed, super::LORA_SEED, 0) as i64);
        model.attach_adapters(lora).map_err(|error| context.invalid(error.to_string()))?;
    }
    model.transformer.blocks().set_checkpointing(settings.gradient_checkpointing);
    if settings.ensemble > 1 {
        tch::manual_seed(step_seed(seed, ENSEMBLE_SEED, 0) as i64);
        model.attach_ensemble(settings.ensemble as i64);
    }
    let schedule = LrSchedule {
        lr: settings.lr,
        min_lr_ratio: 0.1,
        warmup_steps: settings.warmup_steps,
        total_steps: settings.steps,
        shape: settings.schedule,
    };
    let adamw = AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: settings.weight_decay };
    let optimizer = AdamW::new(model.trained_vs(), adamw);
    let ensemble_optimizer = model.ensemble.as_ref().map(|ensemble| AdamW::new(&ensemble.vs, adamw));
    let mut flip_rng = ChaCha8Rng::seed_from_u64(step_seed(context.experiment.task.eval_seed, PAIRS_SEED, 1));
    let flips: Vec<bool> = eval_pairs.iter().map(|_| flip_rng.random_bool(0.5)).collect();
    let mut trainer = RewardTrainer {
        context,
        settings,
        data,
        model,
        optimizer,
        ensemble_optimizer,
        schedule,
        train_pairs,
        eval_pairs,
        flips,
        last_scores: Vec::new(),
        normalization: None,
    };
    let outcome = stage_loop::run(&mut trainer, &context.loop_settings(settings.steps, settings.eval_every, &FIGURES))?;
    let RewardTrainer { mut model, eval_pairs, mut last_scores, normalization, .. } = trainer;
    if last_scores.is_empty() {
        // Resumed from the state of the last step: nothing was evaluated in this process.
        last_scores = eval_scores(&model, &eval_pairs.iter().collect::<Vec<_>>())?.0;
    }
    write_held_out_scores(&dir.join(HELD_OUT_FILE), &eval_pairs, &last_scores)?;
    model.normalization = Some(match normalization {
        Some(normalization) => normalization,
        None => policy_score_statistics(context, settings, data, &model)?,
    });
    if settings.lora.as_ref().is_some_and(|lora| lora.merge) {
        model.merge_adapters();
    }
    model.save(&dir.join(CHECKPOINT_DIR))?;
    Ok(outcome.last_evaluated.into_iter().filter(|(name, _)| name.starts_with("eval/") || name.starts_with("reward/")).collect())
}

/// Per-pair held-out scores of the final model, so a user can see which pairs it gets wrong.
const HELD_OUT_FILE: &str = "eval_pairs.jsonl";

#[derive(Serialize)]
struct HeldOutScore<'a> {
    prompt: &'a str,
    chosen: &'a str,
    rejected: &'a str,
    tie: bool,
    reward_chosen: f64,
    reward_rejected: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    gold_chosen: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gold_rejected: Option<f64>,
}

fn write_held_out_scores(path: &std::path::Path, pairs: &[PreferencePair], scores: &[(f64, f64)]) -> Result<(), StageError> {
    let lines: String = pairs
        .iter()
        .zip(scores)
        .map(|(pair, &(reward_chosen, reward_rejected))| {
            let line = HeldOutScore {
                prompt: &pair.prompt,
                chosen: &pair.chosen,
                rejected: &pair.rejected,
                tie: pair.tie,
                reward_chosen,
                reward_rejected,
                gold_chosen: pair.gold.map(|g| g.0),
                gold_rejected: pair.gold.map(|g| g.1),
            };
            serde_json::to_string(&line).expect("serialises") + "\n"
        })
        .collect();
    Ok(crate::run::write_atomic(path, &lines)?)
}

/// `(r_chosen, r_rejected)` of each pair — with an ensemble, the members' mean — and each pair's
/// member scores (none without an ensemble).
type EvalScores = (Vec<(f64, f64)>, Vec<(Vec<f64>, Vec<f64>)>);

fn eval_scores(model: &RewardModel, pairs: &[&PreferencePair]) -> Result<EvalScores, StageError> {
    let _no_grad = tch::no_grad_guard();
    let (mut scores, mut members) = (Vec::with_capacity(pairs.len()), Vec::new());
    let cpu = |t: &Tensor| t.to_kind(Kind::Double).to_device(tch::Device::Cpu);
    for chunk in pairs.chunks(32) {
        let (chosen, rejected) = score_pairs(model, chunk, false)?;
        if chosen.dim() == 2 {
            members.extend(
                Vec::<Vec<f64>>::try_from(cpu(&chosen))
                    .expect("2-D")
                    .into_iter()
                    .zip(Vec::<Vec<f64>>::try_from(cpu(&rejected)).expect("2-D")),
            );
        }
        let chosen = Vec::<f64>::try_from(cpu(&mean_over_members(&chosen))).expect("1-D");
        let rejected = Vec::<f64>::try_from(cpu(&mean_over_members(&rejected))).expect("1-D");
        scores.extend(chosen.into_iter().zip(rejected));
    }
    Ok((scores, members))
}

/// The members' mean of `[n, K]` scores; `[n]` scores as they are.
fn mean_over_members(scores: &Tensor) -> Tensor {
    if scores.dim() == 2 {
        scores.mean_dim(1, false, Kind::Float)
    } else {
        scores.shallow_clone()
    }
}

/// Adds `share` · len pairs (prompt, a response to it, a response to another prompt) in which the
/// response to the prompt wins — the augmentation of Liu et al. 2024 ("RRM: Robust Reward Model
/// Training Mitigates Reward Hacking"). Judged by the responses alone such a pair is a toss-up, so
/// it pushes the model to read the prompt; without it the synthetic task's reward model learns
/// what good reviews look like but barely notices a review of the wrong product or aspect. The
/// responses are labeled chosen ones, and held-out pairs are never augmented.
pub fn add_off_prompt_pairs(pairs: &mut Vec<PreferencePair>, share: f64, rng: &mut impl Rng) {
    let labeled = pairs.len();
    let wanted = (labeled as f64 * share).round() as usize;
    // Pairs drawn with the same prompt are skipped, so a task with a handful of prompts gets a
    // few less; a task with one prompt gets none (there is no other prompt to borrow from).
    let mut attempts = 0;
    let mut added = 0;
    while added < wanted && attempts < 4 * wanted {
        attempts += 1;
        let (own, other) = (rng.random_range(0..labeled), rng.random_range(0..labeled));
        if pairs[own].prompt == pairs[other].prompt {
            continue;
        }
        let pair = PreferencePair {
            prompt: pairs[own].prompt.clone(),
            chosen: pairs[own].chosen.clone(),
            rejected: pairs[other].chosen.clone(),
            tie: false,
            margin: None,
            gold: None,
        };
        pairs.push(pair);
        added += 1;
    }
}

/// The init policy, whose samples make pairs and measure the final score statistics.
fn sampler(settings: &RewardKeys) -> PolicySampler<'_> {
    PolicySampler { reference: &settings.init, device: settings.device, dtype: settings.dtype }
}

/// Mean and std of the reward model's scores on policy samples for held-out prompts.
fn policy_score_statistics(
    context: &StageContext,
    settings: &RewardKeys,
    data: &PreferenceData,
    model: &RewardModel,
) -> Result<RewardNormalization, StageError> {
    let prompts: Vec<&str> = context
        .task
        .prompts
        .eval
        .iter()
        .chain(&context.task.prompts.train)
        .chain(context.task.demonstrations.eval.iter().map(|d| &d.prompt))
        .map(String::as_str)
        .take(settings.normalization_samples)
        .collect();
    if prompts.is_empty() {
        return Ok(RewardNormalization { mean: 0.0, std: 1.0 });
    }
    let responses = sampler(settings).sample(context, &prompts, data.sample_temperature, step_seed(context.seed(), PAIRS_SEED, 4))?;
    let pairs: Vec<(&str, &str)> = prompts.iter().copied().zip(responses.iter().map(String::as_str)).collect();
    let scores = model.score_texts(&pairs, 32)?;
    Ok(RewardNormalization::of_scores(&scores))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(tie: bool, gold: Option<(f64, f64)>) -> PreferencePair {
        PreferencePair { prompt: "p".into(), chosen: "a".into(), rejected: "b".into(), tie, margin: None, gold }
    }

    #[test]
    fn bradley_terry_loss_matches_hand_computation() {
        use std::f64::consts::LN_2;
        let chosen = Tensor::from_slice(&[2.0f32, 0.5, 1.0]);
        let rejected = Tensor::from_slice(&[1.0f32, 1.5, 1.0]);
        let no_margin = Tensor::zeros([3], (Kind::Float, tch::Device::Cpu));
        let no_tie = Tensor::from_slice(&[false, false, false]);
        // −log σ(1) = 0.313262, −log σ(−1) = 1.313262, −log σ(0) = 0.693147
        let expected = (0.313_261_687_5 + 1.313_261_687_5 + LN_2) / 3.0;
        let loss = bradley_terry_loss(&chosen, &rejected, &no_margin, &no_tie, 0.0).double_value(&[]);
        assert!((loss - expected).abs() < 1e-6, "{loss} vs {expected}");

        // margin 1 on the first pair: −log σ(1 − 1) = log 2
        let margin = Tensor::from_slice(&[1.0f32, 0.0, 0.0]);
        let with_margin = bradley_terry_loss(&chosen, &rejected, &margin, &no_tie, 0.0).double_value(&[]);
        assert!((with_margin - (LN_2 + 1.313_261_687_5 + LN_2) / 3.0).abs() < 1e-6);

        // a tie on the second pair: ½(−log σ(−1)) + ½(−log σ(1)) = 0.813262
        let tie = Tensor::from_slice(&[false, true, false]);
        let with_tie = bradley_terry_loss(&chosen, &rejected, &no_margin, &tie, 0.0).double_value(&[]);
        assert!((with_tie - (0.313_261_687_5 + 0.813_261_687_5 + LN_2) / 3.0).abs() < 1e-6);

        // a margin on a tie changes nothing: the tie's loss is still 0.813262
        let tie_margin = Tensor::from_slice(&[0.0f32, 2.0, 0.0]);
        let tie_with_margin = bradley_terry_loss(&chosen, &rejected, &tie_margin, &tie, 0.0).double_value(&[]);
        assert!((tie_with_margin - with_tie).abs() < 1e-7, "{tie_with_margin} vs {with_tie}");

        // centring: 0.1 · mean((3)², (2)², (2)²) = 0.1 · 17/3
        let centred = bradley_terry_loss(&chosen, &rejected, &no_margin, &no_tie, 0.1).double_value(&[]);
        assert!((centred - expected - 0.1 * 17.0 / 3.0).abs() < 1e-5);
    }

    #[test]
    fn the_ensemble_loss_weighs_each_members_pairs_by_its_resample() {
        use std::f64::consts::LN_2;
        // Two pairs, two members. Member 0: Δ 1 and 0, counted 2 and 0 times → −log σ(1).
        // Member 1: Δ −1 and 0, counted 1 and 1 → (−log σ(−1) + log 2) / 2.
        let chosen = Tensor::from_slice2(&[[2.0f32, 0.0], [1.0, 1.0]]);
        let rejected = Tensor::from_slice2(&[[1.0f32, 1.0], [1.0, 1.0]]);
        let weights = Tensor::from_slice2(&[[2.0f32, 1.0], [0.0, 1.0]]);
        let no_margin = Tensor::zeros([2], (Kind::Float, tch::Device::Cpu));
        let no_tie = Tensor::from_slice(&[false, false]);
        let whole = |weights: &Tensor| BootstrapWeights::whole(weights.shallow_clone());
        let loss = bootstrap_ensemble_loss(&chosen, &rejected, &no_margin, &no_tie, &whole(&weights), 0.0).double_value(&[]);
        let expected = (0.313_261_687_5 + (1.313_261_687_5 + LN_2) / 2.0) / 2.0;
        assert!((loss - expected).abs() < 1e-6, "{loss} vs {expected}");
        // a member whose resample left every pair out contributes 0, not a division by zero
        let empty = Tensor::from_slice2(&[[2.0f32, 0.0], [0.0, 0.0]]);
        let loss = bootstrap_ensemble_loss(&chosen, &rejected, &no_margin, &no_tie, &whole(&empty), 0.0).double_value(&[]);
        assert!((loss - 0.313_261_687_5 / 2.0).abs() < 1e-6, "{loss}");
        // centring is on the members' means: chosen (1, 1), rejected (1, 1) → 0.1 · 4
        let centred = bootstrap_ensemble_loss(&chosen, &rejected, &no_margin, &no_tie, &whole(&weights), 0.1).double_value(&[]);
        assert!((centred - expected - 0.4).abs() < 1e-5, "{centred}");
        // Two ranks' parts (a pair each, the whole batch's weights) add up to the whole loss.
        let part = |row: i64| {
            let weights = BootstrapWeights { own: weights.narrow(0, row, 1), totals: whole(&weights).totals, share: 0.5 };
            let rows = |t: &Tensor| t.narrow(0, row, 1);
            bootstrap_ensemble_loss(&rows(&chosen), &rows(&rejected), &rows(&no_margin), &rows(&no_tie), &weights, 0.1).double_value(&[])
        };
        assert!((part(0) + part(1) - centred).abs() < 1e-6, "{} + {} vs {centred}", part(0), part(1));
    }

    #[test]
    fn bootstrap_multiplicities_are_fixed_per_pair_and_member_and_poisson_one() {
        let pairs: Vec<PreferencePair> = (0..4000)
            .map(|i| PreferencePair {
                prompt: format!("p{i}"),
                chosen: "a".into(),
                rejected: "b".into(),
                tie: false,
                margin: None,
                gold: None,
            })
            .collect();
        let draws: Vec<u32> = pairs.iter().map(|p| bootstrap_multiplicity(3, p, 1)).collect();
        assert_eq!(draws, pairs.iter().map(|p| bootstrap_multiplicity(3, p, 1)).collect::<Vec<_>>());
        assert_ne!(draws, pairs.iter().map(|p| bootstrap_multiplicity(3, p, 2)).collect::<Vec<_>>(), "members resample apart");
        let n = draws.len() as f64;
        let mean = draws.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let zeros = draws.iter().filter(|&&x| x == 0).count() as f64 / n;
        // Poisson(1): mean 1, P(0) = 1/e ≈ 0.368
        assert!((mean - 1.0).abs() < 0.05, "mean {mean}");
        assert!((zeros - (-1.0f64).exp()).abs() < 0.03, "P(0) {zeros}");
    }

    #[test]
    fn ensemble_metrics_on_crafted_member_scores() {
        // Pair 0: members agree (chosen ahead in both); pair 1: they split.
        let members = vec![(vec![1.0, 3.0], vec![0.0, 0.0]), (vec![1.0, 0.0], vec![0.0, 1.0])];
        let m = ensemble_metrics(&members);
        // stds of the four responses: 1, 0, 0.5, 0.5 → 0.5
        assert!((m["eval/ensemble_std"] - 0.5).abs() < 1e-12);
        assert_eq!(m["eval/ensemble_disagreement"], 0.5);
        assert!(ensemble_metrics(&[]).is_empty());
    }

    #[test]
    fn training_accuracy_leaves_ties_out() {
        // right, wrong, a tie "won" and a tie "lost": 1 of the 2 judged pairs
        assert_eq!(judged_and_right(&[true, false, true, false], &[false, false, true, true]), [2.0, 1.0]);
        assert_eq!(judged_and_right(&[true, true], &[true, true]), [0.0, 0.0]);
    }

    #[test]
    fn preference_metrics_on_crafted_predictions() {
        let pairs: Vec<PreferencePair> = vec![
            pair(false, Some((1.0, 0.0))), // RM right, gold agrees with the label
            pair(false, Some((1.0, 0.0))), // RM wrong
            pair(false, Some((0.0, 1.0))), // RM right, but the annotator went against gold
            pair(false, Some((2.0, 0.0))), // RM right
            pair(true, Some((0.5, 0.5))),  // tie: not in accuracy, equal gold: not in agreement
        ];
        let refs: Vec<&PreferencePair> = pairs.iter().collect();
        let scores = [(1.0, 0.0), (0.0, 2.0), (3.0, 1.0), (0.5, 0.0), (0.0, 0.0)];
        // shown orders: pairs 1 and 3 show the rejected response first
        let flips = [false, true, false, true, false];
        let m = preference_metrics(&scores, &refs, &flips);
        assert_eq!(m["eval/accuracy"], 0.75);
        // "first preferred?" labels: 1, 0, 1, 0 ; predictions: 1, 1 (r_first=2 > 0), 1, 0
        // tp = 2, fp = 1, fn = 0 → precision 2/3, recall 1, f1 0.8
        assert!((m["eval/precision"] - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(m["eval/recall"], 1.0);
        assert!((m["eval/f1"] - 0.8).abs() < 1e-12);
        // gold: RM orders pairs 0, 3 like gold (2 of 4 with distinct gold); annotators 0, 1, 3 (3 of 4)
        assert_eq!(m["eval/gold_agreement"], 0.5);
        assert_eq!(m["eval/annotator_agreement"], 0.75);
        // gold as a predictor of the 4 judged labels: right on 0, 1, 3 → 3/4
        assert_eq!(m["eval/noise_ceiling"], 0.75);
        assert!(m["eval/ece"] > 0.0 && m["eval/ece"] < 1.0);
    }

    #[test]
    fn off_prompt_pairs_pit_a_response_against_one_written_for_another_prompt() {
        let labeled: Vec<PreferencePair> = (0..40)
            .map(|i| PreferencePair {
                prompt: format!("prompt {}", i % 4),
                chosen: format!("good {i}"),
                rejected: format!("bad {i}"),
                tie: false,
                margin: Some(1.0),
                gold: None,
            })
            .collect();
        let mut pairs = labeled.clone();
        add_off_prompt_pairs(&mut pairs, 0.5, &mut ChaCha8Rng::seed_from_u64(1));
        assert_eq!(&pairs[..40], &labeled[..], "the labeled pairs stay as they were");
        assert_eq!(pairs.len(), 60);
        let prompt_of = |response: &str| labeled.iter().find(|p| p.chosen == response).map(|p| p.prompt.clone()).unwrap();
        for added in &pairs[40..] {
            assert_eq!(prompt_of(&added.chosen), added.prompt, "the winner answers the pair's prompt");
            assert_ne!(prompt_of(&added.rejected), added.prompt, "the loser answers another prompt");
            assert!(!added.tie && added.margin.is_none());
        }

        let mut one_prompt: Vec<PreferencePair> = labeled.iter().filter(|p| p.prompt == "prompt 0").cloned().collect();
        add_off_prompt_pairs(&mut one_prompt, 1.0, &mut ChaCha8Rng::seed_from_u64(1));
        assert_eq!(one_prompt.len(), 10, "no other prompt to borrow from");
    }

    #[test]
    fn noise_ceiling_is_measured_on_the_pairs_accuracy_is_measured_on() {
        // Annotators picked a side on a pair gold cannot separate: accuracy counts it, so the
        // ceiling must too (gold's coin flip, ½), while agreement with gold leaves it out.
        let pairs =
            [pair(false, Some((1.0, 0.0))), pair(false, Some((0.0, 1.0))), pair(false, Some((0.5, 0.5))), pair(false, Some((2.0, 1.0)))];
        let refs: Vec<&PreferencePair> = pairs.iter().collect();
        let scores = [(1.0, 0.0), (1.0, 0.0), (1.0, 0.0), (0.0, 1.0)];
        let m = preference_metrics(&scores, &refs, &[false; 4]);
        assert_eq!(m["eval/accuracy"], 0.75);
        assert_eq!(m["eval/noise_ceiling"], (1.0 + 0.0 + 0.5 + 1.0) / 4.0);
        assert_eq!(m["eval/annotator_agreement"], 2.0 / 3.0);
        // RM agrees with gold on pair 0 only of the three gold can order
        assert!((m["eval/gold_agreement"] - 1.0 / 3.0).abs() < 1e-12);
    }
}
