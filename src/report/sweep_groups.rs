//! A sweep's variants grouped by their swept values: mean ± standard deviation over seeds of
//! each final figure.

use super::figures::Figures;
use super::load::Run;
use super::table::{best_index, format_number, Cell, Table};

/// Mean and sample standard deviation (n − 1; 0 for a single value); `None` when empty.
pub fn mean_std(values: &[f64]) -> Option<(f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let std = if values.len() < 2 { 0.0 } else { (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() };
    Some((mean, std))
}

/// One row per distinct assignment of the swept keys; `None` when no run belongs to a sweep.
pub fn group_table(runs: &[Run], figures: &Figures) -> Option<Table> {
    // (assignments, indices of the runs that have them), in order of first appearance.
    type Group = (Vec<(String, String)>, Vec<usize>);
    let mut groups: Vec<Group> = Vec::new();
    for (index, run) in runs.iter().enumerate() {
        let Some(variant) = &run.variant else { continue };
        match groups.iter_mut().find(|(assignments, _)| *assignments == variant.assignments) {
            Some((_, members)) => members.push(index),
            None => groups.push((variant.assignments.clone(), vec![index])),
        }
    }
    if groups.is_empty() {
        return None;
    }
    let keys: Vec<String> = groups[0].0.iter().map(|(key, _)| key.clone()).collect();
    let stats: Vec<Vec<Option<(f64, f64, usize)>>> = groups
        .iter()
        .map(|(_, members)| {
            (0..figures.columns.len())
                .map(|c| {
                    let values: Vec<f64> = members.iter().filter_map(|&r| figures.values[r][c]).collect();
                    mean_std(&values).map(|(mean, std)| (mean, std, values.len()))
                })
                .collect()
        })
        .collect();
    let best: Vec<Option<usize>> = (0..figures.columns.len())
        .map(|c| {
            let means: Vec<Option<f64>> = stats.iter().map(|row| row[c].map(|(mean, _, _)| mean)).collect();
            best_index(&means, figures.columns[c].direction)
        })
        .collect();

    let mut headers = keys.clone();
    headers.push("seeds".into());
    headers.extend(figures.columns.iter().map(|c| format!("{} (mean ± std)", c.header())));
    let rows = groups
        .iter()
        .zip(&stats)
        .enumerate()
        .map(|(g, ((assignments, members), row_stats))| {
            let mut row: Vec<Cell> =
                keys.iter().map(|key| Cell::text(assignments.iter().find(|(k, _)| k == key).map_or("—", |(_, v)| v.as_str()))).collect();
            let seeds: Vec<String> =
                members.iter().map(|&r| runs[r].variant.as_ref().and_then(|v| v.seed).map_or("—".to_string(), |s| s.to_string())).collect();
            row.push(Cell::text(seeds.join(", ")));
            row.extend(row_stats.iter().enumerate().map(|(c, stat)| Cell {
                text: match stat {
                    None => "—".into(),
                    Some((mean, _, 1)) => format!("{} (n = 1)", format_number(*mean)),
                    Some((mean, std, _)) => format!("{} ± {}", format_number(*mean), format_number(*std)),
                },
                best: best[c] == Some(g),
            }));
            row
        })
        .collect();
    Some(Table { headers, rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sample_std() {
        assert_eq!(mean_std(&[]), None);
        assert_eq!(mean_std(&[2.0]), Some((2.0, 0.0)));
        let (mean, std) = mean_std(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(mean, 2.5);
        assert!((std - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
    }
}
