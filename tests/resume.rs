//! Kill and resume, for every stage kind, at the points where a stage's loop can be cut: in the
//! middle of a stage, right after the state of its last step is saved (before the stage records
//! its summary), right after early stopping is decided and saved — and inside a state save,
//! between any two of its file writes and renames. Each resumed run must finish with the summary,
//! metrics, samples and alerts of an uninterrupted one, and with TensorBoard event files that hold
//! its metric lines exactly once. The process is stopped with
//! `RLHF_TEST_ABORT_AT=STAGE:STEP:POINT`, which aborts it like `kill -9` at that point of that
//! step's state save (`saved`: once it is complete). Peak memory figures (`memory/*`) measure the
//! process and are left out of the comparison.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Early stopping in both language-model stages: nothing beats the first evaluation by 10 nats,
/// so each stops at its second evaluation (pretrain at step 10, sft at step 10).
const EARLY_STOPPING: &[&str] =
    &["stages.pretrain.patience=1", "stages.pretrain.min_delta=10.0", "stages.sft.patience=1", "stages.sft.min_delta=10.0"];

fn experiment(dir: &Path) -> PathBuf {
    let path = dir.join("resume.toml");
    std::fs::write(&path, common::ALL_KINDS_EXPERIMENT).unwrap();
    path
}

fn rlhf_run(dir: &Path, out: &str, overrides: &[&str], abort_after: Option<&str>) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rlhf"));
    command.arg("run").arg(experiment(dir)).args(["--out", out]).current_dir(dir);
    for assignment in overrides {
        command.args(["--set", assignment]);
    }
    if let Some(point) = abort_after {
        command.env("RLHF_TEST_ABORT_AT", point);
    }
    let output = command.output().unwrap();
    (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
}

/// The one run directory under `dir/out/all-kinds/`.
fn run_dir(dir: &Path, out: &str) -> PathBuf {
    let runs: Vec<PathBuf> = std::fs::read_dir(dir.join(out).join("all-kinds")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    runs[0].clone()
}

fn lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

/// A stage's metric lines without wall-clock figures, which differ between any two runs.
fn deterministic(mut lines: Vec<Value>) -> Vec<Value> {
    for line in &mut lines {
        line.as_object_mut().unwrap().retain(|name, _| !name.starts_with("time/") && !name.ends_with("_per_s"));
    }
    lines
}

/// summary.json (an empty object before any stage has finished).
fn summary(run: &Path) -> Value {
    std::fs::read_to_string(run.join("summary.json")).map_or(Value::Object(Default::default()), |text| serde_json::from_str(&text).unwrap())
}

/// summary.json without the peak memory figures (`memory/*`), which measure the process that
/// ran each stage; every stage must have one.
fn deterministic_summary(run: &Path) -> Value {
    let mut summary = summary(run);
    for (stage, figures) in summary.as_object_mut().unwrap() {
        let peak = figures.as_object().unwrap().iter().any(|(name, value)| name.starts_with("memory/") && value.is_f64());
        assert!(peak, "{stage}: no peak memory in {}", run.display());
        *figures = common::without_memory(figures);
    }
    summary
}

/// The resumed run `cut` ended as the uninterrupted `whole`: summary, metrics and samples.
fn assert_same_run(cut: &Path, whole: &Path, case: &str) {
    assert_eq!(deterministic_summary(cut), deterministic_summary(whole), "{case}: summary.json differs from the uninterrupted run");
    for stage in ["pretrain", "sft", "rm", "ppo", "dpo", "grpo", "rloo", "bon"] {
        let (expected, got) = (whole.join(stage), cut.join(stage));
        let metrics = |dir: &Path| deterministic(lines(&dir.join("metrics.jsonl")));
        assert_eq!(metrics(&got), metrics(&expected), "{case}: {stage}/metrics.jsonl differs");
        for file in ["samples.jsonl", "eval_final.jsonl"] {
            assert_eq!(lines(&got.join(file)), lines(&expected.join(file)), "{case}: {stage}/{file} differs");
        }
        // The resumed stage wrote its event file anew from the lines it kept, then went on.
        common::assert_events_match_metrics(&got);
    }
    assert_eq!(lines(&cut.join("alerts.jsonl")), lines(&whole.join("alerts.jsonl")), "{case}: alerts.jsonl differs");
}

/// What a crash in the middle of writing a file leaves: the newest file of a half-written state
/// cut to half its length (the save that was interrupted had not marked that state complete).
fn damage(stage_dir: &Path) {
    let partial = stage_dir.join("state.partial");
    if partial.join("progress.json").exists() || !partial.is_dir() {
        return;
    }
    let newest = std::fs::read_dir(&partial)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .max_by_key(|path| std::fs::metadata(path).unwrap().modified().unwrap());
    if let Some(file) = newest {
        let length = std::fs::metadata(&file).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(length / 2).unwrap();
    }
}

/// Runs the pipeline uninterrupted, then once per point: aborted right after that save, then
/// resumed; the resumed run must end exactly as the uninterrupted one.
fn assert_resumes_identically(overrides: &[&str], points: &[&str]) {
    let work = tempfile::tempdir().unwrap();
    let (ok, stderr) = rlhf_run(work.path(), "whole", overrides, None);
    assert!(ok, "{stderr}");
    let whole = run_dir(work.path(), "whole");
    for (index, point) in points.iter().enumerate() {
        // `POINT=STEP`: the resumed stage must continue from the state of step STEP.
        let (point, resumed_step) = point.split_once('=').map_or((*point, None), |(point, step)| (point, Some(step)));
        let out = format!("cut{index}");
        let (ok, stderr) = rlhf_run(work.path(), &out, overrides, Some(point));
        assert!(!ok, "the run was not stopped at {point}:\n{stderr}");
        let mut parts = point.splitn(3, ':');
        let (stage, step, at) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
        assert!(stderr.contains(&format!("aborting at {at} of the state save of {stage} step {step}")), "{stderr}");
        let cut = run_dir(work.path(), &out);
        damage(&cut.join(stage));
        assert!(summary(&cut).get(stage).is_none(), "{point}: the stage recorded its summary before the abort");

        let (ok, stdout, stderr) = common::rlhf(&["run", "--resume", cut.to_str().unwrap()], work.path());
        assert!(ok, "resuming after {point} failed:\n{stderr}");
        assert_eq!(work.path().join(stdout.trim()), cut);
        let resumed = format!("resuming stage=\"{stage}\" step={}", resumed_step.unwrap_or(step));
        assert!(stderr.contains(&resumed), "{point}: no `{resumed}` in\n{stderr}");
        assert_same_run(&cut, &whole, point);
        assert_eq!(
            std::fs::read_to_string(cut.join("rm/eval_pairs.jsonl")).unwrap(),
            std::fs::read_to_string(whole.join("rm/eval_pairs.jsonl")).unwrap()
        );
    }
}

#[test]
fn lm_and_sft_resume_mid_stage_and_after_their_last_save() {
    assert_resumes_identically(&[], &["pretrain:10:saved", "pretrain:20:saved", "sft:5:saved", "sft:10:saved"]);
}

#[test]
fn reward_resumes_mid_stage_and_after_its_last_save() {
    assert_resumes_identically(&[], &["rm:3:saved", "rm:6:saved"]);
}

#[test]
fn an_ensemble_reward_stage_resumes_mid_stage() {
    // The members' heads and their optimizer are a part of the state of their own.
    assert_resumes_identically(&["stages.rm.ensemble=3"], &["rm:3:saved"]);
}

#[test]
fn ppo_resumes_mid_stage_and_after_its_last_save() {
    assert_resumes_identically(&[], &["ppo:3:saved", "ppo:6:saved"]);
}

#[test]
fn dpo_grpo_and_rloo_resume_mid_stage_and_after_their_last_save() {
    assert_resumes_identically(&[], &["dpo:2:saved", "dpo:4:saved", "grpo:2:saved", "grpo:4:saved", "rloo:2:saved", "rloo:4:saved"]);
}

#[test]
fn lora_and_checkpointed_stages_resume_mid_stage() {
    // The adapters (with the reward model's head, and PPO's value model) are the state; the
    // frozen base is reloaded from the checkpoint it came from — itself adapters over
    // pretraining for the reward model, PPO and DPO.
    let lora = [
        "stages.sft.lora={r = 4}",
        "stages.rm.lora={r = 4}",
        "stages.rm.gradient_checkpointing=true",
        "stages.ppo.lora={r = 4, targets = [\"q\", \"k\", \"v\"]}",
        "stages.ppo.gradient_checkpointing=true",
        "stages.dpo.lora={r = 4, dropout = 0.1}",
        "stages.grpo.lora={r = 4, merge = true}",
        "stages.rloo.gradient_checkpointing=true",
    ];
    assert_resumes_identically(&lora, &["sft:5:saved", "rm:3:saved", "ppo:3:saved", "dpo:2:saved", "grpo:2:saved", "rloo:2:saved"]);
}

#[test]
fn a_stage_resumed_after_early_stopping_does_not_train_on() {
    let work = tempfile::tempdir().unwrap();
    let (ok, stderr) = rlhf_run(work.path(), "whole", EARLY_STOPPING, None);
    assert!(ok, "{stderr}");
    let whole = summary(&run_dir(work.path(), "whole"));
    for stage in ["pretrain", "sft"] {
        assert_eq!(whole[stage]["stopped_early"], 1.0, "{stage} did not stop early: {}", whole[stage]);
        assert_eq!(whole[stage]["steps"], 10.0);
    }
    assert_resumes_identically(EARLY_STOPPING, &["pretrain:10:saved", "sft:10:saved"]);
}

/// A crash inside a state save, between any two of its writes, must leave a state that resumes
/// to the uninterrupted run: the previous state until the new one is complete (its
/// `progress.json` written), the new one from then on — never new weights beside old progress.
/// One model (sft, saves at steps 5 and 10) and two (PPO's policy and value, at 3 and 6).
#[test]
fn a_crash_inside_a_state_save_resumes_identically() {
    let inside = |stage: &str, previous: u64, step: u64, files: &[&str]| -> Vec<String> {
        let mut points: Vec<String> = files.iter().map(|file| format!("{stage}:{step}:{file}={previous}")).collect();
        points.extend(["progress.json", "swapped-out", "swapped-in"].iter().map(|point| format!("{stage}:{step}:{point}")));
        points
    };
    let mut points = inside("sft", 5, 10, &["model.safetensors", "model.optimizer.safetensors"]);
    let ppo_files = ["policy.safetensors", "policy.optimizer.safetensors", "value.safetensors", "value.optimizer.safetensors"];
    points.extend(inside("ppo", 3, 6, &ppo_files));
    let points: Vec<&str> = points.iter().map(String::as_str).collect();
    assert_resumes_identically(&[], &points);
}

/// Faults at scale: the pipeline (saving state at every evaluation) killed at 20 moments drawn at
/// random among all the points of all its state saves, resumed after each kill, must end exactly
/// as the uninterrupted run. The schedule's seed is printed; `RLHF_KILL_SEED=N` replays it.
#[test]
fn a_run_killed_again_and_again_ends_as_an_uninterrupted_one() {
    use rand::seq::index::sample;
    use rand::{Rng, SeedableRng};

    const KILLS: usize = 20;
    let overrides = ["stages.pretrain.eval_every=2", "stages.sft.eval_every=2", "stages.rm.eval_every=1", "stages.ppo.eval_every=1"];
    // Every state save in order, with the points a kill can hit in it (a stage's first save has no
    // old state to set aside).
    let mut saves: Vec<(&str, u64, Vec<&str>)> = Vec::new();
    for (stage, steps, every, files) in [
        ("pretrain", 20, 2, vec!["model.safetensors", "model.optimizer.safetensors"]),
        ("sft", 10, 2, vec!["model.safetensors", "model.optimizer.safetensors"]),
        ("rm", 6, 1, vec!["model.safetensors", "model.optimizer.safetensors"]),
        ("ppo", 6, 1, vec!["policy.safetensors", "policy.optimizer.safetensors", "value.safetensors", "value.optimizer.safetensors"]),
    ] {
        for step in (every..=steps).step_by(every as usize) {
            let mut points = files.clone();
            points.push("progress.json");
            if step > every {
                points.push("swapped-out");
            }
            points.extend(["swapped-in", "saved"]);
            saves.push((stage, step, points));
        }
    }
    let seed: u64 = std::env::var("RLHF_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64));
    eprintln!("kill schedule seed: {seed} (replay with RLHF_KILL_SEED={seed})");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    // At most one kill per save: once a save has written its progress, later points of the same
    // save are never reached again.
    let mut chosen = sample(&mut rng, saves.len(), KILLS).into_vec();
    chosen.sort_unstable();
    let schedule: Vec<String> = chosen
        .into_iter()
        .map(|index| {
            let (stage, step, points) = &saves[index];
            format!("{stage}:{step}:{}", points[rng.random_range(0..points.len())])
        })
        .collect();
    eprintln!("kills: {schedule:?}");

    let work = tempfile::tempdir().unwrap();
    let (ok, stderr) = rlhf_run(work.path(), "whole", &overrides, None);
    assert!(ok, "{stderr}");
    let whole = run_dir(work.path(), "whole");
    let (ok, stderr) = rlhf_run(work.path(), "cut", &overrides, Some(&schedule[0]));
    assert!(!ok, "not stopped at {}:\n{stderr}", schedule[0]);
    let cut = run_dir(work.path(), "cut");
    for point in &schedule[1..] {
        let output = Command::new(env!("CARGO_BIN_EXE_rlhf"))
            .args(["run", "--resume", cut.to_str().unwrap()])
            .env("RLHF_TEST_ABORT_AT", point)
            .current_dir(work.path())
            .output()
            .unwrap();
        assert!(!output.status.success(), "seed {seed}: not stopped at {point}:\n{}", String::from_utf8_lossy(&output.stderr));
    }
    let (ok, _, stderr) = common::rlhf(&["run", "--resume", cut.to_str().unwrap()], work.path());
    assert!(ok, "seed {seed}: the last resume failed:\n{stderr}");
    assert_same_run(&cut, &whole, &format!("seed {seed}"));
}
