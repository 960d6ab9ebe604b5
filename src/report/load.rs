//! Reads run directories for a report, forgivingly: a killed run (truncated last line), a stage
//! that never ran, a metric that is null or absent, a missing config — each becomes a note in the
//! report rather than an error. Only inputs that are not runs at all are errors.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::ReportError;
use crate::run::metrics::EVALUATION_FILE;
use crate::run::sweep::{SweepRecord, SWEEP_FILE};
use crate::run::{CONFIG_FILE, ENV_FILE, SUMMARY_FILE};
use crate::stages::{StageKind, STAGE_KINDS};
use crate::train::alerts::{read_alerts, Alert, ALERTS_FILE};

/// One run as the report sees it.
#[derive(Debug, Clone)]
pub struct Run {
    /// Short unique name shown in legends and tables.
    pub label: String,
    pub path: PathBuf,
    /// config.toml, when present and readable.
    pub config: Option<toml::Table>,
    /// Stages in the config's order, then any other stage directories found.
    pub stages: Vec<Stage>,
    /// Stages listed in summary.json (finished).
    pub finished: Vec<String>,
    /// Set for a variant of a sweep: its swept assignments (without the seed) and seed.
    pub variant: Option<VariantInfo>,
    /// The hash of the evaluation set (env.json's `eval_set.sha256`), when recorded.
    pub eval_set: Option<String>,
    /// alerts.jsonl: what went wrong while it trained.
    pub alerts: Vec<Alert>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VariantInfo {
    /// `KEY=VALUE` in the order of the sweep's keys.
    pub assignments: Vec<(String, String)>,
    pub seed: Option<u64>,
}

#[derive(Debug, Clone, Default)]
pub struct Stage {
    pub name: String,
    /// From config.toml, or guessed from the metric names when the config is missing.
    pub kind: Option<String>,
    pub metrics: Vec<MetricRow>,
    pub samples: Vec<SampleLine>,
    /// eval_final.jsonl: every response of the latest evaluation.
    pub evaluation: Vec<SampleLine>,
    /// The stage's figures in summary.json (empty while it is unfinished); `None` is a `null`.
    pub summary: BTreeMap<String, Option<f64>>,
}

/// One line of metrics.jsonl; `None` is a `null` (a diverged, non-finite value).
#[derive(Debug, Clone, PartialEq)]
pub struct MetricRow {
    pub step: u64,
    pub values: BTreeMap<String, Option<f64>>,
}

/// One line of samples.jsonl or eval_final.jsonl.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleLine {
    pub step: u64,
    pub prompt: String,
    pub completion: String,
    /// The reward model's score (PPO samples).
    pub score: Option<f64>,
    pub gold_score: Option<f64>,
}

/// A note shown in the report about something missing or damaged in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub run: String,
    pub message: String,
}

impl Stage {
    /// `(step, value)` of every non-null value of `metric`.
    pub fn series(&self, metric: &str) -> Vec<(f64, f64)> {
        self.metrics.iter().filter_map(|row| row.values.get(metric).copied().flatten().map(|v| (row.step as f64, v))).collect()
    }

    /// The last non-null value of `metric`.
    pub fn last(&self, metric: &str) -> Option<f64> {
        self.metrics.iter().rev().find_map(|row| row.values.get(metric).copied().flatten())
    }

    pub fn has_metric(&self, metric: &str) -> bool {
        self.metrics.iter().any(|row| matches!(row.values.get(metric), Some(Some(_))))
    }

    /// The samples of the last step that has any.
    pub fn last_samples(&self) -> Vec<&SampleLine> {
        let Some(step) = self.samples.iter().map(|s| s.step).max() else { return Vec::new() };
        self.samples.iter().filter(|s| s.step == step).collect()
    }

    /// The responses a comparison judges: every response of the final evaluation where the
    /// stage kept them (eval_final.jsonl), else the last samples.
    pub fn judged_responses(&self) -> Vec<&SampleLine> {
        if self.evaluation.is_empty() {
            self.last_samples()
        } else {
            self.evaluation.iter().collect()
        }
    }
}

impl Run {
    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|stage| stage.name == name)
    }
}

/// A directory given on the command line, resolved to the run directories it stands for.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub variant: Option<VariantInfo>,
    /// The sweep's own name for the variant.
    pub name: Option<String>,
}

/// Resolves each input: a run directory, a sweep directory (its variants, from sweep.json), or a
/// directory of runs (`results/<experiment>/`, every run in it).
pub fn discover(inputs: &[PathBuf]) -> Result<Vec<Source>, ReportError> {
    let mut sources = Vec::new();
    for input in inputs {
        if !input.exists() {
            return Err(ReportError::Missing { path: input.clone() });
        }
        if !input.is_dir() {
            return Err(ReportError::NotARun { path: input.clone() });
        }
        if input.join(SWEEP_FILE).is_file() {
            let record =
                SweepRecord::read(input).map_err(|error| ReportError::Sweep { path: input.clone(), message: error.to_string() })?;
            for variant in record.variants {
                sources.push(Source {
                    path: SweepRecord::variant_dir(input, &variant),
                    variant: Some(VariantInfo { assignments: variant.assignments, seed: variant.seed }),
                    name: Some(variant.name),
                });
            }
        } else if let Some(policies) = crate::eval::policy_dirs(input) {
            // An `rlhf eval` directory: one run per evaluated policy, named as evaluated.
            sources.extend(policies.into_iter().map(|(name, path)| Source { path, variant: None, name: Some(name) }));
        } else if is_run(input) {
            sources.push(Source { path: input.clone(), variant: None, name: None });
        } else {
            let mut runs: Vec<PathBuf> = std::fs::read_dir(input)
                .map_err(|source| ReportError::Read { path: input.clone(), source })?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|path| path.is_dir() && is_run(path))
                .collect();
            if runs.is_empty() {
                return Err(ReportError::NotARun { path: input.clone() });
            }
            runs.sort();
            sources.extend(runs.into_iter().map(|path| Source { path, variant: None, name: None }));
        }
    }
    Ok(sources)
}

/// A run directory has its config.toml, or at least one `<stage>/metrics.jsonl`.
fn is_run(path: &Path) -> bool {
    path.join(CONFIG_FILE).is_file() || stage_dirs(path).next().is_some()
}

fn stage_dirs(path: &Path) -> impl Iterator<Item = String> {
    std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|entry| entry.path().join("metrics.jsonl").is_file())
        .filter_map(|entry| entry.file_name().to_str().map(str::to_string))
}

/// Loads every source, labelling the runs; notes collect what was missing or damaged.
pub fn load_runs(sources: &[Source], notes: &mut Vec<Note>) -> Vec<Run> {
    let labels = setting_labels(sources).unwrap_or_else(|| labels(sources));
    sources.iter().zip(labels).map(|(source, label)| load_run(source, label, notes)).collect()
}

fn load_run(source: &Source, label: String, notes: &mut Vec<Note>) -> Run {
    let mut note = |message: String| notes.push(Note { run: label.clone(), message });
    let path = &source.path;
    if !path.is_dir() {
        note(format!("`{}` does not exist (a sweep variant that has not started?)", path.display()));
        return Run {
            label: label.clone(),
            path: path.clone(),
            config: None,
            stages: Vec::new(),
            finished: Vec::new(),
            variant: source.variant.clone(),
            eval_set: None,
            alerts: Vec::new(),
        };
    }
    let config = match std::fs::read_to_string(path.join(CONFIG_FILE)) {
        Err(_) => {
            note(format!("no readable {CONFIG_FILE}: the config diff leaves this run out"));
            None
        }
        Ok(text) => match text.parse::<toml::Table>() {
            Ok(table) => Some(table),
            Err(error) => {
                note(format!("{CONFIG_FILE} is not valid TOML ({}): the config diff leaves this run out", error.message()));
                None
            }
        },
    };
    let mut summary = read_summary(&path.join(SUMMARY_FILE), &mut note);
    let finished: Vec<String> = summary.keys().cloned().collect();

    // Stages in the order the config lists them, then any stage directory it does not list.
    let mut planned: Vec<(String, Option<String>)> = config.as_ref().map(config_stages).unwrap_or_default();
    for name in sorted(stage_dirs(path).collect()) {
        if !planned.iter().any(|(n, _)| *n == name) {
            planned.push((name, None));
        }
    }
    let mut stages = Vec::new();
    for (name, kind) in planned {
        let dir = path.join(&name);
        let metrics_path = dir.join("metrics.jsonl");
        if !metrics_path.is_file() {
            note(format!("stage `{name}` has no metrics.jsonl (not run yet)"));
            continue;
        }
        let metrics = read_metrics(&metrics_path, &mut note);
        let samples_path = dir.join("samples.jsonl");
        let samples = if samples_path.is_file() { read_samples(&samples_path, &mut note) } else { Vec::new() };
        let evaluation_path = dir.join(EVALUATION_FILE);
        let evaluation = if evaluation_path.is_file() { read_samples(&evaluation_path, &mut note) } else { Vec::new() };
        if !finished.contains(&name) {
            note(format!("stage `{name}` is not finished (not in {SUMMARY_FILE}): its figures are the last ones written"));
        }
        let summary = summary.remove(&name).unwrap_or_default();
        let mut stage = Stage { name, kind, metrics, samples, evaluation, summary };
        if stage.kind.is_none() {
            stage.kind = guess_kind(&stage).map(str::to_string);
        }
        stages.push(stage);
    }
    if stages.is_empty() {
        note("no stage has any metrics".to_string());
    }
    let eval_set = read_eval_set(&path.join(ENV_FILE));
    let alerts = read_alerts(&path.join(ALERTS_FILE)).unwrap_or_else(|error| {
        note(format!("{error}: its alerts are left out"));
        Vec::new()
    });
    Run { label, path: path.clone(), config, stages, finished, variant: source.variant.clone(), eval_set, alerts }
}

/// `eval_set.sha256` of an env.json; `None` when absent (older runs) or unreadable.
fn read_eval_set(path: &Path) -> Option<String> {
    let env: Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    env.get("eval_set")?.get("sha256")?.as_str().map(str::to_string)
}

fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names
}

/// `(name, kind)` of each `[[stages]]` entry of a recorded config.
fn config_stages(config: &toml::Table) -> Vec<(String, Option<String>)> {
    config
        .get("stages")
        .and_then(toml::Value::as_array)
        .map(|stages| {
            stages
                .iter()
                .filter_map(|stage| {
                    let name = stage.get("name")?.as_str()?.to_string();
                    Some((name, stage.get("kind").and_then(toml::Value::as_str).map(str::to_string)))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A stage kind from the metrics it logged, for runs without a readable config: the kind that
/// declares the most of them among its figures (the first registered on a tie).
fn guess_kind(stage: &Stage) -> Option<&'static str> {
    let declared = |kind: &StageKind| {
        let figures = kind.figures;
        let names: Vec<&str> = figures.curves.iter().chain(figures.headline).copied().collect();
        names.iter().filter(|name| stage.has_metric(name)).count()
    };
    let mut best: Option<(usize, &'static str)> = None;
    for kind in STAGE_KINDS {
        let count = declared(kind);
        if count > best.map_or(0, |(most, _)| most) {
            best = Some((count, kind.name));
        }
    }
    best.map(|(_, name)| name)
}

/// summary.json: the finished stages, each with its numeric figures (`None` for a `null`).
fn read_summary(path: &Path, note: &mut impl FnMut(String)) -> BTreeMap<String, BTreeMap<String, Option<f64>>> {
    let Ok(text) = std::fs::read_to_string(path) else { return BTreeMap::new() };
    match serde_json::from_str::<BTreeMap<String, Value>>(&text) {
        Ok(summary) => summary
            .into_iter()
            .map(|(stage, figures)| {
                let figures = match figures {
                    Value::Object(figures) => figures
                        .into_iter()
                        .filter_map(|(name, value)| match value {
                            Value::Number(number) => Some((name, number.as_f64())),
                            Value::Null => Some((name, None)),
                            _ => None,
                        })
                        .collect(),
                    _ => BTreeMap::new(),
                };
                (stage, figures)
            })
            .collect(),
        Err(error) => {
            note(format!("{SUMMARY_FILE} is not valid JSON ({error}): stages are taken as unfinished"));
            BTreeMap::new()
        }
    }
}

/// Each parseable line with a `"step"`, as a JSON object; problems go to `note`. A last line
/// that does not parse is the usual trace of a killed run and is named as such.
fn read_objects(path: &Path, note: &mut impl FnMut(String)) -> Vec<(u64, serde_json::Map<String, Value>)> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) => {
            note(format!("cannot read `{}`: {error}", path.display()));
            return Vec::new();
        }
    };
    let lines: Vec<String> = match BufReader::new(file).lines().collect() {
        Ok(lines) => lines,
        Err(error) => {
            note(format!("cannot read `{}`: {error}", path.display()));
            return Vec::new();
        }
    };
    let last_line = lines.iter().rposition(|line| !line.trim().is_empty());
    let mut objects = Vec::new();
    let mut bad = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(object)) => match object.get("step").and_then(Value::as_u64) {
                Some(step) => objects.push((step, object)),
                None => bad.push(format!("line {} has no integer `step`", index + 1)),
            },
            Ok(_) => bad.push(format!("line {} is not a JSON object", index + 1)),
            Err(_) if Some(index) == last_line => {
                note(format!("`{}`: the last line (line {}) is truncated — a killed run? — and was skipped", path.display(), index + 1));
            }
            Err(error) => bad.push(format!("line {} is not valid JSON ({error})", index + 1)),
        }
    }
    if !bad.is_empty() {
        note(format!("`{}`: skipped {} bad line(s): {}", path.display(), bad.len(), bad.join("; ")));
    }
    objects
}

fn read_metrics(path: &Path, note: &mut impl FnMut(String)) -> Vec<MetricRow> {
    let mut nulls: BTreeMap<String, usize> = BTreeMap::new();
    let rows: Vec<MetricRow> = read_objects(path, note)
        .into_iter()
        .map(|(step, object)| {
            let values = object
                .into_iter()
                .filter(|(name, _)| name != "step")
                .filter_map(|(name, value)| match value {
                    Value::Number(number) => Some((name, number.as_f64())),
                    Value::Null => {
                        *nulls.entry(name.clone()).or_default() += 1;
                        Some((name, None))
                    }
                    // Strings or flags are not plotted.
                    _ => None,
                })
                .collect();
            MetricRow { step, values }
        })
        .collect();
    if !nulls.is_empty() {
        let counts: Vec<String> = nulls.iter().map(|(name, count)| format!("{name} ×{count}")).collect();
        note(format!("`{}`: null (non-finite) values left out of plots: {}", path.display(), counts.join(", ")));
    }
    rows
}

fn read_samples(path: &Path, note: &mut impl FnMut(String)) -> Vec<SampleLine> {
    let objects = read_objects(path, note);
    let total = objects.len();
    let samples: Vec<SampleLine> = objects
        .into_iter()
        .filter_map(|(step, object)| {
            let text = |name: &str| object.get(name).and_then(Value::as_str).map(str::to_string);
            let number = |name: &str| object.get(name).and_then(Value::as_f64);
            Some(SampleLine {
                step,
                prompt: text("prompt")?,
                completion: text("completion")?,
                score: number("score"),
                gold_score: number("gold_score"),
            })
        })
        .collect();
    if samples.len() < total {
        note(format!("`{}`: {} sample line(s) without `prompt` and `completion` skipped", path.display(), total - samples.len()));
    }
    samples
}

/// The most settings runs may differ in for their labels to name them.
const LABEL_KEYS: usize = 2;

/// Names that say how the runs differ — `seed=2`, `kl_coef=0.5, seed=1` — when they are not a
/// sweep's variants (those have names already), all have a readable config.toml, and their
/// configs differ in one or two keys whose values tell every run apart. A key is named by its
/// last part (`kl_coef` for `stages.ppo.kl_coef`) unless two differing keys share it.
fn setting_labels(sources: &[Source]) -> Option<Vec<String>> {
    if sources.len() < 2 || sources.iter().any(|s| s.name.is_some()) {
        return None;
    }
    let configs = sources
        .iter()
        .map(|s| Some(super::config_diff::flatten(&std::fs::read_to_string(s.path.join(CONFIG_FILE)).ok()?.parse().ok()?)))
        .collect::<Option<Vec<_>>>()?;
    let mut keys: Vec<&String> = configs.iter().flat_map(|c| c.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.retain(|key| configs.iter().any(|c| c.get(*key) != configs[0].get(*key)));
    if keys.is_empty() || keys.len() > LABEL_KEYS {
        return None;
    }
    let short = |key: &str| key.rsplit('.').next().unwrap_or(key).to_string();
    let names: Vec<String> = keys.iter().map(|key| short(key)).collect();
    let unambiguous = names.iter().all(|name| names.iter().filter(|n| *n == name).count() == 1);
    let labels: Vec<String> = configs
        .iter()
        .map(|config| {
            keys.iter()
                .zip(&names)
                .map(|(key, name)| {
                    let name = if unambiguous { name.as_str() } else { key.as_str() };
                    format!("{name}={}", config.get(*key).map_or("—", String::as_str))
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .collect();
    let unique = labels.iter().enumerate().all(|(i, label)| !labels[..i].contains(label));
    unique.then_some(labels)
}

/// The shortest unique names: the directory's own name (a run id, or a sweep variant's name),
/// with its parent's name in front when two runs would otherwise share one.
fn labels(sources: &[Source]) -> Vec<String> {
    let name = |path: &Path, depth: usize| -> String {
        let parts: Vec<String> = path.components().rev().take(depth).map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
        parts.into_iter().rev().collect::<Vec<_>>().join("/")
    };
    let mut labels: Vec<String> = sources.iter().map(|s| s.name.clone().unwrap_or_else(|| name(&s.path, 1))).collect();
    for depth in 2..=4 {
        let duplicated = |label: &String| labels.iter().filter(|l| *l == label).count() > 1;
        if !labels.iter().any(duplicated) {
            break;
        }
        labels = sources
            .iter()
            .zip(&labels)
            .map(|(source, label)| if duplicated(label) { name(&source.path, depth) } else { label.clone() })
            .collect();
    }
    // Still equal (the same directory given twice): number them.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    labels
        .into_iter()
        .map(|label| {
            let count = seen.entry(label.clone()).or_default();
            *count += 1;
            if *count > 1 {
                format!("{label} ({count})")
            } else {
                label
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(path: &str) -> Source {
        Source { path: PathBuf::from(path), variant: None, name: None }
    }

    #[test]
    fn labels_are_short_and_unique() {
        let sources = [source("results/a/20260101-000000"), source("results/b/20260101-000000"), source("x/run2")];
        assert_eq!(labels(&sources), ["a/20260101-000000", "b/20260101-000000", "run2"]);
        assert_eq!(labels(&[source("r/x"), source("r/x")]), ["r/x", "r/x (2)"]);
    }

    #[test]
    fn truncated_last_line_and_nulls_are_notes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        std::fs::write(
            &path,
            "{\"step\":1,\"a\":1.0}\n{\"step\":2,\"a\":null,\"b\":2}\nnot json\n{\"step\":3,\"a\":3.0}\n{\"step\":4,\"a\":",
        )
        .unwrap();
        let mut notes = Vec::new();
        let rows = read_metrics(&path, &mut |n| notes.push(n));
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1].values["a"], None);
        assert_eq!(rows[1].values["b"], Some(2.0));
        let stage = Stage { name: "s".into(), metrics: rows, ..Stage::default() };
        assert_eq!(stage.series("a"), [(1.0, 1.0), (3.0, 3.0)]);
        assert_eq!(stage.last("b"), Some(2.0));
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert!(notes[0].contains("last line (line 5) is truncated"), "{notes:?}");
        assert!(notes[1].contains("line 3 is not valid JSON"), "{notes:?}");
        assert!(notes[2].contains("a ×1"), "{notes:?}");
    }
}
