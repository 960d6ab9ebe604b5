//! Language-model training: `lm` (next-token pretraining on the task's corpus) and `sft`
//! (supervised fine-tuning on demonstrations, loss on response tokens only). Both share one loop:
//! AdamW with warmup + decay, gradient accumulation and clipping, periodic evaluation with
//! samples, early stopping on eval loss, best and last checkpoints, and resumable state.

use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Kind, Reduction, Tensor};

use super::{Reading, StageContext, StageError, StageFigures, StageSettings, Training, CHECKPOINT_DIR};
use crate::data::chat::Message;
use crate::data::tokenizer::{TextTokenizer, TokenizerError};
use crate::distributed::{self, DistributedError, World};
use crate::model::generate::{generate, GenerateOptions, Sampling};
use crate::model::{DeviceSpec, LanguageModel, LoraSettings, Precision, Transformer};
use crate::rng::{epoch_items, step_seed};
use crate::run::metrics::SampleLog;
use crate::run::Metrics;
use crate::train::alerts::Watched;
use crate::train::optimizer::{AdamW, AdamWConfig};
use crate::train::schedule::{LrSchedule, Schedule};
use crate::train::stage_loop::{self, LoopSettings, Outcome, Selection, Trainer};
use crate::train::state::{Part, PartMut};

/// What reports and logs show of `lm` and `sft` stages.
pub const FIGURES: StageFigures = StageFigures {
    headline: &["eval/loss", "eval/ppl"],
    curves: &["train/loss", "eval/loss", "eval/ppl"],
    primary: &["eval/loss"],
    readings: &[("eval/loss", Reading::Lower), ("eval/ppl", Reading::Lower)],
    frontier: None,
    shown: &["train/loss"],
    logged: &["train/loss", "eval/loss"],
    step_name: "step",
    watched: Watched { train_loss: Some("train/loss"), eval_loss: Some("eval/loss"), ..Watched::NOTHING },
};

/// Optimisation settings shared by `lm` and `sft`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSettings {
    /// Start from a `[models.X]` section (a fresh or pretrained model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Start from an earlier stage's output, `run:RUN_DIR/STAGE` or a checkpoint path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<String>,
    #[serde(default = "defaults::steps")]
    pub steps: u64,
    #[serde(default = "defaults::batch_size")]
    pub batch_size: usize,
    /// Micro-batches per optimizer step (the effective batch is batch_size × grad_accum).
    #[serde(default = "defaults::one")]
    pub grad_accum: usize,
    #[serde(default = "defaults::lr")]
    pub lr: f64,
    /// The schedule decays to lr × min_lr_ratio.
    #[serde(default = "defaults::min_lr_ratio")]
    pub min_lr_ratio: f64,
    #[serde(default = "defaults::warmup_steps")]
    pub warmup_steps: u64,
    #[serde(default = "defaults::schedule")]
    pub schedule: Schedule,
    #[serde(default = "defaults::weight_decay")]
    pub weight_decay: f64,
    #[serde(default = "defaults::beta1")]
    pub beta1: f64,
    #[serde(default = "defaults::beta2")]
    pub beta2: f64,
    /// Clip the global gradient norm to this value (0 disables clipping).
    #[serde(default = "defaults::grad_clip")]
    pub grad_clip: f64,
    /// Training sequence length in tokens (at most the model's context).
    #[serde(default = "defaults::seq_len")]
    pub seq_len: i64,
    #[serde(default = "defaults::eval_every")]
    pub eval_every: u64,
    #[serde(default = "defaults::eval_batches")]
    pub eval_batches: usize,
    /// Stop after this many evaluations without a better eval loss (absent: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patience: Option<u64>,
    /// An eval loss counts as better only when it is lower than the best by more than this.
    #[serde(default)]
    pub min_delta: f64,
    /// Generations written to samples.jsonl at each evaluation.
    #[serde(default = "defaults::samples")]
    pub samples: usize,
    /// sft only: train on these demonstrations instead of the task's — an earlier `best_of_n`
    /// stage's `demonstrations.jsonl` (by the stage's name) or a JSONL file of the task's
    /// demonstration format; evaluation stays on the task's held-out demonstrations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub demonstrations: Option<String>,
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

// One default a line: the table reads better than rustfmt's four lines per function.
#[rustfmt::skip]
mod defaults {
    use super::Schedule;
    pub fn steps() -> u64 { 200 }
    pub fn batch_size() -> usize { 16 }
    pub fn one() -> usize { 1 }
    pub fn lr() -> f64 { 3e-4 }
    pub fn min_lr_ratio() -> f64 { 0.1 }
    pub fn warmup_steps() -> u64 { 10 }
    pub fn schedule() -> Schedule { Schedule::Cosine }
    pub fn weight_decay() -> f64 { 0.1 }
    pub fn beta1() -> f64 { 0.9 }
    pub fn beta2() -> f64 { 0.95 }
    pub fn grad_clip() -> f64 { 1.0 }
    pub fn seq_len() -> i64 { 128 }
    pub fn eval_every() -> u64 { 50 }
    pub fn eval_batches() -> usize { 4 }
    pub fn samples() -> usize { 4 }
}

impl TrainSettings {
    /// The key naming the model this stage starts from, and its value (`check` makes sure there
    /// is exactly one).
    fn model_reference(&self) -> (&'static str, &str) {
        match (&self.model, &self.init) {
            (Some(model), _) => ("model", model),
            (None, Some(init)) => ("init", init),
            (None, None) => ("model", ""),
        }
    }

    fn check_lengths(&self, context_of: &dyn Fn(&str) -> Option<i64>) -> Result<(), (&'static str, String)> {
        let (key, reference) = self.model_reference();
        match context_of(reference) {
            Some(context) if self.seq_len > context => {
                Err(("seq_len", format!("{} tokens exceed the context of `{key}` = \"{reference}\" ({context} tokens)", self.seq_len)))
            }
            _ => Ok(()),
        }
    }

    fn inputs(&self) -> Vec<(&'static str, &str)> {
        let mut inputs = Vec::new();
        if let Some(model) = &self.model {
            inputs.push(("model", model.as_str()));
        }
        if let Some(init) = &self.init {
            inputs.push(("init", init.as_str()));
        }
        inputs
    }

    fn check(&self) -> Result<(), (&'static str, String)> {
        super::check_lora(&self.lora)?;
        match (&self.model, &self.init) {
            (Some(_), Some(_)) => return Err(("init", "either `model` or `init`, not both".into())),
            (None, None) => {
                return Err(("model", "a `model` (a [models.X] section) or an `init` (an earlier stage or a checkpoint)".into()))
            }
            _ => {}
        }
        let positive = [
            ("steps", self.steps as f64),
            ("batch_size", self.batch_size as f64),
            ("grad_accum", self.grad_accum as f64),
            ("lr", self.lr),
            ("eval_every", self.eval_every as f64),
            ("seq_len", self.seq_len as f64),
        ];
        if let Some((key, value)) = positive.into_iter().find(|(_, value)| !(*value > 0.0)) {
            return Err((key, format!("a value > 0, got {value}")));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(("min_lr_ratio", format!("a value in [0, 1], got {}", self.min_lr_ratio)));
        }
        for (key, beta) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return Err((key, format!("a value in [0, 1), got {beta}")));
            }
        }
        for (key, value) in [("weight_decay", self.weight_decay), ("grad_clip", self.grad_clip), ("min_delta", self.min_delta)] {
            if !(value >= 0.0) {
                return Err((key, format!("a value ≥ 0, got {value}")));
            }
        }
        Ok(())
    }
}

/// `kind = "lm"`: next-token prediction on the corpus.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LmSettings(pub TrainSettings);

/// `kind = "sft"`: next-token prediction on demonstrations, loss on response tokens only.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SftSettings(pub TrainSettings);

impl StageSettings for LmSettings {
    fn inputs(&self) -> Vec<(&'static str, &str)> {
        self.0.inputs()
    }
    fn base_model(&self) -> &str {
        self.0.model_reference().1
    }
    fn check_lengths(&self, _: i64, context_of: &dyn Fn(&str) -> Option<i64>) -> Result<(), (&'static str, String)> {
        self.0.check_lengths(context_of)
    }
    fn check(&self) -> Result<(), (&'static str, String)> {
        if self.0.demonstrations.is_some() {
            return Err(("demonstrations", "no `demonstrations` in an lm stage (it trains on the corpus; sft stages take it)".into()));
        }
        self.0.check()
    }
    fn devices(&self) -> Vec<(&'static str, DeviceSpec)> {
        vec![("model", self.0.device)]
    }
    fn run(&self, context: &StageContext) -> Result<Metrics, StageError> {
        train(context, &self.0, Objective::Lm)
    }
}

impl StageSettings for SftSettings {
    fn inputs(&self) -> Vec<(&'static str, &str)> {
        self.0.inputs()
    }
    fn base_model(&self) -> &str {
        self.0.model_reference().1
    }
    fn check_lengths(&self, _: i64, context_of: &dyn Fn(&str) -> Option<i64>) -> Result<(), (&'static str, String)> {
        self.0.check_lengths(context_of)
    }
    fn check(&self) -> Result<(), (&'static str, String)> {
        self.0.check()
    }
    fn devices(&self) -> Vec<(&'static str, DeviceSpec)> {
        vec![("model", self.0.device)]
    }
    fn run(&self, context: &StageContext) -> Result<Metrics, StageError> {
        train(context, &self.0, Objective::Sft)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Objective {
    Lm,
    Sft,
}

/// Target id that carries no loss.
pub const IGNORE: i64 = -100;

/// One micro-batch: `inputs` `[B, T]`, `targets` `[B, T]` (the next token, or `IGNORE`).
pub struct Batch {
    pub inputs: Tensor,
    pub targets: Tensor,
    /// Number of targets that carry loss.
    pub target_tokens: i64,
}

impl Batch {
    /// This rank's rows of the batch (all of it in a world of one).
    fn shard(&self, world: &World) -> Batch {
        if world.size() == 1 {
            return Batch { inputs: self.inputs.shallow_clone(), targets: self.targets.shallow_clone(), target_tokens: self.target_tokens };
        }
        let rows = world.shard(self.inputs.size()[0] as usize);
        let narrow = |t: &Tensor| t.narrow(0, rows.start as i64, rows.len() as i64);
        let targets = narrow(&self.targets);
        let target_tokens = targets.ne(IGNORE).sum(Kind::Int64).int64_value(&[]);
        Batch { inputs: narrow(&self.inputs), targets, target_tokens }
    }
}

/// Sums token losses over all micro-batches of one optimizer step and divides by the total
/// number of target tokens, so that k micro-batches give the same gradient as one batch k times
/// larger (even when micro-batches hold different numbers of response tokens). Under data
/// parallelism each rank takes its rows of every micro-batch and divides by the global count, so
/// the ranks' gradients sum to the whole batch's. Gradients are of the loss times `loss_scale`
/// (the optimizer's, for fp16). Returns the loss (of the whole batch, on every rank).
pub fn accumulate_gradients(transformer: &dyn Transformer, batches: &[Batch], loss_scale: f64) -> Result<f64, DistributedError> {
    let world = distributed::world();
    let total_tokens: i64 = batches.iter().map(|b| b.target_tokens).sum::<i64>().max(1);
    let mut loss = [0.0];
    for batch in batches {
        let micro_loss = token_loss_sum(transformer, &batch.shard(world), true) / total_tokens as f64;
        crate::model::blocks::backward(&(&micro_loss * loss_scale));
        loss[0] += micro_loss.double_value(&[]);
    }
    world.all_reduce_values(&mut loss)?;
    Ok(loss[0])
}

/// Summed cross-entropy of a batch's targets.
fn token_loss_sum(transformer: &dyn Transformer, batch: &Batch, train: bool) -> Tensor {
    let logits = transformer.forward_logits(&batch.inputs, None, train).to_kind(Kind::Float);
    let vocab = logits.size()[2];
    logits.view([-1, vocab]).cross_entropy_loss::<Tensor>(&batch.targets.view([-1]), None, Reduction::Sum, IGNORE, 0.0)
}

/// Mean token loss over evaluation batches (each rank evaluates its rows of each).
fn evaluate(transformer: &dyn Transformer, batches: &[Batch]) -> Result<f64, DistributedError> {
    let _no_grad = tch::no_grad_guard();
    let world = distributed::world();
    let total_tokens: i64 = batches.iter().map(|b| b.target_tokens).sum();
    let mut loss = [batches.iter().map(|b| token_loss_sum(transformer, &b.shard(world), false).double_value(&[])).sum()];
    world.all_reduce_values(&mut loss)?;
    Ok(loss[0] / total_tokens.max(1) as f64)
}

/// Where batches come from.
trait BatchSource {
    /// Micro-batch `micro` of optimizer step `step`: a function of (seed, step, micro) only.
    fn train_batch(&self, step: u64, micro: usize) -> Batch;
    fn eval_batches(&self, count: usize) -> Vec<Batch>;
    fn sample_prompts(&self, count: usize) -> Vec<String>;
}

/// Purposes of derived seeds.
const DATA_SEED: u64 = 1;
const DROPOUT_SEED: u64 = 2;
const SAMPLES_SEED: u64 = 3;

/// Pretraining: random windows of `seq_len + 1` tokens from the concatenated corpus, each text
/// followed by end-of-text.
struct CorpusWindows {
    train: Vec<i64>,
    eval: Vec<i64>,
    eval_texts: Vec<String>,
    seq_len: i64,
    batch_size: usize,
    seed: u64,
    device: tch::Device,
}

impl CorpusWindows {
    fn new(context: &StageContext, settings: &TrainSettings, device: tch::Device) -> Result<Self, StageError> {
        let corpus = &context.task.corpus;
        let stream = |texts: &[String]| -> Result<Vec<i64>, StageError> {
            let mut tokens = Vec::new();
            for text in texts {
                tokens.extend(context.tokenizer.encode(text)?);
                tokens.push(context.tokenizer.eos_id());
            }
            Ok(tokens)
        };
        let (train, eval) = (stream(&corpus.train)?, stream(&corpus.eval)?);
        let needed = settings.seq_len as usize + 1;
        if train.len() < needed || eval.len() < needed {
            return Err(context.invalid(format!(
                "the corpus is too small: {} train and {} eval tokens, each needs at least seq_len + 1 = {needed}",
                train.len(),
                eval.len()
            )));
        }
        Ok(CorpusWindows {
            train,
            eval,
            eval_texts: corpus.eval.clone(),
            seq_len: settings.seq_len,
            batch_size: settings.batch_size,
            seed: context.seed(),
            device,
        })
    }

    fn windows(&self, tokens: &[i64], starts: &[usize]) -> Batch {
        let width = self.seq_len as usize;
        let mut inputs = Vec::with_capacity(starts.len() * width);
        let mut targets = Vec::with_capacity(starts.len() * width);
        for &start in starts {
            inputs.extend_from_slice(&tokens[start..start + width]);
            targets.extend_from_slice(&tokens[start + 1..start + width + 1]);
        }
        let shape = [starts.len() as i64, self.seq_len];
        Batch {
            inputs: Tensor::from_slice(&inputs).view(shape).to(self.device),
            targets: Tensor::from_slice(&targets).view(shape).to(self.device),
            target_tokens: targets.len() as i64,
        }
    }
}

impl BatchSource for CorpusWindows {
    fn train_batch(&self, step: u64, micro: usize) -> Batch {
        let mut rng = ChaCha8Rng::seed_from_u64(step_seed(self.seed, DATA_SEED, step * 1024 + micro as u64));
        let last_start = self.train.len() - self.seq_len as usize - 1;
        let starts: Vec<usize> = (0..self.batch_size).map(|_| rng.random_range(0..=last_start)).collect();
        self.windows(&self.train, &starts)
    }

    fn eval_batches(&self, count: usize) -> Vec<Batch> {
        // Evenly spaced windows: the same every evaluation, so eval losses are comparable.
        let last_start = self.eval.len() - self.seq_len as usize - 1;
        let windows = count * self.batch_size;
        let starts: Vec<usize> = (0..windows).map(|i| i * last_start / windows.max(2).saturating_sub(1).max(1)).collect();
        starts.chunks(self.batch_size).map(|chunk| self.windows(&self.eval, chunk)).collect()
    }

    fn sample_prompts(&self, count: usize) -> Vec<String> {
        // The first words of held-out texts.
        self.eval_texts.iter().take(count).map(|text| text.split_whitespace().take(4).collect::<Vec<_>>().join(" ")).collect()
    }
}

/// SFT: prompt + response + end-of-text, loss on the response and the end-of-text only; a
/// conversation rendered with the chat template, loss on the assistant's turns only (their
/// content and end-of-turn marker).
struct Demonstrations {
    train: Vec<Example>,
    eval: Vec<Example>,
    eval_prompts: Vec<String>,
    batch_size: usize,
    grad_accum: usize,
    pad_id: i64,
    seed: u64,
    device: tch::Device,
}

/// Token ids, and which of them are targets (carry a loss).
pub struct Example {
    pub ids: Vec<i64>,
    pub is_target: Vec<bool>,
}

impl Example {
    /// Prompt + response + end-of-text, the response and end-of-text the targets.
    fn exchange(tokenizer: &TextTokenizer, prompt: &str, response: &str) -> Result<Self, TokenizerError> {
        let mut ids = tokenizer.encode(prompt)?;
        let prompt_len = ids.len();
        ids.extend(tokenizer.encode(response)?);
        ids.push(tokenizer.eos_id());
        let is_target = (0..ids.len()).map(|i| i >= prompt_len).collect();
        Ok(Example { ids, is_target })
    }

    /// A conversation as `apply_chat_template` tokenises it, the tokens that start inside an
    /// assistant turn the targets.
    pub fn conversation(tokenizer: &TextTokenizer, messages: &[Message]) -> Result<Self, TokenizerError> {
        let template = tokenizer.chat_template().ok_or(TokenizerError::NoChatTemplate)?;
        let (text, spans) = template.assistant_spans(messages, &tokenizer.template_tokens())?;
        let tokens = tokenizer.encode_with_starts(&text)?;
        let ids = tokens.iter().map(|&(id, _)| id).collect();
        let is_target = tokens.iter().map(|&(_, start)| spans.iter().any(|&(from, to)| start >= from && start < to)).collect();
        Ok(Example { ids, is_target })
    }

    /// Cut to `max_len` tokens; `None` when no target is left.
    fn truncated(mut self, max_len: usize) -> Option<Self> {
        self.ids.truncate(max_len);
        self.is_target.truncate(max_len);
        // The first token is never a target: nothing predicts it.
        self.is_target.iter().skip(1).any(|&t| t).then_some(self)
    }
}

/// The demonstrations an sft stage's `demonstrations` names: an earlier stage's
/// `demonstrations.jsonl` (a `best_of_n` stage's best responses), or a JSONL file.
fn given_demonstrations(context: &StageContext, source: &str) -> Result<Vec<crate::data::synthetic::Demonstration>, StageError> {
    let earlier = context.experiment.stages[..context.stage_index].iter().any(|stage| stage.name == source);
    let path =
        if earlier { context.run.stage_dir(source).join(super::best_of_n::DEMONSTRATIONS_FILE) } else { std::path::PathBuf::from(source) };
    if !path.is_file() {
        return Err(context.invalid(format!(
            "`demonstrations`: no file `{}` (an earlier best_of_n stage with `demonstrations` > 0, or a JSONL file of demonstrations)",
            path.display()
        )));
    }
    let (records, _) = crate::data::jsonl::read_converted(&path, false, crate::data::task::demonstration_from)
        .map_err(|error| context.invalid(format!("`demonstrations`: {error}")))?;
    Ok(records)
}

impl Demonstrations {
    fn new(context: &StageContext, settings: &TrainSettings, device: tch::Device) -> Result<Self, StageError> {
        let demonstrations = &context.task.demonstrations;
        let max_len = settings.seq_len as usize + 1;
        let tokenizer = context.tokenizer;
        let encode = |split: &[crate::data::synthetic::Demonstration]| -> Result<(Vec<Example>, usize), StageError> {
            let mut examples = Vec::new();
            let mut too_long = 0;
            for demonstration in split {
                let example = match &demonstration.messages {
                    Some(messages) => Example::conversation(tokenizer, messages)?,
                    None => Example::exchange(tokenizer, &demonstration.prompt, &demonstration.response)?,
                };
                match example.truncated(max_len) {
                    Some(example) => examples.push(example),
                    None => too_long += 1,
                }
            }
            Ok((examples, too_long))
        };
        let given = settings.demonstrations.as_deref().map(|source| given_demonstrations(context, source)).transpose()?;
        let (train, dropped_train) = encode(given.as_deref().unwrap_or(&demonstrations.train))?;
        let (eval, dropped_eval) = encode(&demonstrations.eval)?;
        if dropped_train + dropped_eval > 0 {
            tracing::warn!(dropped = dropped_train + dropped_eval, "demonstrations with no response token within seq_len were skipped");
        }
        if train.is_empty() || eval.is_empty() {
            return Err(context.invalid(format!(
                "needs demonstrations for training and evaluation, the task has {} and {} usable ones",
                train.len(),
                eval.len()
            )));
        }
        Ok(Demonstrations {
            train,
            eval,
            eval_prompts: demonstrations.eval.iter().map(|d| d.prompt.clone()).collect(),
            batch_size: settings.batch_size,
            grad_accum: settings.grad_accum,
            pad_id: tokenizer.eos_id(),
            seed: context.seed(),
            device,
        })
    }

    fn batch(&self, examples: &[&Example]) -> Batch {
        masked_batch(examples, self.pad_id, self.device)
    }
}

/// A right-padded batch where only target tokens carry a loss: position t predicts token t + 1,
/// which is a target where the example says so; padding carries none.
pub fn masked_batch(examples: &[&Example], pad_id: i64, device: tch::Device) -> Batch {
    let width = examples.iter().map(|e| e.ids.len() - 1).max().unwrap_or(1);
    let mut inputs = vec![pad_id; examples.len() * width];
    let mut targets = vec![IGNORE; examples.len() * width];
    let mut target_tokens = 0;
    for (row, example) in examples.iter().enumerate() {
        let offset = row * width;
        for t in 0..example.ids.len() - 1 {
            inputs[offset + t] = example.ids[t];
            if example.is_target[t + 1] {
                targets[offset + t] = example.ids[t + 1];
                target_tokens += 1;
            }
        }
    }
    let shape = [examples.len() as i64, width as i64];
    Batch {
        inputs: Tensor::from_slice(&inputs).view(shape).to(device),
        targets: Tensor::from_slice(&targets).view(shape).to(device),
        target_tokens,
    }
}

impl BatchSource for Demonstrations {
    fn train_batch(&self, step: u64, micro: usize) -> Batch {
        let first = ((step - 1) as usize * self.grad_accum + micro) * self.batch_size;
        let examples = epoch_items(&self.train, first, self.batch_size, self.seed, DATA_SEED);
        self.batch(&examples)
    }

    fn eval_batches(&self, count: usize) -> Vec<Batch> {
        let examples: Vec<&Example> = self.eval.iter().take(count * self.batch_size).collect();
        examples.chunks(self.batch_size).map(|chunk| self.batch(chunk)).collect()
    }

    fn sample_prompts(&self, count: usize) -> Vec<String> {
        self.eval_prompts.iter().take(count).cloned().collect()
    }
}

/// One `lm` or `sft` stage in training: the model, its optimizer and where batches come from.
struct LmTrainer<'a> {
    context: &'a StageContext<'a>,
    settings: &'a TrainSettings,
    model: LanguageModel,
    optimizer: AdamW,
    data: Box<dyn BatchSource>,
    schedule: LrSchedule,
}

impl Trainer for LmTrainer<'_> {
    type State = ();
    type Error = StageError;

    fn parts(&self) -> Vec<Part<'_>> {
        vec![Part { name: "model", vs: self.model.trained_vs(), optimizer: &self.optimizer }]
    }

    fn parts_mut(&mut self) -> Vec<PartMut<'_>> {
        vec![PartMut { name: "model", vs: self.model.trained_vs_mut(), optimizer: &mut self.optimizer }]
    }

    fn state(&self) {}

    fn restore(&mut self, _: ()) {}

    fn step(&mut self, step: u64) -> Result<Metrics, StageError> {
        let started = Instant::now();
        let lr = self.schedule.at(step);
        tch::manual_seed(step_seed(self.context.seed(), DROPOUT_SEED, step) as i64);
        let batches: Vec<Batch> = (0..self.settings.grad_accum).map(|micro| self.data.train_batch(step, micro)).collect();
        let loss_scale = match stage_loop::nan_injected(self.context.name(), step) {
            true => f64::NAN,
            false => self.optimizer.loss_scale(),
        };
        let train_loss = accumulate_gradients(self.model.transformer.as_ref(), &batches, loss_scale)?;
        let grad_norm = self.optimizer.update(lr, self.settings.grad_clip)?;
        let tokens: i64 = batches.iter().map(|b| b.inputs.numel() as i64).sum();
        Ok(Metrics::from([
            ("train/loss".to_string(), train_loss),
            ("lr".to_string(), lr),
            ("grad_norm".to_string(), grad_norm),
            ("tokens_per_s".to_string(), tokens as f64 / started.elapsed().as_secs_f64()),
        ]))
    }

    fn evaluate(&mut self, step: u64, samples: &mut SampleLog) -> Result<Metrics, StageError> {
        let eval_loss = evaluate(self.model.transformer.as_ref(), &self.data.eval_batches(self.settings.eval_batches))?;
        write_samples(self.context, &self.model, &self.data.sample_prompts(self.settings.samples), step, samples)?;
        Ok(Metrics::from([("eval/loss".to_string(), eval_loss), ("eval/ppl".to_string(), eval_loss.exp())]))
    }

    fn save_best(&self) -> Result<(), StageError> {
        Ok(self.model.save(&self.context.dir().join(CHECKPOINT_DIR))?)
    }
}

fn train(context: &StageContext, settings: &TrainSettings, objective: Objective) -> Result<Metrics, StageError> {
    let dir = context.dir();
    let (reference_key, reference) = settings.model_reference();
    let training = Training { lora: settings.lora.as_ref(), gradient_checkpointing: settings.gradient_checkpointing };
    let model = context.load_trained_model(reference, settings.device, settings.dtype, &training)?;
    let context_len = model.transformer.config().context_length();
    if settings.seq_len > context_len {
        return Err(context.invalid(format!(
            "seq_len = {} exceeds the context of `{reference_key}` = \"{reference}\" ({context_len} tokens)",
            settings.seq_len
        )));
    }
    super::check_shardable(context, "batch_size", settings.batch_size)?;
    let device = model.device();
    let data: Box<dyn BatchSource> = match objective {
        Objective::Lm => Box::new(CorpusWindows::new(context, settings, device)?),
        Objective::Sft => Box::new(Demonstrations::new(context, settings, device)?),
    };
    let schedule = LrSchedule {
        lr: settings.lr,
        min_lr_ratio: settings.min_lr_ratio,
        warmup_steps: settings.warmup_steps,
        total_steps: settings.steps,
        shape: settings.schedule,
    };
    let optimizer = AdamW::new(
        model.trained_vs(),
        AdamWConfig { beta1: settings.beta1, beta2: settings.beta2, eps: 1e-8, weight_decay: settings.weight_decay },
    );
    let mut trainer = LmTrainer { context, settings, model, optimizer, data, schedule };
    let selection = Selection { metric: "eval/loss", min_delta: settings.min_delta, patience: settings.patience };
    let loop_settings = LoopSettings { selection: Some(selection), ..context.loop_settings(settings.steps, settings.eval_every, &FIGURES) };
    let outcome = stage_loop::run(&mut trainer, &loop_settings)?;
    let model = trainer.model;
    model.save(&dir.join("last"))?;
    if !dir.join(CHECKPOINT_DIR).exists() {
        tracing::warn!(stage = context.name(), "eval loss was never finite; the last weights are the checkpoint");
        model.save(&dir.join(CHECKPOINT_DIR))?;
    }
    Ok(summary(&outcome))
}

/// The stage's final figures: the best eval loss, how far it trained, and the losses of the last
/// evaluated step.
fn summary(outcome: &Outcome) -> Metrics {
    let mut summary = Metrics::from([
        ("best/eval_loss".to_string(), outcome.best.unwrap_or(f64::INFINITY)),
        ("steps".to_string(), outcome.steps as f64),
        ("stopped_early".to_string(), f64::from(u8::from(outcome.stopped_early))),
    ]);
    summary.extend(
        outcome.last_evaluated.iter().filter(|(name, _)| name.contains("loss") || *name == "eval/ppl").map(|(n, v)| (n.clone(), *v)),
    );
    summary
}

/// Generations for held-out prompts, with their gold score when the task has an oracle.
fn write_samples(
    context: &StageContext,
    model: &LanguageModel,
    prompts: &[String],
    step: u64,
    log: &mut SampleLog,
) -> Result<(), StageError> {
    // Only rank 0 writes samples (they are no figure the ranks share).
    if prompts.is_empty() || !distributed::world().is_main() {
        return Ok(());
    }
    let tokenizer: &TextTokenizer = &model.tokenizer;
    let encoded = prompts.iter().map(|p| tokenizer.encode(p)).collect::<Result<Vec<_>, _>>()?;
    let longest = encoded.iter().map(Vec::len).max().unwrap_or(0) as i64;
    let max_new_tokens = (model.transformer.config().context_length() - longest).clamp(0, 48);
    if max_new_tokens == 0 {
        return Ok(());
    }
    let options = GenerateOptions {
        max_new_tokens,
        sampling: Sampling::Sample { temperature: 0.7, top_k: Some(50), top_p: None },
        seed: Some(step_seed(context.seed(), SAMPLES_SEED, step)),
        use_kv_cache: true,
    };
    let generation = generate(model.transformer.as_ref(), &encoded, tokenizer.stop_ids(), &options)?;
    for (prompt, ids) in prompts.iter().zip(generation.completions()) {
        let completion = tokenizer.decode(&ids);
        let mut line = serde_json::Map::new();
        line.insert("step".into(), step.into());
        line.insert("prompt".into(), prompt.clone().into());
        line.insert("completion".into(), completion.clone().into());
        if let Some(oracle) = &context.task.oracle {
            line.insert("gold_score".into(), oracle.score(prompt, &completion).total.into());
        }
        log.log_object(line)?;
    }
    Ok(())
}
