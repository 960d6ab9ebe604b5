//! Response-level comparison against the baseline run: win rates judged by the gold oracle or a
//! reward model, and the responses themselves side by side for the same prompts. Both use the
//! latest stage with judgeable responses: every response of its final evaluation
//! (eval_final.jsonl) where it kept them, else its last samples.

use super::judge::Judge;
use super::load::{Note, Run, SampleLine};
use super::table::{format_number, Cell, Table};
use super::winrate::{self, Comparison, CONFIDENCE, MIN_SHARED_PROMPTS};
use super::ReportError;

/// How many prompts the side-by-side view shows.
pub const SHOWN_PROMPTS: usize = 6;

#[derive(Debug, Clone)]
pub struct WinRates {
    pub stage: String,
    pub judge: String,
    pub baseline: String,
    /// Per run (the baseline included, as `None`).
    pub results: Vec<(String, Option<Comparison>)>,
}

impl WinRates {
    /// `(index, label, rate)` of each run compared with the baseline.
    pub fn rates(&self) -> impl Iterator<Item = (usize, &str, &winrate::WinRate)> {
        self.results.iter().enumerate().filter_map(|(index, (label, result))| match result {
            Some(Comparison::Rate(rate)) => Some((index, label.as_str(), rate)),
            _ => None,
        })
    }
}

#[derive(Debug, Clone)]
pub struct SideBySide {
    pub stage: String,
    pub runs: Vec<String>,
    pub rows: Vec<SampleRow>,
}

#[derive(Debug, Clone)]
pub struct SampleRow {
    pub prompt: String,
    /// Per run: the completion and its scores, if the run answered this prompt.
    pub cells: Vec<Option<(String, String)>>,
}

pub struct Settings<'a> {
    pub baseline: usize,
    pub judge: &'a Judge,
    pub resamples: usize,
    pub seed: u64,
}

/// The stage whose samples are compared: the latest in the baseline's order with samples the
/// judge can score.
fn compared_stage<'r>(baseline: &'r Run, judge: &Judge) -> Option<&'r str> {
    baseline.stages.iter().rev().find(|stage| stage.judged_responses().iter().any(|s| judge.can_judge(s))).map(|stage| stage.name.as_str())
}

pub fn win_rates(runs: &[Run], settings: &Settings, notes: &mut Vec<Note>) -> Result<Option<WinRates>, ReportError> {
    if runs.len() < 2 {
        return Ok(None); // nothing to compare the baseline with
    }
    let baseline = &runs[settings.baseline];
    let Some(stage) = compared_stage(baseline, settings.judge) else {
        let hint = match settings.judge {
            Judge::Gold => " (samples carry no gold_score: pass --judge RM_DIR to judge with a reward model)",
            Judge::RewardModel { .. } => "",
        };
        notes.push(Note { run: baseline.label.clone(), message: format!("the baseline has no samples to judge, so no win rates{hint}") });
        return Ok(None);
    };
    let mut judged: Vec<Vec<(String, f64)>> = Vec::with_capacity(runs.len());
    for run in runs {
        let samples: Vec<&SampleLine> = run.stage(stage).map(|s| s.judged_responses()).unwrap_or_default();
        let scores = settings.judge.score(&samples)?;
        judged.push(samples.iter().zip(scores).filter_map(|(s, score)| Some((s.prompt.clone(), score?))).collect());
    }
    let baseline_scores = as_refs(&judged[settings.baseline]);
    let mut results = Vec::with_capacity(runs.len());
    for (index, run) in runs.iter().enumerate() {
        let result = if index == settings.baseline {
            None
        } else {
            let result = winrate::compare(&as_refs(&judged[index]), &baseline_scores, settings.resamples, settings.seed);
            if let Comparison::NotComparable { shared } = result {
                notes.push(Note {
                    run: run.label.clone(),
                    message: format!(
                        "answered {shared} of the baseline's evaluated prompts in stage `{stage}` (a win rate needs {MIN_SHARED_PROMPTS}): not comparable response by response"
                    ),
                });
            }
            Some(result)
        };
        results.push((run.label.clone(), result));
    }
    Ok(Some(WinRates { stage: stage.to_string(), judge: settings.judge.describe(), baseline: baseline.label.clone(), results }))
}

fn as_refs(side: &[(String, f64)]) -> Vec<(&str, f64)> {
    side.iter().map(|(prompt, score)| (prompt.as_str(), *score)).collect()
}

pub fn win_rate_table(win_rates: &WinRates) -> Table {
    let headers = ["run", "win rate", &format!("{:.0} % CI", CONFIDENCE * 100.0), "wins / ties / losses", "compared"];
    let rows = win_rates
        .results
        .iter()
        .map(|(label, result)| match result {
            None if *label == win_rates.baseline => {
                vec![Cell::text(label), Cell::text("baseline"), Cell::text(""), Cell::text(""), Cell::text("")]
            }
            None => vec![Cell::text(label), Cell::text("—"), Cell::text(""), Cell::text(""), Cell::text("")],
            Some(Comparison::NotComparable { shared }) => vec![
                Cell::text(label),
                Cell::text("not comparable"),
                Cell::text(""),
                Cell::text(""),
                Cell::text(format!("{shared} shared prompts (fewer than {MIN_SHARED_PROMPTS})")),
            ],
            Some(Comparison::Rate(w)) => vec![
                Cell::text(label),
                Cell::text(format!("{:.1} %", w.rate * 100.0)),
                Cell::text(format!("{:.1} – {:.1} %", w.low * 100.0, w.high * 100.0)),
                Cell::text(format!("{} / {} / {}", w.wins, w.ties, w.losses)),
                Cell::text(format!("{} shared prompts", w.prompts)),
            ],
        })
        .collect();
    let mut table = Table { headers: headers.iter().map(|h| h.to_string()).collect(), rows };
    // Mark the run that beats the baseline most often.
    let rates: Vec<(usize, f64)> = win_rates.rates().map(|(i, _, rate)| (i, rate.rate)).collect();
    let best = rates.iter().copied().max_by(|a, b| a.1.total_cmp(&b.1));
    if let Some((index, _)) = best.filter(|_| rates.len() > 1) {
        table.rows[index][1].best = true;
    }
    table
}

/// Responses of every run to the prompts of the baseline's last samples that at least one other
/// run answered too.
pub fn side_by_side(runs: &[Run], baseline: usize, stage: &str) -> Option<SideBySide> {
    let latest: Vec<Vec<&SampleLine>> = runs.iter().map(|run| run.stage(stage).map(|s| s.last_samples()).unwrap_or_default()).collect();
    let rows: Vec<SampleRow> = latest[baseline]
        .iter()
        .map(|sample| SampleRow {
            prompt: sample.prompt.clone(),
            cells: latest
                .iter()
                .map(|samples| samples.iter().find(|s| s.prompt == sample.prompt).map(|s| (s.completion.clone(), scores_text(s))))
                .collect(),
        })
        .filter(|row| row.cells.iter().flatten().count() >= 2.min(runs.len()))
        .take(SHOWN_PROMPTS)
        .collect();
    if rows.is_empty() {
        return None;
    }
    Some(SideBySide { stage: stage.to_string(), runs: runs.iter().map(|r| r.label.clone()).collect(), rows })
}

fn scores_text(sample: &SampleLine) -> String {
    let mut parts = Vec::new();
    if let Some(gold) = sample.gold_score {
        parts.push(format!("gold {}", format_number(gold)));
    }
    if let Some(score) = sample.score {
        parts.push(format!("rm {}", format_number(score)));
    }
    parts.join(" · ")
}

/// The stage the side-by-side view shows: the one the win rates judged, else the baseline's
/// latest stage with any samples.
pub fn sample_stage<'r>(runs: &'r [Run], baseline: usize, win_rates: Option<&'r WinRates>) -> Option<&'r str> {
    win_rates
        .map(|w| w.stage.as_str())
        .or_else(|| runs[baseline].stages.iter().rev().find(|s| !s.samples.is_empty()).map(|s| s.name.as_str()))
}
