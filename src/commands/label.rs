//! `rlhf label …`: import pairs, add annotators, serve the labeling page, export preferences,
//! show statistics, rate the models behind the pairs. The work is in `crate::label`; this file
//! parses arguments and reports.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::label::import::{NewPair, PairSampling};
use crate::label::select::{self, Selection};
use crate::label::{export, import, leaderboard, server, ExportFilter, Policy, Role, Store};
use crate::model::DeviceSpec;

#[derive(Debug, clap::Args)]
pub struct LabelArgs {
    #[command(subcommand)]
    pub command: LabelCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum LabelCommand {
    /// Import pairs to label from a JSONL file or from a run stage's samples.
    Import(ImportArgs),
    /// Manage annotators.
    Annotator(AnnotatorArgs),
    /// Serve the labeling page and its API.
    Serve(ServeArgs),
    /// Write the labels as preference records (JSONL).
    Export(ExportArgs),
    /// Show counts, annotator throughput and agreement.
    Stats(StatsArgs),
    /// Rate the models behind the pairs (`model_a`/`model_b` metadata) from the judgements:
    /// Bradley–Terry, with bootstrap intervals.
    Leaderboard(LeaderboardArgs),
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["pairs", "from_run", "model"])))]
pub struct ImportArgs {
    /// The labeling database (created when missing).
    #[arg(long, value_name = "FILE")]
    pub db: PathBuf,
    /// Pairs, one `{"prompt", "response_a", "response_b"}` object a line; other fields are kept as metadata.
    #[arg(value_name = "PAIRS.jsonl")]
    pub pairs: Option<PathBuf>,
    /// Build pairs from RUN_DIR/STAGE/samples.jsonl: two different completions of a prompt make a
    /// pair. Given several times, pairs compare the stages: each pair holds one response of each of
    /// two stages to the same prompt, with `model_a`/`model_b` metadata (see `label leaderboard`).
    #[arg(long, value_name = "RUN_DIR/STAGE")]
    pub from_run: Vec<PathBuf>,
    /// Generate pairs with this checkpoint: two sampled responses for each prompt of --prompts.
    #[arg(long, value_name = "CHECKPOINT_DIR", requires = "prompts")]
    pub model: Option<PathBuf>,
    /// `{"prompt"}` JSONL lines to generate pairs for (with --model).
    #[arg(long, value_name = "PROMPTS.jsonl", requires = "model")]
    pub prompts: Option<PathBuf>,
    /// Sampling temperature of generated pairs.
    #[arg(long, default_value_t = 1.0, requires = "model")]
    pub temperature: f64,
    #[arg(long, default_value_t = 64, requires = "model")]
    pub max_new_tokens: i64,
    /// Seed of generated pairs (with --model) and of `--select random`.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// cpu, cuda, cuda:N or auto: for --model and for the reward model of --select.
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// Import only --count of the candidate pairs not yet in the database: those the reward model
    /// is least sure of (`uncertain`: preference probability nearest ½; `disagreement`: the
    /// members of its ensemble disagree most), or a seeded random subset.
    #[arg(long, value_enum, requires = "count")]
    pub select: Option<Selection>,
    /// How many pairs --select imports.
    #[arg(long, requires = "select", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// The reward model that --select scores with; by default the one reward stage of the run
    /// that --from-run names.
    #[arg(long, value_name = "CHECKPOINT_DIR", requires = "select")]
    pub reward_model: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct AnnotatorArgs {
    #[command(subcommand)]
    pub command: AnnotatorCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum AnnotatorCommand {
    /// Add an annotator; prints their token (and only it) on stdout.
    Add {
        /// The labeling database (created when missing).
        #[arg(long, value_name = "FILE")]
        db: PathBuf,
        /// The annotator's name, unique in the database.
        name: String,
        /// An admin token: reads every figure (`GET /api/admin/stats`) and does not label.
        #[arg(long)]
        admin: bool,
    },
    /// Revoke an annotator's token at once (a running server needs no restart); their labels stay.
    Remove {
        /// The labeling database.
        #[arg(long, value_name = "FILE")]
        db: PathBuf,
        name: String,
    },
    /// Give an annotator a new token (printed on stdout); the old one stops working at once.
    Rotate {
        /// The labeling database.
        #[arg(long, value_name = "FILE")]
        db: PathBuf,
        name: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The labeling database.
    #[arg(long, value_name = "FILE")]
    pub db: PathBuf,
    /// Address to listen on; port 0 picks a free one (the address is printed on stderr).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// Labels wanted per pair, each from a different annotator.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub labels_per_pair: u32,
    /// Seconds a pair stays reserved for the annotator it was handed to.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub lease_secs: u64,
    /// Seconds during which an annotator may undo their last label.
    #[arg(long, default_value_t = 30)]
    pub undo_secs: u64,
    /// Seconds a client has to send a request's headers, from connecting or from the end of its
    /// last answer (so also how long a kept-alive connection may wait for its next request).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=crate::http::connections::MAX_TIMEOUT_SECS))]
    pub header_timeout_secs: u64,
    /// Seconds to receive a request's body and answer it; past them the answer is 408.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=crate::http::connections::MAX_TIMEOUT_SECS))]
    pub request_timeout_secs: u64,
    /// Seconds a connection may go with no byte moving and no request being handled before it is closed.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=crate::http::connections::MAX_TIMEOUT_SECS))]
    pub idle_timeout_secs: u64,
    /// Most connections served at once, lowered to the open-file limit less 32; at the cap a new
    /// connection closes the longest-idle one.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Seconds after Ctrl-C or SIGTERM for requests in flight to finish; connections still open
    /// then are dropped.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=crate::http::connections::MAX_TIMEOUT_SECS))]
    pub shutdown_grace_secs: u64,
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The labeling database.
    #[arg(long, value_name = "FILE")]
    pub db: PathBuf,
    /// Where to write the preference records.
    #[arg(short = 'o', long = "out", value_name = "PREFS.jsonl")]
    pub out: PathBuf,
    /// Also write ties (chosen = response_a, rejected = response_b, "judgement": "tie").
    #[arg(long)]
    pub include_ties: bool,
    /// Also write skips ("judgement": "skip").
    #[arg(long)]
    pub include_skips: bool,
}

#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// The labeling database.
    #[arg(long, value_name = "FILE")]
    pub db: PathBuf,
    /// Print JSON (as `GET /api/admin/stats` does) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct LeaderboardArgs {
    /// The labeling database.
    #[arg(long, value_name = "FILE")]
    pub db: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Bootstrap resamples of the judgements behind the intervals.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub rounds: u64,
    /// Seed of the bootstrap.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(args: &LabelArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    runtime.block_on(async {
        match &args.command {
            LabelCommand::Import(args) => import(args).await,
            LabelCommand::Annotator(AnnotatorArgs { command }) => annotator(command).await,
            LabelCommand::Serve(args) => {
                let store = Store::open(&args.db).await?;
                let policy = Policy {
                    labels_per_pair: args.labels_per_pair,
                    lease: Duration::from_secs(args.lease_secs),
                    undo_window: Duration::from_secs(args.undo_secs),
                };
                let limits = crate::http::connections::ConnectionLimits {
                    header_timeout: Duration::from_secs(args.header_timeout_secs),
                    request_timeout: Duration::from_secs(args.request_timeout_secs),
                    idle_timeout: Duration::from_secs(args.idle_timeout_secs),
                    max_connections: args.max_connections as usize,
                    shutdown_grace: Duration::from_secs(args.shutdown_grace_secs),
                };
                Ok(server::serve(store, args.bind, policy, limits).await?)
            }
            LabelCommand::Export(args) => {
                let filter = ExportFilter { ties: args.include_ties, skips: args.include_skips };
                let records = Store::open(&args.db).await?.run_and_close(async |store| store.preferences(filter).await).await?;
                let written = export::write_jsonl(&args.out, &records)?;
                eprintln!("wrote {written} preference records to {}", args.out.display());
                Ok(())
            }
            LabelCommand::Stats(args) => {
                let stats = Store::open(&args.db).await?.run_and_close(async |store| store.stats().await).await?;
                print_json_or_text(args.json, &stats)
            }
            LabelCommand::Leaderboard(args) => {
                let settings = leaderboard::Settings { rounds: args.rounds as usize, seed: args.seed };
                let board = Store::open(&args.db).await?.run_and_close(async |store| store.leaderboard(settings).await).await?;
                print_json_or_text(args.json, &board)
            }
        }
    })
}

async fn annotator(command: &AnnotatorCommand) -> Result<()> {
    match command {
        AnnotatorCommand::Add { db, name, admin } => {
            let role = if *admin { Role::Admin } else { Role::Annotator };
            let token = Store::open_or_create(db).await?.run_and_close(async |store| store.add_annotator(name, role).await).await?;
            print_out(&format!("{token}\n"))
        }
        AnnotatorCommand::Remove { db, name } => {
            Store::open(db).await?.run_and_close(async |store| store.remove_annotator(name).await).await?;
            eprintln!("removed `{}`: their token no longer works; their labels stay", name.trim());
            Ok(())
        }
        AnnotatorCommand::Rotate { db, name } => {
            let token = Store::open(db).await?.run_and_close(async |store| store.rotate_token(name).await).await?;
            print_out(&format!("{token}\n"))
        }
    }
}

async fn import(args: &ImportArgs) -> Result<()> {
    let (pairs, source) = match (&args.pairs, args.from_run.as_slice(), &args.model, &args.prompts) {
        (Some(path), ..) => (import::read_pairs(path)?, path.display().to_string()),
        (None, [stage_dir], ..) => (import::pairs_from_samples(stage_dir)?, import::samples_path(stage_dir).display().to_string()),
        (None, stage_dirs @ [_, _, ..], ..) => {
            let files: Vec<String> = stage_dirs.iter().map(|dir| import::samples_path(dir).display().to_string()).collect();
            (import::pairs_across_stages(stage_dirs)?, files.join(", "))
        }
        (None, [], Some(model), Some(prompts)) => {
            let sampling =
                PairSampling { temperature: args.temperature, max_new_tokens: args.max_new_tokens, seed: args.seed, device: args.device };
            (import::pairs_from_model(model, prompts, sampling)?, model.display().to_string())
        }
        _ => anyhow::bail!("give a PAIRS.jsonl file, --from-run RUN_DIR/STAGE, or --model CHECKPOINT_DIR --prompts PROMPTS.jsonl"),
    };
    let summary = Store::open_or_create(&args.db)
        .await?
        .run_and_close(async |store| -> Result<_> {
            let pairs = match (args.select, args.count) {
                (Some(selection), Some(count)) => select(args, store, pairs, selection, count).await?,
                _ => pairs,
            };
            Ok(store.import_pairs(&pairs).await?)
        })
        .await?;
    print_out(&format!(
        "imported {} new pairs from {} into {} ({} already present)\n",
        summary.added,
        source,
        args.db.display(),
        summary.already_present
    ))
}

/// The `count` candidates `selection` picks among those not yet in the database.
async fn select(args: &ImportArgs, store: &Store, candidates: Vec<NewPair>, selection: Selection, count: u64) -> Result<Vec<NewPair>> {
    let reward_dir = match (&args.reward_model, args.from_run.first()) {
        (Some(dir), _) => dir.clone(),
        (None, Some(stage_dir)) => select::run_reward_model(stage_dir)?,
        (None, None) => anyhow::bail!("--select needs --reward-model CHECKPOINT_DIR (or --from-run, whose run's reward model is used)"),
    };
    let present = store.content_hashes().await?;
    let reward_model = select::load_reward_model(&reward_dir, args.device)?;
    let candidates_count = candidates.len();
    let chosen = select::select_pairs(candidates, &present, (&reward_model, &reward_dir), selection, count as usize, args.seed)?;
    eprintln!("selected {} of {candidates_count} candidate pairs ({:?}, scored by {})", chosen.len(), selection, reward_dir.display());
    Ok(chosen)
}

/// `value` as pretty JSON or as its text form, on stdout.
fn print_json_or_text(json: bool, value: &(impl serde::Serialize + std::fmt::Display)) -> Result<()> {
    if json {
        print_out(&format!("{}\n", serde_json::to_string_pretty(value)?))
    } else {
        print_out(&value.to_string())
    }
}

/// Writes to stdout; a closed pipe (`… | head`) is an error, not a panic as with `println!`.
fn print_out(text: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()).context("cannot write to stdout")
}
