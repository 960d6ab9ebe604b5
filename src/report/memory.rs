//! Peak memory per stage: the process's peak resident set size while each stage ran, as its
//! summary.json records it (`memory/peak_rss_mib`; `memory/process_peak_rss_mib` where the peak
//! could not be reset when the stage started). CUDA memory is not measured.

use super::load::Run;
use super::table::{format_number, Cell, Table};
use crate::run::memory::{PEAK_RSS, PROCESS_PEAK_RSS};

/// One row per run and stage, when any stage of any run recorded its peak memory.
pub fn table(runs: &[Run]) -> Option<Table> {
    let mut rows = Vec::new();
    let mut any = false;
    for run in runs {
        for stage in &run.stages {
            let own = stage.summary.get(PEAK_RSS).copied().flatten();
            let process = stage.summary.get(PROCESS_PEAK_RSS).copied().flatten();
            let text = match (own, process) {
                (Some(mib), _) => format!("{} MiB", format_number(mib)),
                (None, Some(mib)) => format!("{} MiB (process peak)", format_number(mib)),
                (None, None) => "—".to_string(),
            };
            any |= own.is_some() || process.is_some();
            rows.push(vec![
                Cell::text(format!("{} · {}", run.label, stage.name)),
                Cell::text(stage.kind.clone().unwrap_or_default()),
                Cell::text(text),
            ]);
        }
    }
    any.then(|| Table { headers: ["run · stage", "kind", "peak memory"].map(String::from).to_vec(), rows })
}
