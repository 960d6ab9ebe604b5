//! PPO end to end: a tiny policy learns to raise a programmatic reward while its KL to the
//! reference stays bounded, and a PPO stage killed mid-run resumes to the metrics of an
//! uninterrupted run.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use rlhf_lab::model::reward::RewardModel;
use rlhf_lab::model::{Gpt2Config, LanguageModel, Precision};
use rlhf_lab::stages::ppo::{shared_value_head, Critic, Models, NormalizationSource, Ppo, PpoSettings, Scorer};
use serde_json::Value;
use tch::{Device, Tensor};

/// The share of response tokens whose id is below `LIKED_BELOW` (a tenth of the vocabulary).
struct LikedTokenShare;

const VOCAB: i64 = 300;
const LIKED_BELOW: i64 = 30;

impl Scorer for LikedTokenShare {
    fn score(&self, _prompts: &[Vec<i64>], responses: &[Vec<i64>]) -> Tensor {
        let shares: Vec<f32> = responses
            .iter()
            .map(|r| r.iter().filter(|&&id| (1..LIKED_BELOW).contains(&id)).count() as f32 / r.len().max(1) as f32)
            .collect();
        Tensor::from_slice(&shares)
    }
}

fn tiny_models(dir: &Path, shared_backbone: bool) -> Models {
    tiny_models_with_dropout(dir, shared_backbone, 0.0)
}

/// A random policy (and reference, and value model) saved and loaded as a checkpoint whose
/// dropout probabilities are `dropout`, as a Hugging Face GPT-2's are (0.1).
fn tiny_models_with_dropout(dir: &Path, shared_backbone: bool, dropout: f64) -> Models {
    let config = Gpt2Config { embd_pdrop: dropout, attn_pdrop: dropout, resid_pdrop: dropout, ..common::tiny_config(VOCAB, 32, 32, 2, 2) };
    tch::manual_seed(3);
    LanguageModel::fresh(&config, common::tiny_tokenizer(VOCAB as usize), Device::Cpu, Precision::Fp32).save(dir).unwrap();
    let load = || LanguageModel::load(dir, Device::Cpu, Precision::Fp32).unwrap();
    let mut reference = load();
    reference.vs.freeze();
    let mut policy = load();
    let critic = if shared_backbone {
        Critic::SharedHead(shared_value_head(&mut policy, Precision::Fp32))
    } else {
        Critic::Model(Box::new(RewardModel::load(dir, Device::Cpu, Precision::Fp32, true).unwrap()))
    };
    Models { policy, reference, reward: Box::new(LikedTokenShare), critic }
}

fn settings(kl_coef: f64, shared_backbone: bool) -> PpoSettings {
    let value = if shared_backbone { "shared_backbone = true" } else { "value = \"p\"" };
    toml::from_str(&format!(
        r#"policy = "p"
reference = "p"
reward = "r"
{value}
rollout_batch = 32
minibatch_size = 8
ppo_epochs = 4
max_new_tokens = 8
missing_eos_penalty = 0.0
policy_lr = 3e-3
value_lr = 3e-3
kl_coef = {kl_coef}
"#
    ))
    .unwrap()
}

/// Mean score and KL per iteration of a short PPO run with a fixed seed.
fn train(kl_coef: f64, iterations: u64, shared_backbone: bool) -> Vec<(f64, f64)> {
    // One thread: the test runner already runs tests side by side on the machine's cores.
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(kl_coef, shared_backbone);
    let mut ppo = Ppo::new(&settings, tiny_models(dir.path(), shared_backbone), None);
    let prompts: Vec<String> = (0..32).map(|i| format!("review {i}:")).collect();
    (1..=iterations)
        .map(|iteration| {
            let metrics = ppo.iteration(&prompts, (settings.policy_lr, settings.value_lr), iteration).unwrap();
            (metrics["objective/scores"], metrics["objective/kl"])
        })
        .collect()
}

#[test]
fn ppo_raises_a_programmatic_reward_with_bounded_kl() {
    let history = train(0.05, 25, false);
    let mean = |slice: &[(f64, f64)]| slice.iter().map(|(score, _)| score).sum::<f64>() / slice.len() as f64;
    let (first, last) = (mean(&history[..3]), mean(&history[history.len() - 3..]));
    assert!(first < 0.2, "a random policy already scores {first}");
    assert!(last > first + 0.3, "the score went from {first:.3} to {last:.3}: {history:?}");
    // PPO maximises the KL-penalised reward score − β·KL (Ziegler et al. 2019): the policy moves
    // away from the reference (a KL measured against the wrong model, ~0, fails), and gains more
    // score than it pays in KL (an unpenalised or wrongly signed KL lets KL outrun the score).
    let final_kl = history.last().unwrap().1;
    assert!(final_kl > 0.5, "KL {final_kl}: the policy did not move from the reference: {history:?}");
    let (first_penalised, last_penalised) = (history[0].0 - 0.05 * history[0].1, last - 0.05 * final_kl);
    assert!(last_penalised > first_penalised + 0.05, "score − β·KL went from {first_penalised:.3} to {last_penalised:.3}: {history:?}");

    // The same seed gives the same run; a larger β keeps the policy closer to the reference.
    assert_eq!(train(0.05, 3, false), history[..3].to_vec());
    let constrained = train(1.0, 25, false);
    assert!(constrained.last().unwrap().1 < final_kl, "β = 1 ended at KL {:?}, β = 0.05 at {final_kl}", constrained.last());
}

#[test]
fn a_value_head_on_the_policy_backbone_also_learns() {
    let history = train(0.05, 25, true);
    let (first, last) = (history[0].0, history.iter().rev().take(3).map(|(score, _)| score).sum::<f64>() / 3.0);
    assert!(last > first + 0.15, "the score went from {first:.3} to {last:.3}: {history:?}");
}

/// Dropout is off in PPO's optimisation passes as in its rollouts (TRL; Huang et al. 2024): with
/// a learning rate of ~0 the policy of the first minibatch is the one that sampled, so its ratio
/// is 1 — no clipping and no approximate KL, even with a checkpoint whose dropout is 0.3.
#[test]
fn dropout_does_not_disturb_the_ratio_of_the_first_minibatch() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let settings: PpoSettings = toml::from_str(
        r#"policy = "p"
reference = "p"
reward = "r"
value = "p"
rollout_batch = 16
minibatch_size = 16
ppo_epochs = 1
max_new_tokens = 8
"#,
    )
    .unwrap();
    let mut ppo = Ppo::new(&settings, tiny_models_with_dropout(dir.path(), false, 0.3), None);
    let prompts: Vec<String> = (0..16).map(|i| format!("review {i}:")).collect();
    let metrics = ppo.iteration(&prompts, (1e-12, 1e-12), 1).unwrap();
    assert!(metrics["policy/approxkl_avg"] < 1e-7, "approximate KL {} with an unmoved policy", metrics["policy/approxkl_avg"]);
    assert_eq!(metrics["policy/clipfrac_avg"], 0.0);
    assert_eq!(metrics["val/clipfrac_avg"], 0.0);
}

/// `reward_normalization = "policy"`: scores are normalised with the mean and std measured on the
/// starting policy's own responses, so the first rollout's scores have mean ≈ 0 and std ≈ 1
/// (raw, this reward is a share in [0, 1] with mean ≈ 0.1).
#[test]
fn policy_normalisation_centres_and_scales_the_first_rollouts_scores() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(0.05, false);
    assert_eq!(settings.reward_normalization, NormalizationSource::Policy, "the default");
    let mut ppo = Ppo::new(&settings, tiny_models(dir.path(), false), None);
    let prompts: Vec<String> = (0..256).map(|i| format!("review {i}:")).collect();
    let measured = ppo.measure_reward_normalization(&prompts, 11).unwrap();
    assert!((0.02..0.3).contains(&measured.mean) && measured.std > 0.01, "{measured:?}");

    let metrics = ppo.iteration(&prompts[..32], (settings.policy_lr, settings.value_lr), 1).unwrap();
    // 32 responses: the mean's standard error is 1/√32 ≈ 0.18, the std's ≈ 0.13.
    let (mean, std) = (metrics["objective/scores"], metrics["objective/scores_std"]);
    assert!(mean.abs() < 0.4, "first rollout's normalised scores have mean {mean}");
    assert!((0.65..1.35).contains(&std), "first rollout's normalised scores have std {std}");
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Metrics without the wall-clock ones.
fn deterministic_metrics(path: &Path) -> Vec<Value> {
    let mut metrics = lines(path);
    for line in &mut metrics {
        line.as_object_mut().unwrap().retain(|name, _| !name.starts_with("time/") && name != "tokens_per_s");
    }
    metrics
}

fn run_dir_in(out: &Path) -> Option<PathBuf> {
    std::fs::read_dir(out.join("tiny-ppo")).ok()?.filter_map(Result::ok).map(|e| e.path()).next()
}

#[test]
fn a_killed_ppo_stage_resumes_to_the_metrics_of_an_uninterrupted_run() {
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("tiny.toml"), common::TINY_RLHF_EXPERIMENT).unwrap();
    let (ok, stdout, stderr) = common::rlhf(&["run", "tiny.toml", "--out", "a"], work.path());
    assert!(ok, "{stderr}");
    let uninterrupted = work.path().join(stdout.trim());

    let metrics = lines(&uninterrupted.join("ppo/metrics.jsonl"));
    assert_eq!(metrics.len(), 31, "iteration 0 (the starting policy's evaluation) and 30 iterations");
    for name in [
        "objective/scores",
        "objective/kl",
        "objective/rlhf_reward",
        "objective/entropy",
        "policy/approxkl_avg",
        "policy/clipfrac_avg",
        "loss/policy_avg",
        "loss/value_avg",
        "val/clipfrac_avg",
        "kl_coef",
        "lr",
        "time/step_s",
        "tokens_per_s",
        "objective/gold_score",
    ] {
        assert!(metrics[1][name].is_f64(), "no {name} in {}", metrics[1]);
    }
    for name in ["eval/rm_score", "eval/gold_score", "eval/kl"] {
        assert!(metrics[0][name].is_f64() && metrics[30][name].is_f64(), "no {name} at the evaluations");
    }
    // The adaptive controller moves β towards the KL target (1 nat here): up after an iteration
    // whose KL was above it, down after one below (Ziegler et al. 2019, §2.2).
    for window in metrics[1..].windows(2) {
        let (kl, before, after) =
            (window[0]["objective/kl"].as_f64().unwrap(), window[0]["kl_coef"].as_f64().unwrap(), window[1]["kl_coef"].as_f64().unwrap());
        assert_eq!((after - before).signum(), (kl - 1.0).signum(), "β {before} → {after} after an iteration at KL {kl}");
    }
    let samples = lines(&uninterrupted.join("ppo/samples.jsonl"));
    assert_eq!(samples.len(), 2 * 11);
    assert!(samples[0]["completion"].is_string() && samples[0]["gold_score"].is_f64() && samples[0]["score"].is_f64());
    assert!(uninterrupted.join("ppo/checkpoint/model.safetensors").is_file());

    // Stopped as by kill -9 right after the PPO stage saved its state at iteration 3 (the stage
    // loop's test hook), then resumed.
    let output = Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args(["run", "tiny.toml", "--out", "b"])
        .env("RLHF_TEST_ABORT_AT", "ppo:3:saved")
        .current_dir(work.path())
        .output()
        .unwrap();
    assert!(!output.status.success(), "the run was not stopped: {}", String::from_utf8_lossy(&output.stderr));
    let killed = run_dir_in(&work.path().join("b")).expect("a run directory");
    assert_eq!(lines(&killed.join("ppo/metrics.jsonl")).len(), 4, "the run stopped after its save at iteration 3");
    let (ok, _, stderr) = common::rlhf(&["run", "--resume", killed.to_str().unwrap()], work.path());
    assert!(ok, "{stderr}");
    assert_eq!(deterministic_metrics(&uninterrupted.join("ppo/metrics.jsonl")), deterministic_metrics(&killed.join("ppo/metrics.jsonl")));
    assert_eq!(lines(&uninterrupted.join("ppo/samples.jsonl")), lines(&killed.join("ppo/samples.jsonl")));
}
