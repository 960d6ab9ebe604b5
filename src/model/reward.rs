//! A reward model: a transformer backbone (any architecture) with a scalar head read at the last real token of each
//! sequence (Ziegler et al. 2019; Ouyang et al. 2022). Saved as transformers'
//! `*ForSequenceClassification` with one label — the backbone and a bias-free `score.weight` —
//! so that `AutoModelForSequenceClassification` loads it with equal scores and reward models
//! made elsewhere load here; `reward.json` beside it keeps the mean and standard deviation of
//! its scores on policy samples, so that PPO can normalise scores. A reward model trained as an
//! ensemble keeps its members' heads beside it in `ensemble.safetensors`; its own head is their
//! mean, so it stays a standard checkpoint.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::nn::{self, Init, VarStore};
use tch::{Device, Kind, Tensor};

use super::architecture::HfHead;
use super::architecture::Transformer;
use super::checkpoint::{self, CheckpointError, SaveOptions};
use super::generate::left_pad;
use super::lora::{Adapters, LoraError, LoraSettings};
use super::Precision;
use crate::data::tokenizer::{TextTokenizer, TokenizerError};

/// The head's name, transformers' for a sequence-classification model.
pub const REWARD_HEAD: &str = "score";
pub const NORMALIZATION_FILE: &str = "reward.json";
/// The member heads of an ensemble, `score.weight` of shape `[K, n_embd]`.
pub const ENSEMBLE_FILE: &str = "ensemble.safetensors";

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
        let (mean, std) = mean_and_population_std(scores);
        RewardNormalization { mean, std: std.max(1e-6) }
    }
}

/// The mean and population standard deviation of `values` (0 and 0 when there are none).
pub fn mean_and_population_std(values: &[f64]) -> (f64, f64) {
    let count = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / count;
    let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / count;
    (mean, variance.sqrt())
}

pub struct RewardModel {
    pub vs: VarStore,
    pub transformer: Box<dyn Transformer>,
    pub head: ScalarHead,
    pub tokenizer: TextTokenizer,
    pub normalization: Option<RewardNormalization>,
    /// The member heads, for a model trained as an ensemble.
    pub ensemble: Option<Ensemble>,
    /// LoRA adapters on the backbone, when it trains with them; the head then trains beside them.
    pub adapters: Option<Adapters>,
    /// The checkpoint directory the model was loaded from: the base its adapters are saved over.
    pub base_dir: Option<PathBuf>,
}

/// K reward heads on the model's backbone, held in their own `VarStore` (fp32) so that they
/// train with their own optimizer and are saved apart from the standard checkpoint.
pub struct Ensemble {
    pub vs: VarStore,
    pub head: ScalarHead,
}

impl Ensemble {
    /// `members` heads drawn as a fresh reward head is (from libtorch's global RNG).
    pub fn new(device: Device, members: i64, n_embd: i64) -> Self {
        let vs = VarStore::new(device);
        let head = ScalarHead::with_outputs(&(vs.root() / REWARD_HEAD), members, n_embd, head_stdev(n_embd));
        Ensemble { vs, head }
    }

    fn load(path: &Path, device: Device, n_embd: i64) -> Result<Self, CheckpointError> {
        let bad = |message: String| CheckpointError::Safetensors { path: path.to_path_buf(), message };
        let tensors = Tensor::read_safetensors(path).map_err(|e| bad(e.to_string()))?;
        let name = format!("{REWARD_HEAD}.weight");
        let (_, weight) = tensors.into_iter().find(|(tensor, _)| *tensor == name).ok_or_else(|| bad(format!("no tensor `{name}`")))?;
        match weight.size()[..] {
            [members, width] if width == n_embd && members > 0 => {
                let mut ensemble = Ensemble::new(device, members, n_embd);
                tch::no_grad(|| ensemble.head.weight.copy_(&weight));
                Ok(ensemble)
            }
            ref shape => Err(bad(format!("`{name}` has shape {shape:?}, expected [members, {n_embd}]"))),
        }
    }

    pub fn members(&self) -> i64 {
        self.head.weight.size()[0]
    }
}

/// std 1/sqrt(n_embd + 1): initial scores near zero (TRL's value-head init does the same).
fn head_stdev(n_embd: i64) -> f64 {
    1.0 / ((n_embd + 1) as f64).sqrt()
}

impl RewardModel {
    /// Loads a checkpoint. With `new_head = true` the checkpoint may be a plain LM (e.g. SFT):
    /// the head then starts from a small random init (drawn from libtorch's global RNG). An
    /// untied LM head is not needed to score, and a sequence-classification checkpoint has none.
    pub fn load(dir: &Path, device: Device, precision: Precision, new_head: bool) -> Result<Self, CheckpointError> {
        if super::peft::is_adapter_dir(dir) {
            return Self::from_adapter_dir(dir, device, precision, new_head);
        }
        let config = checkpoint::read_config(dir)?;
        let tokenizer = checkpoint::read_tokenizer(dir, &config)?;
        let mut vs = VarStore::new(device);
        let transformer = config.build(&vs.root());
        let width = config.hidden_size();
        let head = ScalarHead::new(&(vs.root() / REWARD_HEAD), width, head_stdev(width));
        precision.cast(&mut vs);
        let may_be_missing: &[&str] = if new_head { &[REWARD_HEAD, "lm_head."] } else { &["lm_head."] };
        checkpoint::load_weights(&mut vs, dir, may_be_missing)?;
        let normalization = read_normalization(dir)?;
        let ensemble_path = dir.join(ENSEMBLE_FILE);
        let ensemble = ensemble_path.is_file().then(|| Ensemble::load(&ensemble_path, device, width)).transpose()?;
        Ok(RewardModel { vs, transformer, head, tokenizer, normalization, ensemble, adapters: None, base_dir: Some(dir.to_path_buf()) })
    }

    /// A reward model on the (merged) backbone of an adapter directory: with the `score` head it
    /// holds (a reward model's adapters), or a fresh one when asked (a language model's).
    fn from_adapter_dir(dir: &Path, device: Device, precision: Precision, new_head: bool) -> Result<Self, CheckpointError> {
        let score = super::peft::read_score(dir)?;
        if score.is_none() && !new_head {
            return Err(CheckpointError::Unsupported {
                path: dir.to_path_buf(),
                reason: format!("the adapters hold no `{REWARD_HEAD}` head: a language model's, not a reward model's"),
            });
        }
        let mut model = super::LanguageModel::load(dir, device, precision)?;
        let width = model.transformer.config().hidden_size();
        let head = ScalarHead::new(&(model.vs.root() / REWARD_HEAD), width, head_stdev(width));
        precision.cast(&mut model.vs);
        if let Some(score) = score {
            let expected = [1, width];
            if score.size() != expected {
                return Err(CheckpointError::ShapeMismatch {
                    path: dir.join(super::peft::ADAPTER_WEIGHTS_FILE),
                    name: format!("{REWARD_HEAD}.weight"),
                    found: score.size(),
                    expected: expected.to_vec(),
                });
            }
            tch::no_grad(|| head.weight.shallow_clone().copy_(&score));
        }
        let ensemble_path = dir.join(ENSEMBLE_FILE);
        let ensemble = ensemble_path.is_file().then(|| Ensemble::load(&ensemble_path, device, width)).transpose()?;
        let super::LanguageModel { vs, transformer, tokenizer, .. } = model;
        let normalization = read_normalization(dir)?;
        Ok(RewardModel { vs, transformer, head, tokenizer, normalization, ensemble, adapters: None, base_dir: Some(dir.to_path_buf()) })
    }

    /// Attaches fresh LoRA adapters to the backbone and freezes it; the head trains beside the
    /// adapters, as an fp32 copy (PEFT's `modules_to_save`).
    pub fn attach_adapters(&mut self, settings: &LoraSettings) -> Result<(), LoraError> {
        let architecture = self.transformer.config().model_type();
        let adapters = Adapters::attach(self.transformer.blocks(), settings, architecture, self.vs.device())?;
        self.vs.freeze();
        self.head = self.head.trainable_copy(&(adapters.vs.root() / REWARD_HEAD));
        self.adapters = Some(adapters);
        Ok(())
    }

    /// Adds the adapters' updates into the backbone's weights and the trained head into the
    /// model's own: a plain reward model again.
    pub fn merge_adapters(&mut self) {
        if self.adapters.take().is_none() {
            return;
        }
        super::lora::merge(self.transformer.blocks());
        let own = self.vs.variables().remove(&format!("{REWARD_HEAD}.weight")).expect("a reward model has a head");
        tch::no_grad(|| own.shallow_clone().copy_(&self.head.weight));
        self.head = ScalarHead { weight: own };
    }

    /// The variables training updates: the adapters' and the head's when adapters are
    /// attached, else the model's.
    pub fn trained_vs(&self) -> &VarStore {
        self.adapters.as_ref().map_or(&self.vs, |adapters| &adapters.vs)
    }

    /// Gives the model `members` fresh member heads to train. Its own head is then their mean
    /// (see `head_from_ensemble`), no longer trained itself.
    pub fn attach_ensemble(&mut self, members: i64) {
        let width = self.transformer.config().hidden_size();
        self.ensemble = Some(Ensemble::new(self.vs.device(), members, width));
        let _ = self.head.weight.set_requires_grad(false);
        self.head_from_ensemble();
    }

    /// Sets the model's head to the mean of the members' heads: the heads being linear, it scores
    /// each text with the mean of the members' scores, so the saved checkpoint, read as a plain
    /// reward model (by PPO, by transformers), gives the ensemble's reward.
    pub fn head_from_ensemble(&mut self) {
        if let Some(ensemble) = &self.ensemble {
            let mean = ensemble.head.weight.mean_dim(0, true, Kind::Float);
            tch::no_grad(|| self.head.weight.copy_(&mean));
        }
    }

    pub fn save(&self, dir: &Path) -> Result<(), CheckpointError> {
        let mut extra: Vec<(&str, Vec<u8>)> = Vec::new();
        if let Some(n) = self.normalization {
            extra.push((NORMALIZATION_FILE, serde_json::to_string_pretty(&n).expect("serialises").into_bytes()));
        }
        if let Some(ensemble) = &self.ensemble {
            let name = format!("{REWARD_HEAD}.weight");
            extra.push((ENSEMBLE_FILE, checkpoint::safetensors_bytes(&[(&name, &ensemble.head.weight)])));
        }
        match &self.adapters {
            Some(adapters) => {
                let files = super::peft::AdapterFiles {
                    transformer: self.transformer.as_ref(),
                    tokenizer: &self.tokenizer,
                    base_dir: self.base_dir.as_deref(),
                    score: Some(&self.head.weight),
                    extra: &extra,
                };
                super::peft::save(dir, adapters, files)
            }
            None => {
                let options = SaveOptions::for_head(HfHead::SequenceClassification);
                checkpoint::save(dir, &self.vs, self.transformer.config(), &self.tokenizer, &extra, options)
            }
        }
    }

    /// One score per row of `[B, T]` ids, read at the row's last real token (mask 1), so left
    /// and right padding give the same scores.
    pub fn scores(&self, input_ids: &Tensor, attention_mask: &Tensor, train: bool) -> Tensor {
        let hidden = self.transformer.forward(input_ids, Some(attention_mask), None, train);
        let per_position = self.head.forward(&hidden).to_kind(Kind::Float);
        per_position.gather(1, &last_real_index(attention_mask).unsqueeze(1), false).squeeze_dim(1)
    }

    /// Each member's score of each row, `[B, K]`, from one backbone pass; `None` without an
    /// ensemble.
    pub fn member_scores(&self, input_ids: &Tensor, attention_mask: &Tensor, train: bool) -> Option<Tensor> {
        let ensemble = self.ensemble.as_ref()?;
        let hidden = self.transformer.forward(input_ids, Some(attention_mask), None, train);
        let per_position = ensemble.head.forward_all(&hidden.to_kind(Kind::Float));
        let index = last_real_index(attention_mask).view([-1, 1, 1]).expand([-1, 1, ensemble.members()], false);
        Some(per_position.gather(1, &index, false).squeeze_dim(1))
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
        let batches = self.score_batches(pairs, batch_size, |ids, mask| self.scores(ids, mask, false))?;
        Ok(batches.iter().flat_map(|batch| Vec::<f64>::try_from(batch).expect("1-D scores")).collect())
    }

    /// Each member's raw score of each (prompt, response) pair, as `score_texts`; `None` without
    /// an ensemble.
    pub fn member_scores_texts(&self, pairs: &[(&str, &str)], batch_size: usize) -> Result<Option<Vec<Vec<f64>>>, TokenizerError> {
        if self.ensemble.is_none() {
            return Ok(None);
        }
        let batches = self.score_batches(pairs, batch_size, |ids, mask| self.member_scores(ids, mask, false).expect("an ensemble"))?;
        Ok(Some(batches.iter().flat_map(|batch| Vec::<Vec<f64>>::try_from(batch).expect("2-D scores")).collect()))
    }

    /// `read` of each batch of `batch_size` pairs, without gradients, as f64 on the CPU.
    fn score_batches(
        &self,
        pairs: &[(&str, &str)],
        batch_size: usize,
        read: impl Fn(&Tensor, &Tensor) -> Tensor,
    ) -> Result<Vec<Tensor>, TokenizerError> {
        let _no_grad = tch::no_grad_guard();
        pairs
            .chunks(batch_size.max(1))
            .map(|chunk| {
                let rows = chunk.iter().map(|(prompt, response)| self.encode(prompt, response)).collect::<Result<Vec<_>, _>>()?;
                let (ids, mask) = left_pad(&rows, self.tokenizer.eos_id(), self.vs.device());
                Ok(read(&ids, &mask).to_kind(Kind::Double).to_device(Device::Cpu))
            })
            .collect()
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
/// its own name (`score.weight` …) — or several, one per member of an ensemble. Without bias, as
/// transformers' sequence-classification head: a constant offset cancels in the Bradley–Terry
/// loss and is removed by reward normalisation.
#[derive(Debug)]
pub struct ScalarHead {
    weight: Tensor,
}

impl ScalarHead {
    /// `stdev` small (e.g. 1/sqrt(n_embd+1)) keeps initial scores near zero.
    pub fn new(path: &nn::Path, n_embd: i64, stdev: f64) -> Self {
        Self::with_outputs(path, 1, n_embd, stdev)
    }

    /// `outputs` scalar read-outs side by side: a `[outputs, n_embd]` weight.
    pub fn with_outputs(path: &nn::Path, outputs: i64, n_embd: i64, stdev: f64) -> Self {
        ScalarHead { weight: path.var("weight", &[outputs, n_embd], Init::Randn { mean: 0.0, stdev }) }
    }

    /// A trainable fp32 copy of the head, created under `path`.
    fn trainable_copy(&self, path: &nn::Path) -> Self {
        let weight = path.var("weight", &self.weight.size(), Init::Const(0.0));
        tch::no_grad(|| weight.shallow_clone().copy_(&self.weight));
        ScalarHead { weight }
    }

    /// One score per position: `[batch, time, n_embd]` → `[batch, time]`.
    pub fn forward(&self, hidden: &Tensor) -> Tensor {
        self.forward_all(hidden).squeeze_dim(-1)
    }

    /// Every output at every position: `[batch, time, n_embd]` → `[batch, time, outputs]`.
    pub fn forward_all(&self, hidden: &Tensor) -> Tensor {
        // A head trained beside LoRA adapters is fp32 on a base of lower precision.
        hidden.to_kind(self.weight.kind()).linear::<Tensor>(&self.weight, None)
    }
}
