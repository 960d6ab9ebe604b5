//! `rlhf run EXP.toml [--set KEY=VALUE]... [--out DIR] [--only STAGE[,STAGE]] [--resume RUN_DIR]`.
//! An experiment with a `[sweep]` runs all its variants; `--resume SWEEP_DIR` continues a sweep;
//! `--variant K [--sweep-dir DIR]` runs one variant of a sweep (one job of a job array).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::config;
use crate::run::RunDir;
use crate::stages::pipeline::{run_experiment, Selection};
use crate::stages::sweep;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The experiment file (not needed with --resume, which uses the run's recorded config).
    #[arg(required_unless_present = "resume")]
    pub experiment: Option<PathBuf>,
    /// Override a value: a dotted key into the TOML (stages by name), e.g. stages.sft.lr=1e-4.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Parent of the run directories: runs go to DIR/<experiment>/<run_id>/.
    #[arg(long, default_value = "results")]
    pub out: PathBuf,
    /// Run only these stages (comma-separated names).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Continue a killed or partial run (or sweep) from its last saved state.
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
    /// Run only this variant of the experiment's [sweep] (or of the sweep --resume names): its
    /// index from 0 (e.g. $SLURM_ARRAY_TASK_ID) or its name.
    #[arg(long, value_name = "K")]
    pub variant: Option<String>,
    /// The sweep directory the variants run with --variant share (default under Slurm:
    /// OUT/<experiment>/sweep-slurm-$SLURM_ARRAY_JOB_ID).
    #[arg(long, value_name = "DIR", requires = "variant")]
    pub sweep_dir: Option<PathBuf>,
}

pub fn run(args: &RunArgs) -> Result<()> {
    if let Some(dir) = args.resume.as_ref().filter(|dir| sweep::is_sweep(dir)) {
        if !args.overrides.is_empty() || !args.only.is_empty() {
            bail!("--set and --only cannot change a sweep that has started ({}); start a new sweep instead", dir.display());
        }
        match &args.variant {
            Some(variant) => println!("{}", sweep::resume_variant(dir, variant)?.display()),
            None => {
                sweep::resume(dir)?;
                println!("{}", dir.display());
            }
        }
        return Ok(());
    }
    if let (Some(_), Some(dir)) = (&args.variant, &args.resume) {
        bail!("--variant: `{}` is not a sweep directory (it has no sweep.json)", dir.display());
    }
    let (experiment, run) = match &args.resume {
        Some(run_dir) => {
            if !args.overrides.is_empty() {
                bail!("--set cannot change the config of an existing run ({}); start a new run instead", run_dir.display());
            }
            let run = RunDir::open(run_dir)?;
            let experiment = config::load(&run.config_path(), &[]).context("reading the run's recorded config")?;
            (experiment, run)
        }
        None => {
            let path = args.experiment.as_ref().expect("clap requires EXPERIMENT without --resume");
            let experiment = config::load(path, &args.overrides)?;
            if let Some(variant) = &args.variant {
                if experiment.sweep.is_none() {
                    bail!("--variant: {} has no [sweep]", path.display());
                }
                if !args.only.is_empty() {
                    bail!("--only cannot be used with --variant: a variant runs all its stages");
                }
                let dir = match (&args.sweep_dir, std::env::var("SLURM_ARRAY_JOB_ID")) {
                    (Some(dir), _) => dir.clone(),
                    (None, Ok(job)) => args.out.join(&experiment.name).join(format!("sweep-slurm-{job}")),
                    (None, Err(_)) => bail!("--variant needs --sweep-dir DIR: the sweep directory its variants share (under a Slurm array it defaults to one named after SLURM_ARRAY_JOB_ID)"),
                };
                println!("{}", sweep::run_variant(path, &args.overrides, &experiment, &dir, variant)?.display());
                return Ok(());
            }
            if experiment.sweep.is_some() {
                if !args.only.is_empty() {
                    bail!("--only cannot be used with a [sweep] ({}): every variant runs all its stages", path.display());
                }
                let dir = sweep::start(path, &args.overrides, &experiment, &args.out)?;
                println!("{}", dir.display());
                return Ok(());
            }
            let run = RunDir::create(&args.out, &experiment.name, &experiment.to_toml())?;
            (experiment, run)
        }
    };
    let selection = Selection { only: args.only.clone(), resume: args.resume.is_some() };
    run_experiment(&experiment, &run, &selection).with_context(|| format!("run {}", run.path.display()))?;
    println!("{}", run.path.display());
    Ok(())
}
