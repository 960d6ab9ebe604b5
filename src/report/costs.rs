//! The RL stages side by side: where each ended on the gold-score–KL plane and what it cost to
//! get there — wall time, generated tokens, and sequences passed forward and backward through
//! a model (the `cost/*` figures each step writes, summed; evaluations are not counted).

use super::figures_of;
use super::load::Run;
use super::table::{format_number, Cell, Table};

/// What a stage's steps cost, summed over its metrics lines.
const COSTS: [(&str, &str); 4] = [
    ("time/step_s", "seconds"),
    ("cost/generated_tokens", "generated tokens"),
    ("cost/forward_passes", "forward passes"),
    ("cost/backward_passes", "backward passes"),
];

/// One row per run and stage whose kind declares a reward–KL frontier, when there are at least
/// two such rows: its final KL, gold and proxy scores and its costs.
pub fn table(runs: &[Run]) -> Option<Table> {
    let mut rows = Vec::new();
    for run in runs {
        for stage in &run.stages {
            let Some(frontier) = stage.kind.as_deref().and_then(figures_of).and_then(|figures| figures.frontier.as_ref()) else {
                continue;
            };
            let figure = |value: Option<f64>| Cell::text(value.map_or("—".to_string(), format_number));
            let mut row = vec![Cell::text(format!("{} · {}", run.label, stage.name)), Cell::text(stage.kind.clone().unwrap_or_default())];
            row.extend([frontier.kl, frontier.gold, frontier.proxy].map(|name| figure(stage.last(name))));
            for (metric, _) in COSTS {
                let values: Vec<f64> = stage.series(metric).into_iter().map(|(_, value)| value).collect();
                row.push(figure((!values.is_empty()).then(|| values.iter().sum())));
            }
            rows.push(row);
        }
    }
    if rows.len() < 2 {
        return None;
    }
    let mut headers: Vec<String> = ["run · stage", "kind", "KL", "gold score", "proxy score"].map(String::from).to_vec();
    headers.extend(COSTS.map(|(_, header)| header.to_string()));
    Some(Table { headers, rows })
}
