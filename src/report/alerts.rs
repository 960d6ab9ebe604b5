//! The report's alerts section: what each run's alert rules raised while it trained
//! (alerts.jsonl), one row per alert.

use super::load::Run;
use super::table::{format_number, Cell, Table};

/// What the section says about itself.
pub const ABOUT: &str = "Raised while the runs trained (alerts.jsonl): each names its stage, step, rule and metric. non_finite stopped its stage; the others only warn.";

/// One row per alert of every run, in the runs' order; `None` when no run raised any.
pub fn table(runs: &[Run]) -> Option<Table> {
    let rows: Vec<Vec<Cell>> = runs
        .iter()
        .flat_map(|run| run.alerts.iter().map(move |alert| (run, alert)))
        .map(|(run, alert)| {
            let number = |value: Option<f64>| value.map_or("—".to_string(), format_number);
            vec![
                Cell::text(&run.label),
                Cell::text(&alert.stage),
                Cell::text(alert.step.to_string()),
                Cell::text(alert.rule.name()),
                Cell::text(&alert.metric),
                Cell::text(number(alert.value)),
                Cell::text(number(alert.threshold)),
                Cell::text(&alert.message),
            ]
        })
        .collect();
    if rows.is_empty() {
        return None;
    }
    let headers = ["run", "stage", "step", "rule", "metric", "value", "threshold", "message"];
    Some(Table { headers: headers.iter().map(|h| h.to_string()).collect(), rows })
}
