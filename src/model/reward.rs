//! A reward model: a transformer backbone (any architecture) with a scalar head read at the last real token of each
//! sequence (Ziegler et al. 2019; Ouyang et al. 2022). Saved as transformers'
//! `*ForSequenceClassification` with one label — the backbone and a bias-free `score.weight` —
//! so that `AutoModelForSequenceClassification` loads it with equal scores and reward models
//! made elsewhere load here; `reward.json` beside it keeps the mean and standard deviation of
//! its scores on policy samples, so that PPO can normalise scores.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::nn::{self, Init, VarStore};
use tch::{Device, Kind, Tensor};

use super::architecture::HfHead;
use super::architecture::Transformer;
use super::checkpoint::{self, CheckpointError, SaveOptions};
use super::generate::left_pad;
use super::Precision;
use crate::data::tokenizer::{TextTokenizer, TokenizerError};

/// The head's name, transformers' for a sequence-classification model.
pub const REWARD_HEAD: &str = "score";
pub const NORMALIZATION_FILE: &str = "reward.json";

/// Scores are normalised as (score − mean) / std.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RewardNormalization {
    pub mean: f64,
    pub std: f64,
}

impl RewardNormalization {
    /// The mean and (population) std of `scores`, the std kept above 1e-6 so that dividing by it
    /// stays finite.
    pub fn of_scores(scores: &[f64]) -> Self {
        let count = scores.len().max(1) as f64;
        let mean = scores.iter().sum::<f64>() / count;
        let variance = scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / count;
        RewardNormalization { mean, std: variance.sqrt().max(1e-6) }
    }
}

pub struct RewardModel {
    pub vs: VarStore,
    pub transformer: Box<dyn Transformer>,
    pub head: ScalarHead,
    pub tokenizer: TextTokenizer,
    pub normalization: Option<RewardNormalization>,
}

impl RewardModel {
    /// Loads a checkpoint. With `new_head = true` the checkpoint may be a plain LM (e.g. SFT):
    /// the head then starts from a small random init (drawn from libtorch's global RNG). An
    /// untied LM head is not needed to score, and a sequence-classification checkpoint has none.
    pub fn load(dir: &Path, device: Device, precision: Precision, new_head: bool) -> Result<Self, CheckpointError> {
        let config = checkpoint::read_config(dir)?;
        let tokenizer = checkpoint::read_tokenizer(dir, &config)?;
        let mut vs = VarStore::new(device);
        let transformer = config.build(&vs.root());
        // std 1/sqrt(n_embd + 1): initial scores near zero (TRL's value-head init does the same).
        let width = config.hidden_size();
        let head = ScalarHead::new(&(vs.root() / REWARD_HEAD), width, 1.0 / ((width + 1) as f64).sqrt());
        precision.cast(&mut vs);
        let may_be_missing: &[&str] = if new_head { &[REWARD_HEAD, "lm_head."] } else { &["lm_head."] };
        checkpoint::load_weights(&mut vs, dir, may_be_missing)?;
        let normalization = read_normalization(dir)?;
        Ok(RewardModel { vs, transformer, head, tokenizer, normalization })
    }

    pub fn save(&self, dir: &Path) -> Result<(), CheckpointError> {
        let normalization = self.normalization.map(|n| (NORMALIZATION_FILE, serde_json::to_string_pretty(&n).expect("serialises")));
        let options = SaveOptions::for_head(HfHead::SequenceClassification);
        checkpoint::save(dir, &self.vs, self.transformer.config(), &self.tokenizer, normalization.as_slice(), options)
    }

    /// One score per row of `[B, T]` ids, read at the row's last real token (mask 1), so left
    /// and right padding give the same scores.
    pub fn scores(&self, input_ids: &Tensor, attention_mask: &Tensor, train: bool) -> Tensor {
        let hidden = self.transformer.forward(input_ids, Some(attention_mask), None, train);
        let per_position = self.head.forward(&hidden).to_kind(Kind::Float);
        per_position.gather(1, &last_real_index(attention_mask).unsqueeze(1), false).squeeze_dim(1)
    }

    /// Token ids of prompt + response, cut to the model's context (the end is dropped: the
    /// score is then of a truncated response, which the caller may penalise).
    pub fn encode(&self, prompt: &str, response: &str) -> Result<Vec<i64>, TokenizerError> {
        let mut ids = self.tokenizer.encode(prompt)?;
        ids.extend(self.tokenizer.encode(response)?);
        ids.truncate(self.transformer.config().context_length() as usize);
        Ok(ids)
    }

    /// Raw scores of (prompt, response) pairs, `batch_size` at a time, without gradients.
    pub fn score_texts(&self, pairs: &[(&str, &str)], batch_size: usize) -> Result<Vec<f64>, TokenizerError> {
        let _no_grad = tch::no_grad_guard();
        let mut scores = Vec::with_capacity(pairs.len());
        for chunk in pairs.chunks(batch_size.max(1)) {
            let rows = chunk.iter().map(|(prompt, response)| self.encode(prompt, response)).collect::<Result<Vec<_>, _>>()?;
            let (ids, mask) = left_pad(&rows, self.tokenizer.eos_id(), self.vs.device());
            let batch = self.scores(&ids, &mask, false).to_kind(Kind::Double).to_device(Device::Cpu);
            scores.extend(Vec::<f64>::try_from(&batch).expect("1-D scores"));
        }
        Ok(scores)
    }
}

/// Index of each row's last position whose mask is 1.
pub fn last_real_index(attention_mask: &Tensor) -> Tensor {
    let width = attention_mask.size()[1];
    let positions = Tensor::arange(width, (Kind::Int64, attention_mask.device())).unsqueeze(0);
    (positions * attention_mask.ne(0).to_kind(Kind::Int64)).argmax(1, false)
}

fn read_normalization(dir: &Path) -> Result<Option<RewardNormalization>, CheckpointError> {
    let path = dir.join(NORMALIZATION_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|source| CheckpointError::Io { path: path.clone(), source })?;
    serde_json::from_str(&text).map(Some).map_err(|source| CheckpointError::ConfigJson { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_real_index_under_left_and_right_padding() {
        let left = Tensor::from_slice2(&[[0i64, 0, 1, 1], [1, 1, 1, 1]]);
        let right = Tensor::from_slice2(&[[1i64, 1, 0, 0], [1, 1, 1, 0]]);
        assert_eq!(Vec::<i64>::try_from(last_real_index(&left)).unwrap(), vec![3, 3]);
        assert_eq!(Vec::<i64>::try_from(last_real_index(&right)).unwrap(), vec![1, 2]);
    }
}

/// A scalar read-out of the hidden states (reward or value), stored beside the LM weights under
/// its own name (`score.weight` …). Without bias, as transformers' sequence-classification head:
/// a constant offset cancels in the Bradley–Terry loss and is removed by reward normalisation.
#[derive(Debug)]
pub struct ScalarHead {
    weight: Tensor,
}

impl ScalarHead {
    /// `stdev` small (e.g. 1/sqrt(n_embd+1)) keeps initial scores near zero.
    pub fn new(path: &nn::Path, n_embd: i64, stdev: f64) -> Self {
        ScalarHead { weight: path.var("weight", &[1, n_embd], Init::Randn { mean: 0.0, stdev }) }
    }

    /// One score per position: `[batch, time, n_embd]` → `[batch, time]`.
    pub fn forward(&self, hidden: &Tensor) -> Tensor {
        hidden.linear::<Tensor>(&self.weight, None).squeeze_dim(-1)
    }
}
