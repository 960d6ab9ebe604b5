//! The optimisers beside PPO, end to end: GRPO (each loss type) and RLOO raise a planted
//! programmatic reward, DPO learns a planted preference from a preference file, best-of-n picks
//! what its reward likes at the KL it reports, and bad settings are refused naming the key.

mod common;

use std::path::Path;

use common::LikedTokenShare;
use rlhf_lab::model::{LanguageModel, Precision, ReferenceModel};
use rlhf_lab::stages::grpo::GrpoKeys;
use rlhf_lab::stages::rl::{GroupKeys, GroupLearner, PolicyGradientKeys, RlModels};
use rlhf_lab::stages::rloo::RlooKeys;
use serde_json::Value;
use tch::Device;

const VOCAB: i64 = 300;

fn tiny_models(dir: &Path) -> RlModels {
    tch::manual_seed(3);
    LanguageModel::fresh(common::tiny_config(VOCAB, 32, 32, 2, 2), common::tiny_tokenizer(VOCAB as usize), Device::Cpu, Precision::Fp32)
        .save(dir)
        .unwrap();
    let load = || LanguageModel::load(dir, Device::Cpu, Precision::Fp32).unwrap();
    let mut reference = load();
    reference.vs.freeze();
    RlModels { policy: load(), reference: ReferenceModel::Separate(Box::new(reference)), reward: Box::new(LikedTokenShare) }
}

/// Two passes over minibatches of half the rollout, unless `on_policy`: one step on the whole
/// rollout, whose old log-probs are then the sampler's.
fn shared_keys(on_policy: bool) -> PolicyGradientKeys {
    let passes = if on_policy { "minibatch_size = 32\nupdates_per_rollout = 1" } else { "minibatch_size = 16\nupdates_per_rollout = 2" };
    toml::from_str(&format!(
        r#"policy = "p"
reference = "p"
reward = "r"
rollout_batch = 32
{passes}
max_new_tokens = 8
policy_lr = 3e-3
"#
    ))
    .unwrap()
}

/// Mean score and KL per iteration of a short run of the group method `own` with a fixed seed.
fn train(own: &dyn GroupKeys, iterations: u64) -> Vec<(f64, f64)> {
    train_with(own, iterations, false)
}

fn train_with(own: &dyn GroupKeys, iterations: u64, on_policy: bool) -> Vec<(f64, f64)> {
    // One thread: the test runner already runs tests side by side on the machine's cores.
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let keys = shared_keys(on_policy);
    own.check().unwrap();
    keys.check(own.group()).unwrap();
    let algorithm = own.algorithm(&keys);
    let mut learner = GroupLearner::new(&keys, algorithm.as_ref(), tiny_models(dir.path()), None);
    let prompts: Vec<String> = (0..32 / own.group().1).map(|i| format!("review {i}:")).collect();
    (1..=iterations)
        .map(|iteration| {
            let metrics = learner.iteration(&prompts, keys.policy_lr, iteration).unwrap();
            (metrics["objective/scores"], metrics["objective/kl"])
        })
        .collect()
}

fn assert_learns(history: &[(f64, f64)], what: &str) {
    let mean = |slice: &[(f64, f64)]| slice.iter().map(|(score, _)| score).sum::<f64>() / slice.len() as f64;
    let (first, last) = (mean(&history[..3]), mean(&history[history.len() - 3..]));
    assert!(first < 0.2, "{what}: a random policy already scores {first}");
    assert!(last > first + 0.3, "{what}: the score went from {first:.3} to {last:.3}: {history:?}");
    let final_kl = history.last().unwrap().1;
    assert!(final_kl > 0.3 && final_kl.is_finite(), "{what}: KL {final_kl}: the policy did not move from the reference");
}

fn grpo(extra: &str) -> GrpoKeys {
    toml::from_str(&format!("group_size = 4\n{extra}")).unwrap()
}

#[test]
fn grpo_raises_a_planted_reward_with_each_loss_type() {
    let history = train(&grpo("beta = 0.04"), 20);
    assert_learns(&history, "grpo");
    assert_eq!(train(&grpo("beta = 0.04"), 3), history[..3].to_vec(), "the same seed gives the same run");
    assert_learns(&train(&grpo("loss_type = \"dr_grpo\""), 20), "dr_grpo");
    assert_learns(&train(&grpo("loss_type = \"dapo\""), 20), "dapo");
    // One step per rollout instead of four: more iterations for as many updates.
    assert_learns(&train_with(&grpo("beta = 0.04"), 50, true), "grpo, one on-policy step per rollout");
    // A heavy KL term holds the policy nearer the reference.
    let held = train(&grpo("beta = 2.0"), 20);
    assert!(held.last().unwrap().1 < history.last().unwrap().1, "β = 2 ended at KL {:?}, β = 0.04 at {:?}", held.last(), history.last());
}

#[test]
fn rloo_raises_a_planted_reward_and_its_kl_penalty_holds_it_back() {
    let rloo = |kl_coef: f64| -> RlooKeys { toml::from_str(&format!("k = 4\nkl_coef = {kl_coef}")).unwrap() };
    let history = train(&rloo(0.01), 20);
    assert_learns(&history, "rloo");
    let held = train(&rloo(1.0), 20);
    assert!(held.last().unwrap().1 < history.last().unwrap().1, "β = 1 ended at KL {:?}, β = 0.01 at {:?}", held.last(), history.last());
}

/// An experiment on the user's files: prompts, and preferences whose chosen responses say "yes"
/// and rejected ones "no".
fn preference_experiment(dir: &Path, stage: &str) -> std::path::PathBuf {
    let prompts: String = (0..40).map(|i| format!("{{\"prompt\": \"Question {i}: is it good?\"}}\n")).collect();
    std::fs::write(dir.join("prompts.jsonl"), prompts).unwrap();
    let pairs: String = (0..80)
        .map(|i| format!("{{\"prompt\": \"Question {}: is it good?\", \"chosen\": \" yes yes\", \"rejected\": \" no no\"}}\n", i % 40))
        .collect();
    std::fs::write(dir.join("pairs.jsonl"), pairs).unwrap();
    let path = dir.join("exp.toml");
    std::fs::write(
        &path,
        format!(
            r#"name = "prefs"
seed = 5
threads = 1

[task]
kind = "jsonl"
prompts = "prompts.jsonl"
eval_fraction = 0.2

[tokenizer]
vocab_size = 300

[models.base]
n_layer = 1
n_head = 2
n_embd = 32
n_ctx = 64
device = "cpu"

{stage}
"#
        ),
    )
    .unwrap();
    path
}

fn run_stage(dir: &Path, stage: &str) -> (bool, String, std::path::PathBuf) {
    let path = preference_experiment(dir, stage);
    let (ok, stdout, stderr) = common::rlhf(&["run", path.to_str().unwrap(), "--out", "out"], dir);
    (ok, stderr, dir.join(stdout.trim()))
}

fn metric_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

#[test]
fn dpo_learns_a_planted_preference_from_a_preference_file() {
    let work = tempfile::tempdir().unwrap();
    let stage = r#"[[stages]]
name = "dpo"
kind = "dpo"
policy = "base"
source = "jsonl"
preferences = "pairs.jsonl"
beta = 0.1
steps = 30
batch_size = 8
lr = 3e-3
warmup_steps = 0
eval_every = 15
eval_prompts = 4
max_new_tokens = 4
"#;
    let (ok, stderr, run) = run_stage(work.path(), stage);
    assert!(ok, "{stderr}");
    let lines = metric_lines(&run.join("dpo/metrics.jsonl"));
    let (start, end) = (&lines[0], lines.last().unwrap());
    assert_eq!(start["step"], 0);
    // Before training the policy is the reference: every implicit reward is 0.
    assert_eq!(start["eval/rewards/margins"], 0.0);
    let gap = |line: &Value| line["eval/logps/chosen"].as_f64().unwrap() - line["eval/logps/rejected"].as_f64().unwrap();
    assert!(gap(end) > gap(start) + 5.0, "log π(yes) − log π(no) went from {} to {}", gap(start), gap(end));
    assert_eq!(end["eval/rewards/accuracies"], 1.0, "{end}");
    assert!(end["eval/rewards/margins"].as_f64().unwrap() > 0.5, "{end}");
    // The implicit rewards are β·(log π − log π_ref): the margin is β times the gap's growth.
    let margin = end["eval/rewards/margins"].as_f64().unwrap();
    assert!(
        (margin - 0.1 * (gap(end) - gap(start))).abs() < 1e-3 * margin.abs().max(1.0),
        "margin {margin}, gaps {} → {}",
        gap(start),
        gap(end)
    );
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["dpo"]["steps"], 30.0);
    assert!(run.join("dpo/checkpoint/model.safetensors").is_file());
    assert_eq!(std::fs::read_to_string(run.join("dpo/eval_final.jsonl")).unwrap().lines().count(), 4);
}

#[test]
fn bad_settings_are_refused_naming_the_key() {
    let work = tempfile::tempdir().unwrap();
    let cases = [
        ("kind = \"grpo\"\npolicy = \"base\"\nreference = \"base\"\nreward = \"gold\"\ngroup_size = 1", "`group_size`"),
        (
            "kind = \"grpo\"\npolicy = \"base\"\nreference = \"base\"\nreward = \"gold\"\ngroup_size = 3\nrollout_batch = 8",
            "`rollout_batch`",
        ),
        ("kind = \"grpo\"\npolicy = \"base\"\nreference = \"base\"\nreward = \"gold\"\nepsilon_high = 1.5", "`epsilon_high`"),
        ("kind = \"rloo\"\npolicy = \"base\"\nreference = \"base\"\nreward = \"gold\"\nk = 1", "`k`"),
        ("kind = \"best_of_n\"\npolicy = \"base\"\nreward = \"gold\"\nn = 0", "`n`"),
        ("kind = \"dpo\"\npolicy = \"base\"\nsource = \"jsonl\"", "`preferences`"),
        ("kind = \"dpo\"\npolicy = \"base\"\nloss = \"ipo\"\nlabel_smoothing = 0.1", "`label_smoothing`"),
        ("kind = \"dpo\"\npolicy = \"base\"\nbogus = 1", "`bogus`"),
        ("kind = \"grpo\"\npolicy = \"base\"\nreference = \"base\"\nreward = \"nowhere\"", "`reward`"),
    ];
    for (index, (stage, key)) in cases.iter().enumerate() {
        let dir = work.path().join(index.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let path = preference_experiment(&dir, &format!("[[stages]]\nname = \"s\"\n{stage}\n"));
        let (ok, _, stderr) = common::rlhf(&["validate", path.to_str().unwrap()], &dir);
        assert!(!ok, "{stage}: accepted");
        assert!(stderr.contains(key) && stderr.contains("exp.toml:"), "{stage}: the error does not name {key} at a line:\n{stderr}");
    }
    // A programmatic reward the task lacks is refused when the stage starts, by name.
    let stage = "[[stages]]\nname = \"s\"\nkind = \"grpo\"\npolicy = \"base\"\nreference = \"base\"\nreward = \"verifier\"\nrollout_batch = 8\ngroup_size = 2\nminibatch_size = 8\niterations = 1\neval_prompts = 2\nmax_new_tokens = 2";
    let (ok, stderr, _) = run_stage(&work.path().join("0"), stage);
    assert!(!ok && stderr.contains("`reward = \"verifier\"` needs a task with a verifier"), "{stderr}");
}

#[test]
fn best_of_n_keeps_what_its_reward_likes_at_the_kl_it_reports() {
    let work = tempfile::tempdir().unwrap();
    let stage = r#"[[stages]]
name = "bon"
kind = "best_of_n"
policy = "base"
reward = "gold"
n = 8
eval_prompts = 6
max_new_tokens = 6
batch_size = 16
demonstrations = 5

# Rejection-sampling fine-tuning: SFT on best-of-n's winners.
[[stages]]
name = "expert"
kind = "sft"
model = "base"
demonstrations = "bon"
steps = 3
batch_size = 2
seq_len = 48
eval_every = 3
eval_batches = 1
samples = 1
"#;
    // The JSONL task has no gold oracle; run best-of-n on the synthetic task instead.
    let path = preference_experiment(work.path(), stage);
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "kind = \"jsonl\"\nprompts = \"prompts.jsonl\"",
        "kind = \"synthetic-reviews\"\ncorpus_size = 50\ndemonstrations_size = 40\nprompts_size = 20",
    );
    std::fs::write(&path, text).unwrap();
    let (ok, stdout, stderr) = common::rlhf(&["run", path.to_str().unwrap(), "--out", "out"], work.path());
    assert!(ok, "{stderr}");
    let run = work.path().join(stdout.trim());
    let lines = metric_lines(&run.join("bon/metrics.jsonl"));
    let steps: Vec<u64> = lines.iter().map(|line| line["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [1, 2, 4, 8]);
    let figure = |line: &Value, name: &str| line[name].as_f64().unwrap();
    for pair in lines.windows(2) {
        // Each n keeps the better of the smaller n's choice and more draws: the score cannot fall.
        assert!(figure(&pair[1], "eval/rm_score") >= figure(&pair[0], "eval/rm_score"), "{pair:?}");
        assert!(figure(&pair[1], "eval/kl_bound") > figure(&pair[0], "eval/kl_bound"));
    }
    for line in &lines {
        // The reward is gold itself; the reference is the policy, so KL is best-of-n's own.
        assert!((figure(line, "eval/rm_score") - figure(line, "eval/gold_score")).abs() < 1e-6, "{line}");
        assert!(figure(line, "eval/kl") <= figure(line, "eval/kl_bound") + 1e-9, "{line}");
        let n = line["step"].as_f64().unwrap();
        assert!((figure(line, "eval/kl_bound") - (n.ln() - (n - 1.0) / n)).abs() < 1e-9);
    }
    let chosen = metric_lines(&run.join("bon/eval_final.jsonl"));
    assert_eq!(chosen.len(), 6);
    let demonstrations = metric_lines(&run.join("bon/demonstrations.jsonl"));
    assert_eq!(demonstrations.len(), 5);
    assert!(demonstrations.iter().all(|d| d["prompt"].is_string() && d["response"].is_string()));
    // The SFT stage trained on them and was evaluated on the task's held-out demonstrations.
    let expert = metric_lines(&run.join("expert/metrics.jsonl"));
    assert_eq!(expert.last().unwrap()["step"], 3);
    assert!(expert.last().unwrap()["eval/loss"].as_f64().unwrap().is_finite());

    // Demonstrations that are not there, or in an lm stage, are refused naming the key.
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("demonstrations = \"bon\"", "demonstrations = \"missing.jsonl\"")).unwrap();
    let (ok, _, stderr) = common::rlhf(&["run", path.to_str().unwrap(), "--out", "again"], work.path());
    assert!(!ok && stderr.contains("`demonstrations`: no file `missing.jsonl`"), "{stderr}");
    std::fs::write(&path, text.replace("kind = \"sft\"", "kind = \"lm\"")).unwrap();
    let (ok, _, stderr) = common::rlhf(&["validate", path.to_str().unwrap()], work.path());
    assert!(!ok && stderr.contains("`demonstrations`"), "{stderr}");
}

#[test]
fn the_report_puts_every_rl_stage_on_one_frontier_with_its_costs() {
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("all.toml"), common::ALL_KINDS_EXPERIMENT).unwrap();
    let (ok, stdout, stderr) = common::rlhf(&["run", "all.toml", "--out", "out"], work.path());
    assert!(ok, "{stderr}");
    let run = work.path().join(stdout.trim());
    let (ok, _, stderr) = common::rlhf(&["report", run.to_str().unwrap(), "-o", "report"], work.path());
    assert!(ok, "{stderr}");
    let report = work.path().join("report");
    assert!(report.join("plots/methods-gold-vs-kl.png").is_file());
    let summary = std::fs::read_to_string(report.join("summary.md")).unwrap();
    let costs = &summary[summary.find("## RL stages: where they ended and what it cost").expect("a cost table")..];
    let costs = &costs[..costs[1..].find("\n## ").map_or(costs.len(), |end| end + 1)]; // up to the next section
    let rows: Vec<&str> = costs.lines().filter(|line| line.starts_with("| ") && !line.starts_with("| run")).collect();
    let kinds: Vec<&str> = rows.iter().map(|row| row.split('|').nth(2).unwrap().trim()).collect();
    assert_eq!(kinds, ["ppo", "dpo", "grpo", "rloo", "best_of_n"], "{costs}");
    // The summed costs match the metrics the stages wrote: GRPO sampled 4 iterations × 8
    // responses, each read by the policy, the reference and the reward model, then trained on
    // in two passes (forward and backward).
    let grpo = rows[2].split('|').map(str::trim).collect::<Vec<_>>();
    let number = rlhf_lab::report::table::format_number;
    assert_eq!(grpo[8], number((4 * 8 * 3 + 4 * 8 * 2) as f64), "{}", rows[2]);
    assert_eq!(grpo[9], number((4 * 8 * 2) as f64), "{}", rows[2]);
    let tokens: f64 = metric_lines(&run.join("grpo/metrics.jsonl")).iter().filter_map(|l| l["cost/generated_tokens"].as_f64()).sum();
    assert_eq!(grpo[7], number(tokens));
}
