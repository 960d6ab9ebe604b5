//! The table of final figures: for each stage, the headline metrics of its kind, one row per run
//! (the last value written, so that an unfinished run still shows where it got to), each read as
//! its kind declares (which way is better, and whether runs' values compare at all); and for
//! stages that trade reward against KL, the gold score at a KL every run reached.

use std::path::Path;

use super::figures_of;
use super::load::Run;
use super::table::{best_index, format_number, Cell, Direction, Table};
use crate::stages::{Frontier, Reading};

/// One column: a stage's metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub stage: String,
    pub kind: String,
    pub metric: String,
    /// Which way is better; `None` when neither is, or when the runs' values do not compare.
    pub direction: Option<Direction>,
    /// Set when the column reads `metric` along each run's evaluations at this KL.
    pub at_kl: Option<f64>,
}

impl Column {
    pub fn header(&self) -> String {
        match self.at_kl {
            Some(kl) => format!("{} {} @ KL {}", self.stage, self.metric, format_number(kl)),
            None => format!("{} {}", self.stage, self.metric),
        }
    }
}

/// The final figures of every run: `values[run][column]`.
#[derive(Debug, Clone)]
pub struct Figures {
    pub columns: Vec<Column>,
    pub values: Vec<Vec<Option<f64>>>,
}

pub fn collect(runs: &[Run]) -> Figures {
    let mut columns: Vec<Column> = Vec::new();
    for run in runs {
        for stage in &run.stages {
            let Some(figures) = stage.kind.as_deref().and_then(figures_of) else { continue };
            let kind = stage.kind.as_deref().unwrap_or_default();
            let present = |metric: &str| runs.iter().any(|r| r.stage(&stage.name).is_some_and(|s| s.has_metric(metric)));
            for metric in figures.headline.iter().filter(|m| present(m)) {
                if !columns.iter().any(|c| c.stage == stage.name && c.metric == *metric && c.at_kl.is_none()) {
                    let direction = direction(runs, &stage.name, figures.reading(metric));
                    columns.push(Column {
                        stage: stage.name.clone(),
                        kind: kind.into(),
                        metric: metric.to_string(),
                        direction,
                        at_kl: None,
                    });
                }
            }
            if let Some(frontier) = &figures.frontier {
                if !columns.iter().any(|c| c.stage == stage.name && c.at_kl.is_some()) {
                    if let Some(kl) = matched_kl(runs, &stage.name, frontier) {
                        let direction = direction(runs, &stage.name, figures.reading(frontier.gold));
                        let metric = frontier.gold.to_string();
                        columns.push(Column { stage: stage.name.clone(), kind: kind.into(), metric, direction, at_kl: Some(kl) });
                    }
                }
            }
        }
    }
    let values = runs.iter().map(|run| columns.iter().map(|c| value(run, c)).collect()).collect();
    Figures { columns, values }
}

fn value(run: &Run, column: &Column) -> Option<f64> {
    let stage = run.stage(&column.stage)?;
    match column.at_kl {
        None => stage.last(&column.metric),
        Some(kl) => {
            let frontier = figures_of(&column.kind)?.frontier.as_ref()?;
            at_kl(&trajectory(stage, frontier.kl, &column.metric), kl)
        }
    }
}

/// Which way `reading` is better in this comparison: `HigherOnSameModel` only when every run
/// with the stage names one and the same model.
fn direction(runs: &[Run], stage: &str, reading: Reading) -> Option<Direction> {
    match reading {
        Reading::Higher => Some(Direction::Higher),
        Reading::Lower => Some(Direction::Lower),
        Reading::Neither => None,
        Reading::HigherOnSameModel(key) => {
            let models: Vec<Option<String>> =
                runs.iter().filter(|run| run.stage(stage).is_some()).map(|run| model_identity(run, stage, key)).collect();
            let shared = models.first().is_some_and(|first| first.is_some() && models.iter().all(|m| m == first));
            shared.then_some(Direction::Higher)
        }
    }
}

/// What the stage's `key` names, as something equal between runs only when it is the same model:
/// an earlier stage of the run is that run's own; a path or `run:DIR/STAGE` is its canonical path.
fn model_identity(run: &Run, stage: &str, key: &str) -> Option<String> {
    let stages = run.config.as_ref()?.get("stages")?.as_array()?;
    let table = stages.iter().filter_map(|s| s.as_table()).find(|t| t.get("name").and_then(|n| n.as_str()) == Some(stage))?;
    let named = table.get(key)?.as_str()?;
    let is_stage = stages.iter().any(|s| s.get("name").and_then(|n| n.as_str()) == Some(named));
    if is_stage {
        return Some(format!("{}#{named}", run.path.canonicalize().unwrap_or_else(|_| run.path.clone()).display()));
    }
    let path = Path::new(named.strip_prefix("run:").unwrap_or(named));
    Some(path.canonicalize().unwrap_or_else(|_| path.to_path_buf()).display().to_string())
}

/// `(KL, metric)` at each evaluation of the stage, in step order.
fn trajectory(stage: &super::load::Stage, kl: &str, metric: &str) -> Vec<(f64, f64)> {
    stage
        .metrics
        .iter()
        .filter_map(|row| Some((row.values.get(kl).copied().flatten()?, row.values.get(metric).copied().flatten()?)))
        .collect()
}

/// The value along a trajectory where its KL first reaches `kl`, interpolated linearly between
/// the two evaluations around it; `None` if it never does.
pub fn at_kl(trajectory: &[(f64, f64)], kl: f64) -> Option<f64> {
    if let Some(&(_, value)) = trajectory.first().filter(|(k, _)| *k == kl) {
        return Some(value);
    }
    trajectory.windows(2).find_map(|pair| {
        let ((k0, v0), (k1, v1)) = (pair[0], pair[1]);
        let crosses = (k0 < kl && kl <= k1) || (k1 <= kl && kl < k0);
        crosses.then(|| v0 + (v1 - v0) * (kl - k0) / (k1 - k0))
    })
}

/// A KL every run with the stage reached (the least of their largest evaluated KLs), when at
/// least two runs have a gold-score trajectory to read at it.
fn matched_kl(runs: &[Run], stage: &str, frontier: &Frontier) -> Option<f64> {
    let largest: Vec<f64> = runs
        .iter()
        .filter_map(|run| run.stage(stage))
        .map(|s| trajectory(s, frontier.kl, frontier.gold))
        .filter(|t| t.len() >= 2)
        .filter_map(|t| t.iter().map(|(k, _)| *k).max_by(f64::total_cmp))
        .collect();
    let kl = largest.iter().copied().min_by(f64::total_cmp)?;
    (largest.len() >= 2 && kl > 0.0).then_some(kl)
}

/// The figures as a table, the best of each column marked.
pub fn table(runs: &[Run], figures: &Figures) -> Table {
    let mut headers = vec!["run".to_string()];
    headers.extend(figures.columns.iter().map(Column::header));
    let best: Vec<Option<usize>> = (0..figures.columns.len())
        .map(|c| {
            let column: Vec<Option<f64>> = figures.values.iter().map(|row| row[c]).collect();
            best_index(&column, figures.columns[c].direction)
        })
        .collect();
    let rows = runs
        .iter()
        .zip(&figures.values)
        .enumerate()
        .map(|(r, (run, values))| {
            let mut row = vec![Cell::text(&run.label)];
            row.extend(
                values
                    .iter()
                    .enumerate()
                    .map(|(c, value)| Cell { text: value.map_or("—".to_string(), format_number), best: best[c] == Some(r) }),
            );
            row
        })
        .collect();
    Table { headers, rows }
}

/// The column that decides "which run is better": of the last stage (in column order) whose
/// kind declares figures that decide, the gold score at matched KL where the stage has one, else
/// the first of its deciding figures that compares between these runs — for a pipeline ending in
/// PPO its gold score when the task has an oracle, else its reward-model score if the runs share
/// the reward model.
pub fn primary(figures: &Figures) -> Option<usize> {
    let last = figures.columns.iter().rev().find(|c| figures_of(&c.kind).is_some_and(|k| !k.primary.is_empty()))?;
    let of_stage = |c: &&Column| c.stage == last.stage && c.direction.is_some();
    if let Some(matched) = figures.columns.iter().position(|c| of_stage(&c) && c.at_kl.is_some()) {
        return Some(matched);
    }
    let decisive = figures_of(&last.kind)?.primary;
    decisive.iter().find_map(|metric| figures.columns.iter().position(|c| of_stage(&c) && c.metric == *metric && c.at_kl.is_none()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trajectory_is_read_where_its_kl_first_reaches_the_mark() {
        let trajectory = [(0.0, 1.0), (0.5, 2.0), (1.5, 4.0), (1.0, 5.0)];
        assert_eq!(at_kl(&trajectory, 0.5), Some(2.0));
        assert_eq!(at_kl(&trajectory, 1.0), Some(3.0)); // halfway from 0.5 (2.0) to 1.5 (4.0)
        assert_eq!(at_kl(&trajectory, 0.25), Some(1.5));
        assert_eq!(at_kl(&trajectory, 2.0), None);
    }
}
