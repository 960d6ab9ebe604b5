//! A run directory (`results/<experiment>/<run_id>/`): the resolved config, the environment,
//! the log, per-stage metrics, samples, checkpoints and resume state, and the summary.

pub mod durable;
pub mod environment;
pub mod log;
pub mod metrics;
pub mod progress;
pub mod sweep;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

pub use metrics::{Metrics, MetricsWriter};

pub const CONFIG_FILE: &str = "config.toml";
pub const ENV_FILE: &str = "env.json";
pub const LOG_FILE: &str = "run.log";
pub const SUMMARY_FILE: &str = "summary.json";

#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    #[error("cannot write `{path}`: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot read `{path}`: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("`{path}` is not a run directory: it has no {CONFIG_FILE}")]
    NotARun { path: PathBuf },
    #[error("`{path}` is corrupt: {message}")]
    Corrupt { path: PathBuf, message: String },
}

/// An open run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub path: PathBuf,
}

impl RunDir {
    /// Creates `out/<experiment>/<run_id>/`, where run_id is the UTC start time (with a suffix
    /// if two runs start in the same second), and writes the resolved config into it.
    pub fn create(out: &Path, experiment: &str, resolved_config: &str) -> Result<RunDir, RunDirError> {
        let path = create_unique_dir(&out.join(experiment), "")?;
        let run = RunDir { path };
        run.write(CONFIG_FILE, resolved_config)?;
        Ok(run)
    }

    /// Creates the run directory `path` itself (a sweep's variant); it must not exist yet.
    pub fn create_at(path: &Path, resolved_config: &str) -> Result<RunDir, RunDirError> {
        std::fs::create_dir(path).map_err(|source| RunDirError::Write { path: path.to_path_buf(), source })?;
        let run = RunDir { path: path.to_path_buf() };
        run.write(CONFIG_FILE, resolved_config)?;
        Ok(run)
    }

    /// Opens an existing run for `--resume`.
    pub fn open(path: &Path) -> Result<RunDir, RunDirError> {
        if !path.join(CONFIG_FILE).is_file() {
            return Err(RunDirError::NotARun { path: path.to_path_buf() });
        }
        Ok(RunDir { path: path.to_path_buf() })
    }

    pub fn config_path(&self) -> PathBuf {
        self.path.join(CONFIG_FILE)
    }

    pub fn stage_dir(&self, stage: &str) -> PathBuf {
        self.path.join(stage)
    }

    /// Writes a file atomically (temporary name, then rename).
    pub fn write(&self, name: &str, contents: &str) -> Result<(), RunDirError> {
        write_atomic(&self.path.join(name), contents)
    }

    /// `summary.json`: final figures per stage; a stage listed there is finished.
    pub fn summary(&self) -> Result<BTreeMap<String, Value>, RunDirError> {
        let path = self.path.join(SUMMARY_FILE);
        if !path.exists() {
            return Ok(BTreeMap::new());
        }
        let text = std::fs::read_to_string(&path).map_err(|source| RunDirError::Read { path: path.clone(), source })?;
        serde_json::from_str(&text).map_err(|e| RunDirError::Corrupt { path, message: e.to_string() })
    }

    pub fn record_stage_summary(&self, stage: &str, figures: Value) -> Result<(), RunDirError> {
        let mut summary = self.summary()?;
        summary.insert(stage.to_string(), figures);
        self.write(SUMMARY_FILE, &serde_json::to_string_pretty(&summary).expect("JSON serialises"))
    }
}

/// Creates `parent/<prefix><UTC time>` (with a suffix if two start in the same second).
pub fn create_unique_dir(parent: &Path, prefix: &str) -> Result<PathBuf, RunDirError> {
    std::fs::create_dir_all(parent).map_err(|source| RunDirError::Write { path: parent.to_path_buf(), source })?;
    let stamp = format!("{prefix}{}", utc_timestamp());
    let mut path = parent.join(&stamp);
    let mut attempt = 1;
    // create_dir (not _all) fails if the directory exists: the name is ours alone.
    while let Err(error) = std::fs::create_dir(&path) {
        if error.kind() != std::io::ErrorKind::AlreadyExists {
            return Err(RunDirError::Write { path, source: error });
        }
        attempt += 1;
        path = parent.join(format!("{stamp}-{attempt}"));
    }
    Ok(path)
}

/// Writes a file that a crash never leaves half-written (see [`durable::write_file`]).
pub fn write_atomic(path: &Path, contents: &str) -> Result<(), RunDirError> {
    durable::write_file(path, contents.as_bytes())
}

/// `YYYYMMDD-HHMMSS` in UTC.
fn utc_timestamp() -> String {
    let seconds = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!("{year:04}{month:02}{day:02}-{:02}{:02}{:02}", rest / 3600, rest % 3600 / 60, rest % 60)
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_are_correct() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_781), (2026, 11, 24));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn runs_started_in_the_same_second_get_distinct_directories() {
        let out = tempfile::tempdir().unwrap();
        let a = RunDir::create(out.path(), "exp", "name = 'exp'").unwrap();
        let b = RunDir::create(out.path(), "exp", "name = 'exp'").unwrap();
        assert_ne!(a.path, b.path);
        assert_eq!(std::fs::read_to_string(a.config_path()).unwrap(), "name = 'exp'");
        a.record_stage_summary("sft", serde_json::json!({"eval/loss": 1.5})).unwrap();
        assert_eq!(a.summary().unwrap()["sft"]["eval/loss"], 1.5);
        assert!(RunDir::open(&out.path().join("exp")).is_err());
    }
}
