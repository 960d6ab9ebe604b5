//! A run directory (`results/<experiment>/<run_id>/`): the resolved config, the environment,
//! the log, per-stage metrics, samples, checkpoints and resume state, and the summary (with each
//! stage's peak memory, `memory`).

pub mod durable;
pub mod environment;
pub mod events;
pub mod log;
pub mod memory;
pub mod metrics;
pub mod progress;
pub mod ranks;
pub mod sweep;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

pub use metrics::{Metrics, MetricsWriter};

pub const CONFIG_FILE: &str = "config.toml";
pub const ENV_FILE: &str = "env.json";
pub const LOG_FILE: &str = "run.log";
pub const SUMMARY_FILE: &str = "summary.json";
/// Locked (`flock`) by the process running the run, for as long as it runs.
pub const LOCK_FILE: &str = "run.lock";

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
    #[error("`{path}` is being run by another process (it holds {LOCK_FILE}): wait for it to finish, or stop it first")]
    Busy { path: PathBuf },
}

/// The lock a run holds while it runs; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct RunLock {
    _file: std::fs::File,
}

impl RunLock {
    /// Waits for the exclusive lock of file `path` (created if missing): for short critical
    /// sections shared between processes, such as creating a sweep directory's files.
    pub fn wait_for(path: &Path) -> Result<RunLock, RunDirError> {
        let file = open_lock_file(path)?;
        flock(&file, libc::LOCK_EX).map_err(|source| RunDirError::Write { path: path.into(), source })?;
        Ok(RunLock { _file: file })
    }
}

fn open_lock_file(path: &Path) -> Result<std::fs::File, RunDirError> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|source| RunDirError::Write { path: path.into(), source })
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

    /// Takes the run's lock: one process at a time runs (or resumes) a run, and `rlhf watch`
    /// knows a run is live by its lock.
    pub fn lock(&self) -> Result<RunLock, RunDirError> {
        let path = self.path.join(LOCK_FILE);
        let file = open_lock_file(&path)?;
        match flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(()) => Ok(RunLock { _file: file }),
            Err(error) if error.raw_os_error() == Some(libc::EWOULDBLOCK) => Err(RunDirError::Busy { path: self.path.clone() }),
            Err(source) => Err(RunDirError::Write { path, source }),
        }
    }

    /// Whether a process is running this run now (it holds the run's lock).
    pub fn is_running(&self) -> bool {
        let Ok(file) = std::fs::File::open(self.path.join(LOCK_FILE)) else { return false };
        match flock(&file, libc::LOCK_SH | libc::LOCK_NB) {
            Ok(()) => {
                // Ours now: give it back at once (closing the file would too).
                let _ = flock(&file, libc::LOCK_UN);
                false
            }
            Err(_) => true,
        }
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

fn flock(file: &std::fs::File, operation: libc::c_int) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor the File owns and keeps open for the call.
    match unsafe { libc::flock(file.as_raw_fd(), operation) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
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
    let t = crate::clock::UtcTime::now();
    format!("{:04}{:02}{:02}-{:02}{:02}{:02}", t.year, t.month, t.day, t.hour, t.minute, t.second)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_run_is_locked_by_one_holder_and_running_while_locked() {
        let out = tempfile::tempdir().unwrap();
        let run = RunDir::create(out.path(), "exp", "name = 'exp'").unwrap();
        assert!(!run.is_running());
        let lock = run.lock().unwrap();
        assert!(run.is_running());
        assert!(matches!(run.lock(), Err(RunDirError::Busy { .. })));
        drop(lock);
        assert!(!run.is_running());
        assert!(run.lock().is_ok());
    }
}
