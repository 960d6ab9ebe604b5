//! The `rlhf` command line: parses arguments and hands them to `rlhf_lab::commands`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rlhf_lab::commands::{generate, label, validate};

#[derive(Parser)]
#[command(name = "rlhf", version, about = "RLHF experiments on libtorch: pretraining, SFT, reward modeling, PPO")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check an experiment file (schema, values, stage references) without training.
    Validate(validate::ValidateArgs),
    /// Complete prompts with a checkpoint.
    Generate(generate::GenerateArgs),
    /// Label pairs of responses in the browser; preferences go to SQLite.
    Label(label::LabelArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let result = match &cli.command {
        Command::Validate(args) => validate::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Label(args) => label::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
