//! Batched autoregressive sampling with a KV cache: prompts left-padded to one width, greedy or
//! temperature / top-k / top-p sampling, each row stopping at the first of its stop ids (the
//! end-of-sequence token, and any other the model's generation config lists). Returns
//! the chosen ids and their log-probabilities (PPO's behaviour log-probs).

use tch::{Device, Kind, Tensor};

use super::architecture::Transformer;
use crate::distributed::DistributedError;

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    Greedy,
    /// Sample from softmax(logits / temperature), restricted to the `top_k` most likely tokens
    /// and/or the smallest set whose probability reaches `top_p` (nucleus, Holtzman et al. 2020).
    Sample {
        temperature: f64,
        top_k: Option<i64>,
        top_p: Option<f64>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerateOptions {
    pub max_new_tokens: i64,
    pub sampling: Sampling,
    /// Seeds libtorch's generator before sampling, for reproducible draws.
    pub seed: Option<u64>,
    /// Recompute the whole prefix each step instead of caching keys and values (the baseline the
    /// benchmark compares the cache against).
    pub use_kv_cache: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("prompt {index} is {prompt_tokens} tokens; with max_new_tokens = {max_new_tokens} that exceeds the model's context of {context} positions")]
    TooLong { index: usize, prompt_tokens: usize, max_new_tokens: i64, context: i64 },
    #[error("invalid sampling setting: {0}")]
    Sampling(String),
    #[error("no prompts given")]
    NoPrompts,
    #[error("no token id is given to end a generation")]
    NoStopIds,
}

/// The result of `generate` for a batch of `B` prompts and `N` = `max_new_tokens`.
#[derive(Debug)]
pub struct Generation {
    /// `[B, P]` prompts, left-padded with the end-of-text id.
    pub prompt_ids: Tensor,
    /// `[B, P]` 1 for prompt tokens, 0 for padding.
    pub prompt_mask: Tensor,
    /// `[B, T ≤ N]` generated ids; after a row's stop id, the end-of-sequence id (padding).
    pub completion_ids: Tensor,
    /// `[B, T]` 1 for generated tokens up to and including the row's stop id.
    pub completion_mask: Tensor,
    /// `[B, T]` log-probability of each chosen token under softmax(logits / temperature), 0 after
    /// the row stopped.
    pub logprobs: Tensor,
    stop_ids: Vec<i64>,
}

impl Generation {
    /// Each row's generated ids, without the stop id and what follows it.
    pub fn completions(&self) -> Vec<Vec<i64>> {
        let rows: Vec<Vec<i64>> =
            Vec::<Vec<i64>>::try_from(&self.completion_ids.to_device(Device::Cpu)).expect("completion ids are a 2-D int64 tensor");
        rows.into_iter().map(|row| row.into_iter().take_while(|id| !self.stop_ids.contains(id)).collect()).collect()
    }

    /// Whether each row ended with a stop id (rather than running out of new tokens).
    pub fn stopped(&self) -> Vec<bool> {
        let ended = is_stop(&self.completion_ids, &stop_tensor(&self.stop_ids, self.completion_ids.device()))
            .any_dim(1, false)
            .to_device(Device::Cpu);
        Vec::<bool>::try_from(&ended).expect("a 1-D bool tensor")
    }
}

impl Generation {
    /// The whole batch's generation of `count` prompts on every rank, from each rank's `rows`
    /// ([`generate_rows`] over its share; itself when it holds them all): a row's padding after
    /// it stopped is what the whole batch's generation gives it (end-of-sequence ids, mask and
    /// log-prob 0).
    pub fn gathered(self, rows: &std::ops::Range<usize>, count: usize) -> Result<Generation, DistributedError> {
        if rows.len() == count {
            return Ok(self);
        }
        let world = crate::distributed::world();
        let (rows, width) = self.completion_ids.size2().expect("2-D completions");
        let longest = world.max(width)?;
        let padded = |tensor: &Tensor, value: i64| -> Tensor {
            match longest - width {
                0 => tensor.shallow_clone(),
                missing => Tensor::cat(&[tensor, &tensor.new_full([rows, missing], value, (tensor.kind(), tensor.device()))], 1),
            }
        };
        Ok(Generation {
            prompt_ids: world.gather_rows(&self.prompt_ids, count)?,
            prompt_mask: world.gather_rows(&self.prompt_mask, count)?,
            completion_ids: world.gather_rows(&padded(&self.completion_ids, self.stop_ids[0]), count)?,
            completion_mask: world.gather_rows(&padded(&self.completion_mask, 0), count)?,
            logprobs: world.gather_rows(&padded(&self.logprobs, 0), count)?,
            stop_ids: self.stop_ids,
        })
    }
}

/// The stop ids as a tensor on `device`.
fn stop_tensor(stop_ids: &[i64], device: Device) -> Tensor {
    Tensor::from_slice(stop_ids).to_device(device)
}

/// Where `ids` holds one of `stop`'s ids.
fn is_stop(ids: &Tensor, stop: &Tensor) -> Tensor {
    Tensor::isin(ids, stop, false, false)
}

/// Left-pads token rows to one width: `(ids, mask)`, both `[rows, width]` int64 on `device`.
pub fn left_pad(rows: &[Vec<i64>], pad_id: i64, device: Device) -> (Tensor, Tensor) {
    let width = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(rows.len() * width);
    let mut mask = Vec::with_capacity(rows.len() * width);
    for row in rows {
        let padding = width - row.len();
        ids.extend(std::iter::repeat_n(pad_id, padding).chain(row.iter().copied()));
        mask.extend(std::iter::repeat_n(0i64, padding).chain(std::iter::repeat_n(1, row.len())));
    }
    let shape = [rows.len() as i64, width as i64];
    (Tensor::from_slice(&ids).view(shape).to(device), Tensor::from_slice(&mask).view(shape).to(device))
}

/// Generates up to `max_new_tokens` after each prompt, each row stopping at any of `stop_ids`;
/// the first of them (end-of-sequence) pads. An empty prompt starts from end-of-sequence, GPT-2's
/// beginning-of-text token.
pub fn generate(
    model: &dyn Transformer,
    prompts: &[Vec<i64>],
    stop_ids: &[i64],
    options: &GenerateOptions,
) -> Result<Generation, GenerateError> {
    generate_rows(model, prompts, stop_ids, options, 0..prompts.len())
}

/// [`generate`] for the rows `rows` of the batch only (a data-parallel rank's share), each row
/// exactly as the whole batch's generation would give it: prompts are padded to the whole
/// batch's width, and sampling draws the whole batch's random numbers and uses the rows' own.
/// The generation holds those rows; it stops once they have all stopped.
pub fn generate_rows(
    model: &dyn Transformer,
    prompts: &[Vec<i64>],
    stop_ids: &[i64],
    options: &GenerateOptions,
    rows: std::ops::Range<usize>,
) -> Result<Generation, GenerateError> {
    if prompts.is_empty() || rows.is_empty() {
        return Err(GenerateError::NoPrompts);
    }
    let &eos_id = stop_ids.first().ok_or(GenerateError::NoStopIds)?;
    check_sampling(&options.sampling)?;
    let context = model.config().context_length();
    let prompts: Vec<Vec<i64>> = prompts.iter().map(|p| if p.is_empty() { vec![eos_id] } else { p.clone() }).collect();
    for (index, prompt) in prompts.iter().enumerate() {
        if prompt.len() as i64 + options.max_new_tokens > context {
            return Err(GenerateError::TooLong { index, prompt_tokens: prompt.len(), max_new_tokens: options.max_new_tokens, context });
        }
    }
    if let Some(seed) = options.seed {
        tch::manual_seed(seed as i64);
    }
    let _no_grad = tch::no_grad_guard();
    let device = model.device();
    let (prompt_ids, prompt_mask) = left_pad(&prompts, eos_id, device);
    let noise_rows = NoiseRows { total: prompts.len() as i64, first: rows.start as i64 };
    let narrow = |t: Tensor| if rows.len() == prompts.len() { t } else { t.narrow(0, rows.start as i64, rows.len() as i64) };
    let (prompt_ids, prompt_mask) = (narrow(prompt_ids), narrow(prompt_mask));
    let (batch, prompt_width) = prompt_ids.size2().expect("2-D prompts");
    let _threads = super::threads::for_generation(device, batch, model.config().hidden_size());

    let mut cache = options.use_kv_cache.then(|| model.new_cache(batch, prompt_width + options.max_new_tokens));
    let mut sequence = prompt_ids.shallow_clone();
    // Tokens generated after a row stopped are kept visible (mask 1): they only influence that
    // row's own later outputs, which are discarded, and an all-ones mask keeps the fast path.
    let mut attention_mask = prompt_mask.shallow_clone();
    let mut next_input = prompt_ids.shallow_clone();
    let mut finished = Tensor::zeros([batch], (Kind::Bool, device));
    // Made once: a host-to-device copy per generated token would sit on the hot path.
    let stop = stop_tensor(stop_ids, device);
    let (mut chosen_ids, mut chosen_logprobs, mut alive_masks) = (Vec::new(), Vec::new(), Vec::new());

    for _ in 0..options.max_new_tokens {
        let hidden = match cache.as_mut() {
            Some(cache) => model.forward(&next_input, Some(&attention_mask), Some(cache), false),
            None => model.forward(&sequence, Some(&attention_mask), None, false),
        };
        let logits = model.logits(&hidden.select(1, -1)).to_kind(Kind::Float);
        let (next, logprob) = choose(&logits, &options.sampling, noise_rows);
        let next = next.where_self(&finished.logical_not(), &Tensor::from(eos_id).to(device));
        alive_masks.push(finished.logical_not().to_kind(Kind::Int64));
        chosen_logprobs.push(logprob.masked_fill(&finished, 0.0));
        chosen_ids.push(next.shallow_clone());
        finished = finished.logical_or(&is_stop(&next, &stop));

        next_input = next.unsqueeze(1);
        attention_mask = Tensor::cat(&[&attention_mask, &Tensor::ones([batch, 1], (Kind::Int64, device))], 1);
        if cache.is_none() {
            sequence = Tensor::cat(&[&sequence, &next_input], 1);
        }
        if finished.all().int64_value(&[]) == 1 {
            break;
        }
    }
    Ok(Generation {
        prompt_ids,
        prompt_mask,
        completion_ids: Tensor::stack(&chosen_ids, 1),
        completion_mask: Tensor::stack(&alive_masks, 1),
        logprobs: Tensor::stack(&chosen_logprobs, 1),
        stop_ids: stop_ids.to_vec(),
    })
}

fn check_sampling(sampling: &Sampling) -> Result<(), GenerateError> {
    if let Sampling::Sample { temperature, top_k, top_p } = *sampling {
        if !(temperature > 0.0 && temperature.is_finite()) {
            return Err(GenerateError::Sampling(format!("temperature must be > 0, got {temperature}")));
        }
        if let Some(k) = top_k.filter(|&k| k < 1) {
            return Err(GenerateError::Sampling(format!("top_k must be ≥ 1, got {k}")));
        }
        if let Some(p) = top_p.filter(|&p| !(p > 0.0 && p <= 1.0)) {
            return Err(GenerateError::Sampling(format!("top_p must be in (0, 1], got {p}")));
        }
    }
    Ok(())
}

/// Which rows of the whole batch a generation computes: sampling draws random numbers for all
/// `total` rows and takes those from `first` on.
#[derive(Debug, Clone, Copy)]
struct NoiseRows {
    total: i64,
    first: i64,
}

/// Picks one token per row from `[B, vocab]` float logits: `(ids [B], logprobs [B])`.
fn choose(logits: &Tensor, sampling: &Sampling, rows: NoiseRows) -> (Tensor, Tensor) {
    match *sampling {
        Sampling::Greedy => {
            let next = logits.argmax(-1, false);
            let logprob = logits.log_softmax(-1, Kind::Float).gather(1, &next.unsqueeze(1), false).squeeze_dim(1);
            (next, logprob)
        }
        Sampling::Sample { temperature, top_k, top_p } => {
            let scaled = logits / temperature;
            let logprobs = scaled.log_softmax(-1, Kind::Float);
            let mut filtered = scaled;
            if let Some(k) = top_k {
                filtered = keep_top_k(&filtered, k);
            }
            if let Some(p) = top_p.filter(|&p| p < 1.0) {
                filtered = keep_top_p(&filtered, p);
            }
            // What `multinomial(1, false)` computes — argmax(p / q), q ~ Exp(1) drawn as
            // `empty_like(p).exponential_(1)` (ATen's Distributions.cpp) — with q drawn for the
            // whole batch, so that a row's draw does not depend on which rows are computed here.
            let probs = filtered.softmax(-1, Kind::Float);
            let (batch, vocab) = probs.size2().expect("2-D probabilities");
            let noise = Tensor::empty([rows.total, vocab], (Kind::Float, probs.device())).exponential_(1.0).narrow(0, rows.first, batch);
            let next = (probs / noise).argmax(-1, true);
            let logprob = logprobs.gather(1, &next, false).squeeze_dim(1);
            (next.squeeze_dim(1), logprob)
        }
    }
}

/// Sets every logit below the row's k-th largest to −∞.
fn keep_top_k(logits: &Tensor, k: i64) -> Tensor {
    let k = k.min(*logits.size().last().expect("vocab dimension"));
    let (values, _) = logits.topk(k, -1, true, true);
    let threshold = values.narrow(-1, k - 1, 1);
    logits.masked_fill(&logits.lt_tensor(&threshold), f64::NEG_INFINITY)
}

/// Keeps the smallest set of most likely tokens whose probability reaches `p` (always ≥ 1 token).
pub(crate) fn keep_top_p(logits: &Tensor, p: f64) -> Tensor {
    let (sorted, order) = logits.sort(-1, true);
    let probs = sorted.softmax(-1, Kind::Float);
    // A token is dropped when the tokens before it already reach `p`.
    let mass_before = probs.cumsum(-1, Kind::Float) - &probs;
    let drop_sorted = mass_before.gt(p);
    let drop = drop_sorted.scatter(-1, &order, &drop_sorted);
    logits.masked_fill(&drop, f64::NEG_INFINITY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_keeps_exactly_the_k_largest() {
        let logits = Tensor::from_slice(&[1.0f32, 4.0, 3.0, 2.0]).view([1, 4]);
        let kept = keep_top_k(&logits, 2);
        let kept: Vec<f32> = Vec::try_from(kept.view([-1])).unwrap();
        assert_eq!(kept, vec![f32::NEG_INFINITY, 4.0, 3.0, f32::NEG_INFINITY]);
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        // probabilities 0.5, 0.3, 0.15, 0.05 (in a shuffled order)
        let probs = [0.15f32, 0.5, 0.05, 0.3];
        let logits = Tensor::from_slice(&probs).log().view([1, 4]);
        let kept = |p: f64| -> Vec<bool> { Vec::try_from(keep_top_p(&logits, p).isfinite().view([-1])).unwrap() };
        assert_eq!(kept(0.45), vec![false, true, false, false]);
        assert_eq!(kept(0.7), vec![false, true, false, true]);
        assert_eq!(kept(0.9), vec![true, true, false, true]);
        assert_eq!(kept(0.01), vec![false, true, false, false]);
    }

    #[test]
    fn left_pad_aligns_rows_on_the_right() {
        let (ids, mask) = left_pad(&[vec![5, 6, 7], vec![9]], 0, Device::Cpu);
        assert_eq!(Vec::<Vec<i64>>::try_from(&ids).unwrap(), vec![vec![5, 6, 7], vec![0, 0, 9]]);
        assert_eq!(Vec::<Vec<i64>>::try_from(&mask).unwrap(), vec![vec![1, 1, 1], vec![0, 0, 1]]);
    }

    #[test]
    fn invalid_sampling_settings_are_rejected() {
        let bad = [
            Sampling::Sample { temperature: 0.0, top_k: None, top_p: None },
            Sampling::Sample { temperature: 1.0, top_k: Some(0), top_p: None },
            Sampling::Sample { temperature: 1.0, top_k: None, top_p: Some(1.5) },
        ];
        for sampling in bad {
            assert!(check_sampling(&sampling).is_err(), "{sampling:?} accepted");
        }
    }
}
