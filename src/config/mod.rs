//! Experiment files: parse the TOML, apply `--set` overrides, check every value and every
//! reference between stages, and report problems with file, line, column and key.

pub mod keys;
mod overrides;
mod schema;
mod sweep;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

pub use overrides::OverrideError;
pub use schema::{Arch, Experiment, ModelSection, StageConfig, TaskConfig, TaskKind, TokenizerConfig};
pub use sweep::{Sweep, Variant};

use crate::stages::{stage_kind, STAGE_KINDS};
use crate::train::alerts::AlertSettings;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read experiment file `{path}`: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Toml { path: PathBuf, source: Box<toml::de::Error> },
    #[error("{path}:{line}:{column}: {message}")]
    At { path: PathBuf, line: usize, column: usize, message: String },
    #[error(transparent)]
    Override(#[from] OverrideError),
    #[error("{path}, after applying --set {assignments}: {message}")]
    AfterOverrides { path: PathBuf, assignments: String, message: String },
    #[error("{path}: [sweep] variant `{variant}` (--set {assignments}): {message}")]
    Variant { path: PathBuf, variant: String, assignments: String, message: String },
}

impl ConfigError {
    /// What is wrong, without the file and position (for errors re-reported elsewhere).
    fn message(&self) -> String {
        match self {
            ConfigError::At { message, .. } => message.clone(),
            ConfigError::Toml { source, .. } => source.message().to_string(),
            other => other.to_string(),
        }
    }
}

/// Where a stage gets its starting model from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// The output of an earlier stage of the same run.
    Stage(String),
    /// A `[models.NAME]` section.
    Section(String),
    /// `run:RUN_DIR/STAGE`: a stage's checkpoint from another run.
    Run { run_dir: PathBuf, stage: String },
    /// A checkpoint directory.
    Path(PathBuf),
}

/// Every table of an experiment file with the keys it accepts: `experiment` (the top level),
/// `task`, `tokenizer`, `models.NAME`, `sweep`, and `stages (KIND)` for each stage kind.
pub fn accepted_keys() -> Vec<(String, Vec<&'static str>)> {
    let mut tables = vec![
        ("experiment".to_string(), keys::struct_keys::<RawExperiment>().to_vec()),
        ("task".to_string(), keys::struct_keys::<TaskConfig>().to_vec()),
        ("tokenizer".to_string(), keys::struct_keys::<TokenizerConfig>().to_vec()),
        ("models.NAME".to_string(), keys::struct_keys::<ModelSection>().to_vec()),
        ("sweep".to_string(), keys::struct_keys::<sweep::RawSweep>().to_vec()),
        ("alerts".to_string(), keys::struct_keys::<AlertSettings>().to_vec()),
    ];
    tables.extend(STAGE_KINDS.iter().map(|kind| (format!("stages ({})", kind.name), (kind.keys)())));
    tables
}

/// Reads, overrides and validates an experiment file.
pub fn load(path: &Path, assignments: &[String]) -> Result<Experiment, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
    // Checked once as written, so that errors point at the file's own lines…
    let experiment = parse(path, &text)?;
    if assignments.is_empty() {
        return Ok(experiment);
    }
    // …then again with the overrides applied.
    let mut table: toml::Table = toml::from_str(&text).expect("already parsed once");
    for assignment in assignments {
        overrides::apply(&mut table, assignment)?;
    }
    let overridden = toml::to_string(&table).expect("a TOML table serialises");
    parse(path, &overridden).map_err(|error| ConfigError::AfterOverrides {
        path: path.into(),
        assignments: assignments.join(" --set "),
        message: error.to_string().trim_start_matches(&format!("{}: ", path.display())).to_string(),
    })
}

/// The experiment of one variant of a sweep: the file with the user's `assignments`, then the
/// variant's values and seed, without the `[sweep]` table.
pub fn load_variant(path: &Path, assignments: &[String], variant: &Variant) -> Result<Experiment, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
    let mut table: toml::Table =
        toml::from_str(&text).map_err(|source| ConfigError::Toml { path: path.into(), source: Box::new(source) })?;
    for assignment in assignments {
        overrides::apply(&mut table, assignment)?;
    }
    variant_experiment(path, table, variant)
}

/// `table` (sweep and all) made into `variant`'s experiment.
fn variant_experiment(path: &Path, mut table: toml::Table, variant: &Variant) -> Result<Experiment, ConfigError> {
    let arguments = variant.set_arguments();
    let failed = |message: String| ConfigError::Variant {
        path: path.into(),
        variant: variant.name.clone(),
        assignments: arguments.join(" --set "),
        message,
    };
    table.remove("sweep");
    for assignment in &arguments {
        overrides::apply(&mut table, assignment).map_err(|error| failed(error.to_string()))?;
    }
    let text = toml::to_string(&table).expect("a TOML table serialises");
    parse(path, &text).map_err(|error| failed(error.message()))
}

impl Experiment {
    /// The fully resolved config (defaults filled in), as a run records it.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("an experiment serialises to TOML")
    }

    pub fn stage(&self, name: &str) -> Option<&StageConfig> {
        self.stages.iter().find(|stage| stage.name == name)
    }

    /// Resolves a reference written in stage number `stage_index`; `validate` has checked it.
    pub fn model_source(&self, stage_index: usize, reference: &str) -> ModelSource {
        let earlier: Vec<&str> = self.stages[..stage_index].iter().map(|s| s.name.as_str()).collect();
        resolve_reference(reference, &earlier, &[], &self.models).expect("references are validated at load time")
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExperiment {
    name: String,
    #[serde(default = "schema::defaults::seed")]
    seed: u64,
    #[serde(default)]
    threads: Option<i32>,
    #[serde(default)]
    generation_threads: Option<i32>,
    #[serde(default = "schema::defaults::yes")]
    tensorboard: bool,
    task: Spanned<TaskConfig>,
    #[serde(default)]
    tokenizer: TokenizerConfig,
    #[serde(default)]
    models: BTreeMap<String, Spanned<ModelSection>>,
    #[serde(default)]
    stages: Vec<Spanned<BTreeMap<Spanned<String>, Spanned<toml::Value>>>>,
    #[serde(default)]
    alerts: Option<Spanned<AlertSettings>>,
    #[serde(default)]
    sweep: Option<Spanned<sweep::RawSweep>>,
}

fn parse(path: &Path, text: &str) -> Result<Experiment, ConfigError> {
    let raw: RawExperiment = toml::from_str(text).map_err(|source| ConfigError::Toml { path: path.into(), source: Box::new(source) })?;
    let at = |span: Range<usize>, message: String| {
        let (line, column) = line_column(text, span.start);
        ConfigError::At { path: path.into(), line, column, message }
    };
    if raw.stages.is_empty() {
        return Err(at(0..0, "the experiment has no `[[stages]]`".into()));
    }
    for (key, threads) in [("threads", raw.threads), ("generation_threads", raw.generation_threads)] {
        if let Some(threads) = threads.filter(|&t| t < 1) {
            return Err(at(0..0, format!("`{key}` must be ≥ 1, got {threads}")));
        }
    }
    if let Some(alerts) = &raw.alerts {
        alerts.get_ref().check().map_err(|(key, expected)| at(alerts.span(), format!("[alerts]: `{key}`: expected {expected}")))?;
    }
    check_task(raw.task.get_ref()).map_err(|message| at(raw.task.span(), format!("[task]: {message}")))?;
    for (name, model) in &raw.models {
        check_model(model.get_ref()).map_err(|message| at(model.span(), format!("[models.{name}]: {message}")))?;
    }
    let models: BTreeMap<String, ModelSection> = raw.models.into_iter().map(|(k, v)| (k, v.into_inner())).collect();
    let template_from_files = raw.tokenizer.from.is_some() || models.values().any(|m| m.from.is_some());
    if raw.task.get_ref().chat && raw.tokenizer.chat_template.is_none() && !template_from_files {
        return Err(at(
            raw.task.span(),
            "[task]: `chat = true` renders the task's conversations with a chat template, and this experiment has none: set [tokenizer] chat_template = \"chatml\" (or a .jinja file)".into(),
        ));
    }

    let mut stages: Vec<StageConfig> = Vec::new();
    let all_names: Vec<String> = raw
        .stages
        .iter()
        .filter_map(|stage| stage.get_ref().iter().find(|(k, _)| k.get_ref() == "name"))
        .filter_map(|(_, v)| v.get_ref().as_str().map(str::to_string))
        .collect();
    for spanned in raw.stages {
        let stage_span = spanned.span();
        let mut entries = spanned.into_inner();
        let take_string = |entries: &mut BTreeMap<Spanned<String>, Spanned<toml::Value>>, key: &str| {
            let found = entries.keys().find(|k| k.get_ref() == key).cloned();
            let Some(found) = found else {
                return Err(at(stage_span.clone(), format!("a stage needs a `{key}`")));
            };
            let value = entries.remove(&found).expect("key just found");
            match value.get_ref().as_str() {
                Some(text) => Ok((text.to_string(), value.span())),
                None => Err(at(value.span(), format!("stage `{key}` must be a string, found {}", value.get_ref().type_str()))),
            }
        };
        let (name, name_span) = take_string(&mut entries, "name")?;
        let (kind, kind_span) = take_string(&mut entries, "kind")?;
        if stages.iter().any(|s| s.name == name) {
            return Err(at(name_span, format!("a second stage named `{name}`: stage names must be unique")));
        }
        let Some(stage_kind) = stage_kind(&kind) else {
            let known: Vec<&str> = STAGE_KINDS.iter().map(|k| k.name).collect();
            return Err(at(kind_span, format!("stage `{name}`: unknown kind `{kind}`, expected one of {}", known.join(", "))));
        };
        let spans: BTreeMap<String, Range<usize>> = entries.keys().map(|k| (k.get_ref().clone(), k.span())).collect();
        let table: toml::Table = entries.into_iter().map(|(k, v)| (k.into_inner(), v.into_inner())).collect();
        let (settings, resolved) = (stage_kind.parse)(table).map_err(|error| {
            let key = error_key(&error);
            let span = key.as_ref().and_then(|key| spans.get(key).cloned()).unwrap_or(stage_span.clone());
            let about = key.map(|key| format!("`{key}`: ")).unwrap_or_default();
            at(span, format!("stage `{name}` ({kind}): {about}{}", error.message().replace('\n', " ")))
        })?;
        let spans_map = |key: &str| spans.get(key).cloned().unwrap_or(stage_span.clone());
        settings.check().map_err(|(key, expected)| at(spans_map(key), format!("stage `{name}`: `{key}`: expected {expected}")))?;

        let earlier: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
        for (key, reference) in settings.inputs() {
            let later: Vec<&str> = all_names.iter().map(String::as_str).filter(|n| !earlier.contains(n) && *n != name).collect();
            let problem = if reference == name {
                Some(format!("stage `{name}` cannot take its own output as `{key}`"))
            } else {
                resolve_reference(reference, &earlier, &later, &models).err().map(|m| format!("stage `{name}`: `{key}`: {m}"))
            };
            if let Some(message) = problem {
                return Err(at(spans_map(key), message));
            }
        }
        stages.push(StageConfig { name, kind, settings, resolved });
    }

    let sweep = match &raw.sweep {
        None => None,
        Some(spanned) => Some(check_sweep(path, text, spanned, &at)?),
    };
    Ok(Experiment {
        name: raw.name,
        seed: raw.seed,
        threads: raw.threads,
        generation_threads: raw.generation_threads,
        tensorboard: raw.tensorboard,
        task: raw.task.into_inner(),
        tokenizer: raw.tokenizer,
        models,
        stages,
        alerts: raw.alerts.map(Spanned::into_inner).unwrap_or_default(),
        sweep,
    })
}

/// Expands the `[sweep]` table and checks that every swept key takes each of its values (errors
/// point at the key), then that every variant is a valid experiment.
fn check_sweep(
    path: &Path,
    text: &str,
    spanned: &Spanned<sweep::RawSweep>,
    at: &impl Fn(Range<usize>, String) -> ConfigError,
) -> Result<Sweep, ConfigError> {
    let (sweep, key_spans) =
        sweep::expand(spanned.get_ref()).map_err(|problem| at(problem.span.unwrap_or(spanned.span()), problem.message))?;
    let table: toml::Table = toml::from_str(text).expect("already parsed once");
    let mut checked: Vec<&(String, String)> = Vec::new();
    for variant in &sweep.variants {
        for assignment in &variant.assignments {
            if checked.contains(&assignment) {
                continue;
            }
            checked.push(assignment);
            let alone = Variant { name: variant.name.clone(), assignments: vec![assignment.clone()], seed: None };
            if let Err(error) = variant_experiment(path, table.clone(), &alone) {
                let (key, value) = assignment;
                let span = key_spans.iter().find(|(k, _)| k == key).map_or(spanned.span(), |(_, span)| span.clone());
                let message = match error {
                    ConfigError::Variant { message, .. } => message,
                    other => other.to_string(),
                };
                return Err(at(span, format!("[sweep] `{key}` = {value}: {message}")));
            }
        }
    }
    for variant in &sweep.variants {
        variant_experiment(path, table.clone(), variant)?;
    }
    Ok(sweep)
}

/// The key a schema error is about: `unknown field `x``, or the `in `x`` line toml's Display
/// adds for errors inside a value (the path is not otherwise public).
fn error_key(error: &toml::de::Error) -> Option<String> {
    let text = error.to_string();
    let quoted = |prefix: &str| {
        let rest = &text[text.find(prefix)? + prefix.len()..];
        Some(rest[..rest.find('`')?].split('.').next()?.to_string())
    };
    quoted("unknown field `").or_else(|| quoted("\nin `"))
}

fn resolve_reference(
    reference: &str,
    earlier: &[&str],
    later: &[&str],
    models: &BTreeMap<String, ModelSection>,
) -> Result<ModelSource, String> {
    if let Some(run) = reference.strip_prefix("run:") {
        let run_path = Path::new(run);
        let (Some(run_dir), Some(stage)) = (run_path.parent(), run_path.file_name()) else {
            return Err(format!("`{reference}`: expected run:RUN_DIR/STAGE"));
        };
        if !run_path.join("checkpoint").is_dir() {
            return Err(format!("`{reference}`: no checkpoint at `{}`", run_path.join("checkpoint").display()));
        }
        return Ok(ModelSource::Run { run_dir: run_dir.to_path_buf(), stage: stage.to_string_lossy().into_owned() });
    }
    if earlier.contains(&reference) {
        return Ok(ModelSource::Stage(reference.to_string()));
    }
    if later.contains(&reference) {
        return Err(format!("stage `{reference}` comes later; a stage can only use the output of an earlier one"));
    }
    if models.contains_key(reference) {
        return Ok(ModelSource::Section(reference.to_string()));
    }
    let path = Path::new(reference);
    if path.is_dir() {
        return Ok(ModelSource::Path(path.to_path_buf()));
    }
    let mut known: Vec<String> = earlier.iter().map(|s| format!("stage `{s}`")).collect();
    known.extend(models.keys().map(|m| format!("model `{m}`")));
    Err(format!(
        "`{reference}` is not an earlier stage, a [models] section, run:RUN_DIR/STAGE or an existing checkpoint directory (known: {})",
        if known.is_empty() { "none".to_string() } else { known.join(", ") }
    ))
}

fn check_task(task: &TaskConfig) -> Result<(), String> {
    if !(0.0..0.5).contains(&task.eval_fraction) {
        return Err(format!("`eval_fraction` must be in [0, 0.5), got {}", task.eval_fraction));
    }
    if task.kind == TaskKind::Jsonl && task.chat {
        return Err("`chat` is for the synthetic task; a JSONL task's records say themselves whether they are conversations (`messages`, or a `prompt` list of messages)".into());
    }
    if task.kind == TaskKind::SyntheticArithmetic {
        check_arithmetic(task)?;
    }
    if task.kind == TaskKind::Jsonl {
        let files = [("corpus", &task.corpus), ("demonstrations", &task.demonstrations), ("prompts", &task.prompts)];
        if files.iter().all(|(_, file)| file.is_none()) {
            return Err("a `jsonl` task needs at least one of `corpus`, `demonstrations`, `prompts`".into());
        }
        for (key, file) in files {
            if let Some(file) = file.as_ref().filter(|f| !f.is_file()) {
                return Err(format!("`{key}`: no file `{}` (relative paths start at `{}`)", file.display(), working_dir()));
            }
        }
    }
    // Only the synthetic reviews have synonyms of their own.
    task.augment.check(task.kind == TaskKind::SyntheticReviews).map_err(|(key, expected)| format!("`{key}`: expected {expected}"))
}

/// The arithmetic task's keys, and room enough among its problems for the held-out ones to
/// differ from each other and from the training ones.
fn check_arithmetic(task: &TaskConfig) -> Result<(), String> {
    use crate::data::synthetic::arithmetic::two_operand_problems;
    use crate::data::task::held_out;
    if task.chat {
        return Err("`chat` is for the synthetic-reviews task; the arithmetic task's prompts and answers are plain text".into());
    }
    if !(2..=MAX_TERMS).contains(&task.terms) {
        return Err(format!("`terms` must be in [2, {MAX_TERMS}] (a problem has 2 to `terms` operands), got {}", task.terms));
    }
    if !(1..=MAX_OPERAND).contains(&task.max_operand) {
        return Err(format!("`max_operand` must be in [1, {MAX_OPERAND}], got {}", task.max_operand));
    }
    if !(task.format_reward >= 0.0 && task.format_reward.is_finite()) {
        return Err(format!("`format_reward` must be a finite value ≥ 0, got {}", task.format_reward));
    }
    let held = held_out(task.demonstrations_size, task.eval_fraction) + held_out(task.prompts_size, task.eval_fraction);
    let problems = two_operand_problems(task.max_operand);
    if held as u128 * 2 > problems {
        return Err(format!(
            "`max_operand` = {} allows {problems} different two-operand problems, too few for {held} held-out demonstrations and prompts (each a different problem, none in training): raise `max_operand` or lower `demonstrations_size`, `prompts_size` or `eval_fraction` so that at most half of them are held out",
            task.max_operand
        ));
    }
    Ok(())
}

/// The most operands an arithmetic problem may have.
const MAX_TERMS: usize = 10;
/// The largest operand an arithmetic problem may have.
const MAX_OPERAND: u64 = 1_000_000_000;

fn working_dir() -> String {
    std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_else(|_| ".".into())
}

fn check_model(model: &ModelSection) -> Result<(), String> {
    let shape = [("n_layer", model.n_layer), ("n_head", model.n_head), ("n_embd", model.n_embd), ("n_ctx", model.n_ctx)];
    let family_keys = [
        ("n_kv_head", model.n_kv_head.is_some()),
        ("head_dim", model.head_dim.is_some()),
        ("rope_theta", model.rope_theta.is_some()),
        ("tie_embeddings", model.tie_embeddings.is_some()),
        ("norm_eps", model.norm_eps.is_some()),
    ];
    if let Some(from) = &model.from {
        let fixed = shape.iter().map(|(key, v)| (*key, v.is_some())).chain(family_keys).chain([("n_inner", model.n_inner.is_some())]);
        if let Some((key, _)) = fixed.into_iter().find(|(_, set)| *set) {
            return Err(format!("`{key}` cannot be set together with `from` (the checkpoint fixes the shape)"));
        }
        if model.arch != Arch::Gpt2 {
            return Err("`arch` cannot be set together with `from` (the checkpoint's config.json names it)".into());
        }
        if !from.is_dir() {
            return Err(format!("`from`: no checkpoint directory `{}`", from.display()));
        }
        return Ok(());
    }
    for (key, value) in shape {
        match value {
            None => return Err(format!("`{key}` is required for a fresh model (or give `from` = a checkpoint directory)")),
            Some(v) if v < 1 => return Err(format!("`{key}` must be ≥ 1, got {v}")),
            _ => {}
        }
    }
    if model.arch == Arch::Gpt2 {
        if let Some((key, _)) = family_keys.iter().find(|(_, set)| *set) {
            return Err(format!("`{key}` is a key of the Llama family (arch = \"llama\", \"qwen2\" or \"qwen3\"), not of GPT-2"));
        }
    }
    let (n_head, n_embd) = (model.n_head.unwrap_or(1), model.n_embd.unwrap_or(1));
    let n_kv_head = model.n_kv_head.unwrap_or(n_head);
    if model.head_dim.is_none() && n_embd % n_head != 0 {
        return Err(format!("`n_embd` ({n_embd}) must be a multiple of `n_head` ({n_head})"));
    }
    if n_kv_head < 1 || n_head % n_kv_head != 0 {
        return Err(format!("`n_kv_head` ({n_kv_head}) must divide `n_head` ({n_head})"));
    }
    let head_dim = model.head_dim.unwrap_or(n_embd / n_head);
    if model.arch != Arch::Gpt2 && (head_dim < 2 || head_dim % 2 != 0) {
        return Err(format!(
            "the head width ({head_dim}: `head_dim`, or `n_embd` / `n_head`) must be even (rotary embeddings rotate pairs)"
        ));
    }
    if let Some(n_inner) = model.n_inner.filter(|&n| n < 1) {
        return Err(format!("`n_inner` must be ≥ 1, got {n_inner}"));
    }
    if let Some((key, value)) =
        [("rope_theta", model.rope_theta), ("norm_eps", model.norm_eps)].into_iter().find(|(_, v)| v.is_some_and(|v| !(v > 0.0)))
    {
        return Err(format!("`{key}` must be > 0, got {}", value.unwrap_or_default()));
    }
    if !(0.0..1.0).contains(&model.dropout) {
        return Err(format!("`dropout` must be in [0, 1), got {}", model.dropout));
    }
    Ok(())
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}
