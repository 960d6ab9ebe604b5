//! `rlhf eval`: evaluates policy checkpoints — from runs or Hugging Face directories — on one
//! common prompt set with the same decoding settings, with the evaluation a PPO stage runs
//! (`train::rollout::evaluate`): one sampled response per prompt, its gold score where the task
//! has an oracle, a named reward model's raw score, and Σ (log π − log π_ref) to a named reference. Each policy gets a
//! directory that `rlhf report` reads like a run (one stage, `eval`), for comparing runs that
//! were not evaluated alike.
//!
//! ```text
//! <out>/
//!   evaluation.json             what was evaluated, on which prompts, with which settings
//!   <policy>/config.toml        the evaluation's settings as a one-stage run config
//!   <policy>/env.json           environment, with the prompt set's hash (eval_set)
//!   <policy>/summary.json       {"eval": figures}
//!   <policy>/eval/metrics.jsonl the figures, one line (step 0)
//!   <policy>/eval/eval_final.jsonl  every response
//!   <policy>/eval/samples.jsonl the first few
//! ```

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::run::metrics::{evaluation_lines, write_evaluation};
use crate::run::{Metrics, RunDirError};
use crate::stages::{Reading, StageFigures};
use crate::train::alerts::Watched;
use crate::train::rollout::{evaluation_figures, EvaluatedResponse};

/// The stage kind (and stage name) of an evaluation directory.
pub const KIND: &str = "eval";
/// Marks a directory of evaluations; lists them.
pub const EVALUATION_FILE: &str = "evaluation.json";
/// Responses written to samples.jsonl (the side-by-side view of reports).
const SAMPLES: usize = 8;

/// What reports show of an evaluation.
pub const FIGURES: StageFigures = StageFigures {
    headline: &["eval/gold_score", "eval/raw_rm_score", "eval/kl", "eval/eos_fraction"],
    curves: &[],
    primary: &["eval/gold_score", "eval/raw_rm_score"],
    readings: &[("eval/gold_score", Reading::Higher), ("eval/raw_rm_score", Reading::HigherOnSameModel("reward"))],
    frontier: None,
    shown: &[],
    logged: &["eval/gold_score", "eval/raw_rm_score", "eval/kl"],
    step_name: "step",
    watched: Watched::NOTHING,
};

/// One policy's evaluation directory, as `rlhf report` reads a run.
pub struct PolicyRecord<'a> {
    pub dir: &'a Path,
    /// The evaluation's settings as a run config (`[[stages]]` with `kind = "eval"`).
    pub config: &'a toml::Table,
    /// env.json.
    pub environment: &'a serde_json::Value,
    pub responses: &'a [EvaluatedResponse],
}

/// Writes a policy's directory; returns its figures.
pub fn write_policy(record: &PolicyRecord) -> Result<Metrics, RunDirError> {
    let stage_dir = record.dir.join(KIND);
    std::fs::create_dir_all(&stage_dir).map_err(|source| RunDirError::Write { path: stage_dir.clone(), source })?;
    let figures = evaluation_figures(record.responses);
    let mut line = json!({"step": 0});
    for (name, value) in &figures {
        line[name] = json!(value);
    }
    let files = [
        (record.dir.join(crate::run::CONFIG_FILE), toml::to_string(record.config).expect("a TOML table serialises")),
        (record.dir.join(crate::run::ENV_FILE), serde_json::to_string_pretty(record.environment).expect("JSON serialises")),
        (record.dir.join(crate::run::SUMMARY_FILE), serde_json::to_string_pretty(&json!({ KIND: figures })).expect("JSON serialises")),
        (stage_dir.join("metrics.jsonl"), format!("{line}\n")),
        (
            stage_dir.join("samples.jsonl"),
            evaluation_lines(0, &record.responses[..SAMPLES.min(record.responses.len())])
                .map(|line| format!("{}\n", serde_json::Value::Object(line)))
                .collect(),
        ),
    ];
    for (path, text) in files {
        crate::run::write_atomic(&path, &text)?;
    }
    write_evaluation(&stage_dir, 0, record.responses)?;
    Ok(figures)
}

/// The directory names of the evaluated policies in `evaluation.json`.
pub fn policy_dirs(out: &Path) -> Option<Vec<(String, PathBuf)>> {
    let record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join(EVALUATION_FILE)).ok()?).ok()?;
    record
        .get("policies")?
        .as_array()?
        .iter()
        .map(|policy| {
            let name = policy.get("name")?.as_str()?.to_string();
            Some((name.clone(), out.join(name)))
        })
        .collect()
}
