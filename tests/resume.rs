//! Kill and resume, for every stage kind, at the points where a stage's loop can be cut: in the
//! middle of a stage, right after the state of its last step is saved (before the stage records
//! its summary), and right after early stopping is decided and saved. Each resumed run must
//! finish with the summary, metrics and samples of an uninterrupted one. The process is stopped
//! with `RLHF_TEST_ABORT_AFTER_SAVE=STAGE:STEP`, which aborts it like `kill -9` right after that
//! save.

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
        command.env("RLHF_TEST_ABORT_AFTER_SAVE", point);
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

/// Runs the pipeline uninterrupted, then once per point: aborted right after that save, then
/// resumed; the resumed run must end exactly as the uninterrupted one.
fn assert_resumes_identically(overrides: &[&str], points: &[&str]) {
    let work = tempfile::tempdir().unwrap();
    let (ok, stderr) = rlhf_run(work.path(), "whole", overrides, None);
    assert!(ok, "{stderr}");
    let whole = run_dir(work.path(), "whole");
    for (index, point) in points.iter().enumerate() {
        let out = format!("cut{index}");
        let (ok, stderr) = rlhf_run(work.path(), &out, overrides, Some(point));
        assert!(!ok, "the run was not stopped at {point}:\n{stderr}");
        assert!(stderr.contains(&format!("aborting after the state of {}", point.replace(':', " step "))), "{stderr}");
        let cut = run_dir(work.path(), &out);
        let (stage, _) = point.split_once(':').unwrap();
        assert!(summary(&cut).get(stage).is_none(), "{point}: the stage recorded its summary before the abort");

        let (ok, stdout, stderr) = common::rlhf(&["run", "--resume", cut.to_str().unwrap()], work.path());
        assert!(ok, "resuming after {point} failed:\n{stderr}");
        assert_eq!(work.path().join(stdout.trim()), cut);
        assert!(stderr.contains(&format!("resuming stage=\"{stage}\"")) || stderr.contains(&format!("resuming stage={stage}")), "{stderr}");
        assert_eq!(summary(&cut), summary(&whole), "{point}: summary.json differs from the uninterrupted run");
        for stage in ["pretrain", "sft", "rm", "ppo"] {
            let (expected, got) = (whole.join(stage), cut.join(stage));
            assert_eq!(
                deterministic(lines(&got.join("metrics.jsonl"))),
                deterministic(lines(&expected.join("metrics.jsonl"))),
                "{point}: {stage}/metrics.jsonl differs"
            );
            assert_eq!(lines(&got.join("samples.jsonl")), lines(&expected.join("samples.jsonl")), "{point}: {stage}/samples.jsonl differs");
        }
        assert_eq!(
            std::fs::read_to_string(cut.join("rm/eval_pairs.jsonl")).unwrap(),
            std::fs::read_to_string(whole.join("rm/eval_pairs.jsonl")).unwrap()
        );
    }
}

#[test]
fn lm_and_sft_resume_mid_stage_and_after_their_last_save() {
    assert_resumes_identically(&[], &["pretrain:10", "pretrain:20", "sft:5", "sft:10"]);
}

#[test]
fn reward_resumes_mid_stage_and_after_its_last_save() {
    assert_resumes_identically(&[], &["rm:3", "rm:6"]);
}

#[test]
fn ppo_resumes_mid_stage_and_after_its_last_save() {
    assert_resumes_identically(&[], &["ppo:3", "ppo:6"]);
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
    assert_resumes_identically(EARLY_STOPPING, &["pretrain:10", "sft:10"]);
}
