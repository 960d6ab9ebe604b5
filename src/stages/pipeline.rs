//! Runs an experiment's stages in order inside a run directory: environment and log first, then
//! the task's data and the tokenizer shared by all models, then each stage, recording its final
//! figures in summary.json (a stage listed there is finished and skipped on resume).

use std::path::Path;

use super::{StageContext, StageError};
use crate::config::Experiment;
use crate::data::task::{self, TaskData};
use crate::data::tokenizer::TextTokenizer;
use crate::model::checkpoint::TOKENIZER_FILE;
use crate::run::{environment, log, RunDir, RunDirError};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Stage(#[from] StageError),
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    #[error(transparent)]
    Data(#[from] crate::data::jsonl::JsonlError),
    #[error(transparent)]
    Tokenizer(#[from] crate::data::tokenizer::TokenizerError),
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
    log::attach_run_log(&run.path.join(crate::run::LOG_FILE))
        .map_err(|source| RunDirError::Write { path: run.path.join(crate::run::LOG_FILE), source })?;
    if let Some(threads) = experiment.threads {
        tch::set_num_threads(threads);
    }
    let devices: Vec<(String, String)> = experiment
        .stages
        .iter()
        .flat_map(|stage| {
            stage.settings.devices().into_iter().map(move |(role, device)| (format!("{}.{role}", stage.name), device.to_string()))
        })
        .collect();
    let env = environment::describe(experiment.seed, &devices);
    run.write(crate::run::ENV_FILE, &serde_json::to_string_pretty(&env).expect("JSON serialises"))?;
    tracing::info!(run = %run.path.display(), experiment = experiment.name, "run directory");

    let task = task::load(&experiment.task, experiment.seed)?;
    if !task.cleaning.is_empty() {
        run.write("data_report.json", &serde_json::to_string_pretty(&task.cleaning).expect("JSON serialises"))?;
    }
    let tokenizer = tokenizer_for(experiment, &task, run)?;
    super::check_sequence_lengths(experiment, &task, &tokenizer)?;

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
        let figures = stage.settings.run(&context)?;
        tracing::info!(stage = stage.name, figures = ?figures, "stage finished");
        run.record_stage_summary(&stage.name, serde_json::to_value(&figures).expect("figures serialise"))?;
    }
    Ok(())
}

/// The run's tokenizer, saved in the run directory so that a resumed run uses the very same one.
fn tokenizer_for(experiment: &Experiment, task: &TaskData, run: &RunDir) -> Result<TextTokenizer, PipelineError> {
    let saved = run.path.join(TOKENIZER_FILE);
    if saved.is_file() {
        return Ok(TextTokenizer::from_file(&saved)?);
    }
    let tokenizer = build_tokenizer(experiment, task)?;
    tokenizer.save(&saved)?;
    Ok(tokenizer)
}

/// The experiment's tokenizer: `[tokenizer] from`, else the tokenizer of a `[models.X] from`
/// checkpoint, else a byte-level BPE trained on the task's text.
pub fn build_tokenizer(experiment: &Experiment, task: &TaskData) -> Result<TextTokenizer, PipelineError> {
    let from_checkpoint = experiment.models.values().find_map(|m| m.from.as_ref()).map(|dir| dir.join(TOKENIZER_FILE));
    Ok(match experiment.tokenizer.from.as_ref().or(from_checkpoint.as_ref()) {
        Some(path) => TextTokenizer::from_file(Path::new(path))?,
        None => {
            tracing::info!(vocab_size = experiment.tokenizer.vocab_size, "training a byte-level BPE tokenizer on the task's text");
            TextTokenizer::train(task.all_text(), experiment.tokenizer.vocab_size)?
        }
    })
}
