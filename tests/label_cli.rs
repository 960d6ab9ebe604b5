//! `rlhf label import | annotator add | export | stats` and the library's preference reader.

mod common;
mod label_support;

use label_support::*;
use rlhf_lab::data::preferences::read_jsonl;
use rlhf_lab::label::{read_preference_pairs, Preferred};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn pair_count(db: &std::path::Path) -> i64 {
    let rows: Vec<(i64,)> = db_rows(db, "SELECT count(*) FROM pairs");
    rows[0].0
}

#[test]
fn import_is_idempotent_and_keeps_extra_fields_as_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let (db, file) = (dir.path().join("l.db"), dir.path().join("pairs.jsonl"));
    let mut pairs = numbered_pairs(3);
    pairs[0]["source"] = json!("model-x");
    pairs[0]["id"] = json!(7);
    write_jsonl(&file, &pairs);
    let out = rlhf_ok(&["label", "import", "--db", path_str(&db), path_str(&file)]);
    assert!(out.starts_with("imported 3 new pairs from"), "{out}");
    let out = rlhf_ok(&["label", "import", "--db", path_str(&db), path_str(&file)]);
    assert!(out.starts_with("imported 0 new pairs") && out.contains("(3 already present)"), "{out}");
    // The same comparison with A and B swapped is the same pair; a new one is added.
    write_jsonl(
        &file,
        &[
            json!({"prompt": "prompt 0", "response_a": "b0", "response_b": "a0"}),
            json!({"prompt": "new", "response_a": "x", "response_b": "y"}),
        ],
    );
    let out = rlhf_ok(&["label", "import", "--db", path_str(&db), path_str(&file)]);
    assert!(out.starts_with("imported 1 new pairs") && out.contains("(1 already present)"), "{out}");
    assert_eq!(pair_count(&db), 4);
    let metadata: Vec<(String,)> = db_rows(&db, "SELECT metadata FROM pairs WHERE prompt = 'prompt 0'");
    assert_eq!(serde_json::from_str::<Value>(&metadata[0].0).unwrap(), json!({"source": "model-x", "id": 7}));
}

#[test]
fn a_bad_line_is_named_and_nothing_is_imported() {
    let dir = tempfile::tempdir().unwrap();
    let db = database_with(dir.path(), &numbered_pairs(2));
    let bad = dir.path().join("bad.jsonl");
    let good = |i: usize| json!({"prompt": format!("new {i}"), "response_a": "x", "response_b": "y"}).to_string();
    for (broken_line, message) in [
        ("{\"prompt\": \"p\", \"response_a\": \"x\"", "bad.jsonl:3: EOF while parsing"),
        ("{\"prompt\": \"p\", \"response_a\": \"x\"}", "bad.jsonl:3: missing field `response_b`"),
        ("{\"prompt\": \"p\", \"response_a\": 5, \"response_b\": \"y\"}", "bad.jsonl:3: invalid type: integer `5`, expected a string"),
        (
            "{\"prompt\": \"p\", \"response_a\": \"same\", \"response_b\": \"same\"}",
            "bad.jsonl:3: `response_a` and `response_b` are identical",
        ),
        ("[\"p\", \"x\", \"y\"]", "bad.jsonl:3: invalid type: sequence"),
        ("{\"prompt\": \"p\", \"response_a\": \"x\", \"response_b\": \"\"}", "bad.jsonl:3: `response_b` is empty"),
        ("{\"prompt\": \"p\", \"response_a\": \" \\n\\t \", \"response_b\": \"y\"}", "bad.jsonl:3: `response_a` is empty"),
        (
            "{\"prompt\": \"p\", \"response_a\": \"caf\\u00e9\", \"response_b\": \"cafe\\u0301\"}",
            "bad.jsonl:3: `response_a` and `response_b` are identical",
        ),
    ] {
        std::fs::write(&bad, format!("{}\n\n{broken_line}\n{}\n", good(1), good(2))).unwrap();
        let error = rlhf_err(&["label", "import", "--db", path_str(&db), path_str(&bad)]);
        assert!(error.contains(message), "expected {message:?} in {error}");
        assert!(!error.contains("panicked"), "{error}");
        assert_eq!(pair_count(&db), 2, "the good lines of a bad file are not imported either");
    }
    // Invalid UTF-8 is named by its line; a text over the cap is refused, naming line and field.
    std::fs::write(&bad, [good(1).as_bytes(), b"\n{\"prompt\": \"p\xff\", \"response_a\": \"x\", \"response_b\": \"y\"}\n"].concat())
        .unwrap();
    let error = rlhf_err(&["label", "import", "--db", path_str(&db), path_str(&bad)]);
    assert!(error.contains("bad.jsonl:2: not valid UTF-8 (byte 14 of the line)"), "{error}");
    let huge = "z".repeat(30 << 20);
    std::fs::write(&bad, format!("{}\n{}\n", good(1), json!({"prompt": "p", "response_a": "x", "response_b": huge}))).unwrap();
    let error = rlhf_err(&["label", "import", "--db", path_str(&db), path_str(&bad)]);
    assert!(error.contains("bad.jsonl:2: `response_b` holds 31457280 bytes; a pair's texts are limited to 100000 bytes each"), "{error}");
    assert_eq!(pair_count(&db), 2);
    let fresh = dir.path().join("fresh.db");
    rlhf_err(&["label", "import", "--db", path_str(&fresh), path_str(&bad)]);
    assert!(!fresh.exists(), "a bad file does not even create the database");
    let error = rlhf_err(&["label", "import", "--db", path_str(&db), path_str(&dir.path().join("absent.jsonl"))]);
    assert!(error.contains("absent.jsonl"), "{error}");
}

#[test]
fn import_reads_a_byte_order_mark_and_stores_one_pair_per_text_whatever_its_unicode_form() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("labels.db");
    let file = dir.path().join("pairs.jsonl");
    // "café" composed (U+00E9) in the first line, decomposed (e + U+0301) in the second.
    let composed = json!({"prompt": "Caf\u{e9}?", "response_a": "caf\u{e9} au lait", "response_b": "no"});
    let decomposed = json!({"prompt": "Cafe\u{301}?", "response_a": "cafe\u{301} au lait", "response_b": "no"});
    std::fs::write(&file, format!("\u{feff}{composed}\r\n{decomposed}\r\n")).unwrap();
    let out = rlhf_ok(&["label", "import", "--db", path_str(&db), path_str(&file)]);
    assert!(out.contains("imported 1 new pairs") && out.contains("(1 already present)"), "{out}");
    let stored: Vec<(String, String)> = db_rows(&db, "SELECT prompt, response_a FROM pairs");
    assert_eq!(stored, [("Caf\u{e9}?".to_string(), "caf\u{e9} au lait".to_string())], "stored in NFC");
}

#[test]
fn import_from_run_pairs_two_completions_of_a_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let stage = dir.path().join("run/ppo");
    std::fs::create_dir_all(&stage).unwrap();
    write_jsonl(
        &stage.join("samples.jsonl"),
        &[
            json!({"prompt": "p1", "completion": "one", "score": 0.5, "step": 10}),
            json!({"prompt": "p2", "completion": "lonely"}),
            json!({"prompt": "p1", "completion": "two", "score": 0.9, "step": 20}),
            json!({"prompt": "p3", "completion": "x"}),
            json!({"prompt": "p3", "completion": "x"}),
            json!({"prompt": "p3", "completion": "y"}),
        ],
    );
    let db = dir.path().join("l.db");
    let out = rlhf_ok(&["label", "import", "--db", path_str(&db), "--from-run", path_str(&stage)]);
    assert!(out.starts_with("imported 2 new pairs from") && out.contains("samples.jsonl"), "{out}");
    let rows: Vec<(String, String, String, String)> =
        db_rows(&db, "SELECT prompt, response_a, response_b, metadata FROM pairs ORDER BY id");
    assert_eq!((rows[0].0.as_str(), rows[0].1.as_str(), rows[0].2.as_str()), ("p1", "one", "two"));
    assert_eq!((rows[1].0.as_str(), rows[1].1.as_str(), rows[1].2.as_str()), ("p3", "x", "y"));
    let metadata: Value = serde_json::from_str(&rows[0].3).unwrap();
    assert_eq!(metadata["sample_b"], json!({"score": 0.9, "step": 20}));
    assert!(metadata["source"].as_str().unwrap().ends_with("run/ppo/samples.jsonl"));

    let error = rlhf_err(&["label", "import", "--db", path_str(&db), "--from-run", path_str(&dir.path().join("run/sft"))]);
    assert!(error.contains("run/sft/samples.jsonl"), "{error}");
    let error = rlhf_err(&["label", "import", "--db", path_str(&db), "x.jsonl", "--from-run", path_str(&stage)]);
    assert!(error.contains("cannot be used with"), "{error}");
    let error = rlhf_err(&["label", "import", "--db", path_str(&db)]);
    assert!(error.contains("required"), "{error}");
}

#[test]
fn import_with_a_model_generates_two_responses_per_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("model");
    let config = common::tiny_config(300, 64, 32, 1, 2);
    let tokenizer = common::tiny_tokenizer(300);
    rlhf_lab::model::LanguageModel::fresh(&config, tokenizer, tch::Device::Cpu, rlhf_lab::model::Precision::Fp32).save(&model_dir).unwrap();
    let prompts = dir.path().join("prompts.jsonl");
    write_jsonl(
        &prompts,
        &[json!({"prompt": "review 1: the battery"}), json!({"prompt": "review 2: the screen"}), json!({"prompt": "review 3:"})],
    );
    let db = dir.path().join("l.db");
    let args = [
        "label",
        "import",
        "--db",
        path_str(&db),
        "--model",
        path_str(&model_dir),
        "--prompts",
        path_str(&prompts),
        "--max-new-tokens",
        "12",
        "--device",
        "cpu",
    ];
    let out = rlhf_ok(&args);
    assert!(out.starts_with("imported 3 new pairs from"), "{out}");
    let rows: Vec<(String, String, String)> = db_rows(&db, "SELECT prompt, response_a, response_b FROM pairs ORDER BY id");
    assert_eq!(rows.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(), ["review 1: the battery", "review 2: the screen", "review 3:"]);
    assert!(rows.iter().all(|(_, a, b)| a != b && !a.is_empty()), "{rows:?}");
    // the same seed samples the same pairs: nothing new
    let out = rlhf_ok(&args);
    assert!(out.starts_with("imported 0 new pairs") && out.contains("(3 already present)"), "{out}");

    let error = rlhf_err(&["label", "import", "--db", path_str(&db), "--model", path_str(&model_dir)]);
    assert!(error.contains("--prompts"), "{error}");
    let error = rlhf_err(&[
        "label",
        "import",
        "--db",
        path_str(&db),
        "--model",
        path_str(&dir.path().join("nothing")),
        "--prompts",
        path_str(&prompts),
    ]);
    assert!(error.contains("nothing"), "{error}");
}

#[test]
fn annotator_add_prints_only_the_token_and_stores_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("l.db");
    let out = rlhf_ok(&["label", "annotator", "add", "--db", path_str(&db), "alice"]);
    assert!(out.ends_with('\n'));
    let token = out.trim_end();
    assert!(token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()), "{out:?}");
    let other = add_annotator(&db, "bob");
    assert_ne!(token, other);
    let error = rlhf_err(&["label", "annotator", "add", "--db", path_str(&db), "alice"]);
    assert!(error.contains("annotator `alice` already exists"), "{error}");
    let error = rlhf_err(&["label", "annotator", "add", "--db", path_str(&db), "  "]);
    assert!(error.contains("must not be empty"), "{error}");
    let stored: Vec<(String,)> = db_rows(&db, "SELECT token_sha256 FROM annotators WHERE name = 'alice'");
    assert_eq!(stored[0].0, hex::encode(Sha256::digest(token.as_bytes())), "only the hash is stored");
}

/// Alice labels pairs 1–4 left, right, tie, skip through the library; returns what she saw.
fn label_four_pairs(db: &std::path::Path) -> Vec<(i64, String, String)> {
    let answers = [Preferred::Left, Preferred::Right, Preferred::Tie, Preferred::Skip];
    let labeled = label_through_library(db, "alice", answers.len(), |i, _| answers[i]);
    labeled.into_iter().map(|(pair, _)| (pair.pair_id, pair.left, pair.right)).collect()
}

#[test]
fn export_writes_preferences_and_ties_and_skips_only_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let mut pairs = numbered_pairs(4);
    pairs[1]["prompt"] = json!("metadata cannot override record fields");
    pairs[1]["chosen"] = json!("from metadata");
    pairs[1]["topic"] = json!("kept");
    let db = database_with(dir.path(), &pairs);
    let seen = label_four_pairs(&db);

    let records = export(&db, dir.path(), &[]);
    assert_eq!(records.len(), 2);
    assert_eq!((&records[0]["chosen"], &records[0]["rejected"]), (&json!(seen[0].1), &json!(seen[0].2)), "left won");
    assert_eq!((&records[1]["chosen"], &records[1]["rejected"]), (&json!(seen[1].2), &json!(seen[1].1)), "right won");
    assert_eq!(records[1]["topic"], "kept");
    assert_eq!(records[1]["prompt"], "metadata cannot override record fields");
    for record in &records {
        for field in ["prompt", "chosen", "rejected", "annotator", "pair_id", "labeled_at", "judgement"] {
            assert!(record.get(field).is_some(), "{field} missing in {record}");
        }
        let labeled_at = record["labeled_at"].as_str().unwrap();
        assert!(labeled_at.len() == 24 && labeled_at.ends_with('Z') && labeled_at.contains('T'), "{labeled_at}");
    }

    let with_ties = export(&db, dir.path(), &["--include-ties"]);
    let judgements: Vec<&str> = with_ties.iter().map(|r| r["judgement"].as_str().unwrap()).collect();
    assert_eq!(judgements, ["preference", "preference", "tie"]);
    assert_eq!((&with_ties[2]["chosen"], &with_ties[2]["rejected"]), (&json!("a2"), &json!("b2")), "a tie keeps A/B order");
    let everything = export(&db, dir.path(), &["--include-ties", "--include-skips"]);
    assert_eq!(everything.last().unwrap()["judgement"], "skip");
    assert_eq!(everything.len(), 4);

    // The reward stage reads the database as it reads the export with ties and skips as a
    // preference file: two preferences and one tie (a tie pair), the skip left out.
    let exported = dir.path().join("everything.jsonl");
    write_jsonl(&exported, &everything);
    let from_file = read_jsonl(&exported, &common::tiny_tokenizer(300)).unwrap();
    let from_database = read_preference_pairs(&db, &common::tiny_tokenizer(300)).unwrap();
    assert_eq!(from_database, from_file);
    assert_eq!(from_database.iter().map(|p| p.tie).collect::<Vec<_>>(), [false, false, true]);
}

#[test]
fn stats_counts_labels_and_annotators() {
    let dir = tempfile::tempdir().unwrap();
    let db = database_with(dir.path(), &numbered_pairs(5));
    label_four_pairs(&db);
    add_annotator(&db, "bob");
    let text = rlhf_ok(&["label", "stats", "--db", path_str(&db)]);
    assert!(text.contains("pairs: 5 (3 with a judgement)"), "{text}");
    assert!(text.contains("labels: 4 (2 preferences, 1 ties, 1 skips)"), "{text}");
    assert!(text.contains("annotators: 2"), "{text}");
    assert!(text.contains("agreement: no pair judged by two annotators yet"), "{text}");
    let stats: Value = serde_json::from_str(&rlhf_ok(&["label", "stats", "--db", path_str(&db), "--json"])).unwrap();
    assert_eq!((stats["pairs"].as_i64(), stats["labels"].as_i64()), (Some(5), Some(4)));
    assert_eq!(stats["annotators"][0]["name"], "alice");
    assert_eq!(stats["annotators"][1]["labels"], 0);
    assert_eq!(stats["agreement"], Value::Null);
}

#[test]
fn commands_on_a_missing_database_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.db");
    for args in [vec!["label", "stats", "--db", path_str(&missing)], vec!["label", "export", "--db", path_str(&missing), "-o", "out.jsonl"]]
    {
        let error = rlhf_err(&args);
        assert!(error.contains("no labeling database at") && error.contains("missing.db"), "{error}");
    }
    assert!(!missing.exists());
    let not_a_db = dir.path().join("pairs.jsonl");
    write_jsonl(&not_a_db, &numbered_pairs(1));
    let error = rlhf_err(&["label", "stats", "--db", path_str(&not_a_db)]);
    assert!(error.contains("pairs.jsonl") && !error.contains("panicked"), "{error}");
}
