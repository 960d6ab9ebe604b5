//! The rollout machinery every policy-optimising stage and `rlhf eval` share: sampling responses
//! with the KV cache, the token layout of prompt and response, log-probs of the responses under
//! a model, scorers, and the figures and per-response records of a held-out evaluation.

use std::ops::Range;
use std::time::Instant;

use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::data::synthetic::GoldOracle;
use crate::data::tokenizer::{TextTokenizer, TokenizerError};
use crate::distributed::{self, DistributedError};
use crate::model::generate::{generate_rows, left_pad, GenerateError, GenerateOptions, Generation, Sampling};
use crate::model::reward::{RewardModel, RewardNormalization};
use crate::model::{LanguageModel, ReferenceModel, Transformer};
use crate::rng::step_seed;
use crate::run::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Generate(#[from] GenerateError),
    #[error(transparent)]
    Distributed(#[from] DistributedError),
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
    // Under data parallelism each rank samples its share of the prompts (each response as one
    // process would sample it) and every rank gets the whole batch back.
    let rows = shared_rows(encoded.len());
    let generation = generate_rows(policy.transformer.as_ref(), &encoded, tokenizer.stop_ids(), &options, rows.clone())?;
    let generation = generation.gathered(&rows, encoded.len())?;
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

    /// Given prompts and responses (each response ending as it should be scored, e.g. with
    /// end-of-text): prompts left-padded and responses right-padded with `pad_id`.
    pub fn from_pairs(prompts: &[Vec<i64>], responses: &[Vec<i64>], pad_id: i64) -> Self {
        let (prompt_ids, prompt_mask) = left_pad(prompts, pad_id, Device::Cpu);
        let width = responses.iter().map(Vec::len).max().unwrap_or(0);
        let (mut ids, mut mask) = (Vec::with_capacity(responses.len() * width), Vec::with_capacity(responses.len() * width));
        for response in responses {
            let padding = width - response.len();
            ids.extend(response.iter().copied().chain(std::iter::repeat_n(pad_id, padding)));
            mask.extend(std::iter::repeat_n(1i64, response.len()).chain(std::iter::repeat_n(0, padding)));
        }
        let shape = [responses.len() as i64, width as i64];
        let (response_ids, response_mask) = (Tensor::from_slice(&ids).view(shape), Tensor::from_slice(&mask).view(shape));
        RolloutTokens {
            sequence: Tensor::cat(&[&prompt_ids, &response_ids], 1),
            sequence_mask: Tensor::cat(&[&prompt_mask, &response_mask], 1),
            prompt_width: prompt_ids.size()[1],
            response_width: width as i64,
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

    /// The contiguous rows `range`, as views (no copy).
    pub fn row_range(&self, range: &Range<usize>) -> Self {
        let rows = |t: &Tensor| t.narrow(0, range.start as i64, range.len() as i64);
        RolloutTokens {
            sequence: rows(&self.sequence),
            sequence_mask: rows(&self.sequence_mask),
            response_ids: rows(&self.response_ids),
            response_mask: rows(&self.response_mask),
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

    /// The vocabulary its token ids index, for a model (a programmatic reward reads text).
    fn vocab_size(&self) -> Option<i64> {
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

    fn vocab_size(&self) -> Option<i64> {
        Some(self.transformer.config().vocab_size())
    }
}

/// A judge of a prompt and a response, as text.
pub type TextJudge = Box<dyn Fn(&str, &str) -> f64 + Send + Sync>;

/// A programmatic reward read from the decoded text: the task's gold oracle (which optimises the
/// true objective, for ablations) or its verifier.
pub struct TextReward {
    pub tokenizer: TextTokenizer,
    pub judge: TextJudge,
}

impl Scorer for TextReward {
    fn score(&self, prompts: &[Vec<i64>], responses: &[Vec<i64>]) -> Tensor {
        let scores: Vec<f32> = prompts
            .iter()
            .zip(responses)
            .map(|(prompt, response)| (self.judge)(&self.tokenizer.decode(prompt), &self.tokenizer.decode(response)) as f32)
            .collect();
        Tensor::from_slice(&scores)
    }
}

/// The judges of a rollout or an evaluation; each is optional.
pub struct Judges<'a> {
    pub reward: Option<&'a dyn Scorer>,
    pub reference: Option<&'a ReferenceModel>,
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

/// Responses of a policy to prompts and how they fare with each judge present: log-probs under
/// the policy and the reference, the reward's raw score, the gold score. Rollouts of every RL
/// stage and held-out evaluations are made of these.
pub struct ScoredRollout {
    pub generation: Generation,
    pub tokens: RolloutTokens,
    /// The prompts' token ids.
    pub encoded_prompts: Vec<Vec<i64>>,
    /// The responses as text, without end-of-text.
    pub responses: Vec<String>,
    /// The policy's hidden states at the response positions of this rank's `rows` (on its
    /// device; a shared value head reads them), when its log-probs were recomputed.
    pub policy_states: Option<Tensor>,
    /// The rows this rank scored: all of them in one process, its share under data parallelism.
    pub rows: Range<usize>,
    /// `[B, T]` the policy's log-probs (CPU, masked to the response).
    pub logprobs: Tensor,
    /// `[B, T]` (CPU, masked) with a reference judge.
    pub reference_logprobs: Option<Tensor>,
    /// `[B]` (CPU) with a reward judge.
    pub raw_scores: Option<Tensor>,
    /// `[B]` whether the response ended with end-of-text.
    pub stopped: Vec<bool>,
    pub gold: Option<Vec<f64>>,
    /// Seconds spent generating, then scoring.
    pub seconds: (f64, f64),
}

/// The rows of a batch of `count` this rank computes: its share under data parallelism (all of
/// them when the batch has fewer rows than there are ranks).
pub fn shared_rows(count: usize) -> Range<usize> {
    let world = distributed::world();
    if count >= world.size() {
        world.shard(count)
    } else {
        0..count
    }
}

/// The whole batch of `count` rows from each rank's `rows` of it ([`shared_rows`]).
pub fn gather_rows(rows: &Range<usize>, own: Tensor, count: usize) -> Result<Tensor, DistributedError> {
    if rows.len() == count {
        return Ok(own);
    }
    distributed::world().gather_rows(&own, count)
}

impl ScoredRollout {
    /// The tokens of this rank's [`rows`](Self::rows).
    pub fn own_tokens(&self) -> RolloutTokens {
        self.tokens.row_range(&self.rows)
    }

    /// Σ (log π − log π_ref) of each response, with a reference judge.
    pub fn sequence_kl(&self) -> Option<Tensor> {
        self.reference_logprobs.as_ref().map(|reference| (&self.logprobs - reference).sum_dim_intlist(1, false, Kind::Double))
    }
}

/// Where a rollout's policy log-probs come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyLogprobs {
    /// A forward pass over prompt and response after generation (Huang et al. 2024, detail 6):
    /// the log-probs the optimisation's ratios are taken against, exactly as it computes them.
    Recomputed,
    /// Those the sampler computed as it drew each token (from the KV cache; they differ from a
    /// fresh pass by rounding only, `rollout/sampling_logprob_gap`): a forward pass fewer, where
    /// the optimisation needs no separate old log-probs (one on-policy step, as TRL skips it).
    Sampled,
}

/// Samples one response per prompt from `policy` with `decoding` and `seed`, and scores it by
/// each judge.
pub fn sample_and_score(
    policy: &LanguageModel,
    prompts: &[String],
    judges: &Judges,
    decoding: Decoding,
    seed: u64,
    policy_logprobs: PolicyLogprobs,
) -> Result<ScoredRollout, RolloutError> {
    let started = Instant::now();
    let (encoded_prompts, generation) = sample_responses(policy, prompts, decoding, seed)?;
    let generated = started.elapsed().as_secs_f64();
    let _no_grad = tch::no_grad_guard();
    let started = Instant::now();
    let tokens = RolloutTokens::new(&generation);
    // Under data parallelism each rank scores its share of the rows and every rank gets the
    // whole batch's scores back.
    let rows = shared_rows(prompts.len());
    let own_tokens = tokens.row_range(&rows);
    let gather = |scores: Tensor| gather_rows(&rows, scores, prompts.len());
    let own_mask = own_tokens.response_mask.to_kind(Kind::Float);
    let logprobs_of = |model: &dyn Transformer, states: &Tensor| {
        gather(response_logprobs(model, states, &own_tokens, decoding.temperature, false).0.to_device(Device::Cpu) * &own_mask)
    };
    let (policy_states, logprobs) = match policy_logprobs {
        PolicyLogprobs::Recomputed => {
            let states = response_states(policy.transformer.as_ref(), &own_tokens);
            let logprobs = logprobs_of(policy.transformer.as_ref(), &states)?;
            (Some(states), logprobs)
        }
        PolicyLogprobs::Sampled => {
            (None, generation.logprobs.to_device(Device::Cpu).to_kind(Kind::Float) * tokens.response_mask.to_kind(Kind::Float))
        }
    };
    let reference_logprobs = judges
        .reference
        .map(|reference| {
            reference.with(policy, |model| {
                let transformer = model.transformer.as_ref();
                logprobs_of(transformer, &response_states(transformer, &own_tokens))
            })
        })
        .transpose()?;
    let completions = generation.completions();
    let raw_scores =
        judges.reward.map(|reward| gather(reward.score(&encoded_prompts[rows.clone()], &completions[rows.clone()]))).transpose()?;
    let responses: Vec<String> = completions.iter().map(|ids| policy.tokenizer.decode(ids)).collect();
    let gold = judges.oracle.map(|oracle| prompts.iter().zip(&responses).map(|(p, r)| oracle.score(p, r).total).collect());
    Ok(ScoredRollout {
        stopped: generation.stopped(),
        generation,
        tokens,
        encoded_prompts,
        responses,
        policy_states,
        rows,
        logprobs,
        reference_logprobs,
        raw_scores,
        gold,
        seconds: (generated, started.elapsed().as_secs_f64()),
    })
}

/// One response per prompt from `policy` and how it fares with each judge: the held-out
/// evaluation of every RL stage and of `rlhf eval`.
pub fn evaluate(
    policy: &LanguageModel,
    prompts: &[String],
    judges: &Judges,
    settings: &EvaluationSettings,
) -> Result<Vec<EvaluatedResponse>, RolloutError> {
    let mut evaluated = Vec::with_capacity(prompts.len());
    for (index, batch) in prompts.chunks(settings.batch_size.max(1)).enumerate() {
        let seed = if index == 0 { settings.seed } else { step_seed(settings.seed, BATCH_SEED, index as u64) };
        let scored = sample_and_score(policy, batch, judges, settings.decoding, seed, PolicyLogprobs::Recomputed)?;
        let column = |values: Tensor| Vec::<f64>::try_from(values.to_kind(Kind::Double)).expect("1-D");
        let kl = scored.sequence_kl().map(column);
        let raw_scores = scored.raw_scores.map(column);
        for (row, (prompt, completion)) in batch.iter().zip(scored.responses).enumerate() {
            evaluated.push(EvaluatedResponse {
                gold_score: scored.gold.as_ref().map(|gold| gold[row]),
                prompt: prompt.clone(),
                completion,
                score: None,
                raw_score: raw_scores.as_ref().map(|s| s[row]),
                kl: kl.as_ref().map(|k| k[row]),
                stopped: scored.stopped[row],
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
