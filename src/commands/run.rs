//! `rlhf run EXP.toml [--set KEY=VALUE]... [--out DIR] [--only STAGE[,STAGE]] [--resume RUN_DIR]`.
//! An experiment with a `[sweep]` runs all its variants; `--resume SWEEP_DIR` continues a sweep;
//! `--variant K [--sweep-dir DIR]` runs one variant of a sweep (one job of a job array).
//! `--nproc N` runs it as N data-parallel ranks on this machine; under `torchrun` or `srun`, each
//! process is one rank of the launcher's.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::config::{self, Experiment};
use crate::distributed::{self, Launch, World};
use crate::run::{ranks, RunDir};
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
    /// Run as N data-parallel ranks on this machine, one process each (as `torchrun
    /// --nproc-per-node N` would start them).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub nproc: Option<u16>,
}

pub fn run(args: &RunArgs) -> Result<()> {
    if let Some(nproc) = args.nproc {
        if Launch::from_env()?.is_some() {
            bail!("--nproc: this process is already one rank of a launcher's (torchrun or srun); drop --nproc");
        }
        let status = ranks::spawn_local(usize::from(nproc), &arguments_without_nproc()).context("starting the ranks")?;
        if !status.success() {
            bail!("a rank failed ({status}); its error is above");
        }
        return Ok(());
    }
    if let Some(launch) = Launch::from_env()? {
        if args.variant.is_some() || args.resume.as_ref().is_some_and(|dir| sweep::is_sweep(dir)) {
            bail!("a sweep's variants run as separate jobs (--variant), each in one process: data parallelism within a variant is not supported");
        }
        let world = distributed::init(&launch)?;
        return run_as_rank(args, world);
    }
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
        Some(run_dir) => (experiment_of(args)?, RunDir::open(run_dir)?),
        None => {
            let path = args.experiment.as_ref().expect("clap requires EXPERIMENT without --resume");
            let experiment = experiment_of(args)?;
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

/// The experiment `--resume` or the experiment file names, with `--set` applied.
fn experiment_of(args: &RunArgs) -> Result<Experiment> {
    match &args.resume {
        Some(run_dir) => {
            if !args.overrides.is_empty() {
                bail!("--set cannot change the config of an existing run ({}); start a new run instead", run_dir.display());
            }
            Ok(config::load(&RunDir::open(run_dir)?.config_path(), &[]).context("reading the run's recorded config")?)
        }
        None => Ok(config::load(args.experiment.as_ref().expect("clap requires EXPERIMENT without --resume"), &args.overrides)?),
    }
}

/// One rank of a data-parallel run: rank 0 creates (or opens) the run directory and writes it;
/// the others learn its path from rank 0, copy it and run in their copy (see `run::ranks`).
fn run_as_rank(args: &RunArgs, world: &World) -> Result<()> {
    let experiment = experiment_of(args)?;
    if experiment.sweep.is_some() {
        bail!("a [sweep] runs its variants as separate jobs (--variant), each in one process: data parallelism within a variant is not supported");
    }
    let main_run = match (world.is_main(), &args.resume) {
        (false, _) => None,
        (true, Some(run_dir)) => Some(RunDir::open(run_dir)?),
        (true, None) => Some(RunDir::create(&args.out, &experiment.name, &experiment.to_toml())?),
    };
    let path = main_run.as_ref().map(|run| run.path.as_os_str().as_encoded_bytes().to_vec()).unwrap_or_default();
    let path = PathBuf::from(String::from_utf8(world.broadcast_bytes(&path)?).context("the run directory's path is not UTF-8")?);
    // Rank 0 writes nothing more until every other rank has its copy.
    let mirror = match main_run {
        Some(_) => None,
        None => {
            let mirror = tempfile::Builder::new().prefix(&format!("rlhf-rank{}-", world.rank())).tempdir()?;
            ranks::mirror(&path, mirror.path())?;
            Some(mirror)
        }
    };
    world.barrier()?;
    let run = RunDir::open(mirror.as_ref().map_or(path.as_path(), |dir| dir.path()))?;
    let selection = Selection { only: args.only.clone(), resume: args.resume.is_some() };
    run_experiment(&experiment, &run, &selection)
        .with_context(|| format!("run {} (rank {} of {})", path.display(), world.rank(), world.size()))?;
    // The run is finished once every rank is: rank 0 says where it is.
    world.barrier()?;
    if world.is_main() {
        println!("{}", path.display());
    }
    Ok(())
}

/// This process's arguments without `--nproc N`: what each rank runs.
fn arguments_without_nproc() -> Vec<std::ffi::OsString> {
    let mut kept = Vec::new();
    let mut arguments = std::env::args_os().skip(1);
    while let Some(argument) = arguments.next() {
        match argument.to_str() {
            Some("--nproc") => {
                arguments.next();
            }
            Some(text) if text.starts_with("--nproc=") => {}
            _ => kept.push(argument),
        }
    }
    kept
}
