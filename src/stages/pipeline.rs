//! Runs an experiment's stages in order inside a run directory: environment and log first, then
//! the task's data and the tokenizer shared by all models, then each stage, recording its final
//! figures in summary.json (a stage listed there is finished and skipped on resume), with the
//! peak memory of the process while it ran.

use std::path::Path;

use serde_json::{Map, Value};

use super::{StageContext, StageError};
use crate::config::Experiment;
use crate::data::augment::{marked_lines, AugmentationReport};
use crate::data::chat::ChatTemplate;
use crate::data::task::{self, TaskData};
use crate::data::tokenizer::TextTokenizer;
use crate::data::tokenizer::{CHATML_END_OF_TURN, CHATML_SPECIAL_TOKENS, CHATML_TEMPLATE};
use crate::model::checkpoint::{self, CheckpointError, GENERATION_CONFIG_FILE, TOKENIZER_FILE};
use crate::run::memory::{self, PeakRss, StagePeak};
use crate::run::{environment, log, Metrics, RunDir, RunDirError};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Stage(#[from] StageError),
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    #[error(transparent)]
    Data(#[from] crate::data::task::TaskError),
    #[error(transparent)]
    Tokenizer(#[from] crate::data::tokenizer::TokenizerError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("[tokenizer] {key}: {message}")]
    TokenizerSetting { key: &'static str, message: String },
    #[error("--only {only}: no stage named `{name}` (stages: {known})")]
    UnknownOnly { only: String, name: String, known: String },
    #[error("stage `{stage}` needs the checkpoint of stage `{input}`, which is not in this run ({path}); run `{input}` too, or resume a run that has it")]
    MissingInput { stage: String, input: String, path: String },
}

/// Which stages to run.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Only these stages (by name); all when empty.
    pub only: Vec<String>,
    /// Continue a run: finished stages are skipped, a stage with saved state continues from it.
    pub resume: bool,
}

pub fn run_experiment(experiment: &Experiment, run: &RunDir, selection: &Selection) -> Result<(), PipelineError> {
    let known = || experiment.stages.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ");
    if let Some(name) = selection.only.iter().find(|name| experiment.stage(name).is_none()) {
        return Err(PipelineError::UnknownOnly { only: selection.only.join(","), name: name.clone(), known: known() });
    }
    // Held until the run returns: a second process cannot resume it meanwhile, and `rlhf watch` sees it live.
    let _lock = run.lock()?;
    log::attach_run_log(&run.path.join(crate::run::LOG_FILE))
        .map_err(|source| RunDirError::Write { path: run.path.join(crate::run::LOG_FILE), source })?;
    if let Some(threads) = experiment.threads {
        tch::set_num_threads(threads);
    }
    crate::model::threads::set_generation_threads(experiment.generation_threads);
    let devices: Vec<(String, String)> = experiment
        .stages
        .iter()
        .flat_map(|stage| {
            stage.settings.devices().into_iter().map(move |(role, device)| (format!("{}.{role}", stage.name), device.to_string()))
        })
        .collect();
    tracing::info!(run = %run.path.display(), experiment = experiment.name, "run directory");

    let mut task = task::load(&experiment.task, experiment.seed)?;
    if !task.cleaning.is_empty() || task.demonstration_augmentation.is_some() {
        update_data_report(run, |report| {
            for (file, cleaning) in &task.cleaning {
                report.insert(file.clone(), serde_json::to_value(cleaning).expect("JSON serialises"));
            }
            if let Some(augmentation) = &task.demonstration_augmentation {
                add_augmentation(report, "task.demonstrations", &augmentation.report);
            }
        })?;
    }
    let tokenizer = tokenizer_for(experiment, &task, run)?;
    task.apply_chat_template(&tokenizer)?;
    if let Some(augmentation) = &task.demonstration_augmentation {
        // After rendering: a conversation's line shows its `prompt` and `response` as SFT reads them.
        run.write(AUGMENTED_DEMONSTRATIONS_FILE, &marked_lines(task.added_demonstrations(), &augmentation.provenance))?;
    }
    super::check_sequence_lengths(experiment, &task, &tokenizer)?;
    let mut env = environment::describe(experiment.seed, &devices);
    env["eval_set"] = serde_json::json!({ "eval_seed": experiment.task.eval_seed, "sha256": task.eval_set_digest() });
    env["data_parallel_ranks"] = crate::distributed::world().size().into();
    run.write(crate::run::ENV_FILE, &serde_json::to_string_pretty(&env).expect("JSON serialises"))?;

    let finished = run.summary()?;
    for (stage_index, stage) in experiment.stages.iter().enumerate() {
        let selected = selection.only.is_empty() || selection.only.contains(&stage.name);
        if !selected || (selection.resume && finished.contains_key(&stage.name)) {
            if selected {
                tracing::info!(stage = stage.name, "already finished, skipped");
            }
            continue;
        }
        for (_, input) in stage.settings.inputs() {
            if experiment.stage(input).is_some() {
                let path = run.stage_dir(input).join(super::CHECKPOINT_DIR);
                if !path.is_dir() {
                    return Err(PipelineError::MissingInput {
                        stage: stage.name.clone(),
                        input: input.to_string(),
                        path: path.display().to_string(),
                    });
                }
            }
        }
        let stage_dir = run.stage_dir(&stage.name);
        std::fs::create_dir_all(&stage_dir).map_err(|source| RunDirError::Write { path: stage_dir.clone(), source })?;
        tracing::info!(stage = stage.name, kind = stage.kind, "stage starts");
        let context = StageContext { experiment, stage_index, run, task: &task, tokenizer: &tokenizer, resume: selection.resume };
        let memory = StagePeak::start();
        let world = crate::distributed::world();
        let communication = world.communication();
        let mut figures = stage.settings.run(&context)?;
        if world.size() > 1 {
            let now = world.communication();
            let seconds = format!("{:.3}", now.seconds - communication.seconds);
            tracing::info!(
                stage = stage.name,
                rank = world.rank(),
                collectives = now.calls - communication.calls,
                seconds,
                "communication"
            );
        }
        let peak = memory.peak();
        let devices: Vec<tch::Device> = stage.settings.devices().into_iter().filter_map(|(_, device)| device.resolve().ok()).collect();
        memory::note_unmeasured_cuda(&stage.name, &devices);
        log_stage_finished(&stage.name, &figures, peak);
        if let Some(peak) = peak {
            figures.insert(peak.figure().to_string(), peak.mib());
        }
        if let Some(start) = memory.start_mib() {
            figures.insert(memory::START_RSS.to_string(), start);
        }
        run.record_stage_summary(&stage.name, serde_json::to_value(&figures).expect("figures serialise"))?;
    }
    Ok(())
}

/// The run's data report: cleaning counts per input file (JSONL task), and under `augmentation`
/// what augmentation added per source (docs/reference.md §3.2).
pub const DATA_REPORT_FILE: &str = "data_report.json";
/// The demonstrations `[task] augment` added, marked with their original and techniques.
pub const AUGMENTED_DEMONSTRATIONS_FILE: &str = "augmented_demonstrations.jsonl";

/// Changes the run's data report — created when missing — by reading it, applying `change` and
/// writing it back atomically, so that what the task and earlier stages recorded stays (a
/// resumed run rewrites its own entries with the same values).
pub fn update_data_report(run: &RunDir, change: impl FnOnce(&mut Map<String, Value>)) -> Result<(), RunDirError> {
    let path = run.path.join(DATA_REPORT_FILE);
    let mut report = match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map_err(|error| RunDirError::Corrupt { path: path.clone(), message: error.to_string() })?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Map::new(),
        Err(source) => return Err(RunDirError::Read { path, source }),
    };
    change(&mut report);
    run.write(DATA_REPORT_FILE, &serde_json::to_string_pretty(&report).expect("JSON serialises"))
}

/// Records what augmentation added to `source` (`task.demonstrations`, `<stage>.pairs`) under the
/// report's `augmentation` key, beside the cleaning entries.
pub fn add_augmentation(report: &mut Map<String, Value>, source: &str, augmentation: &AugmentationReport) {
    let entries = report.entry("augmentation").or_insert_with(|| Value::Object(Map::new()));
    if !entries.is_object() {
        *entries = Value::Object(Map::new());
    }
    entries[source] = serde_json::to_value(augmentation).expect("JSON serialises");
}

/// The `stage finished` line: the stage's peak memory in MiB (named as its summary figure is),
/// then its final figures.
fn log_stage_finished(stage: &str, figures: &Metrics, peak: Option<PeakRss>) {
    let mib = |peak: PeakRss| format!("{:.1}", peak.mib());
    match peak {
        Some(peak) if peak.own => tracing::info!(stage, peak_rss_mib = %mib(peak), figures = ?figures, "stage finished"),
        Some(peak) => tracing::info!(stage, process_peak_rss_mib = %mib(peak), figures = ?figures, "stage finished"),
        None => tracing::info!(stage, figures = ?figures, "stage finished"),
    }
}

/// The run's tokenizer, saved in the run directory (`tokenizer.json`, `tokenizer_config.json`,
/// `chat_template.jinja`, and its stop ids in `generation_config.json`) so that a resumed run
/// uses the very same one.
fn tokenizer_for(experiment: &Experiment, task: &TaskData, run: &RunDir) -> Result<TextTokenizer, PipelineError> {
    let saved = run.path.join(TOKENIZER_FILE);
    if saved.is_file() {
        let mut tokenizer = TextTokenizer::load(&saved)?;
        let generation = run.path.join(GENERATION_CONFIG_FILE);
        if generation.is_file() {
            tokenizer.add_stop_ids(&checkpoint::read_stop_ids(&generation)?);
        }
        return Ok(tokenizer);
    }
    let tokenizer = build_tokenizer(experiment, task)?;
    for file in tokenizer.save(&run.path)? {
        crate::run::durable::sync(&file)?;
    }
    checkpoint::write_generation_config(&run.path, &tokenizer, None)?;
    Ok(tokenizer)
}

/// The experiment's tokenizer: `[tokenizer] from` (a `tokenizer.json`, or a directory holding
/// one), else the tokenizer of a `[models.X] from` checkpoint, else a byte-level BPE trained on
/// the task's text; then `[tokenizer]`'s chat template, special and stop tokens.
pub fn build_tokenizer(experiment: &Experiment, task: &TaskData) -> Result<TextTokenizer, PipelineError> {
    let settings = &experiment.tokenizer;
    let starting_checkpoint = experiment.models.values().find_map(|m| m.from.as_deref());
    let mut tokenizer = if let Some(path) = settings.from.as_ref() {
        TextTokenizer::load(Path::new(path))?
    } else if let Some(dir) = starting_checkpoint {
        checkpoint::read_tokenizer(dir, &checkpoint::read_config(dir)?)?
    } else {
        tracing::info!(vocab_size = settings.vocab_size, "training a byte-level BPE tokenizer on the task's text");
        TextTokenizer::train(task.all_text(), settings.vocab_size)?
    };
    let (mut special, mut stop) = (settings.special_tokens.clone(), settings.stop_tokens.clone());
    if let Some(name) = &settings.chat_template {
        let template = if name == "chatml" {
            special.extend(CHATML_SPECIAL_TOKENS.map(String::from));
            stop.push(CHATML_END_OF_TURN.to_string());
            ChatTemplate::new(CHATML_TEMPLATE.to_string(), "rlhf-lab's `chatml` template".into())
        } else {
            let source = std::fs::read_to_string(name).map_err(|error| PipelineError::TokenizerSetting {
                key: "chat_template",
                message: format!("cannot read `{name}` (expected \"chatml\" or a .jinja file): {error}"),
            })?;
            ChatTemplate::new(source, format!("`{name}`"))
        };
        tokenizer.set_chat_template(Some(template.map_err(crate::data::tokenizer::TokenizerError::from)?));
    }
    tokenizer.add_special_tokens(&special);
    for token in &stop {
        let id = tokenizer.token_id(token).ok_or_else(|| PipelineError::TokenizerSetting {
            key: "stop_tokens",
            message: format!("`{token}` is not in the vocabulary (add it with `special_tokens`)"),
        })?;
        tokenizer.add_stop_ids(&[id]);
    }
    Ok(tokenizer)
}
