//! `rlhf report`: compares runs (or a sweep's variants) in one self-contained HTML page with
//! PNG/SVG charts, and the same tables in summary.md.
//!
//! The flow: `load` reads the run directories (damage becomes notes) → `figures`,
//! `config_diff`, `comparison` (win rates, samples), `sweep_groups`, `leaderboard` (checkpoints
//! rated by the judgements of a labeling database), `costs`, `memory` build tables → `charts`
//! picks and `plots` draws the charts → `html` and `markdown` write the two documents.

pub mod alerts;
pub mod charts;
pub mod comparison;
pub mod config_diff;
pub mod costs;
pub mod figures;
pub mod html;
pub mod judge;
pub mod leaderboard;
pub mod load;
pub mod markdown;
pub mod memory;
pub mod plots;
pub mod sweep_groups;
pub mod table;
pub mod watch;
pub mod winrate;

use std::path::{Path, PathBuf};

use comparison::{SideBySide, WinRates};
use load::{Note, Run};
use plots::Rendered;
use table::{format_number, Table};

use crate::stages::StageFigures;

pub const INDEX_FILE: &str = "index.html";
pub const SUMMARY_FILE: &str = "summary.md";
pub const PLOTS_DIR: &str = "plots";

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("`{path}` does not exist")]
    Missing { path: PathBuf },
    #[error("`{path}` is not a run directory (no config.toml, no <stage>/metrics.jsonl), a sweep directory (no sweep.json) or a directory of runs")]
    NotARun { path: PathBuf },
    #[error("cannot read `{path}`: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("sweep `{path}`: {message}")]
    Sweep { path: PathBuf, message: String },
    #[error("--baseline `{given}` is none of the runs (runs: {known})")]
    Baseline { given: String, known: String },
    #[error("--judge `{path}`: {message}")]
    Judge { path: PathBuf, message: String },
    #[error("--labels `{path}`: {message}")]
    Labels { path: PathBuf, message: String },
    #[error("cannot write `{path}`: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("--smoothing must be in [0, 1), got {0}")]
    Smoothing(f64),
    #[error(transparent)]
    Plot(#[from] plots::PlotError),
}

#[derive(Debug, Clone)]
pub struct Options {
    /// A run's directory or its label; the first run when absent.
    pub baseline: Option<String>,
    /// A reward model that judges the samples instead of the gold oracle.
    pub judge: Option<PathBuf>,
    /// A labeling database whose judgements rate the checkpoints (the leaderboard section).
    pub labels: Option<PathBuf>,
    /// Seed of the bootstrap.
    pub seed: u64,
    /// Bootstrap resamples.
    pub resamples: usize,
    /// EMA weight of the smoothed curves, in [0, 1).
    pub smoothing: f64,
}

impl Default for Options {
    fn default() -> Self {
        Options { baseline: None, judge: None, labels: None, seed: 0, resamples: 2000, smoothing: 0.6 }
    }
}

/// Everything the page and summary.md show.
#[derive(Debug, Clone)]
pub struct Report {
    pub runs: Vec<(String, PathBuf)>,
    pub baseline: String,
    /// Which run is better and why, in a few sentences.
    pub verdict: Vec<String>,
    pub notes: Vec<Note>,
    pub figures: Table,
    pub win_rates: Option<(WinRates, Table)>,
    /// The checkpoints rated by human judgements (`--labels`).
    pub leaderboard: Option<leaderboard::Section>,
    pub sweep: Option<Table>,
    pub config_diff: Option<Table>,
    /// The RL stages' final KL, scores and costs.
    pub costs: Option<Table>,
    /// Each stage's peak memory, from summary.json.
    pub memory: Option<Table>,
    /// The alerts raised while the runs trained.
    pub alerts: Option<Table>,
    pub charts: Vec<(String, Vec<Rendered>)>,
    pub samples: Option<SideBySide>,
}

/// Reads the runs behind `inputs`, writes `out/index.html`, `out/summary.md` and `out/plots/`.
pub fn write(inputs: &[PathBuf], out: &Path, options: &Options) -> Result<Report, ReportError> {
    if !(0.0..1.0).contains(&options.smoothing) {
        return Err(ReportError::Smoothing(options.smoothing));
    }
    let judge = match &options.judge {
        Some(dir) => judge::Judge::reward_model(dir)?,
        None => judge::Judge::Gold,
    };
    let ratings = crate::label::leaderboard::Settings { rounds: options.resamples, seed: options.seed };
    let leaderboard = options.labels.as_deref().map(|db| leaderboard::section(db, ratings)).transpose()?;
    let sources = load::discover(inputs)?;
    let mut notes = Vec::new();
    let runs = load::load_runs(&sources, &mut notes);
    let baseline = baseline_index(&runs, options.baseline.as_deref())?;
    notes.extend(other_evaluation_sets(&runs, baseline));

    let figures = figures::collect(&runs);
    let settings = comparison::Settings { baseline, judge: &judge, resamples: options.resamples, seed: options.seed };
    let win_rates = comparison::win_rates(&runs, &settings, &mut notes)?;
    let samples =
        comparison::sample_stage(&runs, baseline, win_rates.as_ref()).and_then(|stage| comparison::side_by_side(&runs, baseline, stage));
    let config_diff = config_diff::diff(&runs);

    let plots_dir = out.join(PLOTS_DIR);
    std::fs::create_dir_all(&plots_dir).map_err(|source| ReportError::Write { path: plots_dir.clone(), source })?;
    let mut charts = Vec::new();
    for group in charts::methods_frontier(&runs).into_iter().chain(charts::stage_charts(&runs)) {
        let rendered = group
            .charts
            .iter()
            .map(|chart| plots::render(chart, &plots_dir, PLOTS_DIR, options.smoothing))
            .collect::<Result<Vec<_>, _>>()?;
        charts.push((group.stage, rendered));
    }

    let sweep = sweep_groups::group_table(&runs, &figures);
    let report = Report {
        verdict: verdict(&runs, &figures, win_rates.as_ref(), sweep.as_ref(), config_diff.as_ref()),
        runs: runs.iter().map(|run| (run.label.clone(), run.path.clone())).collect(),
        baseline: runs[baseline].label.clone(),
        notes,
        figures: figures::table(&runs, &figures),
        win_rates: win_rates.map(|w| {
            let table = comparison::win_rate_table(&w);
            (w, table)
        }),
        leaderboard,
        sweep,
        config_diff,
        costs: costs::table(&runs),
        memory: memory::table(&runs),
        alerts: alerts::table(&runs),
        charts,
        samples,
    };
    for (name, text) in [(INDEX_FILE, html::render(&report)), (SUMMARY_FILE, markdown::render(&report))] {
        let path = out.join(name);
        std::fs::write(&path, text).map_err(|source| ReportError::Write { path, source })?;
    }
    tracing::info!(
        runs = runs.len(),
        charts = report.charts.iter().map(|(_, c)| c.len()).sum::<usize>(),
        notes = report.notes.len(),
        "report written"
    );
    Ok(report)
}

/// A note for each run whose recorded evaluation set (env.json) differs from the baseline's: its
/// held-out figures measure other data.
fn other_evaluation_sets(runs: &[Run], baseline: usize) -> Vec<Note> {
    let Some(reference) = runs[baseline].eval_set.as_deref() else { return Vec::new() };
    runs.iter()
        .filter(|run| run.eval_set.as_deref().is_some_and(|set| set != reference))
        .map(|run| Note {
            run: run.label.clone(),
            message: format!(
                "evaluated on another evaluation set than the baseline {} (eval_set {} vs {}): its held-out figures measure other data",
                runs[baseline].label,
                short_hash(run.eval_set.as_deref().unwrap_or_default()),
                short_hash(reference)
            ),
        })
        .collect()
}

fn short_hash(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

/// What a stage directory's kind declares: a stage kind's figures, or an evaluation's.
pub fn figures_of(kind: &str) -> Option<&'static StageFigures> {
    if kind == crate::eval::KIND {
        return Some(&crate::eval::FIGURES);
    }
    crate::stages::stage_kind(kind).map(|kind| kind.figures)
}

fn baseline_index(runs: &[Run], given: Option<&str>) -> Result<usize, ReportError> {
    let Some(given) = given else { return Ok(0) };
    let canonical = |path: &Path| path.canonicalize().ok();
    let given_path = canonical(Path::new(given));
    runs.iter().position(|run| run.label == given || (given_path.is_some() && canonical(&run.path) == given_path)).ok_or_else(|| {
        ReportError::Baseline { given: given.to_string(), known: runs.iter().map(|r| r.label.as_str()).collect::<Vec<_>>().join(", ") }
    })
}

/// Which run is better and why: the best run by the deciding figure, how often it beats the
/// baseline (and whether that is more than chance), and the settings the runs differ in.
fn verdict(
    runs: &[Run],
    figures: &figures::Figures,
    win_rates: Option<&WinRates>,
    sweep: Option<&Table>,
    diff: Option<&Table>,
) -> Vec<String> {
    let mut lines = Vec::new();
    if runs.len() < 2 {
        return lines;
    }
    if let Some(column) = figures::primary(figures) {
        let values: Vec<Option<f64>> = figures.values.iter().map(|row| row[column]).collect();
        let header = figures.columns[column].header();
        if let Some(best) = table::best_index(&values, figures.columns[column].direction) {
            let others: Vec<String> = runs
                .iter()
                .zip(&values)
                .enumerate()
                .filter(|(index, _)| *index != best)
                .map(|(_, (run, value))| format!("{} {}", run.label, value.map_or("—".into(), format_number)))
                .collect();
            lines.push(format!(
                "Best by {header}: {} ({}); the others: {}.",
                runs[best].label,
                values[best].map_or("—".into(), format_number),
                others.join(", ")
            ));
        }
    }
    if let (Some(column), Some(sweep)) = (figures::primary(figures), sweep) {
        // The sweep's answer: the setting with the best mean over seeds.
        let header = format!("{} (mean ± std)", figures.columns[column].header());
        let position = sweep.headers.iter().position(|h| *h == header);
        let keys = sweep.headers.iter().position(|h| h == "seeds").unwrap_or(0);
        if let Some((row, position)) = position.and_then(|p| sweep.rows.iter().find(|row| row[p].best).map(|row| (row, p))) {
            let setting: Vec<String> = sweep.headers[..keys].iter().zip(row).map(|(key, cell)| format!("{key} = {}", cell.text)).collect();
            lines.push(format!(
                "Best setting by mean {}: {} ({} over seeds {}).",
                figures.columns[column].header(),
                setting.join(", "),
                row[position].text,
                row[keys].text
            ));
        }
    }
    if let Some(win_rates) = win_rates {
        let best = win_rates.rates().max_by(|a, b| a.2.rate.total_cmp(&b.2.rate));
        if let Some((_, label, result)) = best {
            let chance =
                if result.low <= 0.5 && result.high >= 0.5 { " — not distinguishable from chance with these samples" } else { "" };
            lines.push(format!(
                "{label} wins {:.0} % of comparisons against the baseline {} (95 % CI {:.0}–{:.0} %, judged by the {} on {} shared prompts of `{}`){chance}.",
                result.rate * 100.0,
                win_rates.baseline,
                result.low * 100.0,
                result.high * 100.0,
                win_rates.judge,
                result.prompts,
                win_rates.stage,
            ));
        }
    }
    if let Some(diff) = diff.filter(|d| !d.rows.is_empty()) {
        const SHOWN: usize = 6;
        let keys: Vec<String> = diff
            .rows
            .iter()
            .take(SHOWN)
            .map(|row| format!("{} ({})", row[0].text, row[1..].iter().map(|c| c.text.as_str()).collect::<Vec<_>>().join(" / ")))
            .collect();
        let more = if diff.rows.len() > SHOWN { format!(" and {} more", diff.rows.len() - SHOWN) } else { String::new() };
        lines.push(format!("The runs differ in {}{more}.", keys.join(", ")));
    }
    lines
}
