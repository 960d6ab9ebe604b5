//! GRPO iteration time for `scripts/bench_grpo`: the `grpo` stage's `GroupLearner::iteration`
//! (`group_size` responses to each prompt sampled with the KV cache, the reference's log-probs,
//! a programmatic reward, group-scaled advantages, one optimisation pass over the whole rollout
//! as one minibatch) on a GPT-2 directory with a tokenizer, policy = reference start.
//! Prints one JSON line with the seconds of every measured iteration, split into generation,
//! scoring and training.
//!
//!   cargo run --release --example bench_grpo -- --model DIR --prompts PROMPTS.json [--group-size 8]

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use rlhf_lab::model::{LanguageModel, Precision, ReferenceModel};
use rlhf_lab::stages::grpo::GrpoKeys;
use rlhf_lab::stages::rl::{GroupKeys, GroupLearner, PolicyGradientKeys, RlModels};
use rlhf_lab::train::rollout::Scorer;
use serde_json::json;
use tch::{Device, Tensor};

#[derive(Parser)]
struct Args {
    /// A GPT-2 directory with config.json, model.safetensors and tokenizer.json.
    #[arg(long)]
    model: PathBuf,
    /// A JSON list of distinct prompt strings: each gets `group_size` responses per iteration.
    #[arg(long)]
    prompts: PathBuf,
    #[arg(long, default_value_t = 8)]
    group_size: usize,
    /// Measured iterations, after one unmeasured warm-up iteration.
    #[arg(long, default_value_t = 3)]
    repeats: u64,
    #[arg(long, default_value_t = 2)]
    threads: i32,
}

/// Token ids in [1, LIKED_BELOW) are liked (0 is end-of-text).
const LIKED_BELOW: i64 = 128;

/// The share of a response's tokens that are liked: the same reward as the TRL side's
/// `liked_token_share` (responses come without end-of-text).
struct LikedTokenShare;

impl Scorer for LikedTokenShare {
    fn score(&self, _prompts: &[Vec<i64>], responses: &[Vec<i64>]) -> Tensor {
        let shares: Vec<f32> = responses
            .iter()
            .map(|r| r.iter().filter(|&&id| (1..LIKED_BELOW).contains(&id)).count() as f32 / r.len().max(1) as f32)
            .collect();
        Tensor::from_slice(&shares)
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    tch::set_num_threads(args.threads);
    tch::manual_seed(0);
    let text = std::fs::read_to_string(&args.prompts).with_context(|| format!("reading {}", args.prompts.display()))?;
    let prompts: Vec<String> = serde_json::from_str(&text).context("prompts: a JSON list of strings")?;
    // The same settings as the TRL side's GRPOConfig: the whole rollout is one minibatch, one pass.
    let keys: PolicyGradientKeys = toml::from_str(&format!(
        r#"policy = "start"
reference = "start"
reward = "liked"
rollout_batch = {rollout}
minibatch_size = {rollout}
grad_accum = 1
updates_per_rollout = 1
max_new_tokens = 48
temperature = 1.0
policy_lr = 1e-5
grad_clip = 1.0
"#,
        rollout = prompts.len() * args.group_size
    ))?;
    let own: GrpoKeys = toml::from_str(&format!(
        "group_size = {}\nloss_type = \"grpo\"\nscale_rewards = \"group\"\nbeta = 0.04\nepsilon_low = 0.2",
        args.group_size
    ))?;
    own.check().map_err(|(key, message)| anyhow::anyhow!("{key}: {message}"))?;
    keys.check(own.group()).map_err(|(key, message)| anyhow::anyhow!("{key}: {message}"))?;
    let algorithm = own.algorithm(&keys);

    let load = || LanguageModel::load(&args.model, Device::Cpu, Precision::Fp32);
    let policy = load()?;
    let mut reference = load()?;
    reference.vs.freeze();
    let models = RlModels { policy, reference: ReferenceModel::Separate(Box::new(reference)), reward: Box::new(LikedTokenShare) };
    let mut learner = GroupLearner::new(&keys, algorithm.as_ref(), models, None);

    let mut split = json!({"step": [], "generation": [], "scoring": [], "training": [], "response_tokens": []});
    for iteration in 0..=args.repeats {
        let metrics = learner.iteration(&prompts, keys.policy_lr, iteration)?;
        if iteration == 0 {
            continue; // warm-up
        }
        for (key, name) in
            [("step", "time/step_s"), ("generation", "time/generation_s"), ("scoring", "time/scoring_s"), ("training", "time/training_s")]
        {
            split[key].as_array_mut().expect("a list").push(metrics[name].into());
        }
        let response_tokens = metrics["objective/response_length"] * keys.rollout_batch as f64;
        split["response_tokens"].as_array_mut().expect("a list").push(response_tokens.into());
    }
    println!("{}", json!({"impl": "rlhf", "seconds": split}));
    Ok(())
}
