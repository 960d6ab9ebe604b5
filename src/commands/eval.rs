//! `rlhf eval POLICY... --task EXPERIMENT|RUN_DIR | --prompts FILE -o OUT`: evaluates policies on
//! one prompt set with the same decoding settings (see `crate::eval`), into a directory that
//! `rlhf report` reads like runs.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::data::jsonl::read_converted;
use crate::data::synthetic::GoldOracle;
use crate::data::task;
use crate::eval::{self, PolicyRecord};
use crate::model::reward::RewardModel;
use crate::model::{DeviceSpec, LanguageModel, Precision, ReferenceModel};
use crate::run::environment;
use crate::stages::rl::evaluation_sampling_seed;
use crate::stages::CHECKPOINT_DIR;
use crate::train::rollout::{Decoding, EvaluationSettings, Judges, Scorer};

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// Policies: checkpoint directories, or stage directories holding `checkpoint/`; each may be
    /// named `NAME=PATH` (else it is named after its run and stage directories).
    #[arg(required = true)]
    pub policies: Vec<String>,
    /// Evaluate on this task's evaluation set, as its PPO stages do: an experiment file, or a
    /// run directory (its config.toml). Gives gold scores where the task has an oracle.
    #[arg(long, required_unless_present = "prompts", conflicts_with = "prompts")]
    pub task: Option<PathBuf>,
    /// Evaluate on the prompts of a JSONL file (`{"prompt"}` lines, text or messages) instead.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// How many prompts of the set: the first N (a PPO stage's `eval_prompts`).
    #[arg(long, default_value_t = 64)]
    pub eval_prompts: usize,
    /// A reward model (checkpoint or reward stage directory) scoring every response.
    #[arg(long)]
    pub reward: Option<PathBuf>,
    /// A reference policy (checkpoint or stage directory) for the KL of every response.
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// Sampling temperature; log-probs for the KL are read at it too.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    #[arg(long, default_value_t = 48)]
    pub max_new_tokens: i64,
    /// Sampling seed; by default the one PPO stages evaluate with (from the task's `eval_seed`;
    /// 0 for a prompts file).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Prompts generated together (a PPO stage generates its `eval_prompts` in one batch).
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// The evaluation directory to create (it must not exist or be empty).
    #[arg(long, short)]
    pub out: PathBuf,
}

/// The prompt set, rendered, with what else the source gives.
struct PromptSet {
    prompts: Vec<String>,
    /// Hash of the evaluation set (a task's whole held-out data, as its runs record it).
    eval_set: serde_json::Value,
    oracle: Option<GoldOracle>,
    default_seed: u64,
    source: serde_json::Value,
}

pub fn run(args: &EvalArgs) -> Result<()> {
    if args.out.is_dir() && std::fs::read_dir(&args.out).map(|mut d| d.next().is_some()).unwrap_or(false) {
        bail!("--out `{}` is not empty: choose a new directory for the evaluation", args.out.display());
    }
    let device = args.device.resolve()?;
    let mut policies = Vec::with_capacity(args.policies.len());
    for given in &args.policies {
        let (name, path) = named(given);
        if policies.iter().any(|(n, _, _): &(String, PathBuf, LanguageModel)| *n == name) {
            bail!("two policies are named `{name}`: name them with NAME=PATH");
        }
        let checkpoint = checkpoint_dir(&path);
        let model = LanguageModel::load(&checkpoint, device, Precision::Fp32).with_context(|| format!("policy `{given}`"))?;
        policies.push((name, checkpoint, model));
    }
    let set = prompt_set(args, &policies[0].2)?;
    let reward = match &args.reward {
        Some(path) => Some((
            absolute(&checkpoint_dir(path)),
            RewardModel::load(&checkpoint_dir(path), device, Precision::Fp32, false)
                .with_context(|| format!("--reward `{}`", path.display()))?,
        )),
        None => None,
    };
    let reference = match &args.reference {
        Some(path) => Some((
            absolute(&checkpoint_dir(path)),
            ReferenceModel::Separate(Box::new(
                LanguageModel::load(&checkpoint_dir(path), device, Precision::Fp32)
                    .with_context(|| format!("--reference `{}`", path.display()))?,
            )),
        )),
        None => None,
    };
    let settings = EvaluationSettings {
        decoding: Decoding { temperature: args.temperature, max_new_tokens: args.max_new_tokens },
        seed: args.seed.unwrap_or(set.default_seed),
        batch_size: args.batch_size,
    };
    let judges = Judges {
        reward: reward.as_ref().map(|(_, m)| m as &dyn Scorer),
        reference: reference.as_ref().map(|(_, m)| m),
        oracle: set.oracle,
    };

    std::fs::create_dir_all(&args.out).with_context(|| format!("creating `{}`", args.out.display()))?;
    let record = json!({
        "prompts": set.source,
        "eval_set": set.eval_set,
        "settings": settings,
        "reward": reward.as_ref().map(|(path, _)| path.display().to_string()),
        "reference": reference.as_ref().map(|(path, _)| path.display().to_string()),
        "policies": policies.iter().map(|(name, path, _)| json!({"name": name, "path": absolute(path).display().to_string()})).collect::<Vec<_>>(),
    });
    crate::run::write_atomic(&args.out.join(eval::EVALUATION_FILE), &serde_json::to_string_pretty(&record)?)?;
    for (name, path, policy) in &policies {
        let responses =
            crate::train::rollout::evaluate(policy, &set.prompts, &judges, &settings).with_context(|| format!("evaluating `{name}`"))?;
        let mut stage = toml::Table::new();
        stage.insert("name".into(), eval::KIND.into());
        stage.insert("kind".into(), eval::KIND.into());
        stage.insert("policy".into(), absolute(path).display().to_string().into());
        for (key, model) in [("reward", reward.as_ref().map(|(p, _)| p)), ("reference", reference.as_ref().map(|(p, _)| p))] {
            if let Some(model) = model {
                stage.insert(key.into(), model.display().to_string().into());
            }
        }
        stage.insert("temperature".into(), settings.decoding.temperature.into());
        stage.insert("max_new_tokens".into(), settings.decoding.max_new_tokens.into());
        stage.insert("eval_prompts".into(), (set.prompts.len() as i64).into());
        let mut config = toml::Table::new();
        config.insert("name".into(), eval::KIND.into());
        config.insert("seed".into(), (settings.seed as i64).into());
        config.insert("stages".into(), toml::Value::Array(vec![toml::Value::Table(stage)]));
        let mut environment = environment::describe(settings.seed, &[("eval.policy".to_string(), args.device.to_string())]);
        environment["eval_set"] = set.eval_set.clone();
        let dir = args.out.join(name);
        let figures = eval::write_policy(&PolicyRecord { dir: &dir, config: &config, environment: &environment, responses: &responses })?;
        tracing::info!(policy = name, figures = ?figures, "evaluated");
    }
    println!("{}", args.out.display());
    Ok(())
}

/// `NAME=PATH`, or a path named after its run and stage directories (`RUN-STAGE`).
fn named(given: &str) -> (String, PathBuf) {
    if let Some((name, path)) = given.split_once('=').filter(|(name, _)| !name.is_empty() && !name.contains('/')) {
        return (name.to_string(), PathBuf::from(path));
    }
    let path = PathBuf::from(given);
    let stage_dir = if path.file_name().is_some_and(|n| n == CHECKPOINT_DIR) { path.parent().unwrap_or(&path) } else { &path };
    let parts: Vec<String> = stage_dir
        .components()
        .rev()
        .take(2)
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .filter(|c| c != "." && c != "..")
        .collect();
    let name = parts.into_iter().rev().collect::<Vec<_>>().join("-");
    let clean: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '-' }).collect();
    (if clean.is_empty() { "policy".into() } else { clean }, path)
}

/// A stage directory's `checkpoint/`, or the directory itself.
fn checkpoint_dir(path: &Path) -> PathBuf {
    if path.join(CHECKPOINT_DIR).is_dir() {
        path.join(CHECKPOINT_DIR)
    } else {
        path.to_path_buf()
    }
}

fn absolute(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}

fn prompt_set(args: &EvalArgs, first_policy: &LanguageModel) -> Result<PromptSet> {
    let tokenizer = &first_policy.tokenizer;
    if let Some(given) = &args.task {
        let file = if given.is_dir() { given.join(crate::run::CONFIG_FILE) } else { given.clone() };
        let experiment = crate::config::load(&file, &[])?;
        let mut data = task::load(&experiment.task, experiment.seed)?;
        // Rendered with the first policy's tokenizer (its chat template), as its run rendered them.
        data.apply_chat_template(tokenizer)?;
        let prompts = data.evaluation_prompts(args.eval_prompts);
        if prompts.is_empty() {
            bail!("the task of `{}` has no evaluation prompts", file.display());
        }
        return Ok(PromptSet {
            prompts,
            eval_set: json!({"eval_seed": experiment.task.eval_seed, "sha256": data.eval_set_digest()}),
            oracle: data.oracle,
            default_seed: evaluation_sampling_seed(experiment.task.eval_seed),
            source: json!({"task": absolute(&file).display().to_string()}),
        });
    }
    let path = args.prompts.as_ref().expect("clap requires --task or --prompts");
    let (prompts, _) = read_converted(path, false, task::prompt_from)?;
    let prompts: Vec<String> =
        prompts.iter().take(args.eval_prompts).map(|prompt| tokenizer.prompt_text(prompt)).collect::<Result<_, _>>()?;
    if prompts.is_empty() {
        bail!("`{}` has no prompts", path.display());
    }
    let digest = hex::encode(Sha256::digest(serde_json::to_string(&prompts)?.as_bytes()));
    Ok(PromptSet {
        prompts,
        eval_set: json!({"sha256": digest}),
        oracle: None,
        default_seed: evaluation_sampling_seed(0),
        source: json!({"file": absolute(path).display().to_string()}),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_are_named_by_run_and_stage_unless_named() {
        assert_eq!(named("sft=runs/x/sft"), ("sft".to_string(), PathBuf::from("runs/x/sft")));
        assert_eq!(named("results/q/20261201-004040/ppo").0, "20261201-004040-ppo");
        assert_eq!(named("results/q/20261201-004040/ppo/checkpoint").0, "20261201-004040-ppo");
        assert_eq!(named("/models/Qwen2.5 0.5B").0, "models-Qwen2.5-0.5B");
    }
}
