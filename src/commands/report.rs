//! `rlhf report RUN_DIR... -o OUT_DIR`: compares runs (or a sweep's variants) in
//! OUT_DIR/index.html with PNG/SVG charts, and summary.md.

use std::path::PathBuf;

use anyhow::Result;

use crate::report::{self, Options};

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Run directories, sweep directories, or directories of runs (results/<experiment>/).
    #[arg(required = true, value_name = "RUN_DIR")]
    pub runs: Vec<PathBuf>,
    /// Where the report goes (created if needed).
    #[arg(short = 'o', long = "out", value_name = "OUT_DIR")]
    pub out: PathBuf,
    /// The run the others are compared with (its directory or its label); default: the first.
    #[arg(long)]
    pub baseline: Option<String>,
    /// Judge win rates with this reward model (a checkpoint, or a reward stage's directory)
    /// instead of the gold scores recorded with the samples.
    #[arg(long, value_name = "RM_DIR")]
    pub judge: Option<PathBuf>,
    /// A labeling database: adds a leaderboard of the checkpoints rated by its judgements (pairs
    /// imported with several --from-run; see `rlhf label leaderboard`).
    #[arg(long, value_name = "DB")]
    pub labels: Option<PathBuf>,
    /// Seed of the bootstrap confidence intervals.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Bootstrap resamples.
    #[arg(long, default_value_t = 2000)]
    pub bootstrap: usize,
    /// EMA weight for smoothed curves, in [0, 1); 0 draws the raw series only.
    #[arg(long, default_value_t = 0.6)]
    pub smoothing: f64,
}

pub fn run(args: &ReportArgs) -> Result<()> {
    let options = Options {
        baseline: args.baseline.clone(),
        judge: args.judge.clone(),
        labels: args.labels.clone(),
        seed: args.seed,
        resamples: args.bootstrap,
        smoothing: args.smoothing,
    };
    report::write(&args.runs, &args.out, &options)?;
    println!("{}", args.out.join(report::INDEX_FILE).display());
    Ok(())
}
