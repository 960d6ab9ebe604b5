//! What `rlhf watch` shows of a run, read from its directory as it grows (with the report's
//! forgiving reader): on a terminal, a screen redrawn at each refresh — the stages, the current
//! stage's step, rate and time left, its figures with sparklines, the alerts; elsewhere, one plain
//! line per evaluation, alert and finished stage, each printed once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use super::load::{MetricRow, Run, Stage};
use super::table::format_number;
use crate::stages::stage_kind;
use crate::train::alerts::Alert;

/// How far a stage has come.
#[derive(Debug, Clone, PartialEq)]
pub struct StageProgress {
    pub stage: String,
    pub kind: Option<String>,
    /// The last step with a metric line (0 before the first).
    pub step: u64,
    /// Its steps (iterations, `n`) from the run's config.
    pub total: Option<u64>,
    pub finished: bool,
}

/// The stages of `run` in the config's order (without a readable config: its stage
/// directories), as far as they have come.
pub fn progress(run: &Run) -> Vec<StageProgress> {
    let configured = run.config.as_ref().and_then(|config| config.get("stages")?.as_array().cloned()).unwrap_or_default();
    let mut planned: Vec<(String, Option<String>, Option<u64>)> = configured
        .iter()
        .filter_map(|stage| {
            let name = stage.get("name")?.as_str()?.to_string();
            let kind = stage.get("kind").and_then(|kind| kind.as_str()).map(str::to_string);
            let total = ["steps", "iterations", "n"].iter().find_map(|key| stage.get(key)?.as_integer()).map(|total| total as u64);
            Some((name, kind, total))
        })
        .collect();
    if planned.is_empty() {
        planned = run.stages.iter().map(|stage| (stage.name.clone(), stage.kind.clone(), None)).collect();
    }
    planned
        .into_iter()
        .map(|(name, kind, total)| {
            let stage = run.stage(&name);
            StageProgress {
                step: stage.and_then(|s| s.metrics.last()).map_or(0, |row| row.step),
                kind: kind.or_else(|| stage.and_then(|s| s.kind.clone())),
                finished: run.finished.contains(&name),
                stage: name,
                total,
            }
        })
        .collect()
}

/// Whether every stage of a run's [`progress`] is finished.
pub fn all_finished(stages: &[StageProgress]) -> bool {
    !stages.is_empty() && stages.iter().all(|stage| stage.finished)
}

/// The stage running now: the first unfinished one (the last one once all are finished).
pub fn current(stages: &[StageProgress]) -> Option<&StageProgress> {
    stages.iter().find(|stage| !stage.finished).or(stages.last())
}

/// Steps per second, measured from what the watcher has seen since it started.
#[derive(Debug, Default)]
pub struct Rates {
    first_seen: BTreeMap<String, (Instant, u64)>,
}

impl Rates {
    /// Records `stage` at `step` now; returns its rate once it has moved.
    pub fn observe(&mut self, stage: &str, step: u64) -> Option<f64> {
        let now = Instant::now();
        let (since, first_step) = *self.first_seen.entry(stage.to_string()).or_insert((now, step));
        let elapsed = now.duration_since(since).as_secs_f64();
        (step > first_step && elapsed > 0.0).then(|| (step - first_step) as f64 / elapsed)
    }
}

const SPARK: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// The last `width` values as a sparkline, scaled between their minimum and maximum.
pub fn sparkline(values: &[f64], width: usize) -> String {
    let values = &values[values.len().saturating_sub(width)..];
    let (low, high) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    values
        .iter()
        .map(|value| {
            let level = if high > low { ((value - low) / (high - low) * 7.0).round() as usize } else { 3 };
            SPARK[level.min(7)]
        })
        .collect()
}

fn duration(seconds: f64) -> String {
    let seconds = seconds.round() as u64;
    match seconds {
        0..60 => format!("{seconds} s"),
        60..3600 => format!("{} min {} s", seconds / 60, seconds % 60),
        _ => format!("{} h {} min", seconds / 3600, seconds % 3600 / 60),
    }
}

/// The figures a stage's kind declares for charts (its curves), those it has.
fn shown_figures(stage: &Stage) -> Vec<&'static str> {
    let declared = stage.kind.as_deref().and_then(stage_kind).map(|kind| kind.figures.curves).unwrap_or(&[]);
    declared.iter().copied().filter(|name| stage.has_metric(name)).collect()
}

/// The figures named in a plain evaluation line: the kind's `logged` figures.
fn logged_figures(stage: &Stage) -> &'static [&'static str] {
    stage.kind.as_deref().and_then(stage_kind).map(|kind| kind.figures.logged).unwrap_or(&[])
}

fn alert_line(alert: &Alert) -> String {
    format!("alert [{}] step {}: {}: {}", alert.stage, alert.step, alert.rule.name(), alert.message)
}

/// The terminal screen: every stage's state, the current stage's figures, the alerts.
pub fn screen(run: &Run, alerts: &[Alert], running: bool, rates: &mut Rates) -> String {
    let stages = progress(run);
    let state = match (running, all_finished(&stages)) {
        (true, _) => "running",
        (false, true) => "finished",
        (false, false) => "not running",
    };
    let mut out = format!("{} — {state}\n", run.path.display());
    let marks: Vec<String> = stages
        .iter()
        .map(|s| {
            let mark = if s.finished {
                "✓"
            } else if s.step > 0 {
                "▶"
            } else {
                "·"
            };
            format!("{} {mark}", s.stage)
        })
        .collect();
    out.push_str(&format!("stages: {}\n\n", marks.join("  ")));
    let Some(now) = current(&stages) else { return out };
    let rate = rates.observe(&now.stage, now.step);
    let mut line = format!("{} ({})  step {}", now.stage, now.kind.as_deref().unwrap_or("?"), now.step);
    if let Some(total) = now.total {
        line.push_str(&format!("/{total}"));
    }
    if let Some(rate) = rate {
        let unit = now.kind.as_deref().and_then(stage_kind).map_or("step", |kind| kind.figures.step_name);
        line.push_str(&format!("  {rate:.2} {unit}s/s"));
        if let (Some(total), false) = (now.total, now.finished) {
            line.push_str(&format!("  ~{} left in this stage", duration(total.saturating_sub(now.step) as f64 / rate)));
        }
    }
    out.push_str(&line);
    out.push('\n');
    if let Some(stage) = run.stage(&now.stage) {
        for name in shown_figures(stage) {
            let values: Vec<f64> = stage.series(name).into_iter().map(|(_, value)| value).collect();
            let last = values.last().map_or("–".to_string(), |v| format_number(*v));
            out.push_str(&format!("  {name:<28} {last:>10}  {}\n", sparkline(&values, 40)));
        }
    }
    let done: Vec<String> = stages
        .iter()
        .filter(|s| s.finished && s.stage != now.stage)
        .filter_map(|s| Some((s, run.stage(&s.stage)?)))
        .map(|(s, stage)| {
            let figures = logged_figures(stage)
                .iter()
                .filter_map(|name| Some(format!("{name}={}", format_number(stage.summary.get(*name).copied().flatten()?))));
            format!("  {}: {}", s.stage, figures.collect::<Vec<_>>().join(" "))
        })
        .collect();
    if !done.is_empty() {
        out.push_str(&format!("\nfinished:\n{}\n", done.join("\n")));
    }
    if !alerts.is_empty() {
        out.push_str(&format!("\nalerts ({}):\n", alerts.len()));
        for alert in alerts.iter().rev().take(8).rev() {
            out.push_str(&format!("  {}\n", alert_line(alert)));
        }
    }
    out
}

/// The plain lines of a run, each printed once across refreshes.
#[derive(Debug, Default)]
pub struct PlainLines {
    printed: BTreeSet<String>,
}

impl PlainLines {
    /// The lines not printed yet: each stage's evaluations, its alerts, its end.
    pub fn new_lines(&mut self, run: &Run, alerts: &[Alert]) -> Vec<String> {
        let mut lines = Vec::new();
        for progress in progress(run) {
            let Some(stage) = run.stage(&progress.stage) else { continue };
            let total = progress.total.map_or(String::new(), |total| format!("/{total}"));
            for row in stage.metrics.iter().filter(|row| is_evaluation(row)) {
                let figures: Vec<String> = logged_figures(stage)
                    .iter()
                    .filter_map(|name| Some(format!("{name}={}", format_number(row.values.get(*name).copied().flatten()?))))
                    .collect();
                lines.push(format!("[{}] step {}{total} evaluated: {}", stage.name, row.step, figures.join(" ")));
            }
            lines.extend(alerts.iter().filter(|alert| alert.stage == stage.name).map(alert_line));
            if progress.finished {
                lines.push(format!("[{}] finished", stage.name));
            }
        }
        lines.retain(|line| self.printed.insert(line.clone()));
        lines
    }
}

/// A metric line with held-out figures.
fn is_evaluation(row: &MetricRow) -> bool {
    row.values.keys().any(|name| name.starts_with("eval/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparklines_span_the_range_of_the_last_values() {
        assert_eq!(sparkline(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], 8), "▁▂▃▄▅▆▇█");
        assert_eq!(sparkline(&[9.0, 1.0, 1.0], 2), "▄▄", "flat: the middle");
        assert_eq!(sparkline(&[], 5), "");
    }

    #[test]
    fn durations_read_in_the_largest_units() {
        assert_eq!(duration(42.4), "42 s");
        assert_eq!(duration(125.0), "2 min 5 s");
        assert_eq!(duration(7300.0), "2 h 1 min");
    }
}
