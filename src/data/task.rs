//! The data an experiment trains on, whichever task provides it: split into train and eval,
//! cleaned when it comes from the user's files.

use std::collections::BTreeMap;
use std::path::Path;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::de::DeserializeOwned;

use super::cleaning::{clean, CleaningReport, CleaningRules};
use super::jsonl::{read_records, read_records_skipping_bad, DemonstrationRecord, JsonlError, PromptRecord, TextRecord};
use super::synthetic::{Demonstration, GoldOracle, SyntheticReviews};
use crate::config::{TaskConfig, TaskKind};

/// Records held for training and for evaluation.
#[derive(Debug, Clone)]
pub struct Split<T> {
    pub train: Vec<T>,
    pub eval: Vec<T>,
}

impl<T> Default for Split<T> {
    fn default() -> Self {
        Split { train: Vec::new(), eval: Vec::new() }
    }
}

impl<T> Split<T> {
    pub fn is_empty(&self) -> bool {
        self.train.is_empty() && self.eval.is_empty()
    }

    /// A seeded shuffle, then the first `eval_fraction` (at least one record when there are two
    /// or more) goes to eval.
    fn new(mut records: Vec<T>, eval_fraction: f64, seed: u64) -> Self {
        records.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        let eval_len = if records.len() >= 2 { ((records.len() as f64 * eval_fraction).ceil() as usize).max(1) } else { 0 };
        let train = records.split_off(eval_len);
        Split { train, eval: records }
    }
}

/// Everything a task provides.
#[derive(Debug, Clone, Default)]
pub struct TaskData {
    pub corpus: Split<String>,
    pub demonstrations: Split<Demonstration>,
    pub prompts: Split<String>,
    /// The gold oracle, on tasks that have one.
    pub oracle: Option<GoldOracle>,
    /// What cleaning dropped, per input file (JSONL task), and skipped malformed lines.
    pub cleaning: BTreeMap<String, CleaningReport>,
}

impl TaskData {
    /// Every text the task has, for training a tokenizer.
    pub fn all_text(&self) -> impl Iterator<Item = &str> + Send {
        let corpus = self.corpus.train.iter().chain(&self.corpus.eval).map(String::as_str);
        let demonstrations =
            self.demonstrations.train.iter().chain(&self.demonstrations.eval).flat_map(|d| [d.prompt.as_str(), d.response.as_str()]);
        corpus.chain(demonstrations).chain(self.prompts.train.iter().chain(&self.prompts.eval).map(String::as_str))
    }
}

/// Builds the task's data from its config; `seed` drives generation and splits.
pub fn load(config: &TaskConfig, seed: u64) -> Result<TaskData, JsonlError> {
    match config.kind {
        TaskKind::SyntheticReviews => {
            let task = SyntheticReviews::generate(seed, config.corpus_size, config.demonstrations_size, config.prompts_size);
            Ok(TaskData {
                corpus: Split::new(task.corpus, config.eval_fraction, seed ^ 1),
                demonstrations: Split::new(task.demonstrations, config.eval_fraction, seed ^ 2),
                prompts: Split::new(task.prompts, config.eval_fraction, seed ^ 3),
                oracle: Some(GoldOracle),
                cleaning: BTreeMap::new(),
            })
        }
        TaskKind::Jsonl => load_jsonl(config, seed),
    }
}

fn load_jsonl(config: &TaskConfig, seed: u64) -> Result<TaskData, JsonlError> {
    let rules = CleaningRules {
        min_chars: config.min_chars,
        max_chars: config.max_chars,
        near_duplicate_threshold: config.near_duplicate_threshold,
    };
    let mut data = TaskData::default();
    if let Some(path) = &config.corpus {
        let (texts, report) = read_clean(path, config.skip_bad_lines, &rules, |r: TextRecord| vec![r.text])?;
        data.cleaning.insert(path.display().to_string(), report);
        data.corpus = Split::new(texts.into_iter().map(|mut f| f.remove(0)).collect(), config.eval_fraction, seed ^ 1);
    }
    if let Some(path) = &config.demonstrations {
        let (records, report) = read_clean(path, config.skip_bad_lines, &rules, |r: DemonstrationRecord| vec![r.prompt, r.response])?;
        data.cleaning.insert(path.display().to_string(), report);
        let demonstrations = records
            .into_iter()
            .map(|mut fields| {
                let response = fields.pop().expect("two fields");
                Demonstration { prompt: fields.pop().expect("two fields"), response: format!(" {response}") }
            })
            .collect();
        data.demonstrations = Split::new(demonstrations, config.eval_fraction, seed ^ 2);
    }
    if let Some(path) = &config.prompts {
        let (prompts, report) = read_clean(path, config.skip_bad_lines, &rules, |r: PromptRecord| vec![r.prompt])?;
        data.cleaning.insert(path.display().to_string(), report);
        data.prompts = Split::new(prompts.into_iter().map(|mut f| f.remove(0)).collect(), config.eval_fraction, seed ^ 3);
    }
    for (file, report) in &data.cleaning {
        tracing::info!(file, read = report.read, kept = report.kept, dropped = ?report.dropped, "cleaned");
    }
    Ok(data)
}

/// Reads a JSONL file of `R`, turns each record into its text fields and cleans them. Skipped
/// malformed lines count as the drop reason `malformed`.
fn read_clean<R: DeserializeOwned>(
    path: &Path,
    skip_bad_lines: bool,
    rules: &CleaningRules,
    fields: impl Fn(R) -> Vec<String>,
) -> Result<(Vec<Vec<String>>, CleaningReport), JsonlError> {
    let (records, bad_lines) = if skip_bad_lines { read_records_skipping_bad(path)? } else { (read_records(path)?, Vec::new()) };
    for bad in &bad_lines {
        tracing::warn!("skipped {bad}");
    }
    let (kept, mut report) = clean(records.into_iter().map(fields).collect(), rules);
    if !bad_lines.is_empty() {
        report.read += bad_lines.len();
        report.dropped.insert("malformed", bad_lines.len());
    }
    Ok((kept, report))
}
