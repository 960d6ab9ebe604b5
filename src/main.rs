//! The `rlhf` command line: parses arguments and hands them to `rlhf_lab::commands`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rlhf_lab::commands::{compress, eval, generate, label, merge, report, run, score, serve, validate, watch};

#[derive(Parser)]
#[command(name = "rlhf", version, about = "RLHF experiments on libtorch: pretraining, SFT, reward modeling, PPO")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an experiment's stages (or resume a run), writing a run directory.
    Run(run::RunArgs),
    /// Check an experiment file (schema, values, stage references) without training.
    Validate(validate::ValidateArgs),
    /// Complete prompts with a checkpoint.
    Generate(generate::GenerateArgs),
    /// Score responses (or pairs) with a reward model.
    Score(score::ScoreArgs),
    /// Label pairs of responses in the browser; preferences go to SQLite.
    Label(label::LabelArgs),
    /// Compare runs (or a sweep) in an HTML page with charts, and summary.md.
    Report(report::ReportArgs),
    /// Follow a run live: its stage, step, rate, figures and alerts, until it ends.
    Watch(watch::WatchArgs),
    /// Evaluate policies on one prompt set with the same decoding settings, for `rlhf report`.
    Eval(eval::EvalArgs),
    /// Add a LoRA adapter directory into its base's weights: a plain checkpoint.
    Merge(merge::MergeArgs),
    /// Compress a checkpoint for deployment: prune each linear layer's smallest weights.
    Compress(compress::CompressArgs),
    /// Serve a model over OpenAI's HTTP API (completions, chat, streaming), or a reward model's scores.
    Serve(serve::ServeArgs),
}

fn main() -> ExitCode {
    rlhf_lab::run::environment::ensure_passive_openmp_threads();
    let cli = Cli::parse();
    rlhf_lab::run::log::init();
    let result = match &cli.command {
        Command::Run(args) => run::run(args),
        Command::Validate(args) => validate::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Score(args) => score::run(args),
        Command::Label(args) => label::run(args),
        Command::Report(args) => report::run(args),
        Command::Watch(args) => watch::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Merge(args) => merge::run(args),
        Command::Compress(args) => compress::run(args),
        Command::Serve(args) => serve::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Our error messages already quote their cause; print each cause only once.
            let mut message = error.to_string();
            for cause in error.chain().skip(1).map(ToString::to_string) {
                if !message.contains(&cause) {
                    message = format!("{message}: {cause}");
                }
            }
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
