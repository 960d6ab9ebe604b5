//! Watching runs: TensorBoard event files read back by TensorBoard's own reader, a NaN that stops
//! a stage with its state kept and resumable, `rlhf watch` on finished, live and stopped runs,
//! and alerts in reports.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rlhf_lab::report::table::format_number;
use serde_json::Value;

/// An SFT stage alone: 12 steps evaluated every 4, one sample per evaluation.
const SFT_ONLY: &str = r#"name = "sft-only"
seed = 5
threads = 1

[task]
kind = "synthetic-reviews"
corpus_size = 100
demonstrations_size = 120
prompts_size = 10
eval_fraction = 0.1

[tokenizer]
vocab_size = 300

[models.base]
n_layer = 1
n_head = 2
n_embd = 32
n_ctx = 64
device = "cpu"

[[stages]]
name = "sft"
kind = "sft"
model = "base"
steps = 12
batch_size = 4
seq_len = 48
eval_every = 4
eval_batches = 1
samples = 1
device = "cpu"
"#;

fn write_experiment(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The one run directory under `dir/out/<experiment>/`.
fn only_run(dir: &Path, out: &str, experiment: &str) -> PathBuf {
    let runs: Vec<PathBuf> = std::fs::read_dir(dir.join(out).join(experiment)).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    runs[0].clone()
}

/// What TensorBoard's event reader finds in a stage directory: scalars and texts by tag.
fn read_with_tensorboard(stage_dir: &Path) -> Value {
    let output = Command::new(common::python())
        .arg(common::repo_root().join("scripts/reference/read_tensorboard.py"))
        .arg(stage_dir)
        .output()
        .expect("python runs");
    assert!(output.status.success(), "read_tensorboard.py failed:\n{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

fn jsonl(path: &Path) -> Vec<serde_json::Map<String, Value>> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

#[test]
fn tensorboard_reads_every_metric_the_samples_and_the_config_of_every_stage() {
    let work = tempfile::tempdir().unwrap();
    let experiment = write_experiment(work.path(), "tiny.toml", common::TINY_RLHF_EXPERIMENT);
    let (ok, _, stderr) = common::rlhf(&["run", experiment.to_str().unwrap(), "--out", "out"], work.path());
    assert!(ok, "{stderr}");
    let run = only_run(work.path(), "out", "tiny-ppo");
    for stage in ["sft", "rm", "ppo"] {
        let dir = run.join(stage);
        let read = read_with_tensorboard(&dir);
        // Every metric of metrics.jsonl, at its step, as TensorBoard's f32.
        let mut expected: BTreeMap<String, Vec<(u64, Option<f32>)>> = BTreeMap::new();
        for line in jsonl(&dir.join("metrics.jsonl")) {
            let step = line["step"].as_u64().unwrap();
            for (name, value) in line.iter().filter(|(name, _)| *name != "step") {
                expected.entry(name.clone()).or_default().push((step, value.as_f64().map(|v| v as f32)));
            }
        }
        let mut found: BTreeMap<String, Vec<(u64, Option<f32>)>> = BTreeMap::new();
        for (tag, points) in read["scalars"].as_object().unwrap() {
            let points = points.as_array().unwrap().iter().map(|point| (point[0].as_u64().unwrap(), point[1].as_f64().map(|v| v as f32)));
            found.insert(tag.clone(), points.collect());
        }
        assert!(expected.len() > 3, "{stage}: {expected:?}");
        assert_eq!(found, expected, "{stage}: TensorBoard's scalars differ from metrics.jsonl");

        let texts = read["texts"].as_object().unwrap();
        let config = &texts["config"][0];
        assert_eq!(config[0], 0);
        assert!(config[1].as_str().unwrap().contains("name = \"tiny-ppo\""), "{config}");
        let samples = jsonl(&dir.join("samples.jsonl"));
        if samples.is_empty() {
            assert!(!texts.contains_key("samples"), "{stage}: samples text without samples.jsonl");
            continue;
        }
        // One text per evaluation that wrote samples, holding each sample's prompt.
        let text_steps: Vec<u64> = texts["samples"].as_array().unwrap().iter().map(|t| t[0].as_u64().unwrap()).collect();
        let mut sample_steps: Vec<u64> = samples.iter().map(|s| s["step"].as_u64().unwrap()).collect();
        sample_steps.dedup();
        assert_eq!(text_steps, sample_steps, "{stage}");
        let last_text = texts["samples"].as_array().unwrap().last().unwrap()[1].as_str().unwrap().to_string();
        let last_step = *sample_steps.last().unwrap();
        for sample in samples.iter().filter(|s| s["step"].as_u64() == Some(last_step)) {
            let prompt = sample["prompt"].as_str().unwrap().replace('\n', "<br>");
            assert!(last_text.contains(&prompt), "{stage}: `{prompt}` missing from {last_text}");
        }
    }

    // tensorboard = false: no event files.
    let (ok, _, stderr) =
        common::rlhf(&["run", experiment.to_str().unwrap(), "--out", "off", "--set", "tensorboard=false", "--only", "sft"], work.path());
    assert!(ok, "{stderr}");
    let sft = only_run(work.path(), "off", "tiny-ppo").join("sft");
    assert!(sft.join("metrics.jsonl").is_file());
    let events =
        std::fs::read_dir(&sft).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("events.out")).count();
    assert_eq!(events, 0);
}

/// The metric lines without wall-clock figures.
fn deterministic(lines: Vec<serde_json::Map<String, Value>>) -> Vec<serde_json::Map<String, Value>> {
    lines
        .into_iter()
        .map(|mut line| {
            line.retain(|name, _| !name.ends_with("_per_s"));
            line
        })
        .collect()
}

#[test]
fn a_nan_stops_the_stage_with_its_last_state_kept_and_a_resume_ends_as_an_uninterrupted_run() {
    let work = tempfile::tempdir().unwrap();
    let experiment = write_experiment(work.path(), "sft.toml", SFT_ONLY);
    let (ok, _, stderr) = common::rlhf(&["run", experiment.to_str().unwrap(), "--out", "whole"], work.path());
    assert!(ok, "{stderr}");
    let whole = only_run(work.path(), "whole", "sft-only");

    let output = Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args(["run", experiment.to_str().unwrap(), "--out", "cut"])
        .current_dir(work.path())
        .env("RLHF_TEST_NAN_AT", "sft:7")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the NaN did not stop the run:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for needle in ["stage `sft` diverged at step 7", "`grad_norm` is not finite", "Its state of step 4 is kept", "rlhf run --resume"] {
        assert!(stderr.contains(needle), "`{needle}` missing from:\n{stderr}");
    }
    let cut = only_run(work.path(), "cut", "sft-only");
    let alerts = jsonl(&cut.join("alerts.jsonl"));
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(
        (alerts[0]["rule"].as_str(), alerts[0]["metric"].as_str(), alerts[0]["step"].as_u64()),
        (Some("non_finite"), Some("grad_norm"), Some(7))
    );
    assert!(alerts[0]["value"].is_null());
    // The diverged step's line is written (null for the NaN), nothing after it; no checkpoint of the NaN weights.
    let metrics = jsonl(&cut.join("sft/metrics.jsonl"));
    assert_eq!(metrics.last().unwrap()["step"], 7);
    assert!(metrics.last().unwrap()["grad_norm"].is_null());
    let progress: Value = serde_json::from_str(&std::fs::read_to_string(cut.join("sft/state/progress.json")).unwrap()).unwrap();
    assert_eq!(progress["step"], 4);
    assert!(!cut.join("summary.json").exists() || !std::fs::read_to_string(cut.join("summary.json")).unwrap().contains("\"sft\""));

    // `rlhf watch` on the stopped run: its lines, then an error naming the unfinished stage.
    let (ok, stdout, stderr) = common::rlhf(&["watch", cut.to_str().unwrap(), "--interval", "0.1"], work.path());
    assert!(!ok, "watch succeeded on a stopped run:\n{stdout}");
    assert!(stdout.contains("alert [sft] step 7: non_finite: `grad_norm` is NaN"), "{stdout}");
    assert!(stderr.contains("the run is not running and has not finished (unfinished: sft)"), "{stderr}");

    let (ok, _, stderr) = common::rlhf(&["run", "--resume", cut.to_str().unwrap()], work.path());
    assert!(ok, "{stderr}");
    assert!(stderr.contains("resuming stage=\"sft\" step=4"), "{stderr}");
    assert_eq!(deterministic(jsonl(&cut.join("sft/metrics.jsonl"))), deterministic(jsonl(&whole.join("sft/metrics.jsonl"))));
    assert_eq!(jsonl(&cut.join("sft/samples.jsonl")), jsonl(&whole.join("sft/samples.jsonl")));
    common::assert_events_match_metrics(&cut.join("sft"));
    // The alert stays on record: it happened.
    assert_eq!(jsonl(&cut.join("alerts.jsonl")).len(), 1);
    assert!(!whole.join("alerts.jsonl").exists(), "the healthy run raised alerts: {:?}", jsonl(&whole.join("alerts.jsonl")));
}

#[test]
fn watch_prints_each_evaluation_of_a_finished_run_and_follows_a_live_one_to_its_end() {
    let work = tempfile::tempdir().unwrap();
    let experiment = write_experiment(work.path(), "sft.toml", SFT_ONLY);
    let (ok, _, stderr) = common::rlhf(&["run", experiment.to_str().unwrap(), "--out", "done"], work.path());
    assert!(ok, "{stderr}");
    let done = only_run(work.path(), "done", "sft-only");
    let (ok, stdout, stderr) = common::rlhf(&["watch", done.to_str().unwrap()], work.path());
    assert!(ok, "{stderr}");
    let evaluated: Vec<serde_json::Map<String, Value>> =
        jsonl(&done.join("sft/metrics.jsonl")).into_iter().filter(|line| line.contains_key("eval/loss")).collect();
    let expected: Vec<String> = evaluated
        .iter()
        .map(|line| {
            let figure = |name: &str| format_number(line[name].as_f64().unwrap());
            format!("[sft] step {}/12 evaluated: train/loss={} eval/loss={}", line["step"], figure("train/loss"), figure("eval/loss"))
        })
        .chain(["[sft] finished".to_string(), format!("run finished: {}", done.display())])
        .collect();
    assert_eq!(stdout.lines().collect::<Vec<_>>(), expected, "{stdout}");

    // On a terminal (a pseudo-terminal made by util-linux's `script`): the redrawn screen.
    let command = format!("{} watch {}", env!("CARGO_BIN_EXE_rlhf"), done.display());
    let output = Command::new("script").args(["-qec", &command, "/dev/null"]).current_dir(work.path()).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let screen = String::from_utf8_lossy(&output.stdout);
    assert!(screen.contains("\x1b[2J"), "the screen is not redrawn: {screen}");
    for needle in [" — finished", "stages: sft ✓", "sft (sft)  step 12/12", "train/loss", "eval/loss", "run finished"] {
        assert!(screen.contains(needle), "`{needle}` missing from the screen:\n{screen}");
    }
    let sparkline = screen.lines().find(|line| line.trim_start().starts_with("eval/loss")).unwrap();
    assert_eq!(sparkline.chars().filter(|c| ('▁'..='█').contains(c)).count(), evaluated.len(), "{sparkline}");

    // Live: a longer run, watched from its start; a second process may not resume it meanwhile.
    let mut child = Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args(["run", experiment.to_str().unwrap(), "--out", "live", "--set", "stages.sft.steps=200", "--set", "stages.sft.eval_every=20"])
        .current_dir(work.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let live = loop {
        let parent = work.path().join("live/sft-only");
        if let Some(run) = std::fs::read_dir(&parent).ok().and_then(|mut entries| entries.next()).map(|e| e.unwrap().path()) {
            if run.join("run.lock").exists() {
                break run;
            }
        }
        assert!(Instant::now() < deadline, "the run directory did not appear");
        std::thread::sleep(Duration::from_millis(20));
    };
    let (ok, _, stderr) = common::rlhf(&["run", "--resume", live.to_str().unwrap()], work.path());
    let still_running = child.try_wait().unwrap().is_none();
    if still_running {
        assert!(!ok && stderr.contains("is being run by another process"), "a second process resumed a live run:\n{stderr}");
    }
    let (ok, stdout, stderr) = common::rlhf(&["watch", live.to_str().unwrap(), "--interval", "0.1"], work.path());
    let status = child.wait().unwrap();
    assert!(status.success());
    assert!(ok, "{stderr}");
    let steps: Vec<String> = jsonl(&live.join("sft/metrics.jsonl"))
        .iter()
        .filter(|line| line.contains_key("eval/loss"))
        .map(|line| format!("[sft] step {}/200 evaluated", line["step"]))
        .collect();
    assert_eq!(steps.len(), 10);
    for step in &steps {
        assert_eq!(stdout.matches(step.as_str()).count(), 1, "`{step}` not printed once:\n{stdout}");
    }
    assert!(stdout.trim_end().ends_with(&format!("run finished: {}", live.display())), "{stdout}");
}

#[test]
fn reports_list_a_runs_alerts() {
    let work = tempfile::tempdir().unwrap();
    let experiment = write_experiment(work.path(), "tiny.toml", common::TINY_RLHF_EXPERIMENT);
    // A clip-fraction bound no PPO iteration stays under, and a KL bound of almost nothing.
    let (ok, _, stderr) = common::rlhf(
        &[
            "run",
            experiment.to_str().unwrap(),
            "--out",
            "out",
            "--set",
            "alerts.kl_target_multiple=0.0001",
            "--set",
            "stages.ppo.iterations=6",
        ],
        work.path(),
    );
    assert!(ok, "{stderr}");
    let run = only_run(work.path(), "out", "tiny-ppo");
    let alerts = jsonl(&run.join("alerts.jsonl"));
    let kl: Vec<&serde_json::Map<String, Value>> = alerts.iter().filter(|a| a["rule"] == "kl_high").collect();
    assert!(!kl.is_empty(), "{alerts:?}");
    assert!(stderr.contains("WARN") && stderr.contains("`objective/kl`"), "{stderr}");
    let (ok, _, stderr) = common::rlhf(&["report", run.to_str().unwrap(), "-o", "report"], work.path());
    assert!(ok, "{stderr}");
    let summary = std::fs::read_to_string(work.path().join("report/summary.md")).unwrap();
    let html = std::fs::read_to_string(work.path().join("report/index.html")).unwrap();
    assert!(summary.contains("## Alerts"), "{summary}");
    for alert in &alerts {
        let row = format!("| ppo | {} | {} | {} |", alert["step"], alert["rule"].as_str().unwrap(), alert["metric"].as_str().unwrap());
        if alert["stage"] == "ppo" {
            assert!(summary.contains(&row), "`{row}` missing from:\n{summary}");
        }
    }
    assert!(html.contains("Alerts") && html.contains("kl_high"), "the HTML report has no alerts");
}
