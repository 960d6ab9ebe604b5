//! Comparing checkpoints by human judgement: `rlhf label import` from two runs' stages pairs their
//! responses (with `model_a` / `model_b` metadata), an annotator labels them through the library,
//! and `rlhf label leaderboard` ranks the two runs by what was labeled.

mod label_support;

use std::path::{Path, PathBuf};

use label_support::*;
use rlhf_lab::label::Preferred;
use serde_json::{json, Value};

/// `ROOT/RUN/ppo/samples.jsonl` with `(prompt, completion)` lines at step 0 (the starting policy,
/// shared by both runs) and at step 8, the stage's last evaluation.
fn stage(root: &Path, run: &str, answers: &[(String, String)]) -> PathBuf {
    let dir = root.join(run).join("ppo");
    std::fs::create_dir_all(&dir).unwrap();
    let mut lines: Vec<Value> = answers.iter().map(|(p, _)| json!({"step": 0, "prompt": p, "completion": "the starting policy"})).collect();
    lines.extend(answers.iter().map(|(p, c)| json!({"step": 8, "prompt": p, "completion": c, "gold_score": 1.0})));
    write_jsonl(&dir.join("samples.jsonl"), &lines);
    dir
}

/// Run A answers p0–p5 with `a0`–`a5`, run B with `b0`–`b5`; both answer `same` alike (no pair);
/// only A answers `lonely` (no pair).
fn two_runs(root: &Path) -> (PathBuf, PathBuf) {
    let answers = |run: &str| {
        let mut answers: Vec<(String, String)> = (0..6).map(|i| (format!("p{i}"), format!("{run}{i}"))).collect();
        answers.push(("same".into(), "identical answer".into()));
        answers
    };
    let mut a = answers("a");
    a.push(("lonely".into(), "only run A".into()));
    (stage(root, "run-a", &a), stage(root, "run-b", &answers("b")))
}

/// Which run's response the annotator prefers for a prompt.
#[derive(Clone, Copy)]
enum Verdict {
    RunA,
    RunB,
    Tie,
}

/// Alice labels every pair as `verdict` says for its prompt, seeing each pair in the random
/// left/right order the server would show.
fn label_all(db: &Path, verdict: impl Fn(&str) -> Verdict) -> usize {
    let labeled = label_through_library(db, "alice", usize::MAX, |_, pair| match (verdict(&pair.prompt), pair.left.starts_with('a')) {
        (Verdict::RunA, true) | (Verdict::RunB, false) => Preferred::Left,
        (Verdict::RunA, false) | (Verdict::RunB, true) => Preferred::Right,
        (Verdict::Tie, _) => Preferred::Tie,
    });
    labeled.len()
}

fn import_both(db: &Path, a: &Path, b: &Path) -> String {
    rlhf_ok(&["label", "import", "--db", path_str(db), "--from-run", path_str(a), "--from-run", path_str(b)])
}

#[test]
fn pairs_across_two_runs_are_ranked_by_what_was_labeled() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_runs(dir.path());
    let db = dir.path().join("labels.db");
    let out = import_both(&db, &a, &b);
    assert!(out.starts_with("imported 6 new pairs from") && out.contains("run-a/ppo/samples.jsonl, "), "{out}");
    assert!(import_both(&db, &a, &b).starts_with("imported 0 new pairs"), "importing again adds nothing");

    let rows: Vec<(String, String, String, String)> =
        db_rows(&db, "SELECT prompt, response_a, response_b, metadata FROM pairs ORDER BY id");
    let texts: Vec<(String, String, String)> = rows.iter().map(|r| (r.0.clone(), r.1.clone(), r.2.clone())).collect();
    let expected: Vec<(String, String, String)> = (0..6).map(|i| (format!("p{i}"), format!("a{i}"), format!("b{i}"))).collect();
    assert_eq!(texts, expected, "the last evaluation's answers, one pair per prompt");
    let metadata: Value = serde_json::from_str(&rows[0].3).unwrap();
    assert_eq!((&metadata["model_a"], &metadata["model_b"]), (&json!("run-a/ppo"), &json!("run-b/ppo")));
    assert!(metadata["source"][0].as_str().unwrap().ends_with("run-a/ppo/samples.jsonl"), "{metadata}");
    assert!(metadata["source"][1].as_str().unwrap().ends_with("run-b/ppo/samples.jsonl"), "{metadata}");
    assert_eq!(metadata["sample_a"], json!({"step": 8, "gold_score": 1.0}));

    let error = rlhf_err(&["label", "leaderboard", "--db", path_str(&db)]);
    assert!(error.contains("none of the 6 pairs between models has a judgement yet"), "{error}");

    // Run A wins p0–p3, loses p4, ties p5: 4.5 wins to 1.5, so A is ln 3 stronger.
    let labeled = label_all(&db, |prompt| match prompt {
        "p4" => Verdict::RunB,
        "p5" => Verdict::Tie,
        _ => Verdict::RunA,
    });
    assert_eq!(labeled, 6);
    let board: Value = serde_json::from_str(&rlhf_ok(&["label", "leaderboard", "--db", path_str(&db), "--json"])).unwrap();
    assert_eq!((board["judgements"].as_u64(), board["rounds"].as_u64(), board["seed"].as_u64()), (Some(6), Some(1000), Some(0)));
    let models = board["models"].as_array().unwrap();
    assert_eq!(models.iter().map(|m| m["model"].as_str().unwrap()).collect::<Vec<_>>(), ["run-a/ppo", "run-b/ppo"]);
    let record = |m: &Value| ["wins", "losses", "ties", "comparisons"].map(|k| m[k].as_u64().unwrap());
    assert_eq!(record(&models[0]), [4, 1, 1, 6]);
    assert_eq!(record(&models[1]), [1, 4, 1, 6]);
    let half_ln_3 = 3f64.ln() / 2.0;
    assert!((models[0]["strength"].as_f64().unwrap() - half_ln_3).abs() < 1e-5, "{board}");
    assert!((models[1]["strength"].as_f64().unwrap() + half_ln_3).abs() < 1e-5, "{board}");
    // 1000 ± 200 · log10(3)
    assert!((models[0]["rating"].as_f64().unwrap() - 1095.42).abs() < 0.01, "{board}");
    for m in models {
        let (low, rating, high) = (m["rating_low"].as_f64().unwrap(), m["rating"].as_f64().unwrap(), m["rating_high"].as_f64().unwrap());
        assert!(low <= rating && rating <= high, "{m}");
    }
    assert_eq!(
        board["win_rates"][0],
        json!({"model": "run-a/ppo", "opponent": "run-b/ppo", "wins": 4, "losses": 1, "ties": 1, "comparisons": 6, "win_rate": 0.75})
    );

    let args = ["label", "leaderboard", "--db", path_str(&db), "--rounds", "200", "--seed", "5"];
    let text = rlhf_ok(&args);
    assert_eq!(rlhf_ok(&args), text, "the same seed draws the same intervals");
    assert!(
        text.starts_with("2 models rated from 6 judgements (Bradley–Terry; 95 % intervals from 200 bootstrap rounds, seed 5)"),
        "{text}"
    );
    let first = text.lines().position(|l| l.contains("run-a/ppo") && l.contains("1095")).expect("run A's row");
    let second = text.lines().position(|l| l.contains("run-b/ppo") && l.contains("905")).expect("run B's row");
    assert!(first < second, "{text}");
    assert!(text.contains("0.75 (6)") && text.contains("0.25 (6)"), "{text}");
}

#[test]
fn leaderboard_says_why_there_is_nothing_to_rank() {
    let dir = tempfile::tempdir().unwrap();
    let db = database_with(dir.path(), &numbered_pairs(2));
    let error = rlhf_err(&["label", "leaderboard", "--db", path_str(&db)]);
    assert!(error.contains("no pair names the models behind its responses") && error.contains("--from-run"), "{error}");
    let missing = dir.path().join("missing.db");
    let error = rlhf_err(&["label", "leaderboard", "--db", path_str(&missing)]);
    assert!(error.contains("no labeling database at"), "{error}");
    let error = rlhf_err(&["label", "leaderboard", "--db", path_str(&db), "--rounds", "0"]);
    assert!(error.contains("--rounds"), "{error}");

    // Two runs that answer everything alike give no pair at all.
    let same = |run: &str| stage(dir.path(), run, &[("p".into(), "alike".into())]);
    let (a, b) = (same("x"), same("y"));
    let error = rlhf_err(&["label", "import", "--db", path_str(&db), "--from-run", path_str(&a), "--from-run", path_str(&b)]);
    assert!(error.contains("yield no pair") && error.contains("x/ppo/samples.jsonl"), "{error}");
}
