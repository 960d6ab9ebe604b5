//! `<stage>/events.out.tfevents.*`: TensorBoard's event file beside metrics.jsonl — every
//! metric as a scalar under the same name, each evaluation's samples and the resolved config as
//! text — written with the `tboard` crate. `tensorboard --logdir <run>` shows the stages as runs.
//!
//! An event file is append-only, so a resumed stage does not continue the old one: it removes it
//! and writes a new one from the metric and sample lines it kept (its step count and values
//! exactly as in an uninterrupted run; only the wall times of the replayed events differ).

use std::fs::File;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use tboard::tensorboard::{event::What, summary, summary_metadata::PluginData, DataType, Summary, SummaryMetadata};
use tboard::tensorboard::{TensorProto, TensorShapeProto};
use tboard::EventWriter;

use super::{Metrics, RunDirError};

/// The prefix TensorBoard looks for in a log directory.
pub const EVENT_FILE_PREFIX: &str = "events.out.tfevents.";

/// A stage's TensorBoard event file.
pub struct EventLog {
    dir: PathBuf,
    writer: EventWriter<File>,
}

impl EventLog {
    /// A stage's event file, begun with the run's resolved config.
    pub fn for_stage(run_dir: &Path, stage_dir: &Path) -> Result<Self, RunDirError> {
        let config_path = run_dir.join(super::CONFIG_FILE);
        let config = std::fs::read_to_string(&config_path).map_err(|source| RunDirError::Read { path: config_path, source })?;
        let mut events = EventLog::create(stage_dir)?;
        events.config(&config)?;
        Ok(events)
    }

    /// Starts a new event file in `stage_dir`, removing any earlier one.
    pub fn create(stage_dir: &Path) -> Result<Self, RunDirError> {
        let entries = std::fs::read_dir(stage_dir).map_err(|source| RunDirError::Read { path: stage_dir.into(), source })?;
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(EVENT_FILE_PREFIX) {
                std::fs::remove_file(entry.path()).map_err(|source| RunDirError::Write { path: entry.path(), source })?;
            }
        }
        let writer = EventWriter::create(stage_dir).map_err(|error| event_error(stage_dir, error))?;
        Ok(EventLog { dir: stage_dir.into(), writer })
    }

    /// Each metric as a scalar of `step` (TensorBoard keeps scalars as f32; a non-finite value is
    /// written as it is, where metrics.jsonl has `null`).
    pub fn scalars(&mut self, step: u64, metrics: &Metrics) -> Result<(), RunDirError> {
        for (name, value) in metrics {
            self.writer.write_scalar(step as i64, name, *value as f32).map_err(|error| event_error(&self.dir, error))?;
        }
        Ok(())
    }

    /// Markdown text under `tag` (TensorBoard's text plugin: a string tensor).
    pub fn text(&mut self, step: u64, tag: &str, markdown: &str) -> Result<(), RunDirError> {
        let tensor = TensorProto {
            dtype: DataType::DtString.into(),
            tensor_shape: Some(TensorShapeProto::default()),
            string_val: vec![markdown.as_bytes().to_vec()],
            ..Default::default()
        };
        let metadata =
            SummaryMetadata { plugin_data: Some(PluginData { plugin_name: "text".into(), content: Vec::new() }), ..Default::default() };
        let value = summary::Value {
            tag: tag.into(),
            metadata: Some(metadata),
            value: Some(summary::value::Value::Tensor(tensor)),
            ..Default::default()
        };
        self.writer.write(step as i64, What::Summary(Summary { value: vec![value] })).map_err(|error| event_error(&self.dir, error))
    }

    /// Samples (sample log lines, each with its `"step"`): one text per step, with a section per
    /// sample and its fields in a table.
    pub fn samples(&mut self, samples: &[Map<String, Value>]) -> Result<(), RunDirError> {
        let step_of = |sample: &Map<String, Value>| sample.get("step").and_then(Value::as_u64);
        // Sample logs are written step by step: a step's samples are consecutive.
        for at_step in samples.chunk_by(|a, b| step_of(a) == step_of(b)) {
            if let Some(step) = step_of(&at_step[0]) {
                self.samples_of_step(step, at_step)?;
            }
        }
        Ok(())
    }

    fn samples_of_step(&mut self, step: u64, samples: &[Map<String, Value>]) -> Result<(), RunDirError> {
        let sections: Vec<String> = samples
            .iter()
            .enumerate()
            .map(|(index, sample)| {
                let rows: String = sample
                    .iter()
                    .filter(|(field, _)| *field != "step")
                    .map(|(field, value)| {
                        let text = value.as_str().map_or_else(|| value.to_string(), str::to_string);
                        format!("| {field} | {} |\n", markdown_cell(&text))
                    })
                    .collect();
                format!("**sample {}**\n\n| field | value |\n|---|---|\n{rows}", index + 1)
            })
            .collect();
        self.text(step, "samples", &sections.join("\n"))
    }

    /// The resolved config, as a code block.
    pub fn config(&mut self, toml: &str) -> Result<(), RunDirError> {
        let indented: String = toml.lines().map(|line| format!("    {line}\n")).collect();
        self.text(0, "config", &indented)
    }
}

/// Text inside a markdown table cell: pipes escaped, line breaks as `<br>`.
fn markdown_cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', "<br>")
}

fn event_error(dir: &Path, error: tboard::Error) -> RunDirError {
    RunDirError::Write { path: dir.into(), source: std::io::Error::other(error.to_string()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(dir: &Path) -> Vec<tboard::tensorboard::Event> {
        let files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.file_name().unwrap().to_string_lossy().starts_with(EVENT_FILE_PREFIX))
            .collect();
        assert_eq!(files.len(), 1, "one event file: {files:?}");
        tboard::SummaryReader::new(File::open(&files[0]).unwrap()).map(Result::unwrap).collect()
    }

    #[test]
    fn scalars_and_text_read_back_and_a_new_log_replaces_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = EventLog::create(dir.path()).unwrap();
        log.scalars(3, &Metrics::from([("train/loss".to_string(), 1.25), ("lr".to_string(), 1e-3)])).unwrap();
        let mut sample = Map::new();
        sample.insert("step".into(), 3.into());
        sample.insert("prompt".into(), "a | b".into());
        log.samples(&[sample]).unwrap();
        drop(log);
        let read = events(dir.path());
        let scalars: Vec<(i64, String, f32)> = read
            .iter()
            .filter_map(|event| match &event.what {
                Some(What::Summary(summary)) => match &summary.value[0].value {
                    Some(summary::value::Value::SimpleValue(v)) => Some((event.step, summary.value[0].tag.clone(), *v)),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        assert_eq!(scalars, vec![(3, "lr".to_string(), 1e-3), (3, "train/loss".to_string(), 1.25)]);
        let text = read.iter().find_map(|event| match &event.what {
            Some(What::Summary(summary)) => match &summary.value[0].value {
                Some(summary::value::Value::Tensor(tensor)) => Some(String::from_utf8(tensor.string_val[0].clone()).unwrap()),
                _ => None,
            },
            _ => None,
        });
        assert!(text.unwrap().contains("| prompt | a \\| b |"));

        EventLog::create(dir.path()).unwrap().scalars(1, &Metrics::from([("x".to_string(), 2.0)])).unwrap();
        assert_eq!(events(dir.path()).len(), 2, "the file version event and one scalar");
    }
}
