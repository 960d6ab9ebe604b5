//! Where preference pairs come from, for every stage that learns from preferences (`reward`,
//! `dpo`): the keys naming the source, and the pairs they make — read from a JSONL file or the
//! labeling database, or labeled by the synthetic task's simulated annotators — and the training
//! pairs `augment` adds. Held-out pairs are drawn from the task's evaluation seed, so that runs
//! of one task are evaluated alike, and are never augmented.

use std::path::PathBuf;

use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::pipeline::{add_augmentation, update_data_report};
use super::{StageContext, StageError};
use crate::data::augment::{marked_lines, AugmentSettings, Synonyms, AUGMENTATION_SEED};
use crate::data::preferences::{read_jsonl, PreferencePair};
use crate::data::synthetic::annotators::{AnnotatorPool, Preference};
use crate::data::synthetic::{varied_response, GoldOracle, ReviewRequest};
use crate::model::generate::{generate, GenerateOptions, Sampling};
use crate::model::{DeviceSpec, Precision};
use crate::rng::step_seed;

/// Where preference pairs come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PreferenceSource {
    /// The synthetic task's simulated annotators.
    Synthetic,
    /// A `{"prompt", "chosen", "rejected"}` JSONL file (`preferences`).
    Jsonl,
    /// The labeling server's SQLite database (`database`), read directly.
    Labels,
}

/// The keys naming where a stage's preference pairs come from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreferenceData {
    #[serde(default = "defaults::source")]
    pub source: PreferenceSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferences: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<PathBuf>,
    /// File and database sources: fraction of pairs held out for evaluation.
    #[serde(default = "defaults::eval_fraction")]
    pub eval_fraction: f64,

    /// Synthetic source: training and held-out pairs to label.
    #[serde(default = "defaults::pairs")]
    pub pairs: usize,
    #[serde(default = "defaults::eval_pairs")]
    pub eval_pairs: usize,
    #[serde(default = "defaults::annotators")]
    pub annotators: usize,
    /// Mean probability that an annotator answers at random (spread over the pool).
    #[serde(default = "defaults::noise")]
    pub noise: f64,
    /// Std of the annotators' position bias (a logit added in favour of the first response).
    #[serde(default)]
    pub bias_std: f64,
    /// Bradley–Terry temperature of the annotators: lower is more decisive.
    #[serde(default = "defaults::annotator_temperature")]
    pub annotator_temperature: f64,
    #[serde(default)]
    pub tie_rate: f64,
    /// Share of responses sampled from the policy (the rest from the task's varied generator).
    #[serde(default = "defaults::policy_fraction")]
    pub policy_fraction: f64,
    #[serde(default = "defaults::sample_temperature")]
    pub sample_temperature: f64,
    /// EDA-style augmentation of the training pairs (`data::augment`); last, as TOML wants
    /// tables after plain values.
    #[serde(default, skip_serializing_if = "AugmentSettings::is_default")]
    pub augment: AugmentSettings,
}

// One default a line: the table reads better than rustfmt's four lines per function.
#[rustfmt::skip]
mod defaults {
    use super::PreferenceSource;
    pub fn source() -> PreferenceSource { PreferenceSource::Synthetic }
    pub fn eval_fraction() -> f64 { 0.1 }
    pub fn pairs() -> usize { 2000 }
    pub fn eval_pairs() -> usize { 400 }
    pub fn annotators() -> usize { 5 }
    pub fn noise() -> f64 { 0.1 }
    pub fn annotator_temperature() -> f64 { 0.3 }
    pub fn policy_fraction() -> f64 { 0.5 }
    pub fn sample_temperature() -> f64 { 1.0 }
}

impl PreferenceData {
    const NO_FILE: &'static str = "`preferences`: a preference JSONL file with source = \"jsonl\"";
    const NO_DATABASE: &'static str = "`database`: the labeling database with source = \"labels\"";

    /// Values that parse but cannot work, as `(key, what is expected)`.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        match self.source {
            PreferenceSource::Jsonl if self.preferences.is_none() => {
                return Err(("preferences", "a preference JSONL file with source = \"jsonl\"".into()))
            }
            PreferenceSource::Labels if self.database.is_none() => {
                return Err(("database", "the labeling database with source = \"labels\"".into()))
            }
            _ => {}
        }
        let positive = [
            ("annotator_temperature", self.annotator_temperature),
            ("sample_temperature", self.sample_temperature),
            ("annotators", self.annotators as f64),
        ];
        if let Some((key, value)) = positive.into_iter().find(|(_, v)| !(*v > 0.0)) {
            return Err((key, format!("a value > 0, got {value}")));
        }
        let probabilities = [
            ("noise", self.noise),
            ("tie_rate", self.tie_rate),
            ("policy_fraction", self.policy_fraction),
            ("eval_fraction", self.eval_fraction),
        ];
        if let Some((key, value)) = probabilities.into_iter().find(|(_, v)| !(0.0..=1.0).contains(v)) {
            return Err((key, format!("a probability in [0, 1], got {value}")));
        }
        if self.source == PreferenceSource::Synthetic && (self.pairs == 0 || self.eval_pairs == 0) {
            return Err(("pairs", "pairs and eval_pairs > 0".into()));
        }
        self.augment.check(self.uses_review_vocabulary())
    }

    /// Synthetic pairs are reviews: their augmentation may draw synonyms from the review task's
    /// vocabulary when there is no `synonyms` file.
    fn uses_review_vocabulary(&self) -> bool {
        self.source == PreferenceSource::Synthetic
    }
}

const PAIRS_SEED: u64 = 12;

/// The pairs `augment` added to a stage's training pairs, marked with their original and
/// techniques, in the stage directory.
pub const AUGMENTED_PAIRS_FILE: &str = "augmented_pairs.jsonl";

/// Training and held-out pairs from the configured source, the training pairs augmented as
/// `augment` says.
pub fn preference_pairs(
    context: &StageContext,
    settings: &PreferenceData,
    policy: &PolicySampler,
) -> Result<(Vec<PreferencePair>, Vec<PreferencePair>), StageError> {
    let (mut train, eval) = unaugmented_pairs(context, settings, policy)?;
    augment_pairs(context, settings, &mut train)?;
    Ok((train, eval))
}

/// Adds `augment`'s pairs to `train`; writes them to the stage's `augmented_pairs.jsonl` and
/// counts them in the run's data report as `<stage>.pairs`.
fn augment_pairs(context: &StageContext, settings: &PreferenceData, train: &mut Vec<PreferencePair>) -> Result<(), StageError> {
    let vocabulary = settings.uses_review_vocabulary().then(Synonyms::reviews);
    let augmenter =
        settings.augment.augmenter(vocabulary).map_err(|(key, expected)| context.invalid(format!("`{key}`: expected {expected}")))?;
    let Some(augmenter) = augmenter else { return Ok(()) };
    let mut added = augmenter.augment(train, step_seed(context.seed(), AUGMENTATION_SEED, 1));
    // A rewritten response has its own gold score: a deletion can cut a review's ending, an
    // insertion add a sentiment word. The label stays the annotator's (who saw the original).
    if let Some(oracle) = context.task.oracle {
        for pair in added.records.iter_mut().filter(|pair| pair.gold.is_some()) {
            pair.gold = Some((oracle.score(&pair.prompt, &pair.chosen).total, oracle.score(&pair.prompt, &pair.rejected).total));
        }
    }
    let lines = marked_lines(added.records.iter().map(AugmentedPair::of), &added.augmentation.provenance);
    crate::run::write_atomic(&context.dir().join(AUGMENTED_PAIRS_FILE), &lines)?;
    let report = &added.augmentation.report;
    update_data_report(context.run, |data_report| add_augmentation(data_report, &format!("{}.pairs", context.name()), report))?;
    tracing::info!(original = report.original, copies = report.copies, resampled = report.resampled, "augmented the training pairs");
    train.extend(added.records);
    Ok(())
}

/// A line of `augmented_pairs.jsonl` (with `original` and `techniques`).
#[derive(Serialize)]
struct AugmentedPair<'a> {
    prompt: &'a str,
    chosen: &'a str,
    rejected: &'a str,
    tie: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    margin: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gold_chosen: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gold_rejected: Option<f64>,
}

impl<'a> AugmentedPair<'a> {
    fn of(pair: &'a PreferencePair) -> Self {
        AugmentedPair {
            prompt: &pair.prompt,
            chosen: &pair.chosen,
            rejected: &pair.rejected,
            tie: pair.tie,
            margin: pair.margin,
            gold_chosen: pair.gold.map(|g| g.0),
            gold_rejected: pair.gold.map(|g| g.1),
        }
    }
}

/// Training and held-out pairs from the configured source, as it gives them.
fn unaugmented_pairs(
    context: &StageContext,
    settings: &PreferenceData,
    policy: &PolicySampler,
) -> Result<(Vec<PreferencePair>, Vec<PreferencePair>), StageError> {
    let invalid = |e: crate::data::preferences::PreferenceError| context.invalid(e.to_string());
    let all = match settings.source {
        PreferenceSource::Synthetic => return synthetic_pairs(context, settings, policy),
        PreferenceSource::Jsonl => {
            let path = settings.preferences.as_ref().ok_or_else(|| context.invalid(PreferenceData::NO_FILE))?;
            read_jsonl(path, context.tokenizer).map_err(invalid)?
        }
        PreferenceSource::Labels => {
            let path = settings.database.as_ref().ok_or_else(|| context.invalid(PreferenceData::NO_DATABASE))?;
            crate::label::export::read_preference_pairs(path, context.tokenizer).map_err(|e| context.invalid(e.to_string()))?
        }
    };
    let mut all = all;
    // Split by the evaluation seed: every run on these pairs holds out the same ones.
    all.shuffle(&mut ChaCha8Rng::seed_from_u64(step_seed(context.experiment.task.eval_seed, PAIRS_SEED, 0)));
    let eval_len = ((all.len() as f64 * settings.eval_fraction).ceil() as usize).clamp(1, all.len().saturating_sub(1).max(1));
    if all.len() < 2 {
        return Err(context.invalid(format!("{} preference pair(s): need at least 2 (one to train, one to evaluate)", all.len())));
    }
    let train = all.split_off(eval_len);
    Ok((train, all))
}

/// Pairs of responses to task prompts, labeled by simulated annotators from the gold oracle.
fn synthetic_pairs(
    context: &StageContext,
    settings: &PreferenceData,
    policy: &PolicySampler,
) -> Result<(Vec<PreferencePair>, Vec<PreferencePair>), StageError> {
    // The simulated annotators judge reviews: the arithmetic task's verifier has nothing to rank
    // between two wrong answers.
    let oracle = context
        .task
        .oracle
        .filter(|oracle| *oracle == GoldOracle::Reviews)
        .ok_or_else(|| context.invalid("source = \"synthetic\" needs the synthetic-reviews task (its gold oracle labels the pairs)"))?;
    let mut rng = ChaCha8Rng::seed_from_u64(step_seed(context.seed(), PAIRS_SEED, 2));
    let pool = AnnotatorPool::new(
        settings.annotators,
        settings.noise,
        settings.bias_std,
        settings.annotator_temperature,
        settings.tie_rate,
        &mut rng,
    );
    let prompts: Vec<&String> = context.task.training_prompts().collect();
    let eval_prompts: Vec<&String> =
        context.task.prompts.eval.iter().chain(context.task.demonstrations.eval.iter().map(|d| &d.prompt)).collect();
    if prompts.is_empty() || eval_prompts.is_empty() {
        return Err(context.invalid("the task has no prompts to build pairs from"));
    }

    // Held-out pairs draw their prompts, responses and labels from the evaluation seed, so that
    // runs of one task with other seeds are evaluated on the same pairs (those whose responses
    // come from the policy differ as the policies do).
    let mut rngs = [rng, ChaCha8Rng::seed_from_u64(step_seed(context.experiment.task.eval_seed, PAIRS_SEED, 2))];
    let held_out = |index: usize| usize::from(index >= settings.pairs);
    // Which responses come from the policy is drawn first, so the generation can be batched.
    let total = settings.pairs + settings.eval_pairs;
    let pair_prompts: Vec<&String> =
        (0..total).map(|i| *[&prompts, &eval_prompts][held_out(i)].choose(&mut rngs[held_out(i)]).expect("non-empty")).collect();
    let from_policy: Vec<[bool; 2]> = (0..total)
        .map(|i| {
            let rng = &mut rngs[held_out(i)];
            [rng.random_bool(settings.policy_fraction), rng.random_bool(settings.policy_fraction)]
        })
        .collect();
    let policy_prompts: Vec<&str> = pair_prompts
        .iter()
        .zip(&from_policy)
        .flat_map(|(prompt, flags)| flags.iter().filter(|&&f| f).map(move |_| prompt.as_str()))
        .collect();
    let mut policy_responses =
        policy.sample(context, &policy_prompts, settings.sample_temperature, step_seed(context.seed(), PAIRS_SEED, 3))?.into_iter();

    let mut pairs = Vec::with_capacity(total);
    for (index, (prompt, flags)) in pair_prompts.iter().zip(&from_policy).enumerate() {
        let request = ReviewRequest::parse(prompt);
        let mut respond = |from_policy: bool, rng: &mut ChaCha8Rng| match (from_policy, &request) {
            (true, _) => policy_responses.next().expect("one policy response per flag"),
            (false, Some(request)) => varied_response(rng, request),
            (false, None) => String::new(),
        };
        let rng = &mut rngs[held_out(index)];
        let first = respond(flags[0], rng);
        let mut second = respond(flags[1], rng);
        if second == first {
            if let Some(request) = &request {
                second = varied_response(rng, request);
            }
        }
        let (gold_first, gold_second) = (oracle.score(prompt, &first).total, oracle.score(prompt, &second).total);
        let pair = match pool.label(index, gold_first, gold_second, rng) {
            Preference::Second => PreferencePair {
                prompt: prompt.to_string(),
                chosen: second,
                rejected: first,
                tie: false,
                margin: None,
                gold: Some((gold_second, gold_first)),
            },
            label => PreferencePair {
                prompt: prompt.to_string(),
                chosen: first,
                rejected: second,
                tie: label == Preference::Tie,
                margin: None,
                gold: Some((gold_first, gold_second)),
            },
        };
        pairs.push(pair);
    }
    let eval = pairs.split_off(settings.pairs);
    Ok((pairs, eval))
}

/// The policy whose samples make some of the synthetic pairs' responses (the reward stage's
/// `init`, the DPO stage's `policy`), and where it runs.
pub struct PolicySampler<'a> {
    pub reference: &'a str,
    pub device: DeviceSpec,
    pub dtype: Precision,
}

impl PolicySampler<'_> {
    /// One response per prompt, sampled at `temperature` from `seed`.
    pub fn sample(&self, context: &StageContext, prompts: &[&str], temperature: f64, seed: u64) -> Result<Vec<String>, StageError> {
        if prompts.is_empty() {
            return Ok(Vec::new());
        }
        let policy = context.load_model(self.reference, self.device, self.dtype)?;
        let mut responses = Vec::with_capacity(prompts.len());
        for (index, chunk) in prompts.chunks(64).enumerate() {
            let encoded = chunk.iter().map(|p| policy.tokenizer.encode(p)).collect::<Result<Vec<_>, _>>()?;
            let longest = encoded.iter().map(Vec::len).max().unwrap_or(0) as i64;
            let options = GenerateOptions {
                max_new_tokens: (policy.transformer.config().context_length() - longest).clamp(1, 64),
                sampling: Sampling::Sample { temperature, top_k: None, top_p: None },
                seed: Some(seed.wrapping_add(index as u64)),
                use_kv_cache: true,
            };
            let generation = generate(policy.transformer.as_ref(), &encoded, policy.tokenizer.stop_ids(), &options)?;
            responses.extend(generation.completions().iter().map(|ids| policy.tokenizer.decode(ids)));
        }
        Ok(responses)
    }
}
