//! rlhf-lab: RLHF experiments on libtorch. The modules follow the flow of an experiment:
//! `config` (the TOML file) → `data` (tokens and records) → `model` (GPT-2, checkpoints,
//! generation) → `stages` (what each kind of stage trains) → `commands` (the CLI's verbs).

// Settings checks write `!(x > 0.0)` on purpose: unlike `x <= 0.0`, it also rejects NaN.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

pub mod clock;
pub mod commands;
pub mod config;
pub mod data;
pub mod distributed;
pub mod eval;
pub mod http;
pub mod label;
pub mod model;
pub mod native;
pub mod report;
pub mod rng;
pub mod run;
pub mod serve;
pub mod stages;
pub mod train;
