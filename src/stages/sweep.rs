//! Runs a sweep: each variant one after another as an ordinary run in the sweep directory.
//! Resuming skips finished variants, continues a partial one from its saved state and starts
//! the rest, so a killed sweep loses at most the work since its last checkpoint.
//!
//! A variant can also run on its own (`rlhf run X.toml --variant K --sweep-dir DIR`), so that a
//! job array — Slurm's, or any queue's — runs a sweep across machines: each job creates the
//! sweep's files in the shared directory if it is the first, checks them if not, and runs its
//! variant like any other.

use std::path::{Path, PathBuf};

use super::pipeline::{run_experiment, PipelineError, Selection};
use crate::config::{self, ConfigError, Experiment};
use crate::run::sweep::{SweepRecord, EXPERIMENT_FILE, SWEEP_FILE};
use crate::run::{create_unique_dir, write_atomic, RunDir, RunDirError, RunLock};

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
    #[error(
        "--variant {given}: the sweep has {count} variants: give an index from 0 to {last} (a job array's task id) or a variant's name"
    )]
    UnknownVariant { given: String, count: usize, last: usize },
    #[error("`{path}` holds another sweep ({what} differs): give each sweep its own --sweep-dir")]
    OtherSweep { path: PathBuf, what: &'static str },
}

/// The sweep of `experiment` (loaded from `source` with `overrides`): its record and the
/// experiment file's text.
fn sweep_of(source: &Path, overrides: &[String], experiment: &Experiment) -> Result<(SweepRecord, String), SweepError> {
    let sweep = experiment.sweep.as_ref().expect("called for experiments with a [sweep]");
    let text =
        std::fs::read_to_string(source).map_err(|source_error| RunDirError::Read { path: source.to_path_buf(), source: source_error })?;
    let record = SweepRecord {
        experiment: experiment.name.clone(),
        overrides: overrides.to_vec(),
        keys: sweep.keys.clone(),
        variants: sweep.variants.clone(),
    };
    Ok((record, text))
}

/// Writes a sweep's files into `dir`, the experiment file first: whoever sees sweep.json sees both.
fn write_sweep(dir: &Path, record: &SweepRecord, text: &str) -> Result<(), SweepError> {
    write_atomic(&dir.join(EXPERIMENT_FILE), text)?;
    record.write(dir)?;
    tracing::info!(sweep = %dir.display(), variants = record.variants.len(), "sweep directory");
    Ok(())
}

/// Starts a sweep of `experiment` (loaded from `source` with `overrides`) under
/// `out/<experiment>/sweep-<time>/`; returns its directory.
pub fn start(source: &Path, overrides: &[String], experiment: &Experiment, out: &Path) -> Result<PathBuf, SweepError> {
    let (record, text) = sweep_of(source, overrides, experiment)?;
    let dir = create_unique_dir(&out.join(&experiment.name), "sweep-")?;
    write_sweep(&dir, &record, &text)?;
    run_variants(&dir, &record)?;
    Ok(dir)
}

/// Runs only the variant `selector` names (its index in sweep.json, or its name) of the sweep of
/// `experiment` in `dir`, which the jobs of the sweep share: the first job writes the sweep's
/// files (under a lock, as jobs start together), the others check that they describe the same
/// sweep. Returns the variant's run directory.
pub fn run_variant(
    source: &Path,
    overrides: &[String],
    experiment: &Experiment,
    dir: &Path,
    selector: &str,
) -> Result<PathBuf, SweepError> {
    let (record, text) = sweep_of(source, overrides, experiment)?;
    std::fs::create_dir_all(dir).map_err(|source| RunDirError::Write { path: dir.to_path_buf(), source })?;
    {
        let _creating = RunLock::wait_for(&dir.join(SWEEP_LOCK_FILE))?;
        if is_sweep(dir) {
            let other = |what| SweepError::OtherSweep { path: dir.to_path_buf(), what };
            if SweepRecord::read(dir)? != record {
                return Err(other("its sweep.json: experiment, --set overrides or variants"));
            }
            let recorded = std::fs::read_to_string(dir.join(EXPERIMENT_FILE))
                .map_err(|source| RunDirError::Read { path: dir.join(EXPERIMENT_FILE), source })?;
            if recorded != text {
                return Err(other("its experiment.toml"));
            }
        } else {
            write_sweep(dir, &record, &text)?;
        }
    }
    run_selected(dir, &record, selector)
}

/// Continues only the variant `selector` names of the sweep in `dir`; returns its run directory.
pub fn resume_variant(dir: &Path, selector: &str) -> Result<PathBuf, SweepError> {
    if !is_sweep(dir) {
        return Err(SweepError::NotASweep { path: dir.to_path_buf() });
    }
    run_selected(dir, &SweepRecord::read(dir)?, selector)
}

/// Runs the variant `selector` names; returns its run directory.
fn run_selected(dir: &Path, record: &SweepRecord, selector: &str) -> Result<PathBuf, SweepError> {
    let index = variant_index(record, selector)?;
    run_one(dir, record, index)?;
    Ok(SweepRecord::variant_dir(dir, &record.variants[index]))
}

/// Serialises the creation of a shared sweep directory's files between its jobs.
const SWEEP_LOCK_FILE: &str = "sweep.lock";

/// The index of the variant `selector` names: an index from 0 (as a job array numbers its
/// tasks), or a variant's name.
fn variant_index(record: &SweepRecord, selector: &str) -> Result<usize, SweepError> {
    let count = record.variants.len();
    let by_index = selector.parse::<usize>().ok().filter(|&index| index < count);
    by_index.or_else(|| record.variants.iter().position(|variant| variant.name == selector)).ok_or_else(|| SweepError::UnknownVariant {
        given: selector.to_string(),
        count,
        last: count.saturating_sub(1),
    })
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
    for index in 0..record.variants.len() {
        run_one(dir, record, index)?;
    }
    tracing::info!(sweep = %dir.display(), variants = record.variants.len(), "sweep finished");
    Ok(())
}

/// Runs variant `index`: skipped when finished, resumed when started, else started.
fn run_one(dir: &Path, record: &SweepRecord, index: usize) -> Result<(), SweepError> {
    let (variant, total) = (&record.variants[index], record.variants.len());
    let path = SweepRecord::variant_dir(dir, variant);
    let failed =
        |source: PipelineError| SweepError::Variant { variant: variant.name.clone(), path: path.clone(), source: Box::new(source) };
    let (experiment, run, resume) = if path.join(crate::run::CONFIG_FILE).is_file() {
        let run = RunDir::open(&path)?;
        let experiment = config::load(&run.config_path(), &[])?;
        let finished = run.summary()?;
        if experiment.stages.iter().all(|stage| finished.contains_key(&stage.name)) {
            tracing::info!(variant = variant.name, "variant {}/{total} already finished, skipped", index + 1);
            return Ok(());
        }
        (experiment, run, true)
    } else {
        let experiment = config::load_variant(&dir.join(EXPERIMENT_FILE), &record.overrides, variant)?;
        let run = RunDir::create_at(&path, &experiment.to_toml())?;
        (experiment, run, false)
    };
    tracing::info!(variant = variant.name, resume, "variant {}/{total}", index + 1);
    run_experiment(&experiment, &run, &Selection { only: Vec::new(), resume }).map_err(failed)
}
