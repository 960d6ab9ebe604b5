//! Runs a sweep: each variant one after another as an ordinary run in the sweep directory.
//! Resuming skips finished variants, continues a partial one from its saved state and starts
//! the rest, so a killed sweep loses at most the work since its last checkpoint.

use std::path::{Path, PathBuf};

use super::pipeline::{run_experiment, PipelineError, Selection};
use crate::config::{self, ConfigError, Experiment};
use crate::run::sweep::{SweepRecord, EXPERIMENT_FILE, SWEEP_FILE};
use crate::run::{create_unique_dir, write_atomic, RunDir, RunDirError};

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    #[error("sweep variant `{variant}` ({path}): {source}")]
    Variant { variant: String, path: PathBuf, source: Box<PipelineError> },
    #[error("`{path}` is not a sweep directory: it has no {SWEEP_FILE}")]
    NotASweep { path: PathBuf },
}

/// Starts a sweep of `experiment` (loaded from `source` with `overrides`) under
/// `out/<experiment>/sweep-<time>/`; returns its directory.
pub fn start(source: &Path, overrides: &[String], experiment: &Experiment, out: &Path) -> Result<PathBuf, SweepError> {
    let sweep = experiment.sweep.as_ref().expect("start is called for experiments with a [sweep]");
    let dir = create_unique_dir(&out.join(&experiment.name), "sweep-")?;
    let text =
        std::fs::read_to_string(source).map_err(|source_error| RunDirError::Read { path: source.to_path_buf(), source: source_error })?;
    write_atomic(&dir.join(EXPERIMENT_FILE), &text)?;
    let record = SweepRecord {
        experiment: experiment.name.clone(),
        overrides: overrides.to_vec(),
        keys: sweep.keys.clone(),
        variants: sweep.variants.clone(),
    };
    record.write(&dir)?;
    tracing::info!(sweep = %dir.display(), variants = record.variants.len(), "sweep directory");
    run_variants(&dir, &record)?;
    Ok(dir)
}

/// Continues the sweep in `dir`.
pub fn resume(dir: &Path) -> Result<(), SweepError> {
    if !is_sweep(dir) {
        return Err(SweepError::NotASweep { path: dir.to_path_buf() });
    }
    let record = SweepRecord::read(dir)?;
    run_variants(dir, &record)
}

/// Whether `dir` is a sweep directory (rather than a run).
pub fn is_sweep(dir: &Path) -> bool {
    dir.join(SWEEP_FILE).is_file()
}

fn run_variants(dir: &Path, record: &SweepRecord) -> Result<(), SweepError> {
    let total = record.variants.len();
    for (index, variant) in record.variants.iter().enumerate() {
        let path = SweepRecord::variant_dir(dir, variant);
        let failed =
            |source: PipelineError| SweepError::Variant { variant: variant.name.clone(), path: path.clone(), source: Box::new(source) };
        let (experiment, run, resume) = if path.join(crate::run::CONFIG_FILE).is_file() {
            let run = RunDir::open(&path)?;
            let experiment = config::load(&run.config_path(), &[])?;
            let finished = run.summary()?;
            if experiment.stages.iter().all(|stage| finished.contains_key(&stage.name)) {
                tracing::info!(variant = variant.name, "variant {}/{total} already finished, skipped", index + 1);
                continue;
            }
            (experiment, run, true)
        } else {
            let experiment = config::load_variant(&dir.join(EXPERIMENT_FILE), &record.overrides, variant)?;
            let run = RunDir::create_at(&path, &experiment.to_toml())?;
            (experiment, run, false)
        };
        tracing::info!(variant = variant.name, resume, "variant {}/{total}", index + 1);
        run_experiment(&experiment, &run, &Selection { only: Vec::new(), resume }).map_err(failed)?;
    }
    tracing::info!(sweep = %dir.display(), variants = total, "sweep finished");
    Ok(())
}
