//! The table of final figures: for each stage, the headline metrics of its kind, one row per run
//! (the last value written, so that an unfinished run still shows where it got to).

use super::load::Run;
use super::table::{best_index, direction, format_number, Cell, Table};
use crate::stages::stage_kind;

/// One column: a stage's metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub stage: String,
    pub kind: String,
    pub metric: String,
}

impl Column {
    pub fn header(&self) -> String {
        format!("{} {}", self.stage, self.metric)
    }
}

/// The final figures of every run: `values[run][column]`.
#[derive(Debug, Clone)]
pub struct Figures {
    pub columns: Vec<Column>,
    pub values: Vec<Vec<Option<f64>>>,
}

/// The metrics worth a column for each stage kind, as the kind declares them.
fn headline(kind: &str) -> &'static [&'static str] {
    stage_kind(kind).map_or(&[], |kind| kind.figures.headline)
}

pub fn collect(runs: &[Run]) -> Figures {
    let mut columns: Vec<Column> = Vec::new();
    for run in runs {
        for stage in &run.stages {
            let Some(kind) = &stage.kind else { continue };
            for metric in headline(kind) {
                let column = Column { stage: stage.name.clone(), kind: kind.clone(), metric: metric.to_string() };
                let present = runs.iter().any(|r| r.stage(&stage.name).is_some_and(|s| s.has_metric(metric)));
                if present && !columns.contains(&column) {
                    columns.push(column);
                }
            }
        }
    }
    let values = runs.iter().map(|run| columns.iter().map(|c| run.stage(&c.stage).and_then(|s| s.last(&c.metric))).collect()).collect();
    Figures { columns, values }
}

/// The figures as a table, the best of each column marked.
pub fn table(runs: &[Run], figures: &Figures) -> Table {
    let mut headers = vec!["run".to_string()];
    headers.extend(figures.columns.iter().map(Column::header));
    let best: Vec<Option<usize>> = (0..figures.columns.len())
        .map(|c| {
            let column: Vec<Option<f64>> = figures.values.iter().map(|row| row[c]).collect();
            best_index(&column, direction(&figures.columns[c].metric))
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
/// kind declares figures that decide, the first of those present — for a pipeline ending in PPO
/// its gold score when the task has an oracle, else its reward-model score.
pub fn primary(figures: &Figures) -> Option<usize> {
    figures.columns.iter().rev().find_map(|column| {
        let decisive = stage_kind(&column.kind)?.figures.primary;
        decisive.iter().find_map(|metric| figures.columns.iter().position(|c| c.stage == column.stage && c.metric == *metric))
    })
}
