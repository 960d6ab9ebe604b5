//! PPO iteration time for `scripts/bench_ppo`: the `ppo` stage's `Ppo::iteration` (rollout with
//! the KV cache, log-probs of policy and reference, reward-model scores, GAE, PPO epochs) on a
//! GPT-2 directory with a tokenizer, policy = reference = reward = value start. Prints one JSON
//! line with the seconds of every measured iteration, split into generation, scoring and training.
//!
//!   cargo run --release --example bench_ppo -- --model DIR --prompts PROMPTS.json [--shared-backbone]

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use rlhf_lab::model::reward::RewardModel;
use rlhf_lab::model::{LanguageModel, Precision, ReferenceModel};
use rlhf_lab::stages::ppo::{shared_value_head, Critic, Models, Ppo, PpoSettings};
use serde_json::json;
use tch::Device;

#[derive(Parser)]
struct Args {
    /// A GPT-2 directory with config.json, model.safetensors and tokenizer.json.
    #[arg(long)]
    model: PathBuf,
    /// A JSON list of prompt strings: one rollout batch.
    #[arg(long)]
    prompts: PathBuf,
    /// A value head on the policy's backbone instead of a separate value model.
    #[arg(long)]
    shared_backbone: bool,
    /// Measured iterations, after one unmeasured warm-up iteration.
    #[arg(long, default_value_t = 3)]
    repeats: u64,
    #[arg(long, default_value_t = 2)]
    threads: i32,
}

fn main() -> Result<()> {
    let args = Args::parse();
    tch::set_num_threads(args.threads);
    tch::manual_seed(0);
    let text = std::fs::read_to_string(&args.prompts).with_context(|| format!("reading {}", args.prompts.display()))?;
    let prompts: Vec<String> = serde_json::from_str(&text).context("prompts: a JSON list of strings")?;
    let value = if args.shared_backbone { "shared_backbone = true" } else { "value = \"start\"" };
    // The quickstart's PPO settings (the same as the TRL side's PPOConfig).
    let settings: PpoSettings = toml::from_str(&format!(
        r#"policy = "start"
reference = "start"
reward = "start"
{value}
rollout_batch = {rollout}
minibatch_size = 16
ppo_epochs = 4
max_new_tokens = 48
kl_coef = 0.05
missing_eos_penalty = 0.0
vf_coef = 0.1
"#,
        rollout = prompts.len()
    ))?;

    let load = || LanguageModel::load(&args.model, Device::Cpu, Precision::Fp32);
    let mut policy = load()?;
    let mut reference = load()?;
    reference.vs.freeze();
    let mut reward = RewardModel::load(&args.model, Device::Cpu, Precision::Fp32, true)?;
    reward.vs.freeze();
    let critic = if args.shared_backbone {
        Critic::SharedHead(shared_value_head(&mut policy, Precision::Fp32))
    } else {
        Critic::Model(Box::new(RewardModel::load(&args.model, Device::Cpu, Precision::Fp32, true)?))
    };
    let models = Models { policy, reference: ReferenceModel::Separate(Box::new(reference)), reward: Box::new(reward), critic };
    let mut ppo = Ppo::new(&settings, models, None);

    let mut split = json!({"step": [], "generation": [], "scoring": [], "training": [], "response_tokens": []});
    for iteration in 0..=args.repeats {
        let metrics = ppo.iteration(&prompts, (settings.policy_lr, settings.value_lr), iteration)?;
        if iteration == 0 {
            continue; // warm-up
        }
        for (key, name) in
            [("step", "time/step_s"), ("generation", "time/generation_s"), ("scoring", "time/scoring_s"), ("training", "time/training_s")]
        {
            split[key].as_array_mut().expect("a list").push(metrics[name].into());
        }
        let response_tokens = metrics["objective/response_length"] * prompts.len() as f64;
        split["response_tokens"].as_array_mut().expect("a list").push(response_tokens.into());
    }
    let implementation = if args.shared_backbone { "rlhf-shared" } else { "rlhf" };
    println!("{}", json!({"impl": implementation, "seconds": split}));
    Ok(())
}
