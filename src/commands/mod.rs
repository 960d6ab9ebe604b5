//! One module per `rlhf` subcommand: its arguments (parsed by clap in `main.rs`) and its work.

pub mod compress;
pub mod eval;
pub mod generate;
pub mod label;
pub mod merge;
pub mod report;
pub mod run;
pub mod score;
pub mod serve;
pub mod validate;
pub mod watch;
