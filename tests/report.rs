//! `rlhf report` on run directories written by the test: every chart the page references exists
//! and decodes at the documented size, the config diff and the win rates match hand-computed
//! numbers, damaged input becomes notes, the page loads in headless Chromium without errors;
//! and `[sweep]` tables expand, validate, run, resume and report.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rlhf_lab::report::plots::{HEIGHT, WIDTH};
use rlhf_lab::report::winrate::Comparison;
use rlhf_lab::report::{self, Options, Report};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Fixtures: run directories as `rlhf run` writes them.

/// A run's config.toml: an SFT, a reward and a PPO stage, the PPO's β and the seed given.
fn config(seed: u64, kl_coef: f64, extra_ppo: &str) -> String {
    format!(
        r#"name = "fixture"
seed = {seed}

[task]
kind = "synthetic-reviews"

[[stages]]
name = "sft"
kind = "sft"
lr = 0.0005

[[stages]]
name = "rm"
kind = "reward"
init = "sft"

[[stages]]
name = "ppo"
kind = "ppo"
policy = "sft"
kl_coef = {kl_coef}
{extra_ppo}
[stages.ppo.devices]
policy = "cpu"
"#
    )
}

fn jsonl(lines: &[Value]) -> String {
    lines.iter().map(|line| format!("{line}\n")).collect()
}

/// SFT metrics: 40 steps, evaluations every 10.
fn sft_metrics(offset: f64) -> Vec<Value> {
    (1..=40)
        .map(|step| {
            let loss = 2.0 / (1.0 + step as f64 / 10.0) + offset + 0.05 * ((step * 7 % 5) as f64 - 2.0);
            let mut line = json!({"step": step, "train/loss": loss, "lr": 5e-4, "grad_norm": 1.0, "tokens_per_s": 1000.0});
            if step % 10 == 0 {
                line["eval/loss"] = json!(loss + 0.1);
                line["eval/ppl"] = json!((loss + 0.1).exp());
            }
            line
        })
        .collect()
}

fn reward_metrics(accuracy: f64) -> Vec<Value> {
    (1..=20)
        .map(|step| {
            let mut line = json!({"step": step, "train/loss": 0.7 - step as f64 * 0.01, "train/accuracy": 0.5 + step as f64 * 0.01});
            if step % 10 == 0 {
                line["eval/accuracy"] = json!(accuracy);
                line["eval/gold_agreement"] = json!(accuracy + 0.05);
            }
            line
        })
        .collect()
}

/// PPO metrics: 20 iterations, evaluations every 5 (and at 0).
fn ppo_metrics(kl_coef: f64, gain: f64) -> Vec<Value> {
    (0..=20)
        .map(|iteration| {
            let t = iteration as f64;
            let mut line = json!({"step": iteration});
            if iteration > 0 {
                line = json!({
                    "step": iteration,
                    "objective/scores": gain * t / 20.0,
                    "objective/kl": t * 0.05,
                    "objective/entropy": 2.0 - t * 0.02,
                    "policy/clipfrac_avg": 0.1,
                    "val/clipfrac_avg": 0.05,
                    "kl_coef": kl_coef,
                });
            }
            if iteration % 5 == 0 {
                line["eval/rm_score"] = json!(gain * t / 20.0);
                line["eval/gold_score"] = json!(1.0 + gain * t / 40.0);
                line["eval/kl"] = json!(t * 0.06);
            }
            line
        })
        .collect()
}

/// Samples at the last evaluation: `(prompt, gold_score)` each.
fn samples(step: u64, scored: &[(&str, f64)]) -> Vec<Value> {
    scored
        .iter()
        .map(|(prompt, gold)| json!({"step": step, "prompt": prompt, "completion": format!(" answer to {prompt} worth {gold}"), "score": gold / 2.0, "kl": 0.1, "gold_score": gold}))
        .collect()
}

struct RunFixture<'a> {
    config: Option<String>,
    /// `(stage, metrics.jsonl text, samples.jsonl text)`.
    stages: Vec<(&'a str, String, Option<String>)>,
    /// `(stage, eval_final.jsonl text)`.
    evaluations: Vec<(&'a str, String)>,
    finished: Vec<&'a str>,
}

fn write_run(root: &Path, name: &str, fixture: &RunFixture) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    if let Some(config) = &fixture.config {
        std::fs::write(dir.join("config.toml"), config).unwrap();
    }
    for (stage, metrics, samples) in &fixture.stages {
        std::fs::create_dir_all(dir.join(stage)).unwrap();
        std::fs::write(dir.join(stage).join("metrics.jsonl"), metrics).unwrap();
        if let Some(samples) = samples {
            std::fs::write(dir.join(stage).join("samples.jsonl"), samples).unwrap();
        }
    }
    for (stage, evaluation) in &fixture.evaluations {
        std::fs::write(dir.join(stage).join("eval_final.jsonl"), evaluation).unwrap();
    }
    let summary: serde_json::Map<String, Value> = fixture.finished.iter().map(|s| (s.to_string(), json!({}))).collect();
    std::fs::write(dir.join("summary.json"), Value::Object(summary).to_string()).unwrap();
    dir
}

/// The evaluated prompts p1–p24.
fn prompts() -> Vec<String> {
    (1..=24).map(|i| format!("p{i}")).collect()
}

/// `(prompt, gold)` over p1–p24 with the gold scores `cycle` repeated.
fn scored(cycle: [f64; 4]) -> Vec<(String, f64)> {
    prompts().into_iter().zip(cycle.into_iter().cycle()).collect()
}

fn as_refs(scored: &[(String, f64)]) -> Vec<(&str, f64)> {
    scored.iter().map(|(p, g)| (p.as_str(), *g)).collect()
}

/// Baseline gold scores 1, 2, 3, 4 repeated over p1–p24 (its final evaluation; its samples are
/// the first four); the other run 2, 2, 1, 5: in each four a win, a tie, a loss and a win →
/// (12 + 6 · ½) / 24 = 62.5 %.
fn two_complete_runs(root: &Path) -> (PathBuf, PathBuf) {
    let full = |seed, kl_coef, extra: &str, sft_offset, accuracy, gain, gold: [f64; 4]| {
        let evaluated = scored(gold);
        RunFixture {
            config: Some(config(seed, kl_coef, extra)),
            stages: vec![
                ("sft", jsonl(&sft_metrics(sft_offset)), None),
                ("rm", jsonl(&reward_metrics(accuracy)), None),
                ("ppo", jsonl(&ppo_metrics(kl_coef, gain)), Some(jsonl(&samples(20, &as_refs(&evaluated[..4]))))),
            ],
            evaluations: vec![("ppo", jsonl(&samples(20, &as_refs(&evaluated))))],
            finished: vec!["sft", "rm", "ppo"],
        }
    };
    let baseline = write_run(root, "beta-0.1", &full(1, 0.1, "", 0.0, 0.70, 1.0, [1.0, 2.0, 3.0, 4.0]));
    let other = write_run(root, "beta-0.05", &full(2, 0.05, "adaptive_kl = true", 0.1, 0.75, 1.5, [2.0, 2.0, 1.0, 5.0]));
    (baseline, other)
}

fn write_report(inputs: &[PathBuf], out: &Path) -> Report {
    report::write(inputs, out, &Options::default()).unwrap()
}

fn cells(row: &[rlhf_lab::report::table::Cell]) -> Vec<&str> {
    row.iter().map(|c| c.text.as_str()).collect()
}

// ---------------------------------------------------------------------------------------------
// Files and images.

/// Every `src="…"` and `href="…"` of the page.
fn references(html: &str) -> Vec<String> {
    let mut found = Vec::new();
    for attribute in ["src=\"", "href=\""] {
        let mut rest = html;
        while let Some(start) = rest.find(attribute) {
            rest = &rest[start + attribute.len()..];
            let end = rest.find('"').unwrap();
            found.push(rest[..end].to_string());
            rest = &rest[end..];
        }
    }
    found
}

fn png_size(path: &Path) -> (u32, u32) {
    let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut reader = decoder.read_info().unwrap_or_else(|e| panic!("{} is not a PNG: {e}", path.display()));
    let mut pixels = vec![0; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut pixels).unwrap_or_else(|e| panic!("{} does not decode: {e}", path.display()));
    // Not a blank image: a chart has both white background and dark ink.
    let bytes = &pixels[..frame.buffer_size()];
    assert!(bytes.iter().any(|&b| b < 80) && bytes.contains(&255), "{} looks blank", path.display());
    (frame.width, frame.height)
}

fn svg_size(path: &Path) -> (u32, u32) {
    let text = std::fs::read_to_string(path).unwrap();
    let document = roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("{} is not XML: {e}", path.display()));
    let root = document.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    assert!(
        root.descendants().any(|n| n.tag_name().name() == "polyline" || n.tag_name().name() == "path"),
        "{} draws no line",
        path.display()
    );
    let number = |name: &str| root.attribute(name).unwrap().parse::<u32>().unwrap();
    (number("width"), number("height"))
}

#[test]
fn every_image_the_page_references_exists_at_the_documented_size() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_complete_runs(dir.path());
    let out = dir.path().join("report");
    let (ok, stdout, stderr) = common::rlhf(&["report", a.to_str().unwrap(), b.to_str().unwrap(), "-o", out.to_str().unwrap()], dir.path());
    assert!(ok, "rlhf report failed:\n{stderr}");
    assert_eq!(stdout.trim(), out.join("index.html").to_str().unwrap());

    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    let references = references(&html);
    let (mut pngs, mut svgs) = (0, 0);
    for reference in &references {
        assert!(!reference.contains("://") && !reference.starts_with("//"), "the page must work offline: {reference}");
        let path = out.join(reference);
        assert!(path.is_file(), "the page references {reference}, which does not exist");
        if reference.ends_with(".png") {
            assert_eq!(png_size(&path), (WIDTH, HEIGHT), "{reference}");
            pngs += 1;
        } else if reference.ends_with(".svg") {
            assert_eq!(svg_size(&path), (WIDTH, HEIGHT), "{reference}");
            svgs += 1;
        }
    }
    assert_eq!((WIDTH, HEIGHT), (760, 420));
    // sft: train/eval loss, ppl (3); rm: train loss/accuracy, eval accuracy/gold agreement (4);
    // ppo: 9 curves, the frontier and gold/proxy against √KL (11).
    assert_eq!((pngs, svgs), (18, 18), "{references:?}");
    for title in ["ppo · reward–KL frontier", "ppo · gold and proxy score against √KL", "sft · eval/ppl", "ppo · kl_coef"] {
        assert!(html.contains(title), "no chart `{title}`");
    }
    assert!(!html.contains("<script"), "the page needs no script");

    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    for needle in
        ["## Final figures", "## Win rate against the baseline", "## Config differences", "| stages.ppo.kl_coef | 0.1 | 0.05 |", "62.5 %"]
    {
        assert!(summary.contains(needle), "summary.md lacks `{needle}`:\n{summary}");
    }
    for needle in [
        "Final figures",
        "Win rate against the baseline",
        "Config differences",
        "<td>stages.ppo.kl_coef</td><td>0.1</td><td>0.05</td>",
        "62.5 %",
    ] {
        assert!(html.contains(needle), "index.html lacks `{needle}`");
    }
}

#[test]
fn final_figures_mark_the_best_of_each_column() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_complete_runs(dir.path());
    let report = write_report(&[a, b], &dir.path().join("out"));
    let headers = &report.figures.headers;
    let column = |name: &str| headers.iter().position(|h| h == name).unwrap_or_else(|| panic!("no column {name} in {headers:?}"));
    let best = |name: &str| report.figures.rows.iter().position(|row| row[column(name)].best);
    // sft: the baseline's loss is lower (offset 0 vs 0.1); rm: the other's accuracy is higher;
    // ppo: the other gains more gold; KL has no "best".
    assert_eq!(best("sft eval/loss"), Some(0));
    assert_eq!(best("rm eval/accuracy"), Some(1));
    assert_eq!(best("ppo eval/gold_score"), Some(1));
    assert_eq!(best("ppo eval/kl"), None);
    assert_eq!(report.figures.rows[1][column("ppo eval/gold_score")].text, "1.750"); // 1 + 1.5 · 20/40
    assert_eq!(report.figures.rows[0][column("rm eval/accuracy")].text, "0.7000");
    // Each run scores with its own reward model: no best proxy score.
    assert_eq!(best("ppo eval/rm_score"), None);
    // Both reach KL 1.2 at their last evaluation: gold there is their final gold.
    assert_eq!(best("ppo eval/gold_score @ KL 1.200"), Some(1));
    assert!(report.verdict[0].starts_with("Best by ppo eval/gold_score @ KL 1.200: beta-0.05 (1.750)"), "{:?}", report.verdict);
}

/// Each stage's peak memory, read from summary.json, in a table of its own with a "peak memory"
/// column: a stage's own peak in MiB, a process peak (the peak could not be reset) named so, and
/// "—" where the summary has none (an older run, or an unfinished stage).
#[test]
fn peak_memory_of_each_stage_is_a_column() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_complete_runs(dir.path());
    let figures = |rm: Value| json!({"sft": {"eval/loss": 1.0, "memory/peak_rss_mib": 812.41796875}, "rm": rm});
    std::fs::write(a.join("summary.json"), figures(json!({"memory/peak_rss_mib": 1536.0})).to_string()).unwrap();
    std::fs::write(b.join("summary.json"), figures(json!({"memory/process_peak_rss_mib": 2048.75})).to_string()).unwrap();
    let out = dir.path().join("out");
    let report = write_report(&[a, b], &out);
    let memory = report.memory.expect("a peak memory table");
    assert_eq!(memory.headers, ["run · stage", "kind", "peak memory"]);
    let rows: Vec<Vec<&str>> = memory.rows.iter().map(|row| cells(row)).collect();
    assert_eq!(
        rows,
        [
            vec!["beta-0.1 · sft", "sft", "812.4 MiB"],
            vec!["beta-0.1 · rm", "reward", "1536 MiB"],
            vec!["beta-0.1 · ppo", "ppo", "—"],
            vec!["beta-0.05 · sft", "sft", "812.4 MiB"],
            vec!["beta-0.05 · rm", "reward", "2049 MiB (process peak)"],
            vec!["beta-0.05 · ppo", "ppo", "—"],
        ]
    );
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(summary.contains("## Peak memory per stage") && summary.contains("| run · stage | kind | peak memory |"), "{summary}");
    assert!(summary.contains("| beta-0.1 · sft | sft | 812.4 MiB |"), "{summary}");
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert!(html.contains("Peak memory per stage") && html.contains("<th>peak memory</th>"), "no peak memory table in index.html");
    assert!(html.contains("<td>beta-0.05 · rm</td><td>reward</td><td>2049 MiB (process peak)</td>"), "no process peak in index.html");

    // Runs without peak memory figures (written before they were measured): no table.
    let (c, d) = two_complete_runs(&dir.path().join("older"));
    assert!(write_report(&[c, d], &dir.path().join("older-out")).memory.is_none());
}

/// PPO metrics with evaluations at iterations 0, 10 and 20 at the given KLs and gold scores (and
/// a proxy score that only grows).
fn ppo_trajectory(kl: [f64; 3], gold: [f64; 3], proxy_gain: f64) -> Vec<Value> {
    (0..3)
        .map(|i| {
            json!({"step": i * 10, "eval/kl": kl[i], "eval/gold_score": gold[i], "eval/rm_score": proxy_gain * i as f64, "kl_coef": 0.1})
        })
        .collect()
}

/// Crafted runs: a policy that ran further (more KL, more proxy score, the highest raw gold) is
/// not the better one when, at the KL both reached, the other has more gold; reward-model scores
/// are marked best only between runs scored by the same reward model; runs that differ in one
/// key are named by it.
#[test]
fn figures_are_read_in_their_declared_direction_and_at_matched_kl() {
    let dir = tempfile::tempdir().unwrap();
    let run = |root: &Path, name: &str, seed: u64, reward: &str, kl: [f64; 3], gold: [f64; 3], proxy: f64| {
        let fixture = RunFixture {
            config: Some(config(seed, 0.1, &format!("reward = \"{reward}\""))),
            stages: vec![("ppo", jsonl(&ppo_trajectory(kl, gold, proxy)), None)],
            evaluations: vec![],
            finished: vec!["ppo"],
        };
        write_run(root, name, &fixture)
    };
    let shared_rm = dir.path().join("shared-rm");
    std::fs::create_dir_all(&shared_rm).unwrap();
    for (reward, marked) in [("rm", false), (shared_rm.to_str().unwrap(), true)] {
        let root = dir.path().join(if marked { "shared" } else { "own" });
        let steady = run(&root, "a", 1, reward, [0.0, 0.5, 1.0], [1.0, 1.5, 2.0], 0.5);
        let greedy = run(&root, "b", 2, reward, [0.0, 1.0, 2.0], [1.0, 1.8, 2.4], 2.0);
        let report = write_report(&[steady, greedy], &root.join("out"));
        let labels: Vec<&str> = report.runs.iter().map(|(label, _)| label.as_str()).collect();
        assert_eq!(labels, ["seed=1", "seed=2"], "runs that differ in one key are named by it");
        let headers = &report.figures.headers;
        let column = |name: &str| headers.iter().position(|h| h == name).unwrap_or_else(|| panic!("no column {name} in {headers:?}"));
        let best = |name: &str| report.figures.rows.iter().position(|row| row[column(name)].best);
        assert_eq!(best("ppo eval/gold_score"), Some(1), "the raw maximum");
        assert_eq!(best("ppo eval/kl"), None, "KL is a cost, not a goal");
        // At KL 1.0 (the least of the largest KLs): 2.0 against 1.8 (reached exactly at iteration 10).
        let matched = column("ppo eval/gold_score @ KL 1.000");
        assert_eq!((cells(&report.figures.rows[0])[matched], cells(&report.figures.rows[1])[matched]), ("2.000", "1.800"));
        assert_eq!(best("ppo eval/gold_score @ KL 1.000"), Some(0));
        assert!(report.verdict[0].starts_with("Best by ppo eval/gold_score @ KL 1.000: seed=1 (2.000)"), "{:?}", report.verdict);
        assert_eq!(best("ppo eval/rm_score"), marked.then_some(1), "reward = {reward}");
    }
}

#[test]
fn config_diff_shows_only_the_keys_that_differ() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_complete_runs(dir.path());
    let report = write_report(&[a, b], &dir.path().join("out"));
    let diff = report.config_diff.expect("two runs with configs");
    assert_eq!(diff.headers, ["key", "beta-0.1", "beta-0.05"]);
    let rows: Vec<Vec<&str>> = diff.rows.iter().map(|row| cells(row)).collect();
    assert_eq!(rows, [vec!["seed", "1", "2"], vec!["stages.ppo.adaptive_kl", "—", "true"], vec!["stages.ppo.kl_coef", "0.1", "0.05"]]);
}

#[test]
fn win_rate_against_the_baseline_is_judged_by_gold_scores() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_complete_runs(dir.path());
    // A third run evaluated on partly other prompts: 19 of the baseline's (one short of the
    // minimum) and five of its own — not comparable, although it always wins where it can.
    let mut elsewhere: Vec<(String, f64)> = prompts()[..19].iter().map(|p| (p.clone(), 9.0)).collect();
    elsewhere.extend((1..=5).map(|i| (format!("q{i}"), 9.0)));
    let other_prompts = RunFixture {
        config: Some(config(3, 0.2, "")),
        stages: vec![("ppo", jsonl(&ppo_metrics(0.2, 0.5)), Some(jsonl(&samples(20, &as_refs(&elsewhere[..4])))))],
        evaluations: vec![("ppo", jsonl(&samples(20, &as_refs(&elsewhere))))],
        finished: vec!["ppo"],
    };
    let c = write_run(dir.path(), "elsewhere", &other_prompts);
    let report = write_report(&[a.clone(), b.clone(), c.clone()], &dir.path().join("out"));
    let (win_rates, table) = report.win_rates.expect("samples carry gold scores");
    assert_eq!((win_rates.stage.as_str(), win_rates.judge.as_str(), win_rates.baseline.as_str()), ("ppo", "gold oracle", "beta-0.1"));
    assert!(win_rates.results[0].1.is_none(), "the baseline is not compared with itself");

    // Judged on all 24 evaluated responses (eval_final.jsonl), not the 4 samples.
    let Some(Comparison::Rate(paired)) = &win_rates.results[1].1 else { panic!("24 shared prompts: {:?}", win_rates.results[1]) };
    assert_eq!((paired.wins, paired.ties, paired.losses, paired.rate, paired.prompts), (12.0, 6.0, 6.0, 0.625, 24));
    // Resampled outcomes of 24 in {1, ½, 0}: rates are multiples of 1/48.
    assert!(paired.low <= 0.625 && 0.625 <= paired.high && paired.low >= 0.0 && paired.high <= 1.0, "{paired:?}");
    assert!(paired.low < paired.high, "a mixed record has a real interval: {paired:?}");
    for bound in [paired.low, paired.high] {
        assert_eq!((bound * 48.0).fract(), 0.0, "{bound}");
    }

    assert_eq!(win_rates.results[2].1, Some(Comparison::NotComparable { shared: 19 }));
    assert_eq!(cells(&table.rows[1])[..2], ["beta-0.05", "62.5 %"]);
    assert_eq!(cells(&table.rows[2]), ["elsewhere", "not comparable", "", "", "19 shared prompts (fewer than 20)"]);
    assert!(report.notes.iter().any(|n| n.run == "elsewhere" && n.message.contains("answered 19 of the baseline's evaluated prompts")));
    assert!(!report.verdict.iter().any(|line| line.contains("elsewhere wins")), "{:?}", report.verdict);

    // The same seed gives the same interval; another seed may not, but stays around the rate.
    let again = write_report(&[a.clone(), b.clone(), c.clone()], &dir.path().join("again")).win_rates.unwrap().0;
    assert_eq!(again.results[1].1, win_rates.results[1].1);
    let options = Options { baseline: Some("beta-0.05".into()), ..Options::default() };
    let swapped = report::write(&[a, b, c], &dir.path().join("swapped"), &options).unwrap().win_rates.unwrap().0;
    assert_eq!(swapped.baseline, "beta-0.05");
    let Some(Comparison::Rate(swapped_rate)) = &swapped.results[0].1 else { panic!("{:?}", swapped.results[0]) };
    assert_eq!(swapped_rate.rate, 0.375, "the baseline's view: 1 − 0.625");

    // The side-by-side view shows each prompt with both runs' answers.
    let samples = report.samples.expect("shared prompts");
    assert_eq!(samples.rows.len(), 4);
    assert_eq!(samples.rows[0].prompt, "p1");
    assert_eq!(samples.rows[0].cells[1].as_ref().unwrap().1, "gold 2.000 · rm 1.000");
    assert_eq!(samples.rows[0].cells[2].as_ref().unwrap().1, "gold 9.000 · rm 4.500");
}

#[test]
fn a_reward_model_given_with_judge_scores_the_samples_instead_of_gold() {
    use rlhf_lab::model::reward::RewardModel;
    use rlhf_lab::model::{LanguageModel, Precision};
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_complete_runs(dir.path());
    // A reward stage's directory holding an (untrained, seeded) reward checkpoint.
    let checkpoint = dir.path().join("rm-stage/checkpoint");
    tch::manual_seed(3);
    LanguageModel::fresh(common::tiny_config(300, 48, 32, 2, 2), common::tiny_tokenizer(300), tch::Device::Cpu, Precision::Fp32)
        .save(&checkpoint)
        .unwrap();
    let judge = RewardModel::load(&checkpoint, tch::Device::Cpu, Precision::Fp32, true).unwrap();
    judge.save(&checkpoint).unwrap();

    // What the judge thinks of each run's answer to p1–p4, and the paired win rate that follows.
    let answers = |gold: [f64; 4]| -> Vec<f64> {
        let texts: Vec<(String, String)> =
            scored(gold).into_iter().map(|(p, g)| (p.clone(), format!(" answer to {p} worth {g}"))).collect();
        let refs: Vec<(&str, &str)> = texts.iter().map(|(p, c)| (p.as_str(), c.as_str())).collect();
        judge.score_texts(&refs, 4).unwrap()
    };
    let (baseline, other) = (answers([1.0, 2.0, 3.0, 4.0]), answers([2.0, 2.0, 1.0, 5.0]));
    let expected: f64 = other
        .iter()
        .zip(&baseline)
        .map(|(o, b)| {
            if o > b {
                1.0
            } else if o == b {
                0.5
            } else {
                0.0
            }
        })
        .sum::<f64>()
        / 24.0;

    let options = Options { judge: Some(dir.path().join("rm-stage")), ..Options::default() };
    let report = report::write(&[a, b], &dir.path().join("out"), &options).unwrap();
    let (win_rates, _) = report.win_rates.unwrap();
    assert_eq!(win_rates.judge, format!("reward model {}", checkpoint.display()));
    let Some(Comparison::Rate(result)) = &win_rates.results[1].1 else { panic!("{:?}", win_rates.results[1]) };
    assert_eq!((result.rate, result.prompts), (expected, 24));
}

/// A labeling database of the two runs' PPO answers, imported with two `--from-run`: its pairs
/// are p1, p3 and p4 (both runs answer p2 alike).
fn labels_of_both_runs(dir: &Path, baseline: &Path, other: &Path) -> PathBuf {
    let db = dir.join("labels.db");
    let (ppo_a, ppo_b) = (baseline.join("ppo"), other.join("ppo"));
    let args =
        ["label", "import", "--db", db.to_str().unwrap(), "--from-run", ppo_a.to_str().unwrap(), "--from-run", ppo_b.to_str().unwrap()];
    let (ok, stdout, stderr) = common::rlhf(&args, dir);
    assert!(ok && stdout.starts_with("imported 3 new pairs"), "{stdout}{stderr}");
    db
}

/// `--labels DB`: the human preference leaderboard rates the runs' checkpoints by the labels.
#[test]
fn a_labeling_database_adds_a_human_preference_leaderboard() {
    use rlhf_lab::label::{Policy, Preferred, Store};
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_complete_runs(dir.path());
    let db = labels_of_both_runs(dir.path(), &a, &b);
    let with_labels = Options { labels: Some(db.clone()), ..Options::default() };
    let unjudged = report::write(&[a.clone(), b.clone()], &dir.path().join("unjudged"), &with_labels).unwrap();
    let section = unjudged.leaderboard.expect("a section that says why it is empty");
    assert!(section.table.is_none() && section.summary.contains("none of the 3 pairs between models has a judgement yet"), "{section:?}");

    // The annotator prefers the answer worth more gold: beta-0.05 wins p1 and p4, loses p3, so
    // it is ln 2 stronger: 1000 ± 200 · log10(2) ≈ 1060 and 940.
    let (ok, token, stderr) = common::rlhf(&["label", "annotator", "add", "--db", db.to_str().unwrap(), "alice"], dir.path());
    assert!(ok, "{stderr}");
    let worth = |text: &str| -> f64 { text.rsplit(' ').next().unwrap().parse().unwrap() };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let store = Store::open(&db).await.unwrap();
        let alice = store.annotator_by_token(token.trim()).await.unwrap().unwrap();
        while let Some(pair) = store.next_pair(alice.id, &Policy::default()).await.unwrap() {
            let preferred = if worth(&pair.left) > worth(&pair.right) { Preferred::Left } else { Preferred::Right };
            store.record_label(alice.id, pair.pair_id, preferred, &Policy::default()).await.unwrap();
        }
        store.close().await;
    });
    let out = dir.path().join("report");
    let report = report::write(&[a.clone(), b.clone()], &out, &with_labels).unwrap();
    let section = report.leaderboard.expect("--labels given");
    assert!(section.summary.starts_with("2 checkpoints rated from 3 human judgements"), "{}", section.summary);
    let table = section.table.expect("judged pairs");
    assert_eq!(table.headers, ["rank", "checkpoint", "rating", "95 % interval", "wins", "losses", "ties", "comparisons"]);
    let rows: Vec<Vec<&str>> = table.rows.iter().map(|row| cells(row)).collect();
    assert_eq!((rows[0][..3].to_vec(), rows[0][4..].to_vec()), (vec!["1", "beta-0.05/ppo", "1060"], vec!["2", "1", "0", "3"]));
    assert_eq!((rows[1][..3].to_vec(), rows[1][4..].to_vec()), (vec!["2", "beta-0.1/ppo", "940"], vec!["1", "2", "0", "3"]));
    assert!(table.rows[0][2].best && !table.rows[1][2].best);

    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(summary.contains("## Human preference leaderboard") && summary.contains("| 1 | beta-0.05/ppo | **1060** | ["), "{summary}");
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert!(html.contains("<h2 id=\"leaderboard\">Human preference leaderboard</h2>"), "{html}");
    assert!(html.contains("<td>beta-0.05/ppo</td><td class=\"best\">1060</td>"), "{html}");
    // Without --labels there is no such section; a missing database is an error naming it.
    let plain = std::fs::read_to_string(dir.path().join("unjudged/summary.md")).unwrap();
    assert!(plain.contains("No leaderboard"), "{plain}");
    assert!(write_report(&[a.clone(), b.clone()], &dir.path().join("plain")).leaderboard.is_none());
    let missing = Options { labels: Some(dir.path().join("missing.db")), ..Options::default() };
    let error = report::write(&[a, b], &dir.path().join("missing"), &missing).unwrap_err().to_string();
    assert!(error.contains("--labels") && error.contains("missing.db"), "{error}");
}

#[test]
fn damaged_and_partial_runs_become_notes_not_failures() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = two_complete_runs(dir.path());
    // Killed during PPO: a truncated last line, a null (diverged) value, no summary entry; the
    // config lists an `rm` stage that never ran.
    let mut ppo = jsonl(&ppo_metrics(0.1, 1.0)[..12]);
    ppo.push_str("{\"step\": 12, \"objective/kl\": null, \"objective/scores\": 0.5}\n{\"step\": 13, \"objective/sc");
    let killed = write_run(
        dir.path(),
        "killed",
        &RunFixture {
            config: Some(config(1, 0.1, "")),
            stages: vec![("sft", jsonl(&sft_metrics(0.0)), None), ("ppo", ppo, None)],
            evaluations: vec![],
            finished: vec!["sft"],
        },
    );
    // No config.toml and only an LM stage with its own metric set.
    let bare = write_run(
        dir.path(),
        "bare",
        &RunFixture {
            config: None,
            stages: vec![("pretrain", jsonl(&[json!({"step": 1, "train/loss": 3.0}), json!({"step": 2, "eval/loss": 2.5})]), None)],
            evaluations: vec![],
            finished: vec![],
        },
    );
    let out = dir.path().join("out");
    let report = write_report(&[a, killed, bare], &out);
    let notes: Vec<String> = report.notes.iter().map(|n| format!("{}: {}", n.run, n.message)).collect();
    let has = |run: &str, text: &str| notes.iter().any(|n| n.starts_with(run) && n.contains(text));
    assert!(has("killed", "the last line (line 14) is truncated"), "{notes:#?}");
    assert!(has("killed", "null (non-finite) values left out of plots: objective/kl ×1"), "{notes:#?}");
    assert!(has("bare", "answered 0 of the baseline's evaluated prompts in stage `ppo`"), "{notes:#?}");
    assert!(has("killed", "stage `rm` has no metrics.jsonl"), "{notes:#?}");
    assert!(has("killed", "stage `ppo` is not finished"), "{notes:#?}");
    assert!(has("bare", "no readable config.toml"), "{notes:#?}");

    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert!(html.contains("Notes on the input") && html.contains("is truncated"));
    // The killed run's PPO figures are its last values: eval at iteration 10.
    let column = report.figures.headers.iter().position(|h| h == "ppo eval/gold_score").unwrap();
    assert_eq!(report.figures.rows[1][column].text, "1.250");
    assert_eq!(report.figures.rows[2][column].text, "—");
    // The config diff leaves out the run without a config.
    assert_eq!(report.config_diff.unwrap().headers, ["key", "beta-0.1", "killed"]);
}

#[test]
fn missing_or_wrong_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = two_complete_runs(dir.path());
    let out = dir.path().join("out");
    let report = |args: &[&str]| common::rlhf(&[&["report"], args, &["-o", out.to_str().unwrap()]].concat(), dir.path());

    let (ok, _, stderr) = report(&[a.to_str().unwrap(), "results/no-such-run"]);
    assert!(!ok);
    assert!(stderr.contains("error: `results/no-such-run` does not exist"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    std::fs::create_dir(dir.path().join("empty")).unwrap();
    let (ok, _, stderr) = report(&["empty"]);
    assert!(!ok && stderr.contains("`empty` is not a run directory"), "{stderr}");

    let (ok, _, stderr) = report(&[a.to_str().unwrap(), "--baseline", "nobody"]);
    assert!(!ok && stderr.contains("--baseline `nobody` is none of the runs (runs: beta-0.1)"), "{stderr}");

    let (ok, _, stderr) = report(&[a.to_str().unwrap(), "--judge", "no-rm"]);
    assert!(!ok && stderr.contains("--judge `no-rm`: no such directory"), "{stderr}");
    assert!(!out.join("index.html").exists(), "no report after an error");
}

// ---------------------------------------------------------------------------------------------
// The page in a real browser.

#[test]
fn the_page_loads_in_headless_chromium_without_errors() {
    assert!(
        common::browser_dir().join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed: run `scripts/setup --test` (npm ci in tests/browser)"
    );
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_complete_runs(dir.path());
    let out = dir.path().join("report");
    write_report(&[a, b], &out);
    let screenshot = dir.path().join("screenshot.png");

    let index = out.join("index.html");
    let envs = [("REPORT_FILE", index.as_os_str()), ("SCREENSHOT", screenshot.as_os_str())];
    let output = common::run_browser_script("report.e2e.mjs", &envs, Duration::from_secs(120)).expect("the browser test ran over 120 s");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "report.e2e.mjs failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let result: Value = serde_json::from_str(stdout.lines().last().expect("a result line")).unwrap();
    assert_eq!(result["errors"], json!([]), "console errors, page errors or failed requests");
    assert_eq!(result["images"], 18);
    assert_eq!(result["broken"], json!([]), "images that did not load");
    assert_eq!(result["title"], "rlhf report: beta-0.1 vs beta-0.05");
    assert_eq!(result["perRow"], json!({"1280": 2, "1920": 2, "700": 1}), "charts two to a row on laptop and wide screens");
    let (width, height) = png_size(&screenshot);
    assert_eq!(width, 1280);
    assert!(height > 2000, "a full-page screenshot of all charts, got {height} px");
}

// ---------------------------------------------------------------------------------------------
// Sweeps.

const TINY: &str = r#"name = "tiny-sweep"
seed = 5
threads = 1

[task]
kind = "synthetic-reviews"
corpus_size = 200
demonstrations_size = 100
prompts_size = 10
eval_fraction = 0.1

[tokenizer]
vocab_size = 300

[models.base]
n_layer = 1
n_head = 2
n_embd = 16
n_ctx = 48
device = "cpu"

[[stages]]
name = "pretrain"
kind = "lm"
model = "base"
steps = 4
batch_size = 2
seq_len = 32
eval_every = 2
eval_batches = 1
samples = 1
device = "cpu"
"#;

fn write_experiment(dir: &Path, sweep: &str) -> PathBuf {
    let path = dir.join("sweep.toml");
    std::fs::write(&path, format!("{TINY}\n{sweep}")).unwrap();
    path
}

fn validate(dir: &Path, sweep: &str) -> (bool, String, String) {
    let path = write_experiment(dir, sweep);
    common::rlhf(&["validate", path.to_str().unwrap()], dir)
}

fn variant_lines(stdout: &str) -> Vec<String> {
    stdout.lines().filter(|line| line.starts_with("  ")).map(|line| line.trim().to_string()).collect()
}

#[test]
fn a_grid_sweep_crosses_nested_keys_and_seeds() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, stdout, stderr) = validate(
        dir.path(),
        r#"[sweep]
seeds = [1, 2]
[sweep.parameters]
"stages.pretrain.lr" = [0.001, 0.002]
"models.base.n_layer" = [1, 2]
"#,
    );
    assert!(ok, "{stderr}");
    assert!(stdout.contains("sweep over models.base.n_layer, stages.pretrain.lr: 8 variants"), "{stdout}");
    let variants = variant_lines(&stdout);
    assert_eq!(variants.len(), 8);
    assert_eq!(variants[0], "01_n_layer=1_lr=0.001_seed=1: --set models.base.n_layer=1 --set stages.pretrain.lr=0.001 --set seed=1");
    assert_eq!(variants[7], "08_n_layer=2_lr=0.002_seed=2: --set models.base.n_layer=2 --set stages.pretrain.lr=0.002 --set seed=2");
}

#[test]
fn a_random_sweep_is_reproducible_from_its_seed() {
    let dir = tempfile::tempdir().unwrap();
    let sweep = |seed: u64| {
        format!(
            "[sweep]\nmethod = \"random\"\ncount = 4\nseed = {seed}\n[sweep.parameters]\n\"stages.pretrain.lr\" = {{ min = 1e-4, max = 1e-2, log = true }}\n\"stages.pretrain.batch_size\" = [2, 3, 4]\n"
        )
    };
    let draw = |seed| {
        let (ok, stdout, stderr) = validate(dir.path(), &sweep(seed));
        assert!(ok, "{stderr}");
        variant_lines(&stdout)
    };
    let first = draw(11);
    assert_eq!(first.len(), 4);
    assert_eq!(first, draw(11), "the same seed draws the same variants");
    assert_ne!(first, draw(12), "another seed draws others");
    for line in &first {
        let lr: f64 = line.split("stages.pretrain.lr=").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
        assert!((1e-4..=1e-2).contains(&lr), "{line}");
    }
}

#[test]
fn invalid_sweep_keys_are_errors_at_their_line() {
    let dir = tempfile::tempdir().unwrap();
    // The sweep table starts two lines after TINY (a blank line between); its first
    // parameter is two lines further down.
    let sweep_line = TINY.lines().count() + 2;
    let key_at = format!("sweep.toml:{}:1", sweep_line + 2);
    let unknown_at = format!("at line {}, column 1", sweep_line + 1);
    let cases: [(&str, &[&str]); 4] = [
        (
            "[sweep]\n[sweep.parameters]\n\"stages.pretrain.lrr\" = [0.1]\n",
            &[&key_at, "[sweep] `stages.pretrain.lrr` = 0.1", "unknown field `lrr`"],
        ),
        ("[sweep]\n[sweep.parameters]\n\"stages.ppo.kl_coef\" = [0.1]\n", &[&key_at, "no stage named `ppo` (stages: pretrain)"]),
        (
            "[sweep]\n[sweep.parameters]\n\"stages.pretrain.lr\" = [\"fast\"]\n",
            &[&key_at, "`lr`: invalid type: string \"fast\", expected f64"],
        ),
        ("[sweep]\nmethods = \"grid\"\n", &[&unknown_at, "unknown field `methods`"]),
    ];
    for (sweep, needles) in cases {
        let (ok, _, stderr) = validate(dir.path(), sweep);
        assert!(!ok, "{sweep} should fail");
        for needle in needles {
            assert!(stderr.contains(needle), "`{needle}` not in:\n{stderr}");
        }
    }
}

#[test]
fn a_sweep_runs_every_variant_resumes_and_reports_mean_and_std() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_experiment(dir.path(), "[sweep]\nseeds = [1, 2]\n[sweep.parameters]\n\"stages.pretrain.lr\" = [0.001, 0.01]\n");
    let (ok, stdout, stderr) = common::rlhf(&["run", path.to_str().unwrap(), "--out", "results"], dir.path());
    assert!(ok, "sweep failed:\n{stderr}");
    let sweep_dir = dir.path().join(stdout.trim());
    assert!(sweep_dir.starts_with(dir.path().join("results/tiny-sweep")), "{}", sweep_dir.display());
    let record: Value = serde_json::from_str(&std::fs::read_to_string(sweep_dir.join("sweep.json")).unwrap()).unwrap();
    let names: Vec<&str> = record["variants"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["01_lr=0.001_seed=1", "02_lr=0.001_seed=2", "03_lr=0.01_seed=1", "04_lr=0.01_seed=2"]);
    for name in &names {
        let config = std::fs::read_to_string(sweep_dir.join(name).join("config.toml")).unwrap();
        assert!(!config.contains("[sweep"), "a variant's config is a plain experiment");
        assert!(sweep_dir.join(name).join("pretrain/checkpoint/model.safetensors").is_file(), "{name} ran");
    }
    let seeded = |name: &str| std::fs::read_to_string(sweep_dir.join(name).join("config.toml")).unwrap().parse::<toml::Table>().unwrap();
    assert_eq!(seeded(names[1])["seed"].as_integer(), Some(2));
    assert_eq!(seeded(names[2])["stages"][0]["lr"].as_float(), Some(0.01));

    // Kill-like damage: variant 3 never finished, variant 4 never started.
    let untouched = std::fs::read_to_string(sweep_dir.join(names[0]).join("pretrain/metrics.jsonl")).unwrap();
    std::fs::remove_file(sweep_dir.join(names[2]).join("summary.json")).unwrap();
    std::fs::remove_dir_all(sweep_dir.join(names[3])).unwrap();
    let (ok, _, stderr) = common::rlhf(&["run", "--resume", sweep_dir.to_str().unwrap()], dir.path());
    assert!(ok, "resume failed:\n{stderr}");
    assert_eq!(stderr.matches("already finished, skipped").count(), 2, "{stderr}");
    assert!(sweep_dir.join(names[3]).join("summary.json").is_file() && sweep_dir.join(names[2]).join("summary.json").is_file());
    assert_eq!(std::fs::read_to_string(sweep_dir.join(names[0]).join("pretrain/metrics.jsonl")).unwrap(), untouched);

    let out = dir.path().join("report");
    let report = write_report(std::slice::from_ref(&sweep_dir), &out);
    let sweep = report.sweep.expect("a sweep table");
    assert_eq!(sweep.headers[..2], ["stages.pretrain.lr".to_string(), "seeds".to_string()]);
    assert_eq!(sweep.rows.len(), 2);
    assert_eq!(cells(&sweep.rows[0])[..2], ["0.001", "1, 2"]);
    assert_eq!(cells(&sweep.rows[1])[..2], ["0.01", "1, 2"]);
    // mean ± std of the two seeds' final eval loss, recomputed here from the runs' files.
    let loss_column = sweep.headers.iter().position(|h| h == "pretrain eval/loss (mean ± std)").unwrap();
    let last_eval_loss = |name: &str| -> f64 {
        let text = std::fs::read_to_string(sweep_dir.join(name).join("pretrain/metrics.jsonl")).unwrap();
        text.lines().filter_map(|l| serde_json::from_str::<Value>(l).unwrap()["eval/loss"].as_f64()).next_back().unwrap()
    };
    let (x, y) = (last_eval_loss(names[0]), last_eval_loss(names[1]));
    let (mean, std) = ((x + y) / 2.0, (x - y).abs() / 2f64.sqrt());
    let expected = format!("{} ± {}", rlhf_lab::report::table::format_number(mean), rlhf_lab::report::table::format_number(std));
    assert_eq!(sweep.rows[0][loss_column].text, expected);
    assert!(std::fs::read_to_string(out.join("summary.md")).unwrap().contains("## Sweep: mean ± std over seeds"));
    let best_row = sweep.rows.iter().find(|row| row[loss_column].best).expect("one setting has the lower mean loss");
    let line = format!(
        "Best setting by mean pretrain eval/loss: stages.pretrain.lr = {} ({} over seeds 1, 2).",
        best_row[0].text, best_row[loss_column].text
    );
    assert!(report.verdict.contains(&line), "{line} not in {:?}", report.verdict);
}

/// A sweep run as a job array: each variant a separate process started at once, sharing one sweep
/// directory (the first creates its files, the others check them); the result is the sweep a
/// single `rlhf run` makes, variant for variant.
#[test]
fn sweep_variants_run_as_separate_jobs_into_one_shared_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_experiment(dir.path(), "[sweep]\nseeds = [1, 2]\n[sweep.parameters]\n\"stages.pretrain.lr\" = [0.001, 0.01]\n");
    let shared = dir.path().join("shared");
    let job = |selector: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_rlhf"))
            .args(["run", path.to_str().unwrap(), "--variant", selector, "--sweep-dir", shared.to_str().unwrap()])
            .current_dir(dir.path())
            .env_remove("SLURM_ARRAY_JOB_ID")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // By index (a job array's task id) or by name, all at once.
    let jobs: Vec<_> = ["0", "1", "03_lr=0.01_seed=1", "3"].into_iter().map(job).collect();
    let mut printed = Vec::new();
    for job in jobs {
        let output = job.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        printed.push(String::from_utf8_lossy(&output.stdout).trim().to_string());
    }
    let names = ["01_lr=0.001_seed=1", "02_lr=0.001_seed=2", "03_lr=0.01_seed=1", "04_lr=0.01_seed=2"];
    assert_eq!(printed, names.iter().map(|name| shared.join(name).display().to_string()).collect::<Vec<_>>());

    let (ok, stdout, stderr) = common::rlhf(&["run", path.to_str().unwrap(), "--out", "whole"], dir.path());
    assert!(ok, "{stderr}");
    let whole = dir.path().join(stdout.trim());
    let json = |dir: &Path| serde_json::from_str::<Value>(&std::fs::read_to_string(dir.join("sweep.json")).unwrap()).unwrap();
    assert_eq!(json(&shared), json(&whole));
    for name in names {
        let metrics = |sweep: &Path| {
            let text = std::fs::read_to_string(sweep.join(name).join("pretrain/metrics.jsonl")).unwrap();
            text.lines()
                .map(|line| {
                    let mut line: serde_json::Map<String, Value> = serde_json::from_str(line).unwrap();
                    line.retain(|key, _| !key.ends_with("_per_s"));
                    line
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(metrics(&shared), metrics(&whole), "{name}");
    }
    let report = write_report(std::slice::from_ref(&shared), &dir.path().join("report"));
    assert_eq!(report.sweep.expect("a sweep table").rows.len(), 2);

    // A finished variant is skipped; a variant past the end, another sweep in the same
    // directory and a missing --sweep-dir are errors that say what to do.
    let (ok, _, stderr) = common::rlhf(&["run", path.to_str().unwrap(), "--variant", "2", "--sweep-dir", "shared"], dir.path());
    assert!(ok && stderr.contains("already finished, skipped"), "{stderr}");
    let (ok, _, stderr) = common::rlhf(&["run", path.to_str().unwrap(), "--variant", "4", "--sweep-dir", "shared"], dir.path());
    assert!(!ok && stderr.contains("--variant 4: the sweep has 4 variants: give an index from 0 to 3"), "{stderr}");
    let other = ["run", path.to_str().unwrap(), "--variant", "0", "--sweep-dir", "shared", "--set", "stages.pretrain.steps=6"];
    let (ok, _, stderr) = common::rlhf(&other, dir.path());
    assert!(!ok && stderr.contains("holds another sweep"), "{stderr}");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args(["run", path.to_str().unwrap(), "--variant", "0"])
        .current_dir(dir.path())
        .env_remove("SLURM_ARRAY_JOB_ID")
        .output()
        .unwrap();
    assert!(!output.status.success() && String::from_utf8_lossy(&output.stderr).contains("--variant needs --sweep-dir DIR"));
    // Under a Slurm array, the sweep directory is named after the array's job id.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args(["run", path.to_str().unwrap(), "--variant", "0", "--out", "slurm"])
        .current_dir(dir.path())
        .env("SLURM_ARRAY_JOB_ID", "4242")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(dir.path().join("slurm/tiny-sweep/sweep-slurm-4242/01_lr=0.001_seed=1/summary.json").is_file());
    let (ok, stdout, stderr) = common::rlhf(&["run", "--resume", "shared", "--variant", "1"], dir.path());
    assert!(ok && stdout.trim() == "shared/02_lr=0.001_seed=2" && stderr.contains("already finished, skipped"), "{stdout}{stderr}");
}

/// A report of one run: its figures, charts and samples, every referenced image present, and none
/// of the sections that compare runs (a win rate against itself would say nothing).
#[test]
fn a_single_run_reports_its_figures_and_charts_without_comparisons() {
    let dir = tempfile::tempdir().unwrap();
    let (run, _) = two_complete_runs(dir.path());
    let out = dir.path().join("report");
    let (ok, stdout, stderr) = common::rlhf(&["report", run.to_str().unwrap(), "-o", out.to_str().unwrap()], dir.path());
    assert!(ok, "rlhf report failed:\n{stderr}");
    assert_eq!(stdout.trim(), out.join("index.html").to_str().unwrap());

    let report = write_report(std::slice::from_ref(&run), &dir.path().join("library"));
    assert_eq!(report.runs, [("beta-0.1".to_string(), run)]);
    assert_eq!(report.figures.rows.len(), 1);
    assert_eq!(cells(&report.figures.rows[0])[0], "beta-0.1");
    assert!(report.win_rates.is_none() && report.config_diff.is_none() && report.sweep.is_none());
    assert_eq!(report.verdict, Vec::<String>::new(), "nothing to judge between");
    // its samples are still shown, the run's own column only
    let samples = report.samples.expect("the run's samples");
    assert_eq!((samples.rows.len(), samples.rows[0].cells.len()), (4, 1));
    assert_eq!(cells(&report.figures.rows[0])[1..], ["0.4000", "1.492", "0.7000", "0.7500", "1.000", "1.500", "1.200", "0.1000"]);

    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    let images: Vec<String> = references(&html).into_iter().filter(|r| r.ends_with(".png") || r.ends_with(".svg")).collect();
    assert_eq!(images.len(), 36, "the same 18 charts as for two runs, PNG and SVG: {images:?}");
    for image in &images {
        assert!(out.join(image).is_file(), "the page references {image}, which does not exist");
    }
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(summary.contains("## Final figures") && summary.contains("beta-0.1"), "{summary}");
    for comparison in ["Win rate", "Config differences", "Sweep"] {
        assert!(!summary.contains(comparison) && !html.contains(comparison), "a single run's report has `{comparison}`");
    }
}
