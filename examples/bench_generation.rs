//! Generation throughput for `scripts/bench_generation`: greedy `generate` on a model directory
//! (ours or one written by `transformers`), with and without the KV cache, for each prompt batch
//! of a JSON file. Prints one JSON line per (batch, cache) setting with the seconds of every
//! measured repetition; the driver takes medians.
//!
//!   cargo run --release --example bench_generation -- --model DIR --prompts PROMPTS.json

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use clap::Parser;
use rlhf_lab::model::checkpoint;
use rlhf_lab::model::generate::{generate, GenerateOptions, Sampling};
use serde_json::json;
use tch::nn::VarStore;
use tch::Device;

#[derive(Parser)]
struct Args {
    /// A model directory of any architecture (config.json and the weights; no tokenizer needed).
    #[arg(long)]
    model: PathBuf,
    /// A JSON list of prompt batches, each a list of token-id rows of one length.
    #[arg(long)]
    prompts: PathBuf,
    #[arg(long, default_value_t = 64)]
    new_tokens: i64,
    /// Measured repetitions per setting, after one unmeasured warm-up.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    #[arg(long, default_value_t = 2)]
    threads: i32,
}

fn main() -> Result<()> {
    let args = Args::parse();
    tch::set_num_threads(args.threads);
    // Measure the thread count asked for, not the automatic choice for generation.
    rlhf_lab::model::threads::set_generation_threads(Some(args.threads));
    let config = checkpoint::read_config(&args.model)?;
    let mut vs = VarStore::new(Device::Cpu);
    let model = config.build(&vs.root());
    checkpoint::load_weights(&mut vs, &args.model, &[])?;
    let text = std::fs::read_to_string(&args.prompts).with_context(|| format!("reading {}", args.prompts.display()))?;
    let batches: Vec<Vec<Vec<i64>>> = serde_json::from_str(&text).context("prompts: a list of batches of id rows")?;

    // argmax never yields an id outside the vocabulary, so no row stops early: every run
    // generates exactly `new_tokens` per row, as transformers does with min_new_tokens.
    let never_generated = config.vocab_size();
    for prompts in &batches {
        for use_kv_cache in [true, false] {
            let options = GenerateOptions { max_new_tokens: args.new_tokens, sampling: Sampling::Greedy, seed: None, use_kv_cache };
            let mut seconds = Vec::with_capacity(args.repeats);
            for repetition in 0..=args.repeats {
                let start = Instant::now();
                let generation = generate(model.as_ref(), prompts, &[never_generated], &options)?;
                let elapsed = start.elapsed().as_secs_f64();
                let generated = generation.completion_mask.sum(tch::Kind::Int64).int64_value(&[]);
                ensure!(
                    generated == prompts.len() as i64 * args.new_tokens,
                    "generated {generated} tokens, expected {} per row",
                    args.new_tokens
                );
                if repetition > 0 {
                    seconds.push(elapsed);
                }
            }
            let line = json!({
                "impl": "rlhf", "threads": args.threads, "batch": prompts.len(), "kv_cache": use_kv_cache,
                "new_tokens": args.new_tokens, "seconds": seconds,
            });
            println!("{line}");
        }
    }
    Ok(())
}
