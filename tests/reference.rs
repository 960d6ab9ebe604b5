//! docs/reference.md documents every key the experiment parser accepts and every metric the
//! stages write: checked against the parser's own field lists and against a run of every stage
//! kind, so that the reference cannot fall behind the code.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

fn reference() -> String {
    std::fs::read_to_string(common::repo_root().join("docs/reference.md")).expect("docs/reference.md exists")
}

#[test]
fn every_key_the_parser_accepts_is_in_the_reference() {
    let text = reference();
    let tables = rlhf_lab::config::accepted_keys();
    assert!(tables.iter().any(|(table, keys)| table == "stages (ppo)" && keys.contains(&"kl_coef")), "{tables:?}");
    let missing: Vec<String> = tables
        .iter()
        .flat_map(|(table, keys)| keys.iter().filter(|key| !text.contains(&format!("`{key}`"))).map(move |key| format!("{table}: `{key}`")))
        .collect();
    assert!(missing.is_empty(), "keys the parser accepts that docs/reference.md does not name:\n{}", missing.join("\n"));
}

fn json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

#[test]
fn every_metric_a_stage_writes_is_in_the_reference() {
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("exp.toml"), common::ALL_KINDS_EXPERIMENT).unwrap();
    let (ok, stdout, stderr) = common::rlhf(&["run", "exp.toml", "--out", "out"], work.path());
    assert!(ok, "{stderr}");
    let run = work.path().join(stdout.trim());

    let mut written: BTreeSet<String> = BTreeSet::new();
    for stage in ["pretrain", "sft", "rm", "ppo", "dpo", "grpo", "rloo", "bon"] {
        for line in json_lines(&run.join(stage).join("metrics.jsonl")) {
            written.extend(line.as_object().unwrap().keys().filter(|name| *name != "step").cloned());
        }
    }
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    for figures in summary.as_object().unwrap().values() {
        written.extend(figures.as_object().unwrap().keys().cloned());
    }
    assert!(written.contains("policy/approxkl_avg") && written.contains("eval/noise_ceiling") && written.contains("start/kl"));
    assert!(written.contains("rewards/margins") && written.contains("policy/kl_k3_avg") && written.contains("eval/kl_bound"));
    let text = reference();
    let missing: Vec<&String> = written.iter().filter(|name| !text.contains(&format!("`{name}`"))).collect();
    assert!(missing.is_empty(), "metrics the stages write that docs/reference.md does not name: {missing:?}");
}
