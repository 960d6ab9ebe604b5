//! `kind = "best_of_n"`: best-of-n sampling (rejection sampling), the baseline every RL method
//! must beat: n responses per held-out prompt from the policy, the one the reward scores best
//! kept. Nothing is trained. It is evaluated at n = 1, 2, 4, … up to `n` — one metrics line per
//! n, `step` = n — with its KL to the reference twice: the analytic log n − (n − 1)/n (Stiennon
//! et al. 2020, appendix G.3; exact for a continuous reward, an upper bound otherwise) and a
//! plug-in estimate on the samples drawn ([`best_of_n_kl`]), which sees repeated responses and
//! tied scores. With `demonstrations` it also writes the best response to that many training
//! prompts to `demonstrations.jsonl`, the data of expert iteration for a following SFT stage.

use serde::{Deserialize, Serialize};
use tch::Kind;

use super::rl::{
    check_generation_lengths, check_positive, draw_prompts, evaluation_prompts, evaluation_sampling_seed, log_evaluation, model_inputs,
    training_prompts, PolicyRoles, RlModels, POLICY_READINGS,
};
use super::{Frontier, StageContext, StageError, StageFigures, StageSettings, Training};
use crate::model::{DeviceSpec, Precision};
use crate::rng::step_seed;
use crate::run::events::EventLog;
use crate::run::metrics::SampleLog;
use crate::run::{Metrics, MetricsWriter};
use crate::train::alerts::Watched;
use crate::train::rollout::{evaluation_figures, sample_and_score, Decoding, EvaluatedResponse, PolicyLogprobs};
use crate::train::stage_loop::{METRICS_FILE, SAMPLES_FILE};

/// What reports and logs show of `best_of_n` stages.
pub const FIGURES: StageFigures = StageFigures {
    headline: &["eval/rm_score", "eval/gold_score", "eval/kl", "eval/kl_bound"],
    curves: &["eval/rm_score", "eval/gold_score", "eval/kl", "eval/kl_bound"],
    primary: &["eval/gold_score", "eval/rm_score"],
    readings: &POLICY_READINGS,
    frontier: Some(Frontier { kl: "eval/kl", proxy: "eval/rm_score", gold: "eval/gold_score" }),
    shown: &[],
    logged: &["eval/rm_score", "eval/gold_score", "eval/kl", "eval/kl_bound"],
    step_name: "n",
    // Nothing trains: no rule applies.
    watched: Watched::NOTHING,
};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BestOfNSettings {
    /// The policy sampled (usually the SFT stage).
    pub policy: String,
    /// The model KL is measured against; by default the policy itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// A reward stage, a reward-model checkpoint, `gold` or `verifier`: what "best" means.
    pub reward: String,
    /// The largest n evaluated.
    #[serde(default = "defaults::n")]
    pub n: usize,
    #[serde(default = "defaults::eval_prompts")]
    pub eval_prompts: usize,
    #[serde(default = "defaults::max_new_tokens")]
    pub max_new_tokens: i64,
    #[serde(default = "defaults::temperature")]
    pub temperature: f64,
    /// Responses generated together.
    #[serde(default = "defaults::batch_size")]
    pub batch_size: usize,
    /// Chosen responses (at the largest n) written to samples.jsonl.
    #[serde(default = "defaults::samples")]
    pub samples: usize,
    /// Training prompts whose best of `n` responses go to `demonstrations.jsonl` (0: none).
    #[serde(default)]
    pub demonstrations: usize,
    #[serde(default)]
    pub devices: PolicyRoles<DeviceSpec>,
    #[serde(default)]
    pub dtypes: PolicyRoles<Precision>,
}

#[rustfmt::skip]
mod defaults {
    pub fn n() -> usize { 16 }
    pub fn eval_prompts() -> usize { 64 }
    pub fn max_new_tokens() -> i64 { 48 }
    pub fn temperature() -> f64 { 1.0 }
    pub fn batch_size() -> usize { 64 }
    pub fn samples() -> usize { 8 }
}

impl BestOfNSettings {
    fn reference(&self) -> &str {
        self.reference.as_deref().unwrap_or(&self.policy)
    }
}

impl StageSettings for BestOfNSettings {
    fn inputs(&self) -> Vec<(&'static str, &str)> {
        model_inputs(&self.policy, self.reference(), &self.reward)
    }

    fn check(&self) -> Result<(), (&'static str, String)> {
        if self.n < 1 {
            return Err(("n", format!("at least 1 response per prompt, got {}", self.n)));
        }
        check_positive(&[
            ("eval_prompts", self.eval_prompts as f64),
            ("max_new_tokens", self.max_new_tokens as f64),
            ("temperature", self.temperature),
            ("batch_size", self.batch_size as f64),
        ])
    }

    fn base_model(&self) -> &str {
        &self.policy
    }

    fn check_lengths(&self, longest_prompt: i64, context_of: &dyn Fn(&str) -> Option<i64>) -> Result<(), (&'static str, String)> {
        check_generation_lengths(&self.inputs(), self.max_new_tokens, longest_prompt, context_of)
    }

    fn devices(&self) -> Vec<(&'static str, DeviceSpec)> {
        let d = &self.devices;
        vec![("policy", d.policy), ("reference", d.reference), ("reward", d.reward)]
    }

    fn run(&self, context: &StageContext) -> Result<Metrics, StageError> {
        run(context, self)
    }
}

/// 1, 2, 4, … up to `n`, and `n` itself.
pub fn evaluated_sizes(n: usize) -> Vec<usize> {
    let mut sizes: Vec<usize> = std::iter::successors(Some(1usize), |s| Some(s * 2)).take_while(|&s| s <= n).collect();
    if sizes.last() != Some(&n) {
        sizes.push(n);
    }
    sizes
}

/// The analytic KL of best-of-n to the sampled policy, log n − (n − 1)/n.
pub fn analytic_kl(n: usize) -> f64 {
    let n = n as f64;
    n.ln() - (n - 1.0) / n
}

/// KL(best-of-n ‖ π) on the empirical distribution of `scores`, samples of π's responses to one
/// prompt: with F the distribution of the score, best-of-n puts F(s)ⁿ − F(s⁻)ⁿ on the responses
/// scoring s, π puts P(s), and responses of equal score share alike, so the KL is
/// Σ_s (F(s)ⁿ − F(s⁻)ⁿ)·log((F(s)ⁿ − F(s⁻)ⁿ)/P(s)). Repeated responses (equal scores) lower it
/// below the analytic value, which assumes every score distinct.
pub fn best_of_n_kl(scores: &[f64], n: usize) -> f64 {
    let mut sorted: Vec<f64> = scores.to_vec();
    sorted.sort_by(f64::total_cmp);
    let total = sorted.len() as f64;
    let mut kl = 0.0;
    let mut below = 0usize;
    for level in sorted.chunk_by(|a, b| a == b) {
        let (before, after) = (below as f64 / total, (below + level.len()) as f64 / total);
        let best_of_n = after.powi(n as i32) - before.powi(n as i32);
        if best_of_n > 0.0 {
            kl += best_of_n * (best_of_n / (level.len() as f64 / total)).ln();
        }
        below += level.len();
    }
    kl
}

/// `n` responses to each prompt (prompt-major), scored.
struct Samples {
    /// Per prompt, its `n` responses as evaluated.
    responses: Vec<Vec<EvaluatedResponse>>,
    /// What drawing and scoring them cost: `cost/generated_tokens`, `cost/forward_passes`,
    /// `time/step_s`.
    cost: Metrics,
}

/// Purpose of the sampling seeds of the held-out draw (per batch) and of the demonstrations'.
const EVAL_BATCH_SEED: u64 = 81;
const DEMONSTRATION_SEED: u64 = 82;

fn sample(
    context: &StageContext,
    settings: &BestOfNSettings,
    models: &RlModels,
    prompts: &[String],
    seed: u64,
) -> Result<Samples, StageError> {
    let repeated: Vec<String> = prompts.iter().flat_map(|p| std::iter::repeat_n(p.clone(), settings.n)).collect();
    let judges = models.judges(context);
    let decoding = Decoding { temperature: settings.temperature, max_new_tokens: settings.max_new_tokens };
    let mut flat: Vec<EvaluatedResponse> = Vec::with_capacity(repeated.len());
    let started = std::time::Instant::now();
    let mut generated_tokens = 0.0;
    for (index, batch) in repeated.chunks(settings.batch_size).enumerate() {
        let seed = step_seed(seed, EVAL_BATCH_SEED, index as u64);
        let scored = sample_and_score(&models.policy, batch, &judges, decoding, seed, PolicyLogprobs::Recomputed)?;
        generated_tokens += scored.tokens.response_mask.sum(Kind::Float).double_value(&[]);
        let column = |t: tch::Tensor| Vec::<f64>::try_from(t.to_kind(Kind::Double)).expect("1-D");
        let kl = scored.sequence_kl().map(column);
        let raw = scored.raw_scores.map(column);
        for (row, (prompt, completion)) in batch.iter().zip(scored.responses).enumerate() {
            flat.push(EvaluatedResponse {
                prompt: prompt.clone(),
                completion,
                score: raw.as_ref().map(|s| s[row]),
                raw_score: raw.as_ref().map(|s| s[row]),
                kl: kl.as_ref().map(|k| k[row]),
                gold_score: scored.gold.as_ref().map(|g| g[row]),
                stopped: scored.stopped[row],
            });
        }
    }
    // Each response is read by the policy, the reference and a reward model.
    let models = 2 + usize::from(models.reward.vocab_size().is_some());
    let cost = Metrics::from([
        ("cost/generated_tokens".to_string(), generated_tokens),
        ("cost/forward_passes".to_string(), (models * repeated.len()) as f64),
        ("time/step_s".to_string(), started.elapsed().as_secs_f64()),
    ]);
    Ok(Samples { responses: flat.chunks(settings.n).map(<[EvaluatedResponse]>::to_vec).collect(), cost })
}

/// The best of the first `n` responses by the reward's score (the first of equals).
fn best_of(responses: &[EvaluatedResponse], n: usize) -> &EvaluatedResponse {
    let score = |r: &EvaluatedResponse| r.raw_score.unwrap_or(f64::NEG_INFINITY);
    responses[..n].iter().reduce(|best, r| if score(r) > score(best) { r } else { best }).expect("n ≥ 1")
}

#[derive(Serialize)]
struct DemonstrationLine<'a> {
    prompt: &'a str,
    response: &'a str,
}

/// `<stage>/demonstrations.jsonl`: the best-of-n responses to training prompts.
pub const DEMONSTRATIONS_FILE: &str = "demonstrations.jsonl";

fn run(context: &StageContext, settings: &BestOfNSettings) -> Result<Metrics, StageError> {
    let dir = context.dir();
    // Best-of-n trains nothing: the policy is loaded as it is.
    let training = Training { lora: None, gradient_checkpointing: false };
    let models = RlModels::load(
        context,
        [&settings.policy, settings.reference(), &settings.reward],
        &settings.devices,
        &settings.dtypes,
        &training,
    )?;
    let prompts = evaluation_prompts(context, settings.eval_prompts)?;
    let samples = sample(context, settings, &models, &prompts, evaluation_sampling_seed(context.experiment.task.eval_seed))?;

    // Every n is evaluated on the same draws: best-of-2 keeps the better of best-of-1 and one more.
    let mut metrics_log = MetricsWriter::open(&dir.join(METRICS_FILE), None)?;
    let mut events = context.experiment.tensorboard.then(|| EventLog::for_stage(&context.run.path, &dir)).transpose()?;
    let mut last = Metrics::new();
    let mut chosen: Vec<EvaluatedResponse> = Vec::new();
    let sizes = evaluated_sizes(settings.n);
    for &n in &sizes {
        chosen = samples.responses.iter().map(|responses| best_of(responses, n).clone()).collect();
        let mut figures = evaluation_figures(&chosen);
        // KL(best-of-n ‖ π_ref) = KL(best-of-n ‖ π) + E_best-of-n[log π/π_ref]: the second term
        // is the chosen responses' own KL, 0 when the reference is the policy.
        let own_kl = figures.get("eval/kl").copied().unwrap_or(0.0);
        let estimate = samples
            .responses
            .iter()
            .map(|responses| best_of_n_kl(&responses.iter().map(|r| r.raw_score.unwrap_or(0.0)).collect::<Vec<_>>(), n))
            .sum::<f64>()
            / samples.responses.len() as f64;
        figures.insert("eval/kl".into(), estimate + own_kl);
        figures.insert("eval/kl_bound".into(), analytic_kl(n) + own_kl);
        tracing::info!(stage = context.name(), n, "evaluated {}", crate::train::stage_loop::describe(&figures, FIGURES.logged));
        if Some(&n) == sizes.last() {
            // What drawing all `n` responses cost, once, on the line of the largest n.
            figures.extend(samples.cost.clone());
        }
        metrics_log.log(n as u64, &figures)?;
        if let Some(events) = &mut events {
            events.scalars(n as u64, &figures)?;
        }
        last = figures;
    }
    let mut sample_log = SampleLog::new(dir.join(SAMPLES_FILE), None);
    log_evaluation(context, settings.n as u64, &chosen, (&mut sample_log, settings.samples))?;
    if let Some(events) = &mut events {
        events.samples(&sample_log.take_logged())?;
    }

    if settings.demonstrations > 0 {
        let train_prompts = training_prompts(context)?;
        let drawn = draw_prompts(&train_prompts, settings.demonstrations, step_seed(context.seed(), DEMONSTRATION_SEED, 0));
        let demonstrations = sample(context, settings, &models, &drawn, step_seed(context.seed(), DEMONSTRATION_SEED, 1))?;
        let lines: String = demonstrations
            .responses
            .iter()
            .map(|responses| {
                let best = best_of(responses, settings.n);
                // A demonstration file's response follows its prompt after one space (see the
                // task's JSONL format); the decoded completion carries it already.
                let line =
                    DemonstrationLine { prompt: &best.prompt, response: best.completion.strip_prefix(' ').unwrap_or(&best.completion) };
                serde_json::to_string(&line).expect("serialises") + "\n"
            })
            .collect();
        crate::run::write_atomic(&dir.join(DEMONSTRATIONS_FILE), &lines)?;
    }
    let mut summary: Metrics = last.into_iter().filter(|(name, _)| name.starts_with("eval/")).collect();
    summary.insert("n".into(), settings.n as f64);
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_double_up_to_n() {
        assert_eq!(evaluated_sizes(1), [1]);
        assert_eq!(evaluated_sizes(8), [1, 2, 4, 8]);
        assert_eq!(evaluated_sizes(12), [1, 2, 4, 8, 12]);
    }

    #[test]
    fn analytic_bound_on_hand_values() {
        assert_eq!(analytic_kl(1), 0.0);
        assert!((analytic_kl(4) - (4f64.ln() - 0.75)).abs() < 1e-12);
    }

    #[test]
    fn plug_in_kl_on_hand_values() {
        // Four distinct scores, n = 4: the k-th lowest gets (k/4)⁴ − ((k−1)/4)⁴ against ¼.
        let p: Vec<f64> = (1..=4).map(|k| (k as f64 / 4.0).powi(4) - ((k - 1) as f64 / 4.0).powi(4)).collect();
        let expected: f64 = p.iter().map(|pk| pk * (pk / 0.25).ln()).sum();
        assert!((best_of_n_kl(&[0.3, -1.0, 2.0, 0.9], 4) - expected).abs() < 1e-12);
        assert!((expected - 0.5903).abs() < 1e-4, "{expected}");
        // It stays below the analytic value, which assumes a continuous reward.
        assert!(expected < analytic_kl(4));
        // n = 1 is the policy itself; one repeated response leaves nothing to choose.
        assert!(best_of_n_kl(&[0.3, -1.0, 2.0], 1).abs() < 1e-12);
        assert!(best_of_n_kl(&[1.0, 1.0, 1.0, 1.0], 8).abs() < 1e-12);
        // Two levels of two: best-of-2 puts 1 − ¼ on the upper: ¾·ln(1.5) + ¼·ln(0.5)
        let two_levels = best_of_n_kl(&[0.0, 0.0, 1.0, 1.0], 2);
        assert!((two_levels - (0.75 * 1.5f64.ln() + 0.25 * 0.5f64.ln())).abs() < 1e-12);
    }
}
