//! `rlhf validate EXP.toml [--set KEY=VALUE]...`: checks an experiment without training.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::config;
use crate::data::task;
use crate::stages::{check_sequence_lengths, pipeline::build_tokenizer};

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// The experiment file.
    pub experiment: PathBuf,
    /// Override a value: a dotted key into the TOML (stages by name), e.g. stages.sft.lr=1e-4.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Print the resolved config (defaults and overrides applied).
    #[arg(long)]
    pub print: bool,
}

pub fn run(args: &ValidateArgs) -> Result<()> {
    let experiment = config::load(&args.experiment, &args.overrides)?;
    // Lengths need the task's prompts in tokens: the data and the tokenizer are built (not saved).
    let lengths = || -> Result<()> {
        let mut task = task::load(&experiment.task, experiment.seed)?;
        let tokenizer = build_tokenizer(&experiment, &task)?;
        task.apply_chat_template(&tokenizer)?;
        Ok(check_sequence_lengths(&experiment, &task, &tokenizer)?)
    };
    lengths().with_context(|| format!("{}", args.experiment.display()))?;
    if args.print {
        print!("{}", experiment.to_toml());
        if let Some(sweep) = &experiment.sweep {
            print!("\n{}", sweep.to_toml());
        }
    } else {
        let stages: Vec<String> = experiment.stages.iter().map(|s| format!("{} ({})", s.name, s.kind)).collect();
        println!("{}: ok — experiment `{}`, stages: {}", args.experiment.display(), experiment.name, stages.join(" → "));
        if let Some(sweep) = &experiment.sweep {
            println!("sweep over {}: {} variants", sweep.keys.join(", "), sweep.variants.len());
            for variant in &sweep.variants {
                println!("  {}: --set {}", variant.name, variant.set_arguments().join(" --set "));
            }
        }
    }
    Ok(())
}
