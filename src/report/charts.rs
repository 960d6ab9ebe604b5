//! Which charts a report holds: per stage, the training curves of every run overlaid; for PPO
//! stages, the reward–KL frontier and (with a gold oracle) gold and proxy score against √KL.

use super::load::Run;
use super::plots::{Chart, Line, MIN_POINTS_TO_SMOOTH};

/// Curves worth a chart, in the order they are shown.
const CURVES: &[&str] = &[
    "train/loss",
    "eval/loss",
    "eval/ppl",
    "train/accuracy",
    "eval/accuracy",
    "eval/gold_agreement",
    "objective/scores",
    "objective/kl",
    "objective/entropy",
    "policy/clipfrac_avg",
    "val/clipfrac_avg",
    "kl_coef",
    "eval/rm_score",
    "eval/gold_score",
    "eval/kl",
];

/// Charts of one stage.
#[derive(Debug, Clone)]
pub struct StageCharts {
    pub stage: String,
    pub charts: Vec<Chart>,
}

/// Stage names in the order they first appear across runs.
fn stage_names(runs: &[Run]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for stage in runs.iter().flat_map(|run| &run.stages) {
        if !names.contains(&stage.name) {
            names.push(stage.name.clone());
        }
    }
    names
}

/// A file name made of letters, digits and dashes.
pub fn file_stem(parts: &[&str]) -> String {
    let joined = parts.join("-");
    let stem: String = joined.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    stem.split('-').filter(|part| !part.is_empty()).collect::<Vec<_>>().join("-")
}

pub fn stage_charts(runs: &[Run]) -> Vec<StageCharts> {
    let mut all = Vec::new();
    for (stage_index, stage) in stage_names(runs).into_iter().enumerate() {
        let is_ppo = runs.iter().filter_map(|r| r.stage(&stage)).any(|s| s.kind.as_deref() == Some("ppo"));
        let x_label = if is_ppo { "iteration" } else { "step" };
        let mut charts = Vec::new();
        for metric in CURVES {
            let lines: Vec<Line> = runs
                .iter()
                .enumerate()
                .filter_map(|(index, run)| {
                    let points = run.stage(&stage)?.series(metric);
                    (!points.is_empty()).then(|| Line {
                        label: run.label.clone(),
                        color: index,
                        points,
                        dashed: false,
                        markers: false,
                        smooth: true,
                        in_legend: true,
                    })
                })
                .collect();
            if lines.is_empty() {
                continue;
            }
            // Too few points to smooth (evaluations, mostly): show each one as a point.
            let lines = lines.into_iter().map(|line| Line { markers: line.points.len() < MIN_POINTS_TO_SMOOTH, ..line }).collect();
            charts.push(Chart {
                stem: file_stem(&[&format!("{stage_index:02}"), &stage, metric]),
                title: format!("{stage} · {metric}"),
                x_label: x_label.into(),
                y_label: metric.to_string(),
                lines,
            });
        }
        charts.extend(frontier(runs, &stage, stage_index));
        charts.extend(overoptimization(runs, &stage, stage_index));
        if !charts.is_empty() {
            all.push(StageCharts { stage, charts });
        }
    }
    all
}

/// `(eval/kl, eval/rm_score, eval/gold_score)` of each evaluation of a stage.
fn eval_points(run: &Run, stage: &str) -> Vec<(f64, f64, Option<f64>)> {
    let Some(stage) = run.stage(stage) else { return Vec::new() };
    stage
        .metrics
        .iter()
        .filter_map(|row| {
            let value = |name: &str| row.values.get(name).copied().flatten();
            Some((value("eval/kl")?, value("eval/rm_score")?, value("eval/gold_score")))
        })
        .collect()
}

/// The reward–KL frontier: reward-model score against KL to the reference, one point per
/// evaluation, per run.
fn frontier(runs: &[Run], stage: &str, stage_index: usize) -> Option<Chart> {
    let lines: Vec<Line> = runs
        .iter()
        .enumerate()
        .filter_map(|(index, run)| {
            let points: Vec<(f64, f64)> = eval_points(run, stage).into_iter().map(|(kl, rm, _)| (kl, rm)).collect();
            (!points.is_empty()).then(|| Line {
                label: run.label.clone(),
                color: index,
                points,
                dashed: false,
                markers: true,
                smooth: false,
                in_legend: true,
            })
        })
        .collect();
    (!lines.is_empty()).then(|| Chart {
        stem: file_stem(&[&format!("{stage_index:02}"), stage, "frontier"]),
        title: format!("{stage} · reward–KL frontier"),
        x_label: "KL to reference (eval/kl)".into(),
        y_label: "reward-model score (eval/rm_score)".into(),
        lines,
    })
}

/// Gold (solid) and proxy (dashed) score against √KL: where the proxy keeps rising while gold
/// turns down, the policy over-optimises the reward model (Gao et al. 2022).
fn overoptimization(runs: &[Run], stage: &str, stage_index: usize) -> Option<Chart> {
    let mut lines = Vec::new();
    for (index, run) in runs.iter().enumerate() {
        let points = eval_points(run, stage);
        let gold: Vec<(f64, f64)> = points.iter().filter_map(|&(kl, _, gold)| Some((kl.max(0.0).sqrt(), gold?))).collect();
        if gold.is_empty() {
            continue;
        }
        let proxy: Vec<(f64, f64)> = points.iter().map(|&(kl, rm, _)| (kl.max(0.0).sqrt(), rm)).collect();
        // One legend entry per run: the y-axis title tells gold (solid) from proxy (dashed).
        lines.push(Line {
            label: run.label.clone(),
            color: index,
            points: gold,
            dashed: false,
            markers: true,
            smooth: false,
            in_legend: true,
        });
        lines.push(Line {
            label: format!("{} proxy", run.label),
            color: index,
            points: proxy,
            dashed: true,
            markers: false,
            smooth: false,
            in_legend: false,
        });
    }
    (!lines.is_empty()).then(|| Chart {
        stem: file_stem(&[&format!("{stage_index:02}"), stage, "gold-vs-sqrt-kl"]),
        title: format!("{stage} · gold and proxy score against √KL"),
        x_label: "√KL to reference".into(),
        y_label: "score (gold solid, proxy dashed)".into(),
        lines,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_stems_are_safe() {
        assert_eq!(file_stem(&["00", "ppo", "policy/clipfrac_avg"]), "00-ppo-policy-clipfrac-avg");
        assert_eq!(file_stem(&["01", "My Stage!", "eval/kl"]), "01-my-stage-eval-kl");
    }
}
