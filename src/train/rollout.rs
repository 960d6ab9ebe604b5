//! The rollout machinery every policy-optimising stage and `rlhf eval` share: sampling responses
//! with the KV cache, the token layout of prompt and response, log-probs of the responses under
//! a model, scorers, and the figures and per-response records of a held-out evaluation.

use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::data::synthetic::GoldOracle;
use crate::data::tokenizer::TokenizerError;
use crate::model::generate::{generate, GenerateError, GenerateOptions, Generation, Sampling};
use crate::model::reward::{RewardModel, RewardNormalization};
use crate::model::{LanguageModel, Transformer};
use crate::rng::step_seed;
use crate::run::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Generate(#[from] GenerateError),
}

/// How responses are sampled, and at which temperature their log-probs are read.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Decoding {
    pub temperature: f64,
    pub max_new_tokens: i64,
}

/// One response per prompt from `policy`, sampled with `decoding` from `seed`; returns the
/// prompts' token ids and the generation.
pub fn sample_responses(
    policy: &LanguageModel,
    prompts: &[String],
    decoding: Decoding,
    seed: u64,
) -> Result<(Vec<Vec<i64>>, Generation), RolloutError> {
    let _no_grad = tch::no_grad_guard();
    let tokenizer = &policy.tokenizer;
    let encoded = prompts.iter().map(|p| tokenizer.encode(p)).collect::<Result<Vec<_>, _>>()?;
    let options = GenerateOptions {
        max_new_tokens: decoding.max_new_tokens,
        sampling: Sampling::Sample { temperature: decoding.temperature, top_k: None, top_p: None },
        seed: Some(seed),
        use_kv_cache: true,
    };
    let generation = generate(policy.transformer.as_ref(), &encoded, tokenizer.stop_ids(), &options)?;
    Ok((encoded, generation))
}

/// Hidden states `[B, T, C]` at the positions that predict the response's tokens: position p
/// predicts token p + 1, so the T response tokens are predicted from P − 1 … P + T − 2. They are
/// also the states a value is estimated for.
///
/// Dropout is off here, in rollouts and in the optimisation passes alike (as in TRL and Huang et
/// al. 2024): with dropout on in the update, π/π_old is not 1 on the first minibatch even though
/// the policy has not moved, so clipping and the approximate KL would react to noise.
pub fn response_states(transformer: &dyn Transformer, rollout: &RolloutTokens) -> Tensor {
    let device = transformer.device();
    let hidden = transformer.forward(&rollout.sequence.to(device), Some(&rollout.sequence_mask.to(device)), None, false);
    hidden.narrow(1, rollout.prompt_width - 1, rollout.response_width)
}

/// Log-probabilities `[B, T]` of each row's response tokens under softmax(logits / temperature),
/// and, when asked, the entropy of that distribution at each response position.
pub fn response_logprobs(
    transformer: &dyn Transformer,
    states: &Tensor,
    rollout: &RolloutTokens,
    temperature: f64,
    with_entropy: bool,
) -> (Tensor, Option<Tensor>) {
    let log_distribution = (transformer.logits(states).to_kind(Kind::Float) / temperature).log_softmax(-1, Kind::Float);
    let response = rollout.response_ids.to(states.device()).unsqueeze(-1);
    let logprobs = log_distribution.gather(2, &response, false).squeeze_dim(-1);
    let entropy = with_entropy.then(|| -(log_distribution.exp() * &log_distribution).sum_dim_intlist(-1, false, Kind::Float));
    (logprobs, entropy)
}

/// Prompt and response tokens of a batch, on the CPU (each model moves them to its device).
pub struct RolloutTokens {
    /// `[B, P + T]` left-padded prompt then response (end-of-text after a row's end).
    pub sequence: Tensor,
    /// `[B, P + T]` 1 for real prompt tokens and response tokens up to end-of-text.
    pub sequence_mask: Tensor,
    /// `[B, T]`
    pub response_ids: Tensor,
    /// `[B, T]`
    pub response_mask: Tensor,
    pub prompt_width: i64,
    pub response_width: i64,
}

impl RolloutTokens {
    pub fn new(generation: &Generation) -> Self {
        let cpu = |t: &Tensor| t.to_device(Device::Cpu);
        let (prompt_ids, prompt_mask) = (cpu(&generation.prompt_ids), cpu(&generation.prompt_mask));
        let (response_ids, response_mask) = (cpu(&generation.completion_ids), cpu(&generation.completion_mask));
        RolloutTokens {
            sequence: Tensor::cat(&[&prompt_ids, &response_ids], 1),
            sequence_mask: Tensor::cat(&[&prompt_mask, &response_mask], 1),
            prompt_width: prompt_ids.size()[1],
            response_width: response_ids.size()[1],
            response_ids,
            response_mask,
        }
    }

    pub fn rows(&self, index: &Tensor) -> Self {
        RolloutTokens {
            sequence: self.sequence.index_select(0, index),
            sequence_mask: self.sequence_mask.index_select(0, index),
            response_ids: self.response_ids.index_select(0, index),
            response_mask: self.response_mask.index_select(0, index),
            prompt_width: self.prompt_width,
            response_width: self.response_width,
        }
    }
}

/// What RL maximises: a raw score per (prompt, response) token sequence (the response without
/// end-of-text), `[B]` float on the CPU, normalised by the stage. Stages use a reward model;
/// tests use programmatic rewards.
pub trait Scorer {
    fn score(&self, prompts: &[Vec<i64>], responses: &[Vec<i64>]) -> Tensor;

    /// The mean and std of its scores recorded when it was trained (`reward_normalization =
    /// "stored"`).
    fn stored_normalization(&self) -> Option<RewardNormalization> {
        None
    }
}

impl Scorer for RewardModel {
    fn score(&self, prompts: &[Vec<i64>], responses: &[Vec<i64>]) -> Tensor {
        let rows: Vec<Vec<i64>> = prompts
            .iter()
            .zip(responses)
            .map(|(p, r)| p.iter().chain(r).copied().take(self.transformer.config().context_length() as usize).collect())
            .collect();
        let (ids, mask) = crate::model::generate::left_pad(&rows, self.tokenizer.eos_id(), self.vs.device());
        self.scores(&ids, &mask, false).to_device(Device::Cpu)
    }

    fn stored_normalization(&self) -> Option<RewardNormalization> {
        self.normalization
    }
}

/// The judges of an evaluation; each is optional.
pub struct Judges<'a> {
    pub reward: Option<&'a dyn Scorer>,
    pub reference: Option<&'a LanguageModel>,
    pub oracle: Option<GoldOracle>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct EvaluationSettings {
    pub decoding: Decoding,
    /// The sampling seed of the first batch (later batches derive theirs from it).
    pub seed: u64,
    /// Prompts generated together: a PPO stage evaluates its `eval_prompts` in one batch, and a
    /// sampled response depends on the batch it was drawn in, so equal batches reproduce it.
    pub batch_size: usize,
}

/// Purpose of the seeds of batches after the first.
const BATCH_SEED: u64 = 61;

/// One response per prompt from `policy` and how it fares with each judge: a PPO stage's
/// held-out evaluation and `rlhf eval` alike.
pub fn evaluate(
    policy: &LanguageModel,
    prompts: &[String],
    judges: &Judges,
    settings: &EvaluationSettings,
) -> Result<Vec<EvaluatedResponse>, RolloutError> {
    let mut evaluated = Vec::with_capacity(prompts.len());
    for (index, batch) in prompts.chunks(settings.batch_size.max(1)).enumerate() {
        let seed = if index == 0 { settings.seed } else { step_seed(settings.seed, BATCH_SEED, index as u64) };
        let (encoded, generation) = sample_responses(policy, batch, settings.decoding, seed)?;
        let _no_grad = tch::no_grad_guard();
        let tokens = RolloutTokens::new(&generation);
        let mask = tokens.response_mask.to_kind(Kind::Float);
        let temperature = settings.decoding.temperature;
        let logprobs = |model: &dyn Transformer| {
            let states = response_states(model, &tokens);
            response_logprobs(model, &states, &tokens, temperature, false).0.to_device(Device::Cpu) * &mask
        };
        let column = |values: Tensor| Vec::<f64>::try_from(values.to_kind(Kind::Double)).expect("1-D");
        let kl = judges.reference.map(|reference| {
            column((logprobs(policy.transformer.as_ref()) - logprobs(reference.transformer.as_ref())).sum_dim_intlist(
                1,
                false,
                Kind::Double,
            ))
        });
        let completions = generation.completions();
        let raw_scores = judges.reward.map(|reward| column(reward.score(&encoded, &completions)));
        let stopped = generation.stopped();
        for (row, (prompt, ids)) in batch.iter().zip(&completions).enumerate() {
            let completion = policy.tokenizer.decode(ids);
            evaluated.push(EvaluatedResponse {
                gold_score: judges.oracle.map(|oracle| oracle.score(prompt, &completion).total),
                prompt: prompt.clone(),
                completion,
                score: None,
                raw_score: raw_scores.as_ref().map(|s| s[row]),
                kl: kl.as_ref().map(|k| k[row]),
                stopped: stopped[row],
            });
        }
    }
    Ok(evaluated)
}

/// One evaluated response: a line of `<stage>/eval_final.jsonl` (every response of the latest
/// evaluation) and of `samples.jsonl` (the first few).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvaluatedResponse {
    pub prompt: String,
    pub completion: String,
    /// The reward model's score, normalised as the stage normalises it (`eval/rm_score`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// The reward model's raw score, comparable between policies scored by the same model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub raw_score: Option<f64>,
    /// Σ (log π − log π_ref) over the response.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kl: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gold_score: Option<f64>,
    /// Whether the response ended with an end-of-text token.
    pub stopped: bool,
}

/// The figures of an evaluation: the mean of each score present over all responses
/// (`eval/rm_score`, `eval/raw_rm_score`, `eval/kl`, `eval/gold_score`) and `eval/eos_fraction`.
pub fn evaluation_figures(responses: &[EvaluatedResponse]) -> Metrics {
    let mut metrics = Metrics::new();
    let columns = [
        ("eval/rm_score", responses.iter().map(|r| r.score).collect::<Option<Vec<f64>>>()),
        ("eval/raw_rm_score", responses.iter().map(|r| r.raw_score).collect()),
        ("eval/kl", responses.iter().map(|r| r.kl).collect()),
        ("eval/gold_score", responses.iter().map(|r| r.gold_score).collect()),
    ];
    for (name, values) in columns {
        if let Some(values) = values.filter(|v| !v.is_empty()) {
            metrics.insert(name.to_string(), values.iter().sum::<f64>() / values.len() as f64);
        }
    }
    let stopped = responses.iter().filter(|r| r.stopped).count();
    metrics.insert("eval/eos_fraction".to_string(), stopped as f64 / responses.len().max(1) as f64);
    metrics
}
