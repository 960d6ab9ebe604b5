//! Labeling: people compare two responses to a prompt in the browser and their preferences go to
//! SQLite. `store` opens the database (migrations, WAL, foreign keys) and keeps annotators;
//! `import` turns JSONL files and run samples into pairs; `assign` hands pairs out under leases
//! and records labels; `server` is the HTTP API and the embedded page; `stats` counts and
//! measures agreement; `export` reads the preferences back as records; `leaderboard` rates the
//! models behind the responses from the judgements (Bradley–Terry).

pub mod assign;
pub mod export;
pub mod import;
pub mod leaderboard;
pub mod select;
pub mod server;
pub mod stats;
pub mod store;

use std::path::PathBuf;

pub use assign::{Outcome, Policy, Preferred};
pub use export::{read_preference_pairs, ExportFilter, Judgement, PreferenceRecord};
pub use store::{Role, Store};

#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    #[error("no labeling database at `{0}` (create one with `rlhf label import --db {0} PAIRS.jsonl`)")]
    NoDatabase(PathBuf),
    #[error("cannot open database `{path}`: {source}")]
    Open { path: PathBuf, source: sqlx::Error },
    #[error("cannot migrate database `{path}`: {source}")]
    Migrate { path: PathBuf, source: sqlx::migrate::MigrateError },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Jsonl(#[from] crate::data::jsonl::JsonlError),
    #[error("`{path}` yields no pair: no prompt has two different completions")]
    NoPairs { path: PathBuf },
    #[error("{sources} yield no pair: no prompt has different completions in two of them")]
    NoPairsAcross { sources: String },
    #[error("no pair names the models behind its responses (metadata `model_a`, `model_b`): import the stages to compare with several `--from-run RUN_DIR/STAGE`")]
    NoModelPairs,
    #[error("none of the {0} pairs between models has a judgement yet")]
    NothingJudged(i64),
    #[error("cannot read `{path}`: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("choose the reward model to select with (--reward-model DIR): run `{run}` has {} reward-model checkpoints{}", if found.is_empty() { "no" } else { "several" }, if found.is_empty() { String::new() } else { format!(" ({found})") })]
    RewardModelChoice { run: PathBuf, found: String },
    #[error("--select disagreement needs a reward model trained as an ensemble: `{checkpoint}` has no ensemble.safetensors (train its reward stage with `ensemble` ≥ 2)")]
    NoEnsemble { checkpoint: PathBuf },
    #[error("loading a model: {0}")]
    Model(#[from] crate::model::CheckpointError),
    #[error("generating pairs: {0}")]
    Generate(#[from] crate::model::generate::GenerateError),
    #[error("generating pairs: {0}")]
    Tokenizer(#[from] crate::data::tokenizer::TokenizerError),
    #[error(transparent)]
    Device(#[from] crate::model::device::DeviceError),
    #[error("cannot write `{path}`: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("annotator name must not be empty")]
    EmptyAnnotatorName,
    #[error("annotator `{0}` already exists")]
    AnnotatorExists(String),
    #[error("annotator `{0}` was removed (their labels stay under that name): choose another name")]
    AnnotatorRemoved(String),
    #[error("no annotator named `{0}` (see `rlhf label stats`)")]
    UnknownAnnotator(String),
    #[error("unknown pair {0}")]
    UnknownPair(i64),
    #[error("you already labeled pair {0}")]
    AlreadyLabeled(i64),
    #[error("pair {0} was not handed to you: ask GET /api/pairs/next for a pair")]
    NotAssigned(i64),
    #[error("pair {0} is taken: your lease on it had run out and others have labeled it or hold it now")]
    PairFull(i64),
    #[error("your skip of pair {0} cannot be undone: others have labeled it or hold it now")]
    UndoPairTaken(i64),
    #[error("you have no label to undo")]
    NothingToUndo,
    #[error("your last label is older than {0} s and can no longer be undone")]
    UndoTooLate(u64),
}
