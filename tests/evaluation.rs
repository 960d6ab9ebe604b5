//! Fair comparisons, end to end on tiny runs: two seeds of one task are evaluated on identical
//! prompts; a PPO stage keeps every evaluated response (eval_final.jsonl) and its figures are
//! their means; `rlhf report` computes the win rate on all of them against hand-counted wins and
//! names the runs by the seed they differ in; `rlhf eval` reproduces a run's own final figures
//! from its checkpoints, and its directory reads like a run in `rlhf report`.

mod common;

use std::path::{Path, PathBuf};

use rlhf_lab::report::winrate::Comparison;
use rlhf_lab::report::{self, Options};
use serde_json::Value;

/// Every stage short; PPO evaluates 24 prompts (the task's 4 held-out prompts and 20 held-out
/// demonstrations' prompts), more than a win rate's minimum.
const EVAL_PROMPTS: usize = 24;

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn run(work: &Path, seed: u64) -> PathBuf {
    let eval_prompts = format!("stages.ppo.eval_prompts={EVAL_PROMPTS}");
    let seed = format!("seed={seed}");
    let (ok, stdout, stderr) = common::rlhf(
        &["run", "tiny.toml", "--out", "runs", "--set", &seed, "--set", &eval_prompts, "--set", "stages.ppo.iterations=6"],
        work,
    );
    assert!(ok, "{stderr}");
    work.join(stdout.trim())
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

fn column(evaluated: &[Value], field: &str) -> Vec<f64> {
    evaluated.iter().map(|line| line[field].as_f64().unwrap_or_else(|| panic!("no {field} in {line}"))).collect()
}

fn prompts(evaluated: &[Value]) -> Vec<&str> {
    evaluated.iter().map(|line| line["prompt"].as_str().unwrap()).collect()
}

#[test]
fn seeds_share_one_evaluation_set_that_reports_and_rlhf_eval_compare_alike() {
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("tiny.toml"), common::TINY_RLHF_EXPERIMENT).unwrap();
    let (a, b) = (run(work.path(), 4), run(work.path(), 5));

    // One evaluation set: the same held-out data (env.json's hash) and the same PPO prompts.
    let eval_set = |run: &Path| json(&run.join("env.json"))["eval_set"]["sha256"].as_str().unwrap().to_string();
    assert_eq!(eval_set(&a), eval_set(&b));
    assert_eq!(eval_set(&a).len(), 64);
    let (evaluated_a, evaluated_b) = (lines(&a.join("ppo/eval_final.jsonl")), lines(&b.join("ppo/eval_final.jsonl")));
    assert_eq!(evaluated_a.len(), EVAL_PROMPTS, "every evaluated prompt kept");
    assert_eq!(prompts(&evaluated_a), prompts(&evaluated_b), "two seeds, identical prompts");
    assert!(evaluated_a.iter().all(|line| line["step"] == 6), "the final evaluation");
    assert_ne!(column(&evaluated_a, "gold_score"), column(&evaluated_b, "gold_score"), "different policies");

    // Its means are the stage's final figures.
    for (run, evaluated) in [(&a, &evaluated_a), (&b, &evaluated_b)] {
        let summary = &json(&run.join("summary.json"))["ppo"];
        for (field, figure) in
            [("gold_score", "eval/gold_score"), ("kl", "eval/kl"), ("score", "eval/rm_score"), ("raw_score", "eval/raw_rm_score")]
        {
            let expected = summary[figure].as_f64().unwrap();
            assert!(
                (mean(&column(evaluated, field)) - expected).abs() < 1e-9,
                "{figure}: {} vs {expected}",
                mean(&column(evaluated, field))
            );
        }
        // samples.jsonl keeps its meaning: the first `samples` of them.
        let samples: Vec<Value> = lines(&run.join("ppo/samples.jsonl")).into_iter().filter(|s| s["step"] == 6).collect();
        assert_eq!(prompts(&samples), prompts(&evaluated[..2]));
    }

    // The report: named by the key the runs differ in, the win rate on all 24 prompts.
    let out = work.path().join("report");
    let report = report::write(&[a.clone(), b.clone()], &out, &Options::default()).unwrap();
    let labels: Vec<&str> = report.runs.iter().map(|(label, _)| label.as_str()).collect();
    assert_eq!(labels, ["seed=4", "seed=5"]);
    let (win_rates, _) = report.win_rates.expect("gold scores");
    let Some(Comparison::Rate(rate)) = &win_rates.results[1].1 else { panic!("{:?}", win_rates.results[1]) };
    let (gold_a, gold_b) = (column(&evaluated_a, "gold_score"), column(&evaluated_b, "gold_score"));
    let wins = gold_b.iter().zip(&gold_a).filter(|(b, a)| b > a).count() as f64;
    let ties = gold_b.iter().zip(&gold_a).filter(|(b, a)| b == a).count() as f64;
    assert_eq!((rate.prompts, rate.wins, rate.ties), (EVAL_PROMPTS, wins, ties));
    assert_eq!(rate.rate, (wins + ties / 2.0) / EVAL_PROMPTS as f64);
    assert!(!report.notes.iter().any(|n| n.message.contains("evaluation set")), "{:?}", report.notes);

    // `rlhf eval` with the run's reward model, reference, prompts and decoding settings
    // reproduces run a's final figures response by response; run b's policy gets the same gold.
    let evaluation = work.path().join("evaluation");
    let (reward, reference) = (a.join("rm"), a.join("sft"));
    let args = [
        "eval",
        &format!("first={}", a.join("ppo").display()),
        &format!("second={}", b.join("ppo").display()),
        "--task",
        a.to_str().unwrap(),
        "--reward",
        reward.to_str().unwrap(),
        "--reference",
        reference.to_str().unwrap(),
        "--eval-prompts",
        "24",
        "--max-new-tokens",
        "12",
        "--device",
        "cpu",
        "-o",
        evaluation.to_str().unwrap(),
    ];
    let (ok, stdout, stderr) = common::rlhf(&args, work.path());
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), evaluation.to_str().unwrap());
    let first = lines(&evaluation.join("first/eval/eval_final.jsonl"));
    let completions = |evaluated: &[Value]| evaluated.iter().map(|l| l["completion"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(prompts(&first), prompts(&evaluated_a));
    assert_eq!(completions(&first), completions(&evaluated_a));
    let summary_a = &json(&a.join("summary.json"))["ppo"];
    let figures = &json(&evaluation.join("first/summary.json"))["eval"];
    for figure in ["eval/gold_score", "eval/kl", "eval/raw_rm_score", "eval/eos_fraction"] {
        let (got, expected) = (figures[figure].as_f64().unwrap(), summary_a[figure].as_f64().unwrap());
        assert!((got - expected).abs() < 1e-6, "{figure}: rlhf eval {got}, the run {expected}");
    }
    let second = lines(&evaluation.join("second/eval/eval_final.jsonl"));
    assert_eq!(completions(&second), completions(&evaluated_b));
    assert_eq!(column(&second, "gold_score"), gold_b);

    // The evaluation directory reads like runs: named as evaluated, the reward-model score
    // comparable (one reward model for both), the win rate as between the runs.
    let report = report::write(std::slice::from_ref(&evaluation), &work.path().join("eval-report"), &Options::default()).unwrap();
    let labels: Vec<&str> = report.runs.iter().map(|(label, _)| label.as_str()).collect();
    assert_eq!(labels, ["first", "second"]);
    let column_of = |name: &str| report.figures.headers.iter().position(|h| h == name).unwrap_or_else(|| panic!("no {name}"));
    let raw = column_of("eval eval/raw_rm_score");
    assert!(report.figures.rows.iter().any(|row| row[raw].best), "one reward model: a best raw score");
    let Some(Comparison::Rate(again)) = &report.win_rates.unwrap().0.results[1].1 else { panic!("24 shared prompts") };
    assert_eq!((again.wins, again.ties), (wins, ties));
}

#[test]
fn rlhf_eval_names_bad_input() {
    let work = tempfile::tempdir().unwrap();
    let eval = |args: &[&str]| common::rlhf(&[&["eval"], args].concat(), work.path());
    let (ok, _, stderr) = eval(&["missing", "--prompts", "p.jsonl", "-o", "out"]);
    assert!(!ok && stderr.contains("policy `missing`"), "{stderr}");
    let (ok, _, stderr) = eval(&["x", "-o", "out"]);
    assert!(!ok && stderr.contains("--task"), "one of --task and --prompts is required: {stderr}");
    std::fs::create_dir_all(work.path().join("full")).unwrap();
    std::fs::write(work.path().join("full/keep.txt"), "data").unwrap();
    let (ok, _, stderr) = eval(&["x", "--prompts", "p.jsonl", "-o", "full"]);
    assert!(!ok && stderr.contains("--out `full` is not empty"), "{stderr}");
    assert_eq!(std::fs::read_to_string(work.path().join("full/keep.txt")).unwrap(), "data", "nothing overwritten");

    // A broken prompts file is named with its line, after a policy that loads.
    let policy = work.path().join("policy");
    tch::manual_seed(0);
    rlhf_lab::model::LanguageModel::fresh(
        common::tiny_config(300, 48, 32, 1, 2),
        common::tiny_tokenizer(300),
        tch::Device::Cpu,
        rlhf_lab::model::Precision::Fp32,
    )
    .save(&policy)
    .unwrap();
    std::fs::write(work.path().join("p.jsonl"), "{\"prompt\": \"fine\"}\n{\"prompt\": 3}\n").unwrap();
    let (ok, _, stderr) = eval(&["policy", "--prompts", "p.jsonl", "-o", "out"]);
    assert!(!ok && stderr.contains("p.jsonl:2: `prompt` must be text"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
