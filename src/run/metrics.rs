//! `<stage>/metrics.jsonl` and `<stage>/samples.jsonl`: one JSON object per line, each with a
//! `"step"`. On resume, lines from steps after the restored state are dropped, so that the file
//! ends up exactly as in an uninterrupted run.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::RunDirError;

/// Named float figures of one step.
pub type Metrics = BTreeMap<String, f64>;

/// Appends JSON lines to a file, flushing each line (a killed run keeps every line written).
pub struct MetricsWriter {
    path: PathBuf,
    file: File,
}

impl MetricsWriter {
    /// Opens `path` for appending. With `keep_up_to = Some(step)`, first removes lines whose
    /// step is greater (or that are truncated); with `None`, starts an empty file.
    pub fn open(path: &Path, keep_up_to: Option<u64>) -> Result<Self, RunDirError> {
        let kept: Vec<String> = match keep_up_to {
            Some(step) if path.exists() => {
                let file = File::open(path).map_err(|source| RunDirError::Read { path: path.into(), source })?;
                BufReader::new(file)
                    .lines()
                    .map_while(Result::ok)
                    .filter(|line| {
                        serde_json::from_str::<Value>(line).ok().and_then(|v| v.get("step")?.as_u64()).is_some_and(|s| s <= step)
                    })
                    .collect()
            }
            _ => Vec::new(),
        };
        let mut contents = kept.join("\n");
        if !contents.is_empty() {
            contents.push('\n');
        }
        super::write_atomic(path, &contents)?;
        let file = OpenOptions::new().append(true).open(path).map_err(|source| RunDirError::Write { path: path.into(), source })?;
        Ok(MetricsWriter { path: path.into(), file })
    }

    /// Writes `{"step": step, ...metrics}`.
    pub fn log(&mut self, step: u64, metrics: &Metrics) -> Result<(), RunDirError> {
        let mut object = Map::new();
        object.insert("step".into(), step.into());
        for (name, value) in metrics {
            // JSON has no NaN/inf; a diverged value is written as null rather than a broken line.
            object.insert(name.clone(), serde_json::Number::from_f64(*value).map_or(Value::Null, Value::Number));
        }
        self.log_object(object)
    }

    /// Writes any object (samples); it must already hold `"step"`.
    pub fn log_object(&mut self, object: Map<String, Value>) -> Result<(), RunDirError> {
        let line = Value::Object(object).to_string();
        writeln!(self.file, "{line}").map_err(|source| RunDirError::Write { path: self.path.clone(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopening_for_resume_drops_later_and_truncated_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut writer = MetricsWriter::open(&path, None).unwrap();
        for step in 1..=4 {
            writer.log(step, &Metrics::from([("train/loss".to_string(), step as f64)])).unwrap();
        }
        drop(writer);
        // a killed run can leave half a line behind
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"step\": 5, \"tra").unwrap();
        let mut writer = MetricsWriter::open(&path, Some(2)).unwrap();
        writer.log(3, &Metrics::from([("train/loss".to_string(), 30.0)])).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"step\":1,\"train/loss\":1.0}\n{\"step\":2,\"train/loss\":2.0}\n{\"step\":3,\"train/loss\":30.0}\n");
    }

    #[test]
    fn non_finite_values_become_null() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut writer = MetricsWriter::open(&path, None).unwrap();
        writer.log(1, &Metrics::from([("train/loss".to_string(), f64::NAN)])).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"step\":1,\"train/loss\":null}\n");
    }
}
