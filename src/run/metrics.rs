//! `<stage>/metrics.jsonl`, `<stage>/samples.jsonl` and `<stage>/eval_final.jsonl`: one JSON object per line, each with a
//! `"step"`. On resume, lines from steps after the restored state are dropped, so that the file
//! ends up exactly as in an uninterrupted run.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Map, Value};

use super::RunDirError;

/// Named float figures of one step.
pub type Metrics = BTreeMap<String, f64>;

/// Reads metrics written as JSON, where a non-finite value was written as `null` (JSON has no
/// NaN), back with NaN in its place: for `#[serde(deserialize_with)]` on saved metrics.
pub fn metrics_with_nulls<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Metrics, D::Error> {
    let values: BTreeMap<String, Option<f64>> = serde::Deserialize::deserialize(deserializer)?;
    Ok(values.into_iter().map(|(name, value)| (name, value.unwrap_or(f64::NAN))).collect())
}

/// The objects of a JSON-lines file whose `"step"` is at most `up_to`, in order (a truncated or
/// step-less line is left out; no file, no lines).
pub fn read_kept(path: &Path, up_to: u64) -> Result<Vec<Map<String, Value>>, RunDirError> {
    Ok(kept_lines(path, up_to)?.into_iter().map(|(_, object)| object).collect())
}

/// A line of a JSON-lines file as written, and its object.
type Line = (String, Map<String, Value>);

/// [`read_kept`], with each object's line as written.
fn kept_lines(path: &Path, up_to: u64) -> Result<Vec<Line>, RunDirError> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let file = File::open(path).map_err(|source| RunDirError::Read { path: path.into(), source })?;
    Ok(BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .filter_map(|line| match serde_json::from_str::<Value>(&line) {
            Ok(Value::Object(object)) if object.get("step").and_then(Value::as_u64).is_some_and(|step| step <= up_to) => {
                Some((line, object))
            }
            _ => None,
        })
        .collect())
}

/// Metric lines as `(step, metrics)`, a `null` read back as NaN.
pub fn metric_lines(objects: &[Map<String, Value>]) -> Vec<(u64, Metrics)> {
    objects
        .iter()
        .filter_map(|object| {
            let step = object.get("step")?.as_u64()?;
            let metrics = object
                .iter()
                .filter(|(name, _)| *name != "step")
                .filter_map(|(name, value)| match value {
                    Value::Null => Some((name.clone(), f64::NAN)),
                    value => Some((name.clone(), value.as_f64()?)),
                })
                .collect();
            Some((step, metrics))
        })
        .collect()
}

/// Appends JSON lines to a file, flushing each line (a killed run keeps every line written).
pub struct MetricsWriter {
    path: PathBuf,
    file: File,
    /// The lines kept from before a resume.
    kept: Vec<Map<String, Value>>,
}

impl MetricsWriter {
    /// Opens `path` for appending. With `keep_up_to = Some(step)`, first removes lines whose
    /// step is greater (or that are truncated); with `None`, starts an empty file.
    pub fn open(path: &Path, keep_up_to: Option<u64>) -> Result<Self, RunDirError> {
        let kept = match keep_up_to {
            Some(step) => kept_lines(path, step)?,
            None => Vec::new(),
        };
        // The kept lines as they were written, byte for byte.
        let contents: String = kept.iter().map(|(line, _)| format!("{line}\n")).collect();
        super::write_atomic(path, &contents)?;
        let kept = kept.into_iter().map(|(_, object)| object).collect();
        let file = OpenOptions::new().append(true).open(path).map_err(|source| RunDirError::Write { path: path.into(), source })?;
        Ok(MetricsWriter { path: path.into(), file, kept })
    }

    /// The lines kept from before a resume.
    pub fn kept(&self) -> &[Map<String, Value>] {
        &self.kept
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

/// `samples.jsonl`: a [`MetricsWriter`] opened (and, on resume, cut back) at its first line, so
/// that a stage that writes no samples leaves no file.
pub struct SampleLog {
    path: PathBuf,
    keep_up_to: Option<u64>,
    writer: Option<MetricsWriter>,
    /// The samples written since the last [`SampleLog::take_logged`].
    logged: Vec<Map<String, Value>>,
}

impl SampleLog {
    pub fn new(path: PathBuf, keep_up_to: Option<u64>) -> Self {
        SampleLog { path, keep_up_to, writer: None, logged: Vec::new() }
    }

    /// Writes one sample; it must already hold `"step"`.
    pub fn log_object(&mut self, object: Map<String, Value>) -> Result<(), RunDirError> {
        let writer = match &mut self.writer {
            Some(writer) => writer,
            None => self.writer.insert(MetricsWriter::open(&self.path, self.keep_up_to)?),
        };
        self.logged.push(object.clone());
        writer.log_object(object)
    }

    /// The samples written since the last call.
    pub fn take_logged(&mut self) -> Vec<Map<String, Value>> {
        std::mem::take(&mut self.logged)
    }
}

/// `<stage>/eval_final.jsonl`: every response of a generating stage's latest evaluation (its
/// final one once the stage has finished), replaced whole at each evaluation.
pub const EVALUATION_FILE: &str = "eval_final.jsonl";

/// The JSONL objects of evaluated records, each with its `"step"`.
pub fn evaluation_lines<T: Serialize>(step: u64, records: &[T]) -> impl Iterator<Item = Map<String, Value>> + '_ {
    records.iter().map(move |record| {
        let Value::Object(mut line) = serde_json::to_value(record).expect("records serialise") else { unreachable!("records are structs") };
        line.insert("step".into(), step.into());
        line
    })
}

/// Replaces `stage_dir/eval_final.jsonl` (atomically) with the records of the evaluation at `step`.
pub fn write_evaluation<T: Serialize>(stage_dir: &Path, step: u64, records: &[T]) -> Result<(), RunDirError> {
    let text: String = evaluation_lines(step, records).map(|line| format!("{}\n", Value::Object(line))).collect();
    super::write_atomic(&stage_dir.join(EVALUATION_FILE), &text)
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
    fn saved_metrics_with_nulls_read_back_as_nan() {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Saved {
            #[serde(deserialize_with = "metrics_with_nulls")]
            metrics: Metrics,
        }
        let saved = Saved { metrics: Metrics::from([("eval/loss".to_string(), f64::NAN), ("lr".to_string(), 0.5)]) };
        let text = serde_json::to_string(&saved).unwrap();
        assert_eq!(text, r#"{"metrics":{"eval/loss":null,"lr":0.5}}"#);
        let back: Saved = serde_json::from_str(&text).unwrap();
        assert!(back.metrics["eval/loss"].is_nan());
        assert_eq!(back.metrics["lr"], 0.5);
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
