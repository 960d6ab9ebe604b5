//! What each compression of a model costs and gains, for `scripts/bench_compress`: for every
//! variant (a checkpoint directory, as `rlhf` loads it) its weights' size on disk, greedy
//! generation throughput at batch 1 and 32, and its eval loss — the mean next-token loss over
//! held-out demonstrations of the synthetic review task (drawn from the task's evaluation seed).
//! Prints one JSON line per variant.
//!
//!   cargo run --release --example bench_compress -- fp32=DIR int8=DIR2 ...

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use rlhf_lab::data::synthetic::SyntheticReviews;
use rlhf_lab::model::generate::{generate, left_pad, GenerateOptions, Sampling};
use rlhf_lab::model::{LanguageModel, Precision};
use serde_json::json;
use tch::{Device, Kind};

#[derive(Parser)]
struct Args {
    /// Variants as NAME=DIR.
    #[arg(required = true)]
    variants: Vec<String>,
    #[arg(long, default_value_t = 64)]
    new_tokens: i64,
    /// Measured repetitions per batch size (the median is kept), after one warm-up.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    #[arg(long, default_value_t = 2)]
    threads: i32,
    /// Held-out demonstrations the eval loss averages over.
    #[arg(long, default_value_t = 128)]
    eval_texts: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    tch::set_num_threads(args.threads);
    rlhf_lab::model::threads::set_generation_threads(Some(args.threads));
    // The task's held-out part comes from its evaluation seed (0 in the quickstart).
    let held_out = SyntheticReviews::generate(0, 0, args.eval_texts, 32);
    for variant in &args.variants {
        let (name, dir) = variant.split_once('=').context("a variant is NAME=DIR")?;
        let dir = PathBuf::from(dir);
        let model = LanguageModel::load(&dir, Device::Cpu, Precision::Fp32).with_context(|| format!("loading {}", dir.display()))?;
        let bytes: u64 = std::fs::read_dir(&dir)?
            .filter_map(|entry| entry.ok())
            .filter(|entry| entry.file_name().to_string_lossy().ends_with(".safetensors"))
            .map(|entry| entry.metadata().map_or(0, |m| m.len()))
            .sum();
        let texts: Vec<Vec<i64>> = held_out
            .demonstrations
            .iter()
            .map(|d| model.tokenizer.encode(&format!("{}{}", d.prompt, d.response)))
            .collect::<Result<_, _>>()?;
        let eval_loss = eval_loss(&model, &texts);
        let prompts: Vec<Vec<i64>> = held_out.prompts.iter().map(|p| model.tokenizer.encode(p)).collect::<Result<_, _>>()?;
        let mut rates = Vec::new();
        for batch in [1usize, 32] {
            rates.push(tokens_per_second(&model, &prompts[..batch], args.new_tokens, args.repeats));
        }
        let line = json!({"variant": name, "bytes": bytes, "eval_loss": eval_loss, "tokens_per_s_batch1": rates[0], "tokens_per_s_batch32": rates[1],
                          "quantized": model.is_quantized()});
        println!("{line}");
    }
    Ok(())
}

/// Mean next-token cross-entropy over every token of `texts` after the first.
fn eval_loss(model: &LanguageModel, texts: &[Vec<i64>]) -> f64 {
    let _no_grad = tch::no_grad_guard();
    let (mut total, mut count) = (0.0, 0.0);
    for chunk in texts.chunks(16) {
        let (ids, mask) = left_pad(chunk, model.tokenizer.eos_id(), Device::Cpu);
        let logits = model.transformer.forward_logits(&ids, Some(&mask), false);
        let width = ids.size()[1];
        let predicted = logits.narrow(1, 0, width - 1).log_softmax(-1, Kind::Float);
        let targets = ids.narrow(1, 1, width - 1);
        let nll = -predicted.gather(2, &targets.unsqueeze(2), false).squeeze_dim(2);
        let real = mask.narrow(1, 1, width - 1).to_kind(Kind::Float) * mask.narrow(1, 0, width - 1).to_kind(Kind::Float);
        total += (nll * &real).sum(Kind::Double).double_value(&[]);
        count += real.sum(Kind::Double).double_value(&[]);
    }
    total / count
}

/// Greedy tokens generated per second over `repeats` runs after a warm-up. Rows stop only at
/// the vocabulary's last id (rarely chosen), so that every variant does about the same work;
/// the tokens counted are those generated.
fn tokens_per_second(model: &LanguageModel, prompts: &[Vec<i64>], new_tokens: i64, repeats: usize) -> f64 {
    let options = GenerateOptions { max_new_tokens: new_tokens, sampling: Sampling::Greedy, seed: None, use_kv_cache: true };
    let never = [model.transformer.config().vocab_size() - 1];
    let (mut tokens, mut seconds) = (0, 0.0);
    for run in 0..=repeats {
        let start = Instant::now();
        let generation = generate(model.transformer.as_ref(), prompts, &never, &options).expect("generation runs");
        let elapsed = start.elapsed().as_secs_f64();
        if run > 0 {
            tokens += generation.completion_mask.sum(Kind::Int64).int64_value(&[]);
            seconds += elapsed;
        }
    }
    tokens as f64 / seconds
}
