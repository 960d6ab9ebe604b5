//! Training-step throughput for `scripts/bench_train`, on a GPT-2 directory written by
//! `transformers`, with the code the stages use:
//! - `lm`: one step of the `lm` stage — `accumulate_gradients` (summed token cross-entropy over
//!   the batch), global gradient clipping at 1.0, an AdamW update (β 0.9/0.95, decay 0.1), zero grad;
//! - `rm`: one step of the `reward` stage — chosen and rejected rows scored in one left-padded
//!   batch by `RewardModel::scores`, `bradley_terry_loss`, clipping, AdamW (β 0.9/0.999), zero grad.
//!
//! Prints one JSON line per task with the seconds of every measured step; the driver takes medians.
//!
//!   cargo run --release --example bench_train -- --model DIR --batches BATCHES.json

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use rlhf_lab::data::tokenizer::TextTokenizer;
use rlhf_lab::model::checkpoint;
use rlhf_lab::model::generate::left_pad;
use rlhf_lab::model::reward::{RewardModel, REWARD_HEAD};
use rlhf_lab::model::ScalarHead;
use rlhf_lab::stages::lm::{accumulate_gradients, Batch};
use rlhf_lab::stages::reward::bradley_terry_loss;
use rlhf_lab::train::optimizer::{AdamW, AdamWConfig};
use serde::Deserialize;
use serde_json::json;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

#[derive(Parser)]
struct Args {
    /// A GPT-2 directory (config.json and model.safetensors).
    #[arg(long)]
    model: PathBuf,
    /// `{"lm": [[id; T + 1]; B], "rm": {"chosen": [[id...]; P], "rejected": [[id...]; P]}}`;
    /// either part may be absent.
    #[arg(long)]
    batches: PathBuf,
    /// Measured steps per task, after two unmeasured warm-up steps.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    #[arg(long, default_value_t = 2)]
    threads: i32,
}

#[derive(Deserialize)]
struct Batches {
    lm: Option<Vec<Vec<i64>>>,
    rm: Option<PreferenceBatch>,
}

#[derive(Deserialize)]
struct PreferenceBatch {
    chosen: Vec<Vec<i64>>,
    rejected: Vec<Vec<i64>>,
}

const WARM_UP_STEPS: usize = 2;

fn main() -> Result<()> {
    let args = Args::parse();
    tch::set_num_threads(args.threads);
    tch::manual_seed(0);
    let text = std::fs::read_to_string(&args.batches).with_context(|| format!("reading {}", args.batches.display()))?;
    let batches: Batches = serde_json::from_str(&text).context("batches: {\"lm\": rows, \"rm\": {\"chosen\", \"rejected\"}}")?;
    if let Some(rows) = &batches.lm {
        let seconds = time_steps(args.repeats, lm_step(&args, rows)?);
        let tokens = rows.len() * (rows[0].len() - 1);
        println!("{}", json!({"impl": "rlhf", "task": "lm", "batch": rows.len(), "tokens_per_step": tokens, "seconds": seconds}));
    }
    if let Some(pairs) = &batches.rm {
        let seconds = time_steps(args.repeats, rm_step(&args, pairs)?);
        println!("{}", json!({"impl": "rlhf", "task": "rm", "pairs_per_step": pairs.chosen.len(), "seconds": seconds}));
    }
    Ok(())
}

/// Seconds of `repeats` steps after the warm-up.
fn time_steps(repeats: usize, mut step: impl FnMut()) -> Vec<f64> {
    (0..WARM_UP_STEPS + repeats)
        .map(|_| {
            let start = Instant::now();
            step();
            start.elapsed().as_secs_f64()
        })
        .skip(WARM_UP_STEPS)
        .collect()
}

fn lm_step(args: &Args, rows: &[Vec<i64>]) -> Result<impl FnMut()> {
    let config = checkpoint::read_config(&args.model)?;
    let mut vs = VarStore::new(Device::Cpu);
    let transformer = config.build(&vs.root());
    checkpoint::load_weights(&mut vs, &args.model, &[])?;
    let ids = Tensor::from_slice2(rows);
    let width = ids.size()[1];
    let batch = Batch {
        inputs: ids.narrow(1, 0, width - 1).contiguous(),
        targets: ids.narrow(1, 1, width - 1).contiguous(),
        target_tokens: rows.len() as i64 * (width - 1),
    };
    let mut optimizer = AdamW::new(&vs, AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 });
    Ok(move || {
        accumulate_gradients(transformer.as_ref(), std::slice::from_ref(&batch), 1.0).expect("one process: no collective");
        optimizer.update(1e-4, 1.0).expect("AdamW step");
    })
}

fn rm_step(args: &Args, pairs: &PreferenceBatch) -> Result<impl FnMut()> {
    let config = checkpoint::read_config(&args.model)?;
    let mut vs = VarStore::new(Device::Cpu);
    let transformer = config.build(&vs.root());
    let width = config.hidden_size();
    let head = ScalarHead::new(&(vs.root() / REWARD_HEAD), width, 1.0 / ((width + 1) as f64).sqrt());
    checkpoint::load_weights(&mut vs, &args.model, &[REWARD_HEAD])?;
    // Scoring needs no tokenizer (the rows are ids already); the model just has to carry one.
    let tokenizer = TextTokenizer::train(std::iter::once("a benchmark needs no text"), 300)?;
    let model = RewardModel { vs, transformer, head, tokenizer, normalization: None, ensemble: None, adapters: None, base_dir: None };
    let mut optimizer = AdamW::new(&model.vs, AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 });
    let rows: Vec<Vec<i64>> = pairs.chosen.iter().chain(&pairs.rejected).cloned().collect();
    let (ids, mask) = left_pad(&rows, 0, Device::Cpu); // padding is masked: any id will do
    let n = pairs.chosen.len() as i64;
    let (no_margin, no_tie) = (Tensor::zeros([n], (Kind::Float, Device::Cpu)), Tensor::zeros([n], (Kind::Bool, Device::Cpu)));
    Ok(move || {
        let scores = model.scores(&ids, &mask, true);
        let loss = bradley_terry_loss(&scores.narrow(0, 0, n), &scores.narrow(0, n, n), &no_margin, &no_tie, 0.01);
        loss.backward();
        optimizer.update(1e-4, 1.0).expect("AdamW step");
    })
}
