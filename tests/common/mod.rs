//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses its own subset

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use rlhf_lab::data::tokenizer::TextTokenizer;
use rlhf_lab::model::Gpt2Config;

/// Token ids below this (a tenth of the tiny models' vocabulary of 300), end-of-text (0) aside,
/// are the ones a planted programmatic reward likes.
pub const LIKED_BELOW: i64 = 30;

/// A planted programmatic reward: the share of response tokens whose id is in 1..`LIKED_BELOW`.
pub struct LikedTokenShare;

impl rlhf_lab::train::rollout::Scorer for LikedTokenShare {
    fn score(&self, _prompts: &[Vec<i64>], responses: &[Vec<i64>]) -> tch::Tensor {
        let shares: Vec<f32> = responses
            .iter()
            .map(|r| r.iter().filter(|&&id| (1..LIKED_BELOW).contains(&id)).count() as f32 / r.len().max(1) as f32)
            .collect();
        tch::Tensor::from_slice(&shares)
    }
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The venv's Python, with torch and transformers (installed by `scripts/setup`).
pub fn python() -> PathBuf {
    let venv = std::env::var_os("RLHF_VENV").map(PathBuf::from).unwrap_or_else(|| repo_root().join(".venv"));
    let python = venv.join("bin/python");
    assert!(python.exists(), "no Python venv at {}: run scripts/setup first", venv.display());
    python
}

/// Runs `scripts/reference/hf_models.py` with `args`; panics with its stderr when it fails.
pub fn hf_reference(args: &[&str]) {
    let output = Command::new(python())
        .arg(repo_root().join("scripts/reference/hf_models.py"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_OFFLINE", "1")
        .output()
        .expect("python runs");
    assert!(output.status.success(), "hf_models.py {args:?} failed:\n{}", String::from_utf8_lossy(&output.stderr));
}

/// A stage's figures from summary.json without its peak memory (`memory/*`), which measures the
/// process that ran it rather than what it computed.
pub fn without_memory(figures: &serde_json::Value) -> serde_json::Value {
    let mut figures = figures.clone();
    if let Some(map) = figures.as_object_mut() {
        map.retain(|name, _| !name.starts_with("memory/"));
    }
    figures
}

/// Writes `rows`, left-padded with id 0, for the reference script.
pub fn write_inputs(path: &Path, rows: &[Vec<i64>]) {
    let (ids, mask) = rlhf_lab::model::generate::left_pad(rows, 0, tch::Device::Cpu);
    let inputs = serde_json::json!({"input_ids": Vec::<Vec<i64>>::try_from(&ids).unwrap(), "attention_mask": Vec::<Vec<i64>>::try_from(&mask).unwrap()});
    std::fs::write(path, inputs.to_string()).unwrap();
}

/// A GPT-2 shape for tests: no dropout, GPT-2's init, end-of-text = id 0.
pub fn tiny_config(vocab_size: i64, n_positions: i64, n_embd: i64, n_layer: i64, n_head: i64) -> Gpt2Config {
    Gpt2Config {
        vocab_size,
        n_positions,
        n_embd,
        n_layer,
        n_head,
        n_inner: None,
        layer_norm_epsilon: 1e-5,
        embd_pdrop: 0.0,
        attn_pdrop: 0.0,
        resid_pdrop: 0.0,
        initializer_range: 0.02,
        bos_token_id: 0,
        eos_token_id: 0,
    }
}

/// A small byte-level BPE (at most `vocab_size` tokens, end-of-text = id 0).
pub fn tiny_tokenizer(vocab_size: usize) -> TextTokenizer {
    let corpus: Vec<String> =
        (0..300).map(|i| format!("review {i}: the battery is great and the screen is dull, price fair<|endoftext|>")).collect();
    let tokenizer = TextTokenizer::train(corpus.iter(), vocab_size).unwrap();
    assert_eq!(tokenizer.eos_id(), 0);
    tokenizer
}

/// Runs the built `rlhf` binary; returns (exit success, stdout, stderr).
pub fn rlhf(args: &[&str], cwd: &Path) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_rlhf")).args(args).current_dir(cwd).output().expect("rlhf runs");
    (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned())
}

/// Where the browser tests' Node package (playwright-core) lives.
pub fn browser_dir() -> PathBuf {
    repo_root().join("tests/browser")
}

/// Runs a playwright-core script of `tests/browser` with Node and these environment variables,
/// killing it after `timeout`. `None` when it ran over time.
pub fn run_browser_script(script: &str, envs: &[(&str, &OsStr)], timeout: Duration) -> Option<Output> {
    let mut node = Command::new("node")
        .arg(script)
        .current_dir(browser_dir())
        .envs(envs.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node runs");
    let deadline = Instant::now() + timeout;
    while node.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            node.kill().unwrap();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(node.wait_with_output().unwrap())
}

/// A whole flow in seconds on one thread: SFT from scratch, a reward model on simulated
/// annotators' labels, PPO with an adaptive β.
pub const TINY_RLHF_EXPERIMENT: &str = r#"name = "tiny-ppo"
seed = 4
threads = 1

[task]
kind = "synthetic-reviews"
corpus_size = 300
demonstrations_size = 200
prompts_size = 40
eval_fraction = 0.1

[tokenizer]
vocab_size = 400

[models.base]
n_layer = 2
n_head = 2
n_embd = 32
n_ctx = 64
device = "cpu"

[[stages]]
name = "sft"
kind = "sft"
model = "base"
steps = 30
batch_size = 8
seq_len = 48
eval_every = 30
samples = 1
device = "cpu"

[[stages]]
name = "rm"
kind = "reward"
init = "sft"
pairs = 64
eval_pairs = 16
steps = 8
batch_size = 8
eval_every = 8
normalization_samples = 8
device = "cpu"

[[stages]]
name = "ppo"
kind = "ppo"
policy = "sft"
reference = "sft"
reward = "rm"
value = "rm"
iterations = 30
rollout_batch = 8
minibatch_size = 4
grad_accum = 2
max_new_tokens = 12
policy_lr = 1e-4
adaptive_kl = true
kl_target = 1.0
kl_horizon = 100
eval_every = 3
eval_prompts = 8
samples = 2
devices = { policy = "cpu", reference = "cpu", reward = "cpu", value = "cpu" }

"#;

/// Every stage kind — lm → sft → reward → ppo — each a few steps long and evaluated twice or
/// more: seconds on one thread.
pub const ALL_KINDS_EXPERIMENT: &str = r#"name = "all-kinds"
seed = 7
threads = 1

[task]
kind = "synthetic-reviews"
corpus_size = 200
demonstrations_size = 120
prompts_size = 20
eval_fraction = 0.1

[tokenizer]
vocab_size = 300

[models.base]
n_layer = 1
n_head = 2
n_embd = 32
n_ctx = 64
dropout = 0.1
device = "cpu"

[[stages]]
name = "pretrain"
kind = "lm"
model = "base"
steps = 20
batch_size = 4
seq_len = 32
eval_every = 5
eval_batches = 1
samples = 1
device = "cpu"

[[stages]]
name = "sft"
kind = "sft"
init = "pretrain"
steps = 10
batch_size = 4
seq_len = 48
eval_every = 5
eval_batches = 1
samples = 1
device = "cpu"

[[stages]]
name = "rm"
kind = "reward"
init = "sft"
pairs = 32
eval_pairs = 8
steps = 6
batch_size = 4
eval_every = 3
normalization_samples = 4
device = "cpu"

[[stages]]
name = "ppo"
kind = "ppo"
policy = "sft"
reference = "sft"
reward = "rm"
value = "rm"
iterations = 6
rollout_batch = 4
minibatch_size = 2
ppo_epochs = 2
max_new_tokens = 8
normalization_samples = 8
eval_every = 3
eval_prompts = 4
samples = 2
devices = { policy = "cpu", reference = "cpu", reward = "cpu", value = "cpu" }
[[stages]]
name = "dpo"
kind = "dpo"
policy = "sft"
reward = "rm"
pairs = 16
eval_pairs = 8
steps = 4
batch_size = 4
lr = 1e-4
eval_every = 2
eval_prompts = 4
max_new_tokens = 8
samples = 2
device = "cpu"

[[stages]]
name = "grpo"
kind = "grpo"
policy = "sft"
reference = "sft"
reward = "rm"
iterations = 4
rollout_batch = 8
group_size = 4
minibatch_size = 4
updates_per_rollout = 2
max_new_tokens = 8
policy_lr = 1e-4
eval_every = 2
eval_prompts = 4
samples = 2

[[stages]]
name = "rloo"
kind = "rloo"
policy = "sft"
reference = "sft"
reward = "gold"
iterations = 4
rollout_batch = 8
k = 2
minibatch_size = 8
max_new_tokens = 8
policy_lr = 1e-4
eval_every = 2
eval_prompts = 4
samples = 2

[[stages]]
name = "bon"
kind = "best_of_n"
policy = "sft"
reward = "rm"
n = 4
eval_prompts = 4
max_new_tokens = 8
samples = 2
demonstrations = 3
"#;

/// The scalars of a stage directory's TensorBoard event file (read with the `tboard` crate), as
/// `(tag, step) → values` — a tag written twice at one step has two values. Panics unless the
/// directory has exactly one event file.
pub fn event_scalars(stage_dir: &Path) -> std::collections::BTreeMap<(String, u64), Vec<f32>> {
    use tboard::tensorboard::{event::What, summary::value::Value};
    let files: Vec<PathBuf> = std::fs::read_dir(stage_dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.file_name().unwrap().to_string_lossy().starts_with("events.out.tfevents."))
        .collect();
    assert_eq!(files.len(), 1, "{}: one event file expected, found {files:?}", stage_dir.display());
    let mut scalars: std::collections::BTreeMap<(String, u64), Vec<f32>> = Default::default();
    for event in tboard::SummaryReader::new(std::fs::File::open(&files[0]).unwrap()) {
        let event = event.unwrap();
        let Some(What::Summary(summary)) = event.what else { continue };
        for value in summary.value {
            if let Some(Value::SimpleValue(number)) = value.value {
                scalars.entry((value.tag, event.step as u64)).or_default().push(number);
            }
        }
    }
    scalars
}

/// A stage's metrics.jsonl as `(metric, step) → value` (a `null` as NaN).
pub fn metric_values(stage_dir: &Path) -> std::collections::BTreeMap<(String, u64), f64> {
    let text = std::fs::read_to_string(stage_dir.join("metrics.jsonl")).unwrap();
    let mut values = std::collections::BTreeMap::new();
    for line in text.lines() {
        let object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line).unwrap();
        let step = object["step"].as_u64().unwrap();
        for (name, value) in object.into_iter().filter(|(name, _)| name != "step") {
            values.insert((name, step), value.as_f64().unwrap_or(f64::NAN));
        }
    }
    values
}

/// Asserts that a stage's event file holds each metric line's values once, as f32.
pub fn assert_events_match_metrics(stage_dir: &Path) {
    let events = event_scalars(stage_dir);
    let metrics = metric_values(stage_dir);
    let keys = |map: Vec<&(String, u64)>| map.into_iter().cloned().collect::<Vec<_>>();
    assert_eq!(keys(events.keys().collect()), keys(metrics.keys().collect()), "{}: event scalars ≠ metrics.jsonl", stage_dir.display());
    for (key, values) in &events {
        let expected = metrics[key];
        assert_eq!(values.len(), 1, "{}: {key:?} written {} times", stage_dir.display(), values.len());
        let same = (values[0].is_nan() && expected.is_nan()) || values[0] == expected as f32;
        assert!(same, "{}: {key:?} is {} in the event file, {expected} in metrics.jsonl", stage_dir.display(), values[0]);
    }
}
