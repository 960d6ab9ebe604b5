//! `rlhf watch RUN_DIR [--interval SECONDS]`: follows a run as it trains — on a terminal a
//! screen redrawn at each refresh, elsewhere one plain line per evaluation, alert and finished
//! stage — and exits when the run does (with an error when it stopped unfinished).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::report::load::{load_runs, Run, Source};
use crate::report::watch::{all_finished, progress, screen, PlainLines, Rates};
use crate::run::RunDir;
use crate::stages::sweep;
use crate::train::alerts::{read_alerts, ALERTS_FILE};

#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// The run directory (results/<experiment>/<run_id>, or one variant of a sweep).
    #[arg(value_name = "RUN_DIR")]
    pub run: PathBuf,
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 2.0)]
    pub interval: f64,
}

pub fn run(args: &WatchArgs) -> Result<()> {
    if sweep::is_sweep(&args.run) {
        bail!("`{}` is a sweep directory: watch one of its variants (its subdirectories)", args.run.display());
    }
    if !(args.interval > 0.0) {
        bail!("--interval must be > 0 seconds, got {}", args.interval);
    }
    let run_dir = RunDir::open(&args.run)?;
    let terminal = std::io::stdout().is_terminal();
    let (mut plain, mut rates) = (PlainLines::default(), Rates::default());
    // The process that starts a run creates its directory a moment before it locks it: a run is
    // taken as stopped only when two refreshes in a row find it unlocked.
    let mut idle_refreshes = 0;
    loop {
        let running = run_dir.is_running();
        let run = snapshot(&args.run);
        let alerts = read_alerts(&run_dir.path.join(ALERTS_FILE)).context("reading the run's alerts")?;
        let mut stdout = std::io::stdout().lock();
        if terminal {
            write!(stdout, "\x1b[H\x1b[2J{}", screen(&run, &alerts, running, &mut rates))?;
        } else {
            for line in plain.new_lines(&run, &alerts) {
                writeln!(stdout, "{line}")?;
            }
        }
        stdout.flush()?;
        idle_refreshes = if running { 0 } else { idle_refreshes + 1 };
        let stages = progress(&run);
        if !running && all_finished(&stages) {
            writeln!(stdout, "run finished: {}", run_dir.path.display())?;
            return Ok(());
        }
        if idle_refreshes >= 2 {
            let unfinished: Vec<String> = stages.into_iter().filter(|stage| !stage.finished).map(|stage| stage.stage).collect();
            bail!(
                "the run is not running and has not finished (unfinished: {}): see its run.log, and continue it with `rlhf run --resume {}`",
                unfinished.join(", "),
                run_dir.path.display()
            );
        }
        drop(stdout);
        std::thread::sleep(Duration::from_secs_f64(args.interval));
    }
}

/// The run as its directory holds it now.
fn snapshot(path: &std::path::Path) -> Run {
    let source = Source { path: path.to_path_buf(), variant: None, name: None };
    // Problems (a line being written, a stage not started) are expected while a run is live.
    let mut notes = Vec::new();
    load_runs(&[source], &mut notes).remove(0)
}
