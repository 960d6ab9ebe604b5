//! Data augmentation end to end: a tiny run with `[task] augment` and a reward stage with
//! `augment` is evaluated on exactly what the same run without augmentation is evaluated on,
//! counts what it added in data_report.json, writes the added records marked with their
//! original, and a bad synonyms file or a technique without synonyms is refused by name.

mod common;

use std::path::{Path, PathBuf};

use serde_json::Value;

/// `TASK_AUGMENT` and `RM_AUGMENT` are replaced by an `augment = { ... }` line or nothing.
const TINY: &str = r#"name = "augmented"
seed = 3
threads = 1

[task]
kind = "synthetic-reviews"
corpus_size = 200
demonstrations_size = 60
prompts_size = 10
eval_fraction = 0.1
TASK_AUGMENT

[tokenizer]
vocab_size = 300

[models.base]
n_layer = 1
n_head = 2
n_embd = 32
n_ctx = 64
device = "cpu"

[[stages]]
name = "pretrain"
kind = "lm"
model = "base"
steps = 10
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
steps = 6
batch_size = 4
seq_len = 48
eval_every = 3
eval_batches = 1
samples = 1
device = "cpu"

[[stages]]
name = "rm"
kind = "reward"
init = "sft"
pairs = 24
eval_pairs = 8
policy_fraction = 0.0
steps = 4
batch_size = 4
eval_every = 2
normalization_samples = 4
device = "cpu"
RM_AUGMENT
"#;

const TASK_AUGMENT: &str = "augment = { copies = 2, synonym_replace = 0.2, random_swap = 0.1, random_delete = 0.1, \
                            random_insert = 0.1, sentence_shuffle = 0.5, resample = 0.5 }";
const RM_AUGMENT: &str = "augment = { copies = 1, synonym_replace = 0.2, random_swap = 0.1, resample = 0.25 }";

fn experiment(task_augment: &str, rm_augment: &str) -> String {
    TINY.replace("TASK_AUGMENT", task_augment).replace("RM_AUGMENT", rm_augment)
}

/// Runs `rlhf run` on `text` in a directory of its own; returns the run directory.
fn run(work: &Path, name: &str, text: &str) -> PathBuf {
    let dir = work.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("exp.toml"), text).unwrap();
    let (ok, stdout, stderr) = common::rlhf(&["run", "exp.toml", "--out", "out"], &dir);
    assert!(ok, "rlhf run failed:\n{stderr}");
    dir.join(stdout.trim())
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

/// The held-out pairs as the reward stage scored them, without its scores.
fn held_out_pairs(run: &Path) -> Vec<Value> {
    json_lines(&run.join("rm/eval_pairs.jsonl"))
        .into_iter()
        .map(|pair| serde_json::json!([pair["prompt"], pair["chosen"], pair["rejected"], pair["tie"], pair["gold_chosen"]]))
        .collect()
}

#[test]
fn augmentation_adds_marked_counted_training_records_and_leaves_evaluation_alone() {
    let work = tempfile::tempdir().unwrap();
    let plain = run(work.path(), "plain", &experiment("", ""));
    let augmented = run(work.path(), "augmented", &experiment(TASK_AUGMENT, RM_AUGMENT));

    // Evaluated on the same data: the task's held-out records and the reward stage's pairs.
    let digest = |run: &Path| json(&run.join("env.json"))["eval_set"]["sha256"].clone();
    assert!(digest(&plain).is_string());
    assert_eq!(digest(&plain), digest(&augmented));
    assert_eq!(held_out_pairs(&plain).len(), 8);
    assert_eq!(held_out_pairs(&plain), held_out_pairs(&augmented));
    assert!(json(&augmented.join("summary.json"))["rm"]["eval/accuracy"].is_f64());

    // Nothing augmented, nothing written.
    for file in ["data_report.json", "augmented_demonstrations.jsonl", "rm/augmented_pairs.jsonl"] {
        assert!(!plain.join(file).exists(), "{file} without augmentation");
    }

    // 60 demonstrations, 6 held out: 54 originals, 2 copies each, ⌊0.5 · 54⌋ resampled.
    let report = json(&augmented.join("data_report.json"));
    let demonstrations = &report["augmentation"]["task.demonstrations"];
    assert_eq!(
        [&demonstrations["original"], &demonstrations["copies"], &demonstrations["resampled"], &demonstrations["total"]],
        [54, 108, 27, 189]
    );
    let techniques = demonstrations["by_technique"].as_object().unwrap();
    let mut names: Vec<&str> = techniques.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["random_delete", "random_insert", "random_swap", "sentence_shuffle", "synonym_replace"]);
    // Every copy is changed by some technique or counted unchanged; none by more than all copies.
    assert!(techniques.values().all(|count| (1..=108).contains(&count.as_u64().unwrap())), "{techniques:?}");
    let unchanged = demonstrations["unchanged"].as_u64().unwrap();
    assert!(techniques.values().map(|c| c.as_u64().unwrap()).sum::<u64>() + unchanged >= 108);
    // 24 pairs, one copy each, ⌊0.25 · 24⌋ resampled.
    let pairs = &report["augmentation"]["rm.pairs"];
    assert_eq!([&pairs["original"], &pairs["copies"], &pairs["resampled"], &pairs["total"]], [24, 24, 6, 54]);
    assert_eq!(pairs["by_technique"].as_object().unwrap().len(), 2);

    let added = json_lines(&augmented.join("augmented_demonstrations.jsonl"));
    assert_eq!(added.len(), 135);
    for (index, line) in added.iter().enumerate() {
        let original = line["original"].as_u64().unwrap();
        let techniques = line["techniques"].as_array().unwrap();
        if index < 108 {
            assert_eq!(original, index as u64 / 2, "copies follow their original");
            assert!(!techniques.iter().any(|t| t == "resample"), "{line}");
        } else {
            assert!(original < 54);
            assert_eq!(techniques, &[Value::from("resample")]);
        }
        // Only the response is rewritten: the prompt is a request as the task writes it.
        assert!(line["prompt"].as_str().unwrap().starts_with("Write a "), "{line}");
        assert!(line["response"].as_str().unwrap().starts_with(' '), "{line}");
    }
    let added_pairs = json_lines(&augmented.join("rm/augmented_pairs.jsonl"));
    assert_eq!(added_pairs.len(), 30);
    assert!(added_pairs
        .iter()
        .all(|pair| pair["gold_chosen"].is_f64() && pair["gold_rejected"].is_f64() && pair["original"].as_u64().is_some_and(|o| o < 24)));

    // A resumed run rewrites the task's entry and keeps the stage's.
    let (ok, _, stderr) = common::rlhf(&["run", "--resume", augmented.to_str().unwrap()], work.path());
    assert!(ok, "{stderr}");
    let again = json(&augmented.join("data_report.json"));
    assert_eq!(again["augmentation"], report["augmentation"]);
}

/// `rlhf validate` on `text` (with `files` written beside it): its stderr, after checking it failed.
fn validate_error(text: &str, files: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("exp.toml"), text).unwrap();
    for (name, contents) in files {
        std::fs::write(dir.path().join(name), contents).unwrap();
    }
    let (ok, _, stderr) = common::rlhf(&["validate", "exp.toml"], dir.path());
    assert!(!ok, "validate accepted:\n{text}");
    stderr
}

#[test]
fn bad_synonym_files_and_techniques_without_synonyms_are_refused_by_name() {
    let bad_file = "# adjectives\ngreat\tsuperb\n\nphone\n";
    let task = experiment("augment = { copies = 1, synonym_replace = 0.1, synonyms = \"syn.tsv\" }", "");
    let error = validate_error(&task, &[("syn.tsv", bad_file)]);
    // Found when the experiment is read: at the [task] table's line.
    let at_task = format!("exp.toml:{}:1: [task]: `augment.synonyms`", task.lines().position(|line| line == "[task]").unwrap() + 1);
    assert!(error.contains(&at_task), "`{at_task}` missing from {error}");
    assert!(error.contains("expected a file of synonym groups: syn.tsv:4: a group needs two or more different words"), "{error}");

    let stage = experiment("", "augment = { copies = 1, random_insert = 0.1, synonyms = \"pairs.tsv\" }");
    let error = validate_error(&stage, &[("pairs.tsv", "great\t\tsuperb\n")]);
    assert!(error.contains("stage `rm`: `augment.synonyms`: expected a file of synonym groups: pairs.tsv:1: word 2 is empty"), "{error}");

    // Pairs read from a file have no vocabulary of their own: synonym techniques need a file.
    let jsonl = experiment("", "source = \"jsonl\"\npreferences = \"prefs.jsonl\"\naugment = { copies = 1, synonym_replace = 0.1 }");
    let error = validate_error(&jsonl, &[("prefs.jsonl", "{\"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": \"b\"}\n")]);
    assert!(error.contains("stage `rm`: `augment.synonym_replace`: expected synonyms to draw from: a `synonyms` file"), "{error}");

    let error = validate_error(&experiment("augment = { copies = 1, random_swap = 2 }", ""), &[]);
    assert!(error.contains("[task]: `augment.random_swap`: expected a value in [0, 1], got 2"), "{error}");
}
