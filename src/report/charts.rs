//! Which charts a report holds: per stage, the training curves of every run overlaid; for RL
//! stages, the reward–KL frontier and (with a gold oracle) gold and proxy score against √KL; and
//! every RL stage of every run on one gold-score–KL plane.

use super::figures_of;
use super::load::Run;
use super::plots::{Chart, Line, MIN_POINTS_TO_SMOOTH};
use crate::stages::{Frontier, StageFigures, STAGE_KINDS};

/// What the stage kinds of a stage (across runs) declare about their figures; every kind's
/// declarations for a stage whose kind is not known.
fn declared_figures(runs: &[Run], stage: &str) -> Vec<&'static StageFigures> {
    let mut declared: Vec<&'static StageFigures> = Vec::new();
    for figures in runs.iter().filter_map(|r| r.stage(stage)).filter_map(|s| s.kind.as_deref()).filter_map(figures_of) {
        if !declared.iter().any(|known| std::ptr::eq(*known, figures)) {
            declared.push(figures);
        }
    }
    if declared.is_empty() {
        for kind in STAGE_KINDS {
            if !declared.iter().any(|figures| std::ptr::eq(*figures, kind.figures)) {
                declared.push(kind.figures);
            }
        }
    }
    declared
}

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
        let declared = declared_figures(runs, &stage);
        let x_label = declared[0].step_name;
        let mut curves: Vec<&str> = Vec::new();
        for metric in declared.iter().flat_map(|figures| figures.curves) {
            if !curves.contains(metric) {
                curves.push(metric);
            }
        }
        let mut charts = Vec::new();
        for metric in curves {
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
        if let Some(declared) = declared.iter().find_map(|figures| figures.frontier.as_ref()) {
            charts.extend(frontier(runs, &stage, stage_index, declared));
            charts.extend(overoptimization(runs, &stage, stage_index, declared));
        }
        if !charts.is_empty() {
            all.push(StageCharts { stage, charts });
        }
    }
    all
}

/// Every RL stage of every run on one gold-score–KL plane, one line per stage through its
/// evaluations (best-of-n: one point per n), so that methods and their KL knobs compare where
/// they matter: the true score bought at each KL. Drawn when at least two RL stages (by name)
/// have one: one stage across runs already has its own frontier chart.
pub fn methods_frontier(runs: &[Run]) -> Option<StageCharts> {
    let one_run = runs.len() == 1;
    let mut lines = Vec::new();
    let mut stages: Vec<&str> = Vec::new();
    for run in runs {
        for stage in &run.stages {
            let Some(names) = stage.kind.as_deref().and_then(figures_of).and_then(|figures| figures.frontier.as_ref()) else {
                continue;
            };
            let points: Vec<(f64, f64)> =
                eval_points(run, &stage.name, names).into_iter().filter_map(|(kl, _, gold)| Some((kl, gold?))).collect();
            if points.is_empty() {
                continue;
            }
            if !stages.contains(&stage.name.as_str()) {
                stages.push(&stage.name);
            }
            let label = if one_run { stage.name.clone() } else { format!("{} · {}", run.label, stage.name) };
            lines.push(Line { label, color: lines.len(), points, dashed: false, markers: true, smooth: false, in_legend: true });
        }
    }
    (stages.len() >= 2).then(|| StageCharts {
        stage: "RL stages compared".into(),
        charts: vec![Chart {
            stem: "methods-gold-vs-kl".into(),
            title: "gold score against KL, every RL stage".into(),
            x_label: "KL to reference (eval/kl)".into(),
            y_label: "gold score (eval/gold_score)".into(),
            lines,
        }],
    })
}

/// `(KL, proxy score, gold score)` of each evaluation of a stage.
fn eval_points(run: &Run, stage: &str, names: &Frontier) -> Vec<(f64, f64, Option<f64>)> {
    let Some(stage) = run.stage(stage) else { return Vec::new() };
    stage
        .metrics
        .iter()
        .filter_map(|row| {
            let value = |name: &str| row.values.get(name).copied().flatten();
            Some((value(names.kl)?, value(names.proxy)?, value(names.gold)))
        })
        .collect()
}

/// The reward–KL frontier: reward-model score against KL to the reference, one point per
/// evaluation, per run.
fn frontier(runs: &[Run], stage: &str, stage_index: usize, names: &Frontier) -> Option<Chart> {
    let lines: Vec<Line> = runs
        .iter()
        .enumerate()
        .filter_map(|(index, run)| {
            let points: Vec<(f64, f64)> = eval_points(run, stage, names).into_iter().map(|(kl, rm, _)| (kl, rm)).collect();
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
        x_label: format!("KL to reference ({})", names.kl),
        y_label: format!("reward-model score ({})", names.proxy),
        lines,
    })
}

/// Gold (solid) and proxy (dashed) score against √KL: where the proxy keeps rising while gold
/// turns down, the policy over-optimises the reward model (Gao et al. 2022).
fn overoptimization(runs: &[Run], stage: &str, stage_index: usize, names: &Frontier) -> Option<Chart> {
    let mut lines = Vec::new();
    for (index, run) in runs.iter().enumerate() {
        let points = eval_points(run, stage, names);
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
