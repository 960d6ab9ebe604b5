//! `rlhf run` end to end on a tiny experiment: the run directory's contents, resume after a
//! crash giving the same metrics as an uninterrupted run, early stopping, `--only`, each stage's
//! own peak memory, and the checkpoint feeding `rlhf generate`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use serde_json::Value;

const TINY: &str = r#"name = "tiny"
seed = 5
threads = 1

[task]
kind = "synthetic-reviews"
corpus_size = 300
demonstrations_size = 200
prompts_size = 20
eval_fraction = 0.1

[tokenizer]
vocab_size = 400

[models.base]
n_layer = 2
n_head = 2
n_embd = 32
n_ctx = 64
dropout = 0.1
device = "cpu"

[[stages]]
name = "pretrain"
kind = "lm"
model = "base"
steps = 120
batch_size = 4
seq_len = 48
eval_every = 10
eval_batches = 2
samples = 2
device = "cpu"

[[stages]]
name = "sft"
kind = "sft"
init = "pretrain"
steps = 20
batch_size = 4
seq_len = 48
eval_every = 10
eval_batches = 2
samples = 2
device = "cpu"
"#;

fn write_experiment(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("tiny.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `rlhf run` to completion; returns the run directory it printed.
fn run(dir: &Path, args: &[&str]) -> PathBuf {
    let (ok, stdout, stderr) = common::rlhf(args, dir);
    assert!(ok, "rlhf {args:?} failed:\n{stderr}");
    dir.join(stdout.trim())
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Metrics without the wall-clock ones, which differ between any two runs.
fn deterministic_metrics(path: &Path) -> Vec<Value> {
    lines(path)
        .into_iter()
        .map(|mut line| {
            line.as_object_mut().unwrap().remove("tokens_per_s");
            line
        })
        .collect()
}

#[test]
fn a_run_writes_the_documented_directory_and_its_checkpoint_generates() {
    let work = tempfile::tempdir().unwrap();
    let experiment = write_experiment(work.path(), TINY);
    let run_dir = run(work.path(), &["run", experiment.to_str().unwrap(), "--out", "out"]);
    assert!(run_dir.starts_with(work.path().join("out/tiny")), "{}", run_dir.display());

    for file in ["config.toml", "env.json", "run.log", "summary.json", "tokenizer.json"] {
        assert!(run_dir.join(file).is_file(), "missing {file}");
    }
    for stage in ["pretrain", "sft"] {
        for file in [
            "metrics.jsonl",
            "samples.jsonl",
            "checkpoint/model.safetensors",
            "checkpoint/config.json",
            "checkpoint/tokenizer.json",
            "state/progress.json",
        ] {
            assert!(run_dir.join(stage).join(file).is_file(), "missing {stage}/{file}");
        }
    }
    let env: Value = serde_json::from_str(&std::fs::read_to_string(run_dir.join("env.json")).unwrap()).unwrap();
    assert_eq!(env["seed"], 5);
    assert_eq!(env["threads"], 1);
    // Read at run time from the libtorch the process loaded: the venv's torch, as Python sees it.
    let python = Command::new(common::python()).args(["-c", "import torch; print(torch.__version__)"]).output().unwrap();
    assert_eq!(env["libtorch_version"], String::from_utf8_lossy(&python.stdout).trim());
    assert!(env["libtorch_library"].as_str().unwrap().contains("libtorch_cpu"), "{}", env["libtorch_library"]);
    assert_eq!(env["devices"]["sft.model"], "cpu");

    let metrics = lines(&run_dir.join("pretrain/metrics.jsonl"));
    assert_eq!(metrics.len(), 120);
    assert_eq!(metrics[0]["step"], 1);
    for name in ["train/loss", "lr", "grad_norm", "tokens_per_s"] {
        assert!(metrics[5][name].is_f64(), "no {name} in {}", metrics[5]);
    }
    let evals: Vec<f64> = metrics.iter().filter_map(|m| m["eval/loss"].as_f64()).collect();
    assert_eq!(evals.len(), 12);
    assert!(evals.last().unwrap() < &(evals[0] - 0.5), "eval loss did not fall: {evals:?}");
    assert!((metrics[119]["eval/ppl"].as_f64().unwrap() - evals[11].exp()).abs() < 1e-9);

    let samples = lines(&run_dir.join("sft/samples.jsonl"));
    assert_eq!(samples.len(), 4); // 2 prompts × 2 evaluations
    assert!(samples[0]["prompt"].as_str().unwrap().starts_with("Write a "));
    assert!(samples[0]["gold_score"].is_f64());
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(run_dir.join("summary.json")).unwrap()).unwrap();
    // SFT learns its demonstrations, and its best eval loss is the lowest it evaluated.
    let sft_evals: Vec<f64> = lines(&run_dir.join("sft/metrics.jsonl")).iter().filter_map(|m| m["eval/loss"].as_f64()).collect();
    assert!(sft_evals.last().unwrap() < &sft_evals[0], "SFT eval loss did not fall: {sft_evals:?}");
    let lowest = sft_evals.iter().copied().fold(f64::INFINITY, f64::min);
    assert_eq!(summary["sft"]["best/eval_loss"].as_f64().unwrap(), lowest);
    // Each stage's peak memory, in summary.json and in its `stage finished` log line.
    let log = std::fs::read_to_string(run_dir.join("run.log")).unwrap();
    for stage in ["pretrain", "sft"] {
        assert!(summary[stage]["memory/peak_rss_mib"].as_f64().is_some_and(|mib| mib > 0.0), "{stage}: {}", summary[stage]);
        let finished = log.lines().find(|line| line.contains(&format!("stage finished stage=\"{stage}\""))).expect("a stage finished line");
        assert!(finished.contains("peak_rss_mib="), "{finished}");
    }

    let checkpoint = run_dir.join("sft/checkpoint");
    let (ok, stdout, stderr) = common::rlhf(
        &[
            "generate",
            "--model",
            checkpoint.to_str().unwrap(),
            "--prompt",
            "Write a positive review of the phone about its battery.\nReview:",
            "--max-new-tokens",
            "8",
            "--json",
            "--device",
            "cpu",
        ],
        work.path(),
    );
    assert!(ok, "{stderr}");
    let line: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(line["completion_ids"].as_array().unwrap().len() <= 8);
    assert!(line["completion"].is_string());
}

#[test]
fn resuming_a_killed_run_gives_the_metrics_of_an_uninterrupted_one() {
    let work = tempfile::tempdir().unwrap();
    let experiment = write_experiment(work.path(), TINY);
    let uninterrupted = run(work.path(), &["run", experiment.to_str().unwrap(), "--out", "a"]);

    // The same run, stopped as by kill -9 right after pretraining saved its state at step 30
    // (a test hook of the stage loop: the point is chosen by the test, not by a poll's timing).
    let output = Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args(["run", experiment.to_str().unwrap(), "--out", "b"])
        .env("RLHF_TEST_ABORT_AT", "pretrain:30:saved")
        .current_dir(work.path())
        .output()
        .unwrap();
    assert!(!output.status.success(), "the run was not stopped: {}", String::from_utf8_lossy(&output.stderr));
    let killed_run = glob_one(&work.path().join("b/tiny")).expect("a run directory");
    let before = lines(&killed_run.join("pretrain/metrics.jsonl")).len();
    assert_eq!(before, 30, "the run stopped after its save at step 30");
    assert!(!killed_run.join("sft").exists() || !killed_run.join("sft/state/progress.json").exists());

    let resumed = run(work.path(), &["run", "--resume", killed_run.to_str().unwrap()]);
    assert_eq!(resumed, killed_run);
    for stage in ["pretrain", "sft"] {
        let expected = deterministic_metrics(&uninterrupted.join(stage).join("metrics.jsonl"));
        let got = deterministic_metrics(&killed_run.join(stage).join("metrics.jsonl"));
        assert_eq!(expected.len(), got.len(), "{stage}: different number of metric lines");
        assert_eq!(expected, got, "{stage}: resumed metrics differ from the uninterrupted run");
        assert_eq!(lines(&uninterrupted.join(stage).join("samples.jsonl")), lines(&killed_run.join(stage).join("samples.jsonl")));
    }

    // Resuming a finished run does nothing and changes nothing.
    let metrics_before = std::fs::read_to_string(killed_run.join("sft/metrics.jsonl")).unwrap();
    run(work.path(), &["run", "--resume", killed_run.to_str().unwrap()]);
    assert_eq!(metrics_before, std::fs::read_to_string(killed_run.join("sft/metrics.jsonl")).unwrap());
}

/// The touched memory a [`BallastBeforeEachStage`] allocates and frees.
const BALLAST: usize = 512 << 20;

/// A log layer that, when a stage starts (its `stage starts` line, logged before the pipeline
/// resets the process's peak memory for the stage), allocates [`BALLAST`] bytes, touches them,
/// records the process's peak and frees them: a peak that happens between two stages.
struct BallastBeforeEachStage {
    /// The process's peak RSS with each ballast held, in bytes.
    peaks: Arc<Mutex<Vec<u64>>>,
}

/// An event's fields as `name=value` strings.
#[derive(Default)]
struct Fields(Vec<String>);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push(format!("{}={value:?}", field.name()));
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for BallastBeforeEachStage {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        if fields.0.iter().any(|field| field == "message=stage starts") {
            let ballast = std::hint::black_box(vec![1u8; BALLAST]);
            let peak = rlhf_lab::run::memory::process_peak_rss_bytes().expect("a peak RSS");
            drop(ballast);
            self.peaks.lock().unwrap().push(peak);
        }
    }
}

/// Each stage's `memory/peak_rss_mib` is its own: the process's peak while it ran, which holds
/// the model's weights and stays below the machine's memory, and leaves out a peak of 512 MiB
/// more that the process reached just before the stage started — before the first stage and
/// between the two (a peak reset only once per run, or never, would count it in the second).
#[test]
#[cfg(target_os = "linux")]
fn each_stage_records_its_own_peak_memory() {
    use tracing_subscriber::layer::SubscriberExt;

    let work = tempfile::tempdir().unwrap();
    let path = write_experiment(work.path(), TINY);
    let experiment = rlhf_lab::config::load(&path, &[]).unwrap();
    let run = rlhf_lab::run::RunDir::create(&work.path().join("out"), &experiment.name, &experiment.to_toml()).unwrap();
    let peaks = Arc::new(Mutex::new(Vec::new()));
    let subscriber = tracing_subscriber::registry().with(BallastBeforeEachStage { peaks: peaks.clone() });
    tracing::subscriber::with_default(subscriber, || {
        rlhf_lab::stages::pipeline::run_experiment(&experiment, &run, &Default::default()).unwrap();
    });

    let peaks = peaks.lock().unwrap().clone();
    assert_eq!(peaks.len(), 2, "one ballast per stage: {peaks:?}");
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(run.path.join("summary.json")).unwrap()).unwrap();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let total_kib: u64 =
        meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:")).unwrap().trim().trim_end_matches("kB").trim().parse().unwrap();
    for (stage, ballast_peak) in ["pretrain", "sft"].into_iter().zip(peaks) {
        let mib = summary[stage]["memory/peak_rss_mib"].as_f64().unwrap_or_else(|| panic!("{stage}: no peak memory in {summary}"));
        assert!(summary[stage].get("memory/process_peak_rss_mib").is_none(), "{stage}: the peak was not reset: {summary}");
        let bytes = (mib * (1u64 << 20) as f64) as u64;
        let weights = std::fs::metadata(run.path.join(stage).join("checkpoint/model.safetensors")).unwrap().len();
        assert!(bytes >= weights, "{stage}: peak {bytes} B below the weights' {weights} B");
        assert!(bytes < total_kib * 1024, "{stage}: peak {mib} MiB above the machine's memory");
        let ballast = BALLAST as u64;
        assert!(
            bytes + ballast / 2 < ballast_peak,
            "{stage}: peak {mib:.1} MiB counts the ballast freed before it started (the process's peak with it: {} MiB)",
            ballast_peak >> 20
        );
    }
}

fn glob_one(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir).ok()?.filter_map(Result::ok).map(|e| e.path()).next()
}

#[test]
fn early_stopping_ends_a_stage_that_stopped_improving() {
    let work = tempfile::tempdir().unwrap();
    // A learning rate too small to move the loss by min_delta: the first evaluation is the best.
    let text = TINY.replace("eval_every = 10\neval_batches = 2\nsamples = 2\ndevice = \"cpu\"\n\n[[stages]]\nname = \"sft\"", "eval_every = 10\neval_batches = 2\nsamples = 2\ndevice = \"cpu\"\nlr = 1e-9\npatience = 2\nmin_delta = 0.01\n\n[[stages]]\nname = \"sft\"");
    assert_ne!(text, TINY);
    let experiment = write_experiment(work.path(), &text);
    let run_dir = run(work.path(), &["run", experiment.to_str().unwrap(), "--out", "out", "--only", "pretrain"]);
    let metrics = lines(&run_dir.join("pretrain/metrics.jsonl"));
    assert_eq!(metrics.last().unwrap()["step"], 30, "expected a stop at the third evaluation");
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(run_dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["pretrain"]["stopped_early"], 1.0);
    assert!(summary.get("sft").is_none(), "--only pretrain ran sft");
}

#[test]
fn only_a_later_stage_needs_the_earlier_checkpoint() {
    let work = tempfile::tempdir().unwrap();
    let experiment = write_experiment(work.path(), TINY);
    let (ok, _, stderr) = common::rlhf(&["run", experiment.to_str().unwrap(), "--out", "out", "--only", "sft"], work.path());
    assert!(!ok);
    assert!(stderr.contains("stage `sft` needs the checkpoint of stage `pretrain`"), "{stderr}");
    let (ok, _, stderr) = common::rlhf(&["run", experiment.to_str().unwrap(), "--out", "out", "--only", "ppo"], work.path());
    assert!(!ok && stderr.contains("--only ppo: no stage named `ppo` (stages: pretrain, sft)"), "{stderr}");
    assert!(!stderr.contains("panicked"));
}

/// The names in a safetensors file's header.
fn safetensors_names(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    header.as_object().unwrap().keys().cloned().collect()
}

/// bf16 and fp16 train with fp32 master weights and moments (fp16 with loss scaling too): a tiny
/// `lm` stage's eval loss falls in either as in fp32 (its final eval loss within 5 % of fp32's),
/// its checkpoint is written in its dtype, and its resume state keeps the fp32 masters.
#[test]
fn bf16_and_fp16_stages_learn_like_an_fp32_one() {
    let work = tempfile::tempdir().unwrap();
    let experiment = write_experiment(work.path(), TINY);
    let experiment = experiment.to_str().unwrap();
    let fp32 = run(work.path(), &["run", experiment, "--out", "fp32", "--only", "pretrain"]);
    let bf16 = run(work.path(), &["run", experiment, "--out", "bf16", "--only", "pretrain", "--set", "stages.pretrain.dtype=bf16"]);
    let eval_losses =
        |run: &Path| -> Vec<f64> { lines(&run.join("pretrain/metrics.jsonl")).iter().filter_map(|m| m["eval/loss"].as_f64()).collect() };
    let (fp32_losses, bf16_losses) = (eval_losses(&fp32), eval_losses(&bf16));
    let (fp32_last, bf16_last) = (*fp32_losses.last().unwrap(), *bf16_losses.last().unwrap());
    assert!(bf16_last < bf16_losses[0] - 0.5, "bf16 eval loss did not fall: {bf16_losses:?}");
    assert!((bf16_last - fp32_last).abs() < 0.05 * fp32_last, "bf16 ended at {bf16_last}, fp32 at {fp32_last}");

    let config: Value = serde_json::from_str(&std::fs::read_to_string(bf16.join("pretrain/checkpoint/config.json")).unwrap()).unwrap();
    assert_eq!((config["torch_dtype"].as_str(), config["dtype"].as_str()), (Some("bfloat16"), Some("bfloat16")));
    let fp32_config: Value = serde_json::from_str(&std::fs::read_to_string(fp32.join("pretrain/checkpoint/config.json")).unwrap()).unwrap();
    assert_eq!(fp32_config["torch_dtype"], "float32");
    let masters = safetensors_names(&bf16.join("pretrain/state/model.optimizer.safetensors"));
    assert!(masters.iter().any(|name| name == "master.transformer.wte.weight"), "no fp32 master in the state: {masters:?}");
    assert!(!safetensors_names(&fp32.join("pretrain/state/model.optimizer.safetensors")).iter().any(|name| name.starts_with("master.")));

    // fp16 is meant for CUDA; on the CPU it runs the same code, slowly.
    let fp16 = run(work.path(), &["run", experiment, "--out", "fp16", "--only", "pretrain", "--set", "stages.pretrain.dtype=fp16"]);
    let fp16_losses = eval_losses(&fp16);
    let fp16_last = *fp16_losses.last().unwrap();
    assert!((fp16_last - fp32_last).abs() < 0.05 * fp32_last, "fp16 ended at {fp16_last}, fp32 at {fp32_last}: {fp16_losses:?}");
    let config: Value = serde_json::from_str(&std::fs::read_to_string(fp16.join("pretrain/checkpoint/config.json")).unwrap()).unwrap();
    assert_eq!(config["torch_dtype"], "float16");
    let state = safetensors_names(&fp16.join("pretrain/state/model.optimizer.safetensors"));
    assert!(state.iter().any(|name| name == "loss_scale") && state.iter().any(|name| name == "master.transformer.wte.weight"), "{state:?}");
}

/// Every stage kind trains a Llama-family model through the same interface as GPT-2: Qwen3's
/// per-head norms, multi-query attention and an untied head here. Its checkpoints say what they
/// are, and `rlhf generate` and `rlhf score` read them.
#[test]
fn every_stage_kind_trains_a_llama_family_model() {
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("all.toml"), common::ALL_KINDS_EXPERIMENT).unwrap();
    let qwen3 = ["models.base.arch=qwen3", "models.base.n_kv_head=1", "models.base.tie_embeddings=false"];
    let mut args = vec!["run", "all.toml", "--out", "out"];
    for setting in qwen3 {
        args.extend(["--set", setting]);
    }
    let run_dir = run(work.path(), &args);
    for stage in ["pretrain", "sft", "rm", "ppo"] {
        let config: Value =
            serde_json::from_str(&std::fs::read_to_string(run_dir.join(stage).join("checkpoint/config.json")).unwrap()).unwrap();
        assert_eq!((config["model_type"].as_str(), config["num_key_value_heads"].as_i64()), (Some("qwen3"), Some(1)), "{stage}: {config}");
        assert_eq!(config["tie_word_embeddings"], false);
    }
    let evals: Vec<f64> = lines(&run_dir.join("pretrain/metrics.jsonl")).iter().filter_map(|m| m["eval/loss"].as_f64()).collect();
    assert!(evals.last().unwrap() < &(evals[0] - 0.02), "pretraining eval loss did not fall: {evals:?}");
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(run_dir.join("summary.json")).unwrap()).unwrap();
    assert!(summary["rm"]["eval/accuracy"].is_f64() && summary["ppo"]["eval/kl"].is_f64(), "{summary}");

    let sft = run_dir.join("sft/checkpoint");
    let (ok, stdout, stderr) = common::rlhf(
        &["generate", "--model", sft.to_str().unwrap(), "--prompt", "Write a review", "--max-new-tokens", "6", "--json", "--device", "cpu"],
        work.path(),
    );
    assert!(ok, "{stderr}");
    let line: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(line["completion_ids"].as_array().unwrap().len() <= 6);
    std::fs::write(work.path().join("score.jsonl"), "{\"prompt\": \"Write a review\", \"response\": \" the battery is great\"}\n").unwrap();
    let rm = run_dir.join("rm/checkpoint");
    let (ok, stdout, stderr) =
        common::rlhf(&["score", "--model", rm.to_str().unwrap(), "--input", "score.jsonl", "--device", "cpu"], work.path());
    assert!(ok, "{stderr}");
    let scored: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(scored["reward"].as_f64().is_some_and(f64::is_finite), "{scored}");
}
