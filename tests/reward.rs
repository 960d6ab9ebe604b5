//! Reward modeling: the head reads the last real token under both paddings, and a tiny reward
//! model learns a planted rule ("the response containing `excellent` wins") to ≥ 95 % held-out
//! accuracy with a fixed seed; the stage's held-out scores file reproduces its figures; the stage
//! learns the same rule from a preference file and from the labeling database.

mod common;
mod label_support;

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rlhf_lab::label::Preferred;
use rlhf_lab::model::generate::left_pad;
use rlhf_lab::model::reward::{RewardModel, RewardNormalization};
use rlhf_lab::model::{LanguageModel, Precision};
use rlhf_lab::stages::reward::bradley_terry_loss;
use rlhf_lab::train::optimizer::{AdamW, AdamWConfig};
use tch::{Device, Kind, Tensor};

fn fresh_reward_model(dir: &std::path::Path) -> RewardModel {
    let config = common::tiny_config(300, 48, 32, 2, 2);
    tch::manual_seed(7);
    LanguageModel::fresh(&config, common::tiny_tokenizer(300), Device::Cpu, Precision::Fp32).save(dir).unwrap();
    RewardModel::load(dir, Device::Cpu, Precision::Fp32, true).unwrap()
}

#[test]
fn scores_are_read_at_the_last_real_token_under_left_and_right_padding() {
    let dir = tempfile::tempdir().unwrap();
    let model = fresh_reward_model(dir.path());
    let rows = vec![vec![5i64, 6, 7, 8, 9], vec![11, 12]];
    let (left_ids, left_mask) = left_pad(&rows, 0, Device::Cpu);
    let right_ids = Tensor::from_slice2(&[[5i64, 6, 7, 8, 9], [11, 12, 0, 0, 0]]);
    let right_mask = Tensor::from_slice2(&[[1i64, 1, 1, 1, 1], [1, 1, 0, 0, 0]]);
    let _no_grad = tch::no_grad_guard();
    let left = model.scores(&left_ids, &left_mask, false);
    let right = model.scores(&right_ids, &right_mask, false);
    let alone = model.scores(&Tensor::from_slice2(&[[11i64, 12]]), &Tensor::from_slice2(&[[1i64, 1]]), false);
    assert!((&left - &right).abs().max().double_value(&[]) < 1e-5, "{left} vs {right}");
    assert!((left.double_value(&[1]) - alone.double_value(&[0])).abs() < 1e-5);
    // Read at the last real token, not at a padding position: under left padding the short row's
    // last token sits at the end, its padding at the start, and the two outputs differ.
    let per_position = model.head.forward(&model.transformer.forward(&left_ids, Some(&left_mask), None, false)).squeeze_dim(-1);
    assert_eq!(left.double_value(&[1]), per_position.double_value(&[1, 4]));
    assert!(
        (left.double_value(&[1]) - per_position.double_value(&[1, 0])).abs() > 1e-4,
        "a padding position scores the same: {per_position}"
    );
}

/// A short "review" of random filler words; `with_rule` adds the winning word somewhere.
fn response(rng: &mut ChaCha8Rng, with_rule: bool) -> String {
    const FILLER: &[&str] = &["battery", "screen", "price", "the", "is", "fair", "dull", "and", "review"];
    let mut words: Vec<&str> = (0..rng.random_range(4..9)).map(|_| *FILLER.choose(rng).unwrap()).collect();
    if with_rule {
        let at = rng.random_range(0..=words.len());
        words.insert(at, "excellent");
    }
    format!(" {}", words.join(" "))
}

#[test]
fn a_tiny_reward_model_learns_a_planted_rule() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = fresh_reward_model(dir.path());
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut pairs = |n: usize| -> Vec<(String, String)> { (0..n).map(|_| (response(&mut rng, true), response(&mut rng, false))).collect() };
    let (train, held_out) = (pairs(512), pairs(200));

    let mut optimizer = AdamW::new(&model.vs, AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 });
    let score = |model: &RewardModel, batch: &[(String, String)], train: bool| {
        let rows: Vec<Vec<i64>> = batch
            .iter()
            .map(|(chosen, _)| model.encode("review:", chosen).unwrap())
            .chain(batch.iter().map(|(_, rejected)| model.encode("review:", rejected).unwrap()))
            .collect();
        let (ids, mask) = left_pad(&rows, 0, Device::Cpu);
        let scores = model.scores(&ids, &mask, train);
        let n = batch.len() as i64;
        (scores.narrow(0, 0, n), scores.narrow(0, n, n))
    };
    let zeros = Tensor::zeros([32], (Kind::Float, Device::Cpu));
    let no_ties = Tensor::zeros([32], (Kind::Bool, Device::Cpu));
    for epoch in 0..3 {
        for batch in train.chunks(32) {
            let (chosen, rejected) = score(&model, batch, true);
            bradley_terry_loss(&chosen, &rejected, &zeros, &no_ties, 0.0).backward();
            optimizer.step(if epoch == 0 { 1e-3 } else { 5e-4 }).unwrap();
            optimizer.zero_grad().unwrap();
        }
    }
    model.vs.freeze();
    let _no_grad = tch::no_grad_guard();
    let (chosen, rejected) = score(&model, &held_out, false);
    let accuracy = chosen.gt_tensor(&rejected).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
    assert!(accuracy >= 0.95, "held-out accuracy {accuracy}");
}

#[test]
fn score_command_prints_rewards_for_responses_and_preference_probabilities_for_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = fresh_reward_model(&dir.path().join("rm"));
    model.normalization = Some(RewardNormalization { mean: 0.5, std: 2.0 });
    model.save(&dir.path().join("rm")).unwrap();
    let expected = model.score_texts(&[("review:", " the battery is great"), ("review:", " price fair")], 8).unwrap();

    let input = dir.path().join("input.jsonl");
    std::fs::write(
        &input,
        concat!(
            "{\"prompt\": \"review:\", \"response\": \" the battery is great\"}\n",
            "{\"prompt\": \"review:\", \"chosen\": \" the battery is great\", \"rejected\": \" price fair\"}\n",
            "{\"prompt\": \"review:\", \"response_a\": \" price fair\", \"response_b\": \" the battery is great\"}\n",
        ),
    )
    .unwrap();
    let (ok, stdout, stderr) = common::rlhf(&["score", "--model", "rm", "--input", "input.jsonl", "--device", "cpu"], dir.path());
    assert!(ok, "{stderr}");
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    let close = |value: &serde_json::Value, expected: f64| (value.as_f64().unwrap() - expected).abs() < 1e-5;
    assert!(close(&lines[0]["reward"], expected[0]), "{}", lines[0]);
    assert!(close(&lines[0]["normalized"], (expected[0] - 0.5) / 2.0), "{}", lines[0]);
    let p_chosen = 1.0 / (1.0 + (expected[1] - expected[0]).exp());
    assert!(close(&lines[1]["p_first_preferred"], p_chosen), "{}", lines[1]);
    assert!(close(&lines[2]["p_first_preferred"], 1.0 - p_chosen), "{}", lines[2]);
    assert!(close(&lines[2]["reward_second"], expected[0]), "{}", lines[2]);
}

#[test]
fn score_command_names_the_bad_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    fresh_reward_model(&dir.path().join("rm"));
    let cases = [
        ("{\"prompt\": \"p\", \"response\": \"r\"}\n{\"prompt\": \"p\", \"chosen\": \"a\"}\n", "record 2", "`rejected`"),
        ("{\"response\": \"r\"}\n", "record 1", "`prompt`"),
        ("{\"prompt\": \"p\", \"response\": \"r\"}\n{\"prompt\": \"p\", \"resp\n", "bad.jsonl:2", "EOF"),
    ];
    for (text, place, field) in cases {
        std::fs::write(dir.path().join("bad.jsonl"), text).unwrap();
        let (ok, stdout, stderr) = common::rlhf(&["score", "--model", "rm", "--input", "bad.jsonl", "--device", "cpu"], dir.path());
        assert!(!ok, "accepted {text:?}: {stdout}");
        assert!(stdout.is_empty(), "printed scores before failing: {stdout}");
        assert!(stderr.contains("bad.jsonl") && stderr.contains(place) && stderr.contains(field), "{text:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    std::fs::write(dir.path().join("good.jsonl"), "{\"prompt\": \"p\", \"response\": \"r\"}\n").unwrap();
    let (ok, _, stderr) = common::rlhf(&["score", "--model", "missing", "--input", "good.jsonl", "--device", "cpu"], dir.path());
    assert!(!ok && stderr.contains("missing"), "{stderr}");
}

#[test]
fn the_reward_stage_writes_held_out_scores_that_reproduce_its_figures() {
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("tiny.toml"), common::TINY_RLHF_EXPERIMENT).unwrap();
    let args = ["run", "tiny.toml", "--only", "sft,rm", "--set", "stages.rm.eval_pairs=40", "--set", "stages.rm.noise=0.2", "--out", "out"];
    let (ok, stdout, stderr) = common::rlhf(&args, work.path());
    assert!(ok, "{stderr}");
    let run = work.path().join(stdout.trim());
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    let figures = &summary["rm"];

    let held_out: Vec<serde_json::Value> =
        std::fs::read_to_string(run.join("rm/eval_pairs.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(held_out.len(), 40);
    let judged: Vec<&serde_json::Value> = held_out.iter().filter(|p| p["tie"] == false).collect();
    let share = |hit: &dyn Fn(&serde_json::Value) -> f64| judged.iter().map(|p| hit(p)).sum::<f64>() / judged.len() as f64;
    let field = |p: &serde_json::Value, name: &str| p[name].as_f64().unwrap_or_else(|| panic!("no {name} in {p}"));
    let accuracy = share(&|p| f64::from(u8::from(field(p, "reward_chosen") > field(p, "reward_rejected"))));
    let ceiling = share(&|p| match field(p, "gold_chosen").partial_cmp(&field(p, "gold_rejected")).unwrap() {
        std::cmp::Ordering::Greater => 1.0,
        std::cmp::Ordering::Equal => 0.5,
        std::cmp::Ordering::Less => 0.0,
    });
    assert!((accuracy - figures["eval/accuracy"].as_f64().unwrap()).abs() < 1e-9, "{accuracy} vs {}", figures["eval/accuracy"]);
    assert!((ceiling - figures["eval/noise_ceiling"].as_f64().unwrap()).abs() < 1e-9, "{ceiling} vs {}", figures["eval/noise_ceiling"]);
    // with noisy annotators, gold cannot predict every label
    assert!(ceiling < 1.0 && ceiling > 0.5, "ceiling {ceiling}");
    assert!(figures["eval/annotator_agreement"].is_f64() && figures["eval/gold_agreement"].is_f64());

    // Killed after the last step's state was saved but before the stage finished: the resumed
    // stage has no step left to train, and still writes the same figures and held-out scores.
    let mut unfinished = summary.clone();
    unfinished.as_object_mut().unwrap().remove("rm");
    std::fs::write(run.join("summary.json"), unfinished.to_string()).unwrap();
    std::fs::remove_file(run.join("rm/eval_pairs.jsonl")).unwrap();
    let (ok, _, stderr) = common::rlhf(&["run", "--resume", run.to_str().unwrap(), "--only", "rm"], work.path());
    assert!(ok, "{stderr}");
    let resumed: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(common::without_memory(&resumed["rm"]), common::without_memory(&summary["rm"]));
    assert_eq!(std::fs::read_to_string(run.join("rm/eval_pairs.jsonl")).unwrap().lines().count(), 40);
}

/// The reward stage trained from preferences people gave: a preference file (`source = "jsonl"`)
/// and the labeling database itself (`source = "labels"`), holding the same judgements — the
/// response with `excellent` wins, one tie, one skip. Both train a model that learned the rule,
/// and the two runs are identical: the database is read as its export would be.
#[test]
fn the_reward_stage_learns_from_a_preference_file_and_from_the_labels_database() {
    let work = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let pairs: Vec<serde_json::Value> = (0..400)
        .map(|i| {
            let (with_rule, without) = (response(&mut rng, true), response(&mut rng, false));
            let (a, b) = if rng.random_bool(0.5) { (with_rule, without) } else { (without, with_rule) };
            serde_json::json!({"prompt": format!("Write a review of product {i}.\nReview:"), "response_a": a, "response_b": b})
        })
        .collect();
    let db = label_support::database_with(work.path(), &pairs);

    // Alice labels every pair through the library as the server would record it (ties and
    // skips included); the same judgements, in labeling order, make the preference file.
    let labeled = label_support::label_through_library(&db, "alice", usize::MAX, |i, pair| match i {
        0 => Preferred::Tie,
        1 => Preferred::Skip,
        _ if pair.left.contains("excellent") => Preferred::Left,
        _ => Preferred::Right,
    });
    let preferences: Vec<serde_json::Value> = labeled
        .iter()
        .map(|(pair, preferred)| {
            let left_wins = pair.left.contains("excellent");
            let (chosen, rejected) = if left_wins { (&pair.left, &pair.right) } else { (&pair.right, &pair.left) };
            let judgement = match preferred {
                Preferred::Tie => "tie",
                Preferred::Skip => "skip",
                _ => "preference",
            };
            serde_json::json!({"prompt": pair.prompt, "chosen": chosen, "rejected": rejected, "judgement": judgement})
        })
        .collect();
    assert_eq!(preferences.len(), 400);
    let file = work.path().join("prefs.jsonl");
    label_support::write_jsonl(&file, &preferences);

    std::fs::write(work.path().join("tiny.toml"), common::TINY_RLHF_EXPERIMENT).unwrap();
    let train = |out: &str, source: &[&str]| -> (std::path::PathBuf, serde_json::Value) {
        let mut args = vec!["run", "tiny.toml", "--only", "sft,rm", "--out", out];
        for setting in [
            "stages.rm.steps=120",
            "stages.rm.batch_size=16",
            "stages.rm.eval_every=60",
            "stages.rm.lr=1e-3",
            "stages.rm.eval_fraction=0.2",
        ]
        .iter()
        .chain(source)
        {
            args.extend(["--set", setting]);
        }
        let (ok, stdout, stderr) = common::rlhf(&args, work.path());
        assert!(ok, "{source:?}: {stderr}");
        let run = work.path().join(stdout.trim());
        assert!(
            stderr.contains("preference pairs train=319 off_prompt=0 eval=80"),
            "{source:?}: 400 labels less one skip, 20 % held out: {stderr}"
        );
        let summary = serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
        (run, summary)
    };
    let (_, from_file) = train("file", &["stages.rm.source=jsonl", &format!("stages.rm.preferences={}", file.display())]);
    let (run, from_labels) = train("labels", &["stages.rm.source=labels", &format!("stages.rm.database={}", db.display())]);
    let accuracy = from_file["rm"]["eval/accuracy"].as_f64().unwrap();
    assert!(accuracy >= 0.9, "held-out accuracy {accuracy} on a rule the model can learn");
    assert_eq!(
        common::without_memory(&from_labels["rm"]),
        common::without_memory(&from_file["rm"]),
        "the database and its judgements as a file trained differently"
    );
    selecting_what_to_label_next(work.path(), &run, &mut rng);
}

/// `rlhf label import --select`: with the reward model above (it learned that `excellent` wins),
/// pairs where both or neither response has the word are the uncertain ones; `uncertain` imports
/// the `count` pairs whose preference probability is nearest ½ among those not yet stored,
/// `random` a seeded subset, and without `--reward-model` the run's reward stage is used.
fn selecting_what_to_label_next(work: &std::path::Path, run: &std::path::Path, rng: &mut ChaCha8Rng) {
    let candidates: Vec<(serde_json::Value, bool)> = (0..60)
        .map(|i| {
            let ambiguous = i % 3 == 0;
            let (a, b) = if ambiguous {
                (response(rng, i % 2 == 0), response(rng, i % 2 == 0))
            } else {
                (response(rng, true), response(rng, false))
            };
            let prompt = format!("Write a review of gadget {i}.\nReview:");
            (serde_json::json!({"prompt": prompt, "response_a": a, "response_b": b, "candidate": i}), ambiguous)
        })
        .collect();
    let lines: Vec<serde_json::Value> = candidates.iter().map(|(line, _)| line.clone()).collect();
    let stage = run.join("candidates");
    std::fs::create_dir_all(&stage).unwrap();
    let file = stage.join("pairs.jsonl");
    label_support::write_jsonl(&file, &lines);
    let reward = run.join("rm/checkpoint");
    let import = |db: &str, extra: &[&str]| -> String {
        let db = work.join(db);
        let mut args = vec!["label", "import", "--db", db.to_str().unwrap(), file.to_str().unwrap(), "--device", "cpu"];
        args.extend_from_slice(extra);
        label_support::rlhf_ok(&args)
    };
    let stored = |db: &str| -> Vec<(i64, f64)> {
        let rows: Vec<(String,)> = label_support::db_rows(&work.join(db), "SELECT metadata FROM pairs ORDER BY id");
        rows.iter()
            .map(|(metadata,)| {
                let metadata: serde_json::Value = serde_json::from_str(metadata).unwrap();
                assert!(metadata["selection"]["method"].is_string(), "{metadata}");
                (metadata["candidate"].as_i64().unwrap(), metadata["selection"]["preference_probability"].as_f64().unwrap())
            })
            .collect()
    };

    // Every candidate with its probability, then the ten nearest ½: the same ten.
    import("all.db", &["--select", "uncertain", "--count", "1000", "--reward-model", reward.to_str().unwrap()]);
    let mut all = stored("all.db");
    assert_eq!(all.len(), 60);
    all.sort_by(|x, y| (x.1 - 0.5).abs().total_cmp(&(y.1 - 0.5).abs()));
    let out = import("uncertain.db", &["--select", "uncertain", "--count", "10", "--reward-model", reward.to_str().unwrap()]);
    assert!(out.contains("imported 10 new pairs"), "{out}");
    let chosen = stored("uncertain.db");
    let mut chosen_ids: Vec<i64> = chosen.iter().map(|c| c.0).collect();
    chosen_ids.sort();
    let mut nearest: Vec<i64> = all[..10].iter().map(|c| c.0).collect();
    nearest.sort();
    assert_eq!(chosen_ids, nearest);
    let ambiguous = chosen_ids.iter().filter(|&&i| candidates[i as usize].1).count();
    assert!(ambiguous >= 8, "{ambiguous} of 10 chosen pairs are the ambiguous kind: {chosen:?}");
    // Asked again, it chooses among the pairs not yet stored: the next ten.
    import("uncertain.db", &["--select", "uncertain", "--count", "10", "--reward-model", reward.to_str().unwrap()]);
    let mut next: Vec<i64> = stored("uncertain.db")[10..].iter().map(|c| c.0).collect();
    next.sort();
    let mut following: Vec<i64> = all[10..20].iter().map(|c| c.0).collect();
    following.sort();
    assert_eq!(next, following);

    // Random: seeded; the run's own reward model is found from --from-run's stage directory.
    let random = |db: &str, seed: &str| {
        let db = work.join(db);
        let samples: String = lines
            .iter()
            .flat_map(|l| {
                [l["response_a"].clone(), l["response_b"].clone()]
                    .map(|completion| serde_json::json!({"prompt": l["prompt"], "completion": completion}).to_string() + "\n")
            })
            .collect();
        std::fs::write(stage.join("samples.jsonl"), samples).unwrap();
        let from = stage.to_str().unwrap();
        label_support::rlhf_ok(&[
            "label",
            "import",
            "--db",
            db.to_str().unwrap(),
            "--from-run",
            from,
            "--select",
            "random",
            "--count",
            "7",
            "--seed",
            seed,
            "--device",
            "cpu",
        ]);
    };
    random("r1.db", "5");
    random("r2.db", "5");
    random("r3.db", "6");
    let prompts = |db: &str| -> Vec<(String,)> { label_support::db_rows(&work.join(db), "SELECT prompt FROM pairs ORDER BY prompt") };
    assert_eq!(prompts("r1.db").len(), 7);
    assert_eq!(prompts("r1.db"), prompts("r2.db"), "same seed, same pairs");
    assert_ne!(prompts("r1.db"), prompts("r3.db"));
    // A bad selection names what is missing.
    let error = label_support::rlhf_err(&[
        "label",
        "import",
        "--db",
        work.join("x.db").to_str().unwrap(),
        file.to_str().unwrap(),
        "--select",
        "uncertain",
        "--count",
        "3",
    ]);
    assert!(error.contains("--select needs --reward-model"), "{error}");
}

/// `ensemble = 3`: the stage trains three heads on bootstrap resamples, saves them beside a
/// standard checkpoint whose head is their mean (so it scores with the members' mean), reports
/// their spread, and `label import --select disagreement` picks the pairs they disagree on most.
#[test]
fn an_ensemble_reward_stage_saves_its_members_beside_their_mean() {
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("tiny.toml"), common::TINY_RLHF_EXPERIMENT).unwrap();
    let args = ["run", "tiny.toml", "--only", "sft,rm", "--set", "stages.rm.ensemble=3", "--out", "out"];
    let (ok, stdout, stderr) = common::rlhf(&args, work.path());
    assert!(ok, "{stderr}");
    let run = work.path().join(stdout.trim());
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    let spread = summary["rm"]["eval/ensemble_std"].as_f64().unwrap();
    assert!(spread > 0.0, "{}", summary["rm"]);
    assert!(summary["rm"]["eval/ensemble_disagreement"].is_f64(), "{}", summary["rm"]);

    let checkpoint = run.join("rm/checkpoint");
    let read = |file: &str| -> (Vec<usize>, Vec<f32>) {
        let bytes = std::fs::read(checkpoint.join(file)).unwrap();
        let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let weight = tensors.tensor("score.weight").unwrap();
        assert_eq!(weight.dtype(), safetensors::Dtype::F32);
        (weight.shape().to_vec(), weight.data().chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect())
    };
    let (member_shape, members) = read("ensemble.safetensors");
    let (head_shape, head) = read("model.safetensors");
    let width = head_shape[1];
    assert_eq!((member_shape.clone(), head_shape), (vec![3, width], vec![1, width]));
    for (i, &weight) in head.iter().enumerate() {
        let mean = (0..3).map(|k| members[k * width + i]).sum::<f32>() / 3.0;
        assert!((weight - mean).abs() < 1e-6, "score.weight[{i}] = {weight}, the members' mean {mean}");
    }

    let model = RewardModel::load(&checkpoint, Device::Cpu, Precision::Fp32, false).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let texts: Vec<(String, String)> =
        (0..12).map(|i| (format!("Write a review of item {i}.\nReview:"), response(&mut rng, i % 2 == 0))).collect();
    let texts: Vec<(&str, &str)> = texts.iter().map(|(p, r)| (p.as_str(), r.as_str())).collect();
    let scores = model.score_texts(&texts, 5).unwrap();
    let member_scores = model.member_scores_texts(&texts, 5).unwrap().expect("an ensemble");
    for (score, members) in scores.iter().zip(&member_scores) {
        assert_eq!(members.len(), 3);
        let mean = members.iter().sum::<f64>() / 3.0;
        assert!((score - mean).abs() < 1e-5, "{score} vs the members' mean {mean} of {members:?}");
    }

    selecting_by_disagreement(work.path(), &checkpoint, &mut rng);
}

/// `--select disagreement` imports the pairs with the largest recorded disagreement, and refuses
/// a reward model without an ensemble.
fn selecting_by_disagreement(work: &std::path::Path, checkpoint: &std::path::Path, rng: &mut ChaCha8Rng) {
    let lines: Vec<serde_json::Value> = (0..40)
        .map(|i| {
            let prompt = format!("Write a review of gadget {i}.\nReview:");
            serde_json::json!({"prompt": prompt, "response_a": response(rng, i % 3 == 0), "response_b": response(rng, false), "candidate": i})
        })
        .collect();
    let file = work.join("candidates.jsonl");
    label_support::write_jsonl(&file, &lines);
    let import = |db: &str, count: &str, reward: &std::path::Path| -> Vec<(i64, f64)> {
        let db = work.join(db);
        label_support::rlhf_ok(&[
            "label",
            "import",
            "--db",
            db.to_str().unwrap(),
            file.to_str().unwrap(),
            "--device",
            "cpu",
            "--select",
            "disagreement",
            "--count",
            count,
            "--reward-model",
            reward.to_str().unwrap(),
        ]);
        let rows: Vec<(String,)> = label_support::db_rows(&db, "SELECT metadata FROM pairs ORDER BY id");
        rows.iter()
            .map(|(metadata,)| {
                let metadata: serde_json::Value = serde_json::from_str(metadata).unwrap();
                let selection = &metadata["selection"];
                assert_eq!(selection["method"], "disagreement", "{metadata}");
                let p = selection["preference_probability"].as_f64().unwrap();
                assert!((0.0..=1.0).contains(&p), "{metadata}");
                (metadata["candidate"].as_i64().unwrap(), selection["disagreement"].as_f64().unwrap())
            })
            .collect()
    };
    let mut all = import("all.db", "1000", checkpoint);
    assert_eq!(all.len(), 40);
    all.sort_by(|x, y| y.1.total_cmp(&x.1));
    assert!(all[0].1 > 0.0, "{all:?}");
    let mut chosen: Vec<i64> = import("disagreement.db", "8", checkpoint).iter().map(|c| c.0).collect();
    chosen.sort();
    let mut largest: Vec<i64> = all[..8].iter().map(|c| c.0).collect();
    largest.sort();
    assert_eq!(chosen, largest);

    // The same model without its members: a plain reward model, which cannot select this way.
    let plain = work.join("plain");
    std::fs::create_dir(&plain).unwrap();
    for entry in std::fs::read_dir(checkpoint).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() != "ensemble.safetensors" {
            std::fs::copy(&path, plain.join(path.file_name().unwrap())).unwrap();
        }
    }
    let error = label_support::rlhf_err(&[
        "label",
        "import",
        "--db",
        work.join("x.db").to_str().unwrap(),
        file.to_str().unwrap(),
        "--device",
        "cpu",
        "--select",
        "disagreement",
        "--count",
        "3",
        "--reward-model",
        plain.to_str().unwrap(),
    ]);
    assert!(error.contains("no ensemble.safetensors") && error.contains(plain.to_str().unwrap()), "{error}");
}
