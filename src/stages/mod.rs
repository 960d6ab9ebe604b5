//! Stage kinds and how a run executes them. Each kind is one file defining its settings (the keys
//! of its `[[stages]]` table) and how it runs, plus one line in `STAGE_KINDS`.

pub mod best_of_n;
pub mod dpo;
pub mod grpo;
pub mod lm;
pub mod pipeline;
pub mod ppo;
pub mod preferences;
pub mod reward;
pub mod rl;
pub mod rloo;
pub mod sweep;

use std::fmt::Debug;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::{Arch, Experiment, ModelSection, ModelSource};
use crate::data::task::TaskData;
use crate::data::tokenizer::TextTokenizer;
use crate::model::llama::Family;
use crate::model::reward::RewardModel;
use crate::model::{
    CheckpointError, DeviceSpec, Gpt2Config, LanguageModel, LlamaConfig, LoraSettings, ModelConfig, Precision, ReferenceModel,
};
use crate::run::{Metrics, RunDir, RunDirError};
use crate::train::alerts::Watched;
use crate::train::rollout::{Scorer, TextJudge, TextReward};
use crate::train::stage_loop::{Diverged, LoopSettings};

/// The validated settings of one stage kind, and what running it does.
pub trait StageSettings: Debug + Send + Sync {
    /// The keys of this stage that name a model source (an earlier stage, a `[models.X]`
    /// section, `run:RUN_DIR/STAGE` or a checkpoint path), with their values.
    fn inputs(&self) -> Vec<(&'static str, &str)>;

    /// Values that parse but cannot work (a learning rate ≤ 0, …), as `(key, what is expected)`.
    fn check(&self) -> Result<(), (&'static str, String)>;

    /// The reference of the model this stage's output keeps the shape (and context) of.
    fn base_model(&self) -> &str;

    /// Sequence lengths that cannot fit a model, given the task's longest prompt in tokens and
    /// the context of the model a reference names (`None` where it cannot be known before the
    /// run), as `(key, what is wrong)`.
    fn check_lengths(&self, _longest_prompt: i64, _context_of: &dyn Fn(&str) -> Option<i64>) -> Result<(), (&'static str, String)> {
        Ok(())
    }

    /// The devices this stage's models run on, as `(role, device)`, for env.json.
    fn devices(&self) -> Vec<(&'static str, DeviceSpec)>;

    /// Trains, writing into the stage directory; returns the stage's final figures.
    fn run(&self, context: &StageContext) -> Result<Metrics, StageError>;
}

/// Parses a stage table (without `name` and `kind`) into its settings and the same table with
/// every default filled in (what a run records as its resolved config).
pub type ParseSettings = fn(toml::Table) -> Result<(Box<dyn StageSettings>, toml::Table), toml::de::Error>;

pub struct StageKind {
    pub name: &'static str,
    pub parse: ParseSettings,
    /// The keys of its `[[stages]]` table besides `name` and `kind`.
    pub keys: fn() -> Vec<&'static str>,
    pub figures: &'static StageFigures,
}

impl StageKind {
    /// The kind `name` whose settings are `T`.
    const fn of<T: StageSettings + DeserializeOwned + Serialize + 'static>(name: &'static str, figures: &'static StageFigures) -> Self {
        StageKind { name, parse: parse_settings::<T>, keys: || crate::config::keys::struct_keys::<T>().to_vec(), figures }
    }

    /// The kind `name` whose settings are a group of keys shared with other kinds (`S`) and its
    /// own keys (`O`), written in one table.
    const fn of_composite<S, O>(name: &'static str, figures: &'static StageFigures) -> Self
    where
        S: DeserializeOwned + Serialize + Debug + Send + Sync + 'static,
        O: DeserializeOwned + Serialize + Debug + Send + Sync + 'static,
        Composite<S, O>: StageSettings,
    {
        StageKind { name, parse: parse_composite::<S, O>, keys: composite_keys::<S, O>, figures }
    }
}

/// Settings made of keys shared by several kinds (`shared`: where preference pairs come from,
/// what every RL stage takes) and the kind's own (`own`), parsed from one table: serde's
/// `flatten` would lose both `deny_unknown_fields` and the key list of each part.
#[derive(Debug, Clone)]
pub struct Composite<S, O> {
    pub shared: S,
    pub own: O,
}

fn composite_keys<S: DeserializeOwned, O: DeserializeOwned>() -> Vec<&'static str> {
    let mut keys = crate::config::keys::struct_keys::<S>().to_vec();
    keys.extend(crate::config::keys::struct_keys::<O>());
    keys
}

fn parse_composite<S, O>(table: toml::Table) -> Result<(Box<dyn StageSettings>, toml::Table), toml::de::Error>
where
    S: DeserializeOwned + Serialize + 'static,
    O: DeserializeOwned + Serialize + 'static,
    Composite<S, O>: StageSettings,
{
    let all = composite_keys::<S, O>();
    if let Some(unknown) = table.keys().find(|key| !all.contains(&key.as_str())) {
        let expected: Vec<String> = all.iter().map(|key| format!("`{key}`")).collect();
        return Err(serde::de::Error::custom(format!("unknown field `{unknown}`, expected one of {}", expected.join(", "))));
    }
    let shared_keys = crate::config::keys::struct_keys::<S>();
    let (shared, own): (toml::Table, toml::Table) = table.into_iter().partition(|(key, _)| shared_keys.contains(&key.as_str()));
    let settings = Composite { shared: toml::Value::Table(shared).try_into::<S>()?, own: toml::Value::Table(own).try_into::<O>()? };
    let mut resolved = toml::Table::try_from(&settings.shared).expect("stage settings serialise to a TOML table");
    resolved.extend(toml::Table::try_from(&settings.own).expect("stage settings serialise to a TOML table"));
    Ok((Box::new(settings), resolved))
}

/// What a stage kind's figures are for: which of its metrics reports put in their tables and
/// charts, which decide "better", and which the progress bar and log show.
#[derive(Debug)]
pub struct StageFigures {
    /// Final figures worth a column in a report's table.
    pub headline: &'static [&'static str],
    /// Curves worth a chart, in the order they are shown.
    pub curves: &'static [&'static str],
    /// The figures that decide which run is better, the most telling first.
    pub primary: &'static [&'static str],
    /// How reports read the headline and primary figures; any other figure is `Neither`.
    pub readings: &'static [(&'static str, Reading)],
    /// A reward–KL frontier chart, for stages that optimise a reward under a KL penalty.
    pub frontier: Option<Frontier>,
    /// Shown on the progress bar after each step.
    pub shown: &'static [&'static str],
    /// Named in the `evaluated` log line.
    pub logged: &'static [&'static str],
    /// What the kind's steps are called on a chart's axis.
    pub step_name: &'static str,
    /// The metrics the alert rules watch while the stage trains.
    pub watched: Watched,
}

/// How a report reads a figure: which way is better, and between which runs it compares at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    Higher,
    Lower,
    /// Neither better nor worse by itself: a KL is a cost paid for reward, a coefficient a setting.
    Neither,
    /// Higher is better, but only between runs whose stage key (e.g. `reward`) names the same
    /// model: a reward model's score means nothing on another reward model's scale, and a higher
    /// proxy score with a lower gold score is over-optimisation, not a win.
    HigherOnSameModel(&'static str),
}

impl StageFigures {
    pub fn reading(&self, metric: &str) -> Reading {
        self.readings.iter().find(|(name, _)| *name == metric).map_or(Reading::Neither, |(_, reading)| *reading)
    }
}

/// The metric names a reward–KL frontier is drawn from.
#[derive(Debug)]
pub struct Frontier {
    pub kl: &'static str,
    /// The score optimised (the reward model's).
    pub proxy: &'static str,
    /// The true score, on tasks with a gold oracle.
    pub gold: &'static str,
}

/// Every stage kind an experiment may use.
pub const STAGE_KINDS: &[StageKind] = &[
    StageKind::of::<lm::LmSettings>("lm", &lm::FIGURES),
    StageKind::of::<lm::SftSettings>("sft", &lm::FIGURES),
    StageKind::of_composite::<preferences::PreferenceData, reward::RewardKeys>("reward", &reward::FIGURES),
    StageKind::of::<ppo::PpoSettings>("ppo", &ppo::FIGURES),
    StageKind::of_composite::<preferences::PreferenceData, dpo::DpoKeys>("dpo", &dpo::FIGURES),
    StageKind::of_composite::<rl::PolicyGradientKeys, grpo::GrpoKeys>("grpo", &grpo::FIGURES),
    StageKind::of_composite::<rl::PolicyGradientKeys, rloo::RlooKeys>("rloo", &rloo::FIGURES),
    StageKind::of::<best_of_n::BestOfNSettings>("best_of_n", &best_of_n::FIGURES),
];

pub fn stage_kind(name: &str) -> Option<&'static StageKind> {
    STAGE_KINDS.iter().find(|kind| kind.name == name)
}

fn parse_settings<T>(table: toml::Table) -> Result<(Box<dyn StageSettings>, toml::Table), toml::de::Error>
where
    T: StageSettings + DeserializeOwned + Serialize + 'static,
{
    let settings: T = toml::Value::Table(table).try_into()?;
    let resolved = toml::Table::try_from(&settings).expect("stage settings serialise to a TOML table");
    Ok((Box::new(settings), resolved))
}

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Device(#[from] crate::model::device::DeviceError),
    #[error(transparent)]
    Tokenizer(#[from] crate::data::tokenizer::TokenizerError),
    #[error(transparent)]
    Generate(#[from] crate::model::generate::GenerateError),
    #[error(transparent)]
    Rollout(#[from] crate::train::rollout::RolloutError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error(transparent)]
    Native(#[from] crate::native::NativeError),
    #[error(transparent)]
    Optimizer(#[from] crate::train::optimizer::OptimizerError),
    #[error(transparent)]
    Distributed(#[from] crate::distributed::DistributedError),
    #[error(transparent)]
    State(#[from] crate::train::state::StateError),
    #[error(transparent)]
    Diverged(#[from] Diverged),
    #[error("stage `{stage}`: {message}")]
    Invalid { stage: String, message: String },
}

/// Under data parallelism every rank takes a share of each batch (lm, sft, reward, dpo: of its
/// items; the RL stages: of each minibatch's `grad_accum` micro-batches): `key` must give every
/// rank at least one.
fn check_shardable(context: &StageContext, key: &str, count: usize) -> Result<(), StageError> {
    let ranks = crate::distributed::world().size();
    if count < ranks {
        return Err(context.invalid(format!(
            "`{key}` = {count} is smaller than the number of data-parallel ranks ({ranks}): each rank needs at least one share of it"
        )));
    }
    Ok(())
}

/// Checks every stage's sequence lengths against the contexts of its models before anything
/// trains (`rlhf validate` and `rlhf run`): libtorch would otherwise fail mid-run on a position
/// past a model's context.
pub fn check_sequence_lengths(experiment: &Experiment, task: &TaskData, tokenizer: &TextTokenizer) -> Result<(), StageError> {
    let mut longest_prompt = 0;
    for prompt in task
        .prompts
        .train
        .iter()
        .chain(&task.prompts.eval)
        .chain(task.demonstrations.train.iter().chain(&task.demonstrations.eval).map(|d| &d.prompt))
    {
        longest_prompt = longest_prompt.max(tokenizer.encode(prompt)?.len() as i64);
    }
    for (index, stage) in experiment.stages.iter().enumerate() {
        let context_of = |reference: &str| context_length(experiment, index, reference);
        stage
            .settings
            .check_lengths(longest_prompt, &context_of)
            .map_err(|(key, problem)| StageError::Invalid { stage: stage.name.clone(), message: format!("`{key}`: {problem}") })?;
    }
    Ok(())
}

/// The context length of the model a reference in stage `stage_index` names: a `[models]`
/// section's `n_ctx` (or its checkpoint's), an earlier stage's base model's, a checkpoint's
/// `n_positions`; `None` when no checkpoint can be read yet.
fn context_length(experiment: &Experiment, stage_index: usize, reference: &str) -> Option<i64> {
    let from_checkpoint = |dir: &std::path::Path| crate::model::checkpoint::read_config(dir).ok().map(|config| config.context_length());
    match experiment.model_source(stage_index, reference) {
        ModelSource::Section(name) => {
            let section = &experiment.models[&name];
            section.n_ctx.or_else(|| section.from.as_deref().and_then(from_checkpoint))
        }
        ModelSource::Stage(stage) => {
            let index = experiment.stages.iter().position(|s| s.name == stage)?;
            context_length(experiment, index, experiment.stages[index].settings.base_model())
        }
        ModelSource::Run { run_dir, stage } => from_checkpoint(&run_dir.join(stage).join(CHECKPOINT_DIR)),
        ModelSource::Path(path) => from_checkpoint(&path),
    }
}

/// What a running stage may use: the experiment, its run directory, the task's data and the
/// tokenizer shared by every model of the run.
pub struct StageContext<'a> {
    pub experiment: &'a Experiment,
    pub stage_index: usize,
    pub run: &'a RunDir,
    pub task: &'a TaskData,
    pub tokenizer: &'a TextTokenizer,
    /// Continue from the stage's saved state, if it has one.
    pub resume: bool,
}

/// `reward = "gold"`: the task's gold oracle as the reward — the true objective, for ablations.
pub const GOLD_REWARD: &str = "gold";
/// `reward = "verifier"`: the task's verifier (exact match, plus any format reward).
pub const VERIFIER_REWARD: &str = "verifier";

/// Whether a `reward` key names a programmatic reward rather than a model.
pub fn is_programmatic_reward(reference: &str) -> bool {
    [GOLD_REWARD, VERIFIER_REWARD].contains(&reference)
}

/// Where a stage writes its final checkpoint, read by later stages.
pub const CHECKPOINT_DIR: &str = "checkpoint";

impl StageContext<'_> {
    pub fn name(&self) -> &str {
        &self.experiment.stages[self.stage_index].name
    }

    pub fn dir(&self) -> PathBuf {
        self.run.stage_dir(self.name())
    }

    /// A seed for this stage: the experiment's seed mixed with the stage's position.
    pub fn seed(&self) -> u64 {
        crate::rng::splitmix64(self.experiment.seed ^ (self.stage_index as u64 + 1))
    }

    /// How the shared stage loop runs this stage: `steps` steps evaluated every `eval_every`,
    /// showing and logging the kind's declared figures and watching its declared metrics (no
    /// best-weights selection, no KL target).
    pub fn loop_settings(&self, steps: u64, eval_every: u64, figures: &'static StageFigures) -> LoopSettings<'_> {
        LoopSettings {
            stage: self.name(),
            run_dir: self.run.path.clone(),
            dir: self.dir(),
            resume: self.resume,
            steps,
            eval_every,
            selection: None,
            shown: figures.shown,
            logged: figures.logged,
            tensorboard: self.experiment.tensorboard,
            alerts: &self.experiment.alerts,
            watched: figures.watched,
            kl_target: None,
        }
    }

    pub fn invalid(&self, message: impl Into<String>) -> StageError {
        StageError::Invalid { stage: self.name().to_string(), message: message.into() }
    }

    /// The checkpoint directory a reference names; a fresh `[models.X]` section has none.
    pub fn checkpoint_dir(&self, reference: &str) -> Option<PathBuf> {
        match self.experiment.model_source(self.stage_index, reference) {
            ModelSource::Section(name) => self.experiment.models[&name].from.clone(),
            ModelSource::Stage(stage) => Some(self.run.stage_dir(&stage).join(CHECKPOINT_DIR)),
            ModelSource::Run { run_dir, stage } => Some(run_dir.join(stage).join(CHECKPOINT_DIR)),
            ModelSource::Path(path) => Some(path),
        }
    }

    /// The reward an RL stage's `reward` key names: a programmatic reward (`gold`, `verifier`)
    /// or a reward model — a reward stage, another run's, or a checkpoint directory (an HF
    /// sequence-classification model included), frozen.
    pub fn load_reward(&self, reference: &str, device: DeviceSpec, precision: Precision) -> Result<Box<dyn Scorer>, StageError> {
        let judge: TextJudge = match reference {
            GOLD_REWARD => {
                let oracle = self.task.oracle.ok_or_else(|| self.invalid("`reward = \"gold\"` needs a task with a gold oracle"))?;
                Box::new(move |prompt, response| oracle.score(prompt, response).total)
            }
            VERIFIER_REWARD => {
                let verifier = self
                    .task
                    .verifier
                    .ok_or_else(|| self.invalid("`reward = \"verifier\"` needs a task with a verifier (synthetic-arithmetic)"))?;
                Box::new(move |prompt, response| verifier.reward(prompt, response))
            }
            _ => {
                let dir = self.checkpoint_dir(reference).ok_or_else(|| {
                    self.invalid(format!("`reward` = \"{reference}\" must be a trained checkpoint, not a fresh [models] section"))
                })?;
                let mut model = RewardModel::load(&dir, device.resolve()?, precision, false)?;
                model.vs.freeze();
                return Ok(Box::new(model));
            }
        };
        Ok(Box::new(TextReward { tokenizer: self.tokenizer.clone(), judge }))
    }

    /// Loads the model a stage trains, with LoRA adapters (their initialisation drawn from the
    /// stage's seed) and gradient checkpointing as its keys ask.
    pub fn load_trained_model(
        &self,
        reference: &str,
        device: DeviceSpec,
        precision: Precision,
        training: &Training,
    ) -> Result<LanguageModel, StageError> {
        let mut model = self.load_model(reference, device, precision)?;
        if let Some(lora) = training.lora {
            if model.base_dir.is_none() {
                return Err(self.invalid(format!(
                    "`lora`: `{reference}` is a fresh model; adapters train on a trained base (start from a checkpoint, or train all weights)"
                )));
            }
            tch::manual_seed(crate::rng::step_seed(self.seed(), LORA_SEED, 0) as i64);
            model.attach_adapters(lora).map_err(|error| self.invalid(error.to_string()))?;
        }
        model.set_gradient_checkpointing(training.gradient_checkpointing);
        Ok(model)
    }

    /// The frozen reference of a stage whose policy starts from `policy`: with LoRA and the same
    /// starting model, the policy with its adapters off (no second copy, on the policy's device);
    /// otherwise a model of its own.
    pub fn load_reference(
        &self,
        reference: &str,
        policy: &str,
        training: &Training,
        device: DeviceSpec,
        precision: Precision,
    ) -> Result<ReferenceModel, StageError> {
        if training.lora.is_some() && reference == policy {
            return Ok(ReferenceModel::PolicyBase);
        }
        let mut model = self.load_model(reference, device, precision)?;
        model.vs.freeze();
        Ok(ReferenceModel::Separate(Box::new(model)))
    }

    /// Builds the model a stage starts from: a `[models.X]` section (fresh, or its `from`
    /// checkpoint), an earlier stage's checkpoint, another run's, or a checkpoint directory.
    pub fn load_model(&self, reference: &str, device: DeviceSpec, precision: Precision) -> Result<LanguageModel, StageError> {
        let device = device.resolve()?;
        if let ModelSource::Section(name) = self.experiment.model_source(self.stage_index, reference) {
            let section = &self.experiment.models[&name];
            if let (None, Some(n_layer), Some(n_head), Some(n_embd), Some(n_ctx)) =
                (&section.from, section.n_layer, section.n_head, section.n_embd, section.n_ctx)
            {
                let shape = FreshShape { n_layer, n_head, n_embd, n_ctx };
                let config = fresh_model_config(section, shape, self.tokenizer.vocab_size() as i64, self.tokenizer.eos_id());
                tch::manual_seed(self.seed() as i64);
                return Ok(LanguageModel::fresh(config, self.tokenizer.clone(), device, precision));
            }
        }
        let checkpoint_dir = self.checkpoint_dir(reference).ok_or_else(|| {
            self.invalid(format!("`{reference}`: a [models] section needs `from` or all of n_layer, n_head, n_embd and n_ctx"))
        })?;
        Ok(LanguageModel::load(&checkpoint_dir, device, precision)?)
    }
}

/// Purpose of the seed of LoRA adapters' initialisation.
pub(crate) const LORA_SEED: u64 = 71;

/// How a stage trains the model it loads: its `lora` and `gradient_checkpointing` keys.
#[derive(Debug, Clone, Copy)]
pub struct Training<'a> {
    pub lora: Option<&'a LoraSettings>,
    pub gradient_checkpointing: bool,
}

/// A stage's `lora` table, checked.
pub fn check_lora(lora: &Option<LoraSettings>) -> Result<(), (&'static str, String)> {
    lora.as_ref().map_or(Ok(()), LoraSettings::check)
}

/// The shape keys every fresh model section has (checked when the experiment was read).
struct FreshShape {
    n_layer: i64,
    n_head: i64,
    n_embd: i64,
    n_ctx: i64,
}

/// The architecture's configuration for a fresh model of `section`, over a vocabulary of
/// `vocab_size` ending in `eos_id` (also its beginning-of-text, as in GPT-2).
fn fresh_model_config(section: &ModelSection, shape: FreshShape, vocab_size: i64, eos_id: i64) -> ModelConfig {
    let FreshShape { n_layer, n_head, n_embd, n_ctx } = shape;
    let family = match section.arch {
        Arch::Gpt2 => {
            return Gpt2Config {
                vocab_size,
                n_positions: n_ctx,
                n_embd,
                n_layer,
                n_head,
                n_inner: section.n_inner,
                layer_norm_epsilon: 1e-5,
                embd_pdrop: section.dropout,
                attn_pdrop: section.dropout,
                resid_pdrop: section.dropout,
                initializer_range: 0.02,
                bos_token_id: eos_id,
                eos_token_id: eos_id,
            }
            .into()
        }
        Arch::Llama => Family::Llama,
        Arch::Qwen2 => Family::Qwen2,
        Arch::Qwen3 => Family::Qwen3,
    };
    let qwen = family != Family::Llama;
    LlamaConfig {
        family,
        vocab_size,
        hidden_size: n_embd,
        // SwiGLU's three matrices at ⅔ of 4·n_embd keep the MLP's size (Shazeer 2020), rounded up
        // to a multiple of 8.
        intermediate_size: section.n_inner.unwrap_or((8 * n_embd / 3 + 7) / 8 * 8),
        num_hidden_layers: n_layer,
        num_attention_heads: n_head,
        num_key_value_heads: section.n_kv_head.unwrap_or(n_head),
        head_dim: section.head_dim.unwrap_or(n_embd / n_head),
        max_position_embeddings: n_ctx,
        rms_norm_eps: section.norm_eps.unwrap_or(if qwen { 1e-6 } else { 1e-5 }),
        rope_theta: section.rope_theta.unwrap_or(if qwen { 1e6 } else { 1e4 }),
        rope_scaling: None,
        tie_word_embeddings: section.tie_embeddings.unwrap_or(true),
        qkv_bias: family == Family::Qwen2,
        output_bias: false,
        attention_dropout: section.dropout,
        initializer_range: 0.02,
        bos_token_id: Some(eos_id),
        eos_token_ids: vec![eos_id],
    }
    .into()
}
