//! PPO end to end: a tiny policy learns to raise a programmatic reward while its KL to the
//! reference stays bounded, and a reward model learned from preferences (with the true reward
//! behind them); the settings that shape scores and updates (end-of-text penalty, score clip,
//! gradient accumulation, approximate-KL early stop, temperature) do what they say; and a PPO
//! stage stopped mid-run resumes to the metrics of an uninterrupted run.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{LikedTokenShare, LIKED_BELOW};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rlhf_lab::model::generate::{generate, left_pad, GenerateOptions, Sampling};
use rlhf_lab::model::reward::RewardModel;
use rlhf_lab::model::{Gpt2Config, LanguageModel, Precision, ReferenceModel};
use rlhf_lab::stages::ppo::{shared_value_head, Critic, Models, NormalizationSource, Ppo, PpoSettings, Scorer};
use rlhf_lab::stages::reward::bradley_terry_loss;
use rlhf_lab::train::optimizer::{AdamW, AdamWConfig};
use serde_json::Value;
use tch::{Device, Kind, Tensor};

const VOCAB: i64 = 300;

fn tiny_models(dir: &Path, shared_backbone: bool) -> Models {
    tiny_models_with_dropout(dir, shared_backbone, 0.0)
}

/// A random policy (and reference, and value model) saved and loaded as a checkpoint whose
/// dropout probabilities are `dropout`, as a Hugging Face GPT-2's are (0.1).
fn tiny_models_with_dropout(dir: &Path, shared_backbone: bool, dropout: f64) -> Models {
    let config = Gpt2Config { embd_pdrop: dropout, attn_pdrop: dropout, resid_pdrop: dropout, ..common::tiny_config(VOCAB, 32, 32, 2, 2) };
    tch::manual_seed(3);
    LanguageModel::fresh(&config, common::tiny_tokenizer(VOCAB as usize), Device::Cpu, Precision::Fp32).save(dir).unwrap();
    models_from_checkpoint(dir, shared_backbone)
}

/// Like `tiny_models`, but the policy ends a response early and often: the final layer norm's
/// bias points along end-of-text's embedding, so that responses (and micro-batches) differ in
/// length.
fn tiny_models_of_varied_lengths(dir: &Path) -> Models {
    tch::manual_seed(3);
    let model = LanguageModel::fresh(
        common::tiny_config(VOCAB, 32, 32, 2, 2),
        common::tiny_tokenizer(VOCAB as usize),
        Device::Cpu,
        Precision::Fp32,
    );
    let mut variables = model.vs.variables();
    let towards_end = variables["transformer.wte.weight"].get(0) * 280.0;
    tch::no_grad(|| variables.get_mut("transformer.ln_f.bias").unwrap().copy_(&towards_end));
    model.save(dir).unwrap();
    models_from_checkpoint(dir, false)
}

fn models_from_checkpoint(dir: &Path, shared_backbone: bool) -> Models {
    let load = || LanguageModel::load(dir, Device::Cpu, Precision::Fp32).unwrap();
    let mut reference = load();
    reference.vs.freeze();
    let mut policy = load();
    let critic = if shared_backbone {
        Critic::SharedHead(shared_value_head(&mut policy, Precision::Fp32))
    } else {
        Critic::Model(Box::new(RewardModel::load(dir, Device::Cpu, Precision::Fp32, true).unwrap()))
    };
    Models { policy, reference: ReferenceModel::Separate(Box::new(reference)), reward: Box::new(LikedTokenShare), critic }
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

/// Settings for the single-iteration tests below: 16 rollouts in two minibatches of 8, raw scores
/// (no normalisation), no end-of-text penalty — each overridden by the keys in `extra`.
fn one_iteration_settings(extra: &str) -> PpoSettings {
    let mut table: toml::Table = toml::from_str(
        r#"policy = "p"
reference = "p"
reward = "r"
value = "p"
rollout_batch = 16
minibatch_size = 8
max_new_tokens = 8
policy_lr = 3e-3
value_lr = 3e-3
reward_normalization = "none"
missing_eos_penalty = 0.0
"#,
    )
    .unwrap();
    table.extend(toml::from_str::<toml::Table>(extra).unwrap());
    table.try_into().unwrap()
}

/// The policy's and the value model's weights, by name.
fn weights(models: &Models) -> Vec<(String, Tensor)> {
    let mut weights: Vec<(String, Tensor)> =
        models.policy.vs.variables().into_iter().map(|(name, t)| (format!("policy.{name}"), t.detach().copy())).collect();
    if let Critic::Model(value) = &models.critic {
        weights.extend(value.vs.variables().into_iter().map(|(name, t)| (format!("value.{name}"), t.detach().copy())));
    }
    weights.sort_by(|a, b| a.0.cmp(&b.0));
    weights
}

/// One iteration on 16 prompts from `models`; its metrics and the weights it left.
fn one_iteration(settings: &PpoSettings, models: Models) -> (rlhf_lab::run::metrics::Metrics, Vec<(String, Tensor)>) {
    tch::set_num_threads(1);
    let mut ppo = Ppo::new(settings, models, None);
    let prompts: Vec<String> = (0..16).map(|i| format!("review {i}:")).collect();
    let metrics = ppo.iteration(&prompts, (settings.policy_lr, settings.value_lr), 1).unwrap();
    (metrics, weights(&ppo.models))
}

/// The largest absolute difference between two sets of weights, and the name where it is.
fn max_difference(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> (f64, String) {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|((name, x), (other, y))| {
            assert_eq!(name, other);
            ((x - y).abs().max().double_value(&[]), name.clone())
        })
        .fold((0.0, String::new()), |best, next| if next.0 > best.0 { next } else { best })
}

/// Micro-batches of unequal token counts accumulate to exactly the minibatch's update: each
/// micro-batch's token-mean losses weigh by its share of the minibatch's tokens (a plain
/// 1/grad_accum weighting favours the tokens of short responses, and fails this test). Two Adam
/// steps on one minibatch of 16: Adam divides by |g|, so float noise in near-zero gradients moves
/// a weight by up to ~1e-5, while a wrongly weighted gradient flips whole updates (2·lr = 6e-3).
#[test]
fn gradient_accumulation_gives_the_update_of_the_whole_minibatch() {
    let dir = tempfile::tempdir().unwrap();
    let initial = weights(&tiny_models_of_varied_lengths(dir.path()));
    let run = |accumulation: usize| {
        one_iteration(
            &one_iteration_settings(&format!("grad_accum = {accumulation}\nppo_epochs = 2\nminibatch_size = 16")),
            tiny_models_of_varied_lengths(dir.path()),
        )
    };
    let (metrics, whole) = run(1);
    let ended = metrics["objective/eos_fraction"];
    assert!((0.2..0.9).contains(&ended), "responses should differ in length; {ended} of them ended");
    let (moved, _) = max_difference(&whole, &initial);
    assert!(moved > 1e-3, "the iteration hardly moved the weights ({moved})");
    for accumulation in [2, 4] {
        let split = run(accumulation).1;
        let (difference, name) = max_difference(&split, &whole);
        assert!(
            difference < 1e-4,
            "grad_accum = {accumulation}: {name} differs by {difference} from one minibatch (weights moved {moved})"
        );
    }
}

/// `target_approx_kl` ends the epochs at the first minibatch after which the policy is that far
/// from the one that sampled: the first minibatch trains the sampling policy (KL ≈ 0), the second
/// a moved one, so a tiny target stops after two minibatches — one epoch of 16 rollouts.
#[test]
fn target_approx_kl_stops_the_epochs_once_the_policy_moved_that_far() {
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &str| one_iteration(&one_iteration_settings(extra), tiny_models(dir.path(), false));
    let (stopped, stopped_weights) = run("ppo_epochs = 4\ntarget_approx_kl = 1e-6");
    assert_eq!(stopped["policy/early_stop"], 1.0);
    let (one_epoch, one_epoch_weights) = run("ppo_epochs = 1");
    assert_eq!(one_epoch["policy/early_stop"], 0.0);
    assert_eq!(max_difference(&stopped_weights, &one_epoch_weights).0, 0.0, "the stop was not after the first epoch's two minibatches");
    let (unreached, unreached_weights) = run("ppo_epochs = 4\ntarget_approx_kl = 1e3");
    assert_eq!(unreached["policy/early_stop"], 0.0);
    let (_, four_epochs) = run("ppo_epochs = 4");
    assert_eq!(max_difference(&unreached_weights, &four_epochs).0, 0.0, "a target never reached changed the update");
    assert!(max_difference(&four_epochs, &one_epoch_weights).0 > 1e-4, "four epochs trained no more than one");
}

/// Rollouts sample at `temperature` and the optimisation recomputes log-probs at the same
/// temperature: the sampler's log-probs and the recomputed ones agree. That is what lets a run
/// with a separate value model keep the sampled ones: a pass over the rollout fewer, and the
/// same update up to that rounding.
#[test]
fn sampled_log_probs_agree_with_recomputed_ones_and_save_a_pass() {
    let dir = tempfile::tempdir().unwrap();
    for temperature in [0.7, 1.0, 1.3] {
        let settings = one_iteration_settings(&format!("temperature = {temperature}"));
        // A shared head needs the policy's states: the rollout recomputes and measures the gap.
        let (metrics, _) = one_iteration(&settings, tiny_models(dir.path(), true));
        let gap = metrics["rollout/sampling_logprob_gap"];
        assert!(gap < 1e-5, "temperature {temperature}: sampled and recomputed log-probs differ by up to {gap}");
    }
    let settings = one_iteration_settings("");
    let (separate, _) = one_iteration(&settings, tiny_models(dir.path(), false));
    assert!(!separate.contains_key("rollout/sampling_logprob_gap"), "a separate value model recomputed the policy's log-probs");
    let rollouts = settings.rollout_batch as f64;
    let trained = 2.0 * rollouts * settings.ppo_epochs as f64; // policy and value model, every epoch
                                                               // Scoring: the reference and the value model (the reward here is a rule), not the policy.
    assert_eq!(separate["cost/forward_passes"], trained + 2.0 * rollouts);
}

/// Every response scores `0.5`: the rollout's scores are then 0.5 less `missing_eos_penalty` for
/// each response cut off by `max_new_tokens`, clipped to ±`score_clip`.
struct Constant;

impl Scorer for Constant {
    fn score(&self, _prompts: &[Vec<i64>], responses: &[Vec<i64>]) -> Tensor {
        Tensor::full([responses.len() as i64], 0.5, (Kind::Float, Device::Cpu))
    }
}

#[test]
fn responses_cut_off_pay_the_missing_eos_penalty_then_scores_are_clipped() {
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &str| {
        let models = Models { reward: Box::new(Constant), ..tiny_models_of_varied_lengths(dir.path()) };
        one_iteration(&one_iteration_settings(extra), models).0
    };
    let penalised = run("missing_eos_penalty = 1.0");
    let cut_off = 1.0 - penalised["objective/eos_fraction"];
    assert!(cut_off > 0.1 && cut_off < 0.9, "{cut_off} of the responses were cut off");
    let close = |got: f64, expected: f64| (got - expected).abs() < 1e-6;
    assert!(close(penalised["objective/scores"], 0.5 - cut_off), "scores {} with {cut_off} cut off", penalised["objective/scores"]);
    let clipped = run("missing_eos_penalty = 1.0\nscore_clip = 0.25");
    // the same rollout (same seed): ended ones 0.5 → 0.25, cut-off ones −0.5 → −0.25
    assert_eq!(clipped["objective/eos_fraction"], penalised["objective/eos_fraction"]);
    assert!(close(clipped["objective/scores"], 0.25 - 0.5 * cut_off), "clipped scores {}", clipped["objective/scores"]);
    let unpenalised = run("missing_eos_penalty = 0.0");
    assert!(close(unpenalised["objective/scores"], 0.5) && unpenalised["objective/scores_std"] < 1e-6);
}

/// A response of 8 tokens, `liked` of them liked (ids 1–29), the others not (30–299), shuffled.
fn response_with(rng: &mut ChaCha8Rng, liked: usize) -> Vec<i64> {
    let mut ids: Vec<i64> =
        (0..8).map(|i| if i < liked { rng.random_range(1..LIKED_BELOW) } else { rng.random_range(LIKED_BELOW..VOCAB) }).collect();
    ids.shuffle(rng);
    ids
}

/// A reward model trained with the Bradley–Terry loss on preferences for responses with more
/// liked tokens — what `LikedTokenShare` measures — on the backbone of the checkpoint in `dir`.
fn reward_model_learned_from_preferences(dir: &Path) -> RewardModel {
    tch::manual_seed(5);
    let model = RewardModel::load(dir, Device::Cpu, Precision::Fp32, true).unwrap();
    let prompt = model.tokenizer.encode("review 1:").unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mut pairs = |n: usize| -> Vec<(Vec<i64>, Vec<i64>)> {
        (0..n)
            .map(|_| {
                let liked = rng.random_range(1..=5);
                let fewer = rng.random_range(0..liked);
                (response_with(&mut rng, liked), response_with(&mut rng, fewer))
            })
            .collect()
    };
    let (train, held_out) = (pairs(4096), pairs(256));
    let scores = |batch: &[(Vec<i64>, Vec<i64>)], train: bool| {
        let rows: Vec<Vec<i64>> =
            batch.iter().map(|(c, _)| c).chain(batch.iter().map(|(_, r)| r)).map(|r| [prompt.as_slice(), r].concat()).collect();
        let (ids, mask) = left_pad(&rows, 0, Device::Cpu);
        let scores = model.scores(&ids, &mask, train);
        let n = batch.len() as i64;
        (scores.narrow(0, 0, n), scores.narrow(0, n, n))
    };
    let mut optimizer = AdamW::new(&model.vs, AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 });
    let (no_margin, no_ties) = (Tensor::zeros([32], (Kind::Float, Device::Cpu)), Tensor::zeros([32], (Kind::Bool, Device::Cpu)));
    for batch in train.chunks(32) {
        let (chosen, rejected) = scores(batch, true);
        bradley_terry_loss(&chosen, &rejected, &no_margin, &no_ties, 0.0).backward();
        optimizer.step(1e-3).unwrap();
        optimizer.zero_grad().unwrap();
    }
    let _no_grad = tch::no_grad_guard();
    let (chosen, rejected) = scores(&held_out, false);
    let accuracy = chosen.gt_tensor(&rejected).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
    assert!(accuracy > 0.85, "the reward model learned the preferences to only {accuracy} held-out accuracy");
    model
}

/// The mean liked-token share of 64 responses the policy samples (the true reward the reward
/// model's preferences came from).
fn liked_share(policy: &LanguageModel) -> f64 {
    let _no_grad = tch::no_grad_guard();
    let prompts: Vec<Vec<i64>> = (0..64).map(|i| policy.tokenizer.encode(&format!("review {i}:")).unwrap()).collect();
    let options = GenerateOptions {
        max_new_tokens: 8,
        sampling: Sampling::Sample { temperature: 1.0, top_k: None, top_p: None },
        seed: Some(9),
        use_kv_cache: true,
    };
    let generation = generate(policy.transformer.as_ref(), &prompts, policy.tokenizer.stop_ids(), &options).unwrap();
    LikedTokenShare.score(&prompts, &generation.completions()).mean(Kind::Float).double_value(&[])
}

/// The whole loop at test scale: preferences → a learned reward model → PPO against it. The
/// policy raises the learned score (normalised on the starting policy) and, through it, the true
/// reward the preferences expressed.
#[test]
fn ppo_against_a_learned_reward_model_raises_its_score_and_the_true_reward() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let models = tiny_models(dir.path(), false);
    let models = Models { reward: Box::new(reward_model_learned_from_preferences(dir.path())), ..models };
    let settings = settings(0.05, false);
    let mut ppo = Ppo::new(&settings, models, None);
    let prompts: Vec<String> = (0..32).map(|i| format!("review {i}:")).collect();
    ppo.measure_reward_normalization(&prompts, 11).unwrap();
    let true_before = liked_share(&ppo.models.policy);
    let scores: Vec<f64> = (1..=25)
        .map(|iteration| ppo.iteration(&prompts, (settings.policy_lr, settings.value_lr), iteration).unwrap()["objective/scores"])
        .collect();
    let true_after = liked_share(&ppo.models.policy);
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    let (first, last) = (mean(&scores[..3]), mean(&scores[scores.len() - 3..]));
    assert!(first.abs() < 0.5, "normalised on the starting policy, the first scores average {first}");
    assert!(last > first + 2.0, "the learned reward went from {first:.3} to {last:.3}: {scores:?}");
    assert!(true_after > true_before + 0.5, "the liked-token share went from {true_before:.3} to {true_after:.3}");
}
