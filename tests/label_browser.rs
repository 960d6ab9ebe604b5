//! The labeling page in headless Chromium (tests/browser/label.e2e.mjs, playwright-core): sign
//! in, label with the keyboard, undo, reload, see a conversation turn by turn; then the database
//! and the export are checked here.

mod common;
mod label_support;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::time::Duration;

use label_support::*;
use serde_json::{json, Value};

const MARKUP_PROMPT: &str = "Review <b>this</b> & \"that\" — it's <script>document.title='pwned'</script>";
const MARKUP_A: &str = "'; DROP TABLE labels; --\n\t<img src=x onerror=\"alert(1)\"> 🚀";
const MARKUP_B: &str = "&lt;escaped&gt; &amp; <i>italic?</i>\nline two  with  spaces";

#[test]
fn an_annotator_labels_with_the_keyboard_in_a_real_browser() {
    assert!(
        common::browser_dir().join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed: run `scripts/setup --test` (npm ci in tests/browser)"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut pairs = vec![json!({"prompt": MARKUP_PROMPT, "response_a": MARKUP_A, "response_b": MARKUP_B})];
    pairs.extend(numbered_pairs(2));
    pairs.push(json!({"prompt": conversation(), "response_a": "fair", "response_b": "cheap"}));
    let db = database_with(dir.path(), &pairs);
    let token = add_annotator(&db, "alice");
    let server = Server::start(&db, &[]);

    let envs = [("LABEL_URL", OsStr::new(&server.url)), ("LABEL_TOKEN", OsStr::new(&token))];
    let output = common::run_browser_script("label.e2e.mjs", &envs, Duration::from_secs(120))
        .unwrap_or_else(|| panic!("the browser test ran over 120 s; server log:\n{}", server.log()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "label.e2e.mjs failed:\n{stdout}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        server.log()
    );
    let report: Value = serde_json::from_str(stdout.lines().last().expect("a report line")).unwrap();
    let labels = report["labels"].as_array().unwrap();
    let given: Vec<(i64, &str)> = labels.iter().map(|l| (l["pair_id"].as_i64().unwrap(), l["preferred"].as_str().unwrap())).collect();
    assert_eq!(given, [(1, "left"), (2, "right"), (3, "left"), (4, "skip")]);

    // The page showed the markup pair as plain text, character for character.
    assert_eq!(labels[0]["prompt"], MARKUP_PROMPT);
    let shown: BTreeSet<&str> = [labels[0]["left"].as_str().unwrap(), labels[0]["right"].as_str().unwrap()].into();
    assert_eq!(shown, BTreeSet::from([MARKUP_A, MARKUP_B]));

    // The conversational pair (the fourth, skipped) showed turn by turn, as text, and no prompt.
    assert_eq!(labels[3]["turns"], conversation(), "{}", labels[3]);
    assert_eq!(labels[3]["prompt"], "");
    assert!(labels[..3].iter().all(|l| l["turns"] == json!([])));

    // The database holds exactly what was finally given: the undone tie is gone.
    let stored: Vec<(i64, String)> =
        db_rows(&db, "SELECT a.pair_id, l.preferred FROM labels l JOIN assignments a ON a.id = l.assignment_id ORDER BY a.pair_id");
    let stored: Vec<(i64, &str)> = stored.iter().map(|(id, p)| (*id, p.as_str())).collect();
    assert_eq!(stored, given);

    // Export maps what the browser showed on each side back to the chosen response.
    let records = export(&db, dir.path(), &["--include-ties", "--include-skips"]);
    let by_pair = |id: i64| records.iter().find(|r| r["pair_id"] == id).unwrap_or_else(|| panic!("pair {id} exported"));
    for label in &labels[..3] {
        let (chosen, rejected) = if label["preferred"] == "left" { ("left", "right") } else { ("right", "left") };
        let record = by_pair(label["pair_id"].as_i64().unwrap());
        assert_eq!((&record["chosen"], &record["rejected"]), (&label[chosen], &label[rejected]), "{record}");
        assert_eq!(record["judgement"], "preference");
    }
    assert_eq!(by_pair(4)["judgement"], "skip");
    // A conversational prompt is exported in TRL's conversational form.
    assert_eq!(by_pair(4)["prompt"], conversation());
}

/// A conversation with markup in its text: the page must show it as text.
fn conversation() -> Value {
    json!([
        {"role": "system", "content": "You review <b>products</b>."},
        {"role": "user", "content": "The kettle?\n<script>document.title='pwned'</script>"},
        {"role": "assistant", "content": "It boils fast."},
        {"role": "user", "content": "And its price?"},
    ])
}
