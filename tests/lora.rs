//! LoRA adapters and gradient checkpointing at the model level: an adapted forward pass equals
//! the merged weights' forward pass, the base with its adapters off equals a separate frozen
//! copy, checkpointed blocks give the plain pass's gradients, and targets an architecture lacks
//! are refused by name.

mod common;

use serde_json::json;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use rlhf_lab::model::generate::left_pad;
use rlhf_lab::model::{LanguageModel, LoraSettings, ModelConfig, Precision};

fn qwen2_config() -> ModelConfig {
    ModelConfig::from_hf(&json!({"model_type": "qwen2", "vocab_size": 300, "hidden_size": 48, "intermediate_size": 80,
        "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
        "tie_word_embeddings": false, "initializer_range": 0.1, "bos_token_id": 0, "eos_token_id": 0}))
    .unwrap()
}

fn gpt2_config() -> ModelConfig {
    common::tiny_config(300, 64, 48, 3, 4).into()
}

fn fresh(config: &ModelConfig, seed: i64) -> LanguageModel {
    tch::manual_seed(seed);
    LanguageModel::fresh(config, common::tiny_tokenizer(300), Device::Cpu, Precision::Fp32)
}

fn lora(text: &str) -> LoraSettings {
    toml::from_str(text).unwrap()
}

/// Left-padded rows of random tokens and their mask.
fn batch(seed: i64) -> (Tensor, Tensor) {
    tch::manual_seed(seed);
    let rows: Vec<Vec<i64>> = [9i64, 5, 12]
        .iter()
        .map(|&n| Vec::<i64>::try_from(Tensor::randint_low(1, 300, [n], (Kind::Int64, Device::Cpu))).unwrap())
        .collect();
    left_pad(&rows, 0, Device::Cpu)
}

fn logits(model: &LanguageModel, ids: &Tensor, mask: &Tensor) -> Tensor {
    tch::no_grad(|| model.transformer.forward_logits(ids, Some(mask), false))
}

/// Gives every adapter a random `B` (a fresh one is zero, which would make every check trivial).
fn randomise(vs: &VarStore, seed: i64) {
    tch::manual_seed(seed);
    tch::no_grad(|| {
        for (name, mut variable) in vs.variables() {
            if name.contains("lora_B") {
                variable.copy_(&(Tensor::randn_like(&variable) * 0.2));
            }
        }
    });
}

fn max_difference(a: &Tensor, b: &Tensor, mask: &Tensor) -> f64 {
    ((a - b).abs().amax([-1], false) * mask.to_kind(Kind::Float)).max().double_value(&[])
}

#[test]
fn an_adapted_forward_pass_equals_the_merged_weights_forward_pass() {
    for config in [qwen2_config(), gpt2_config()] {
        let mut model = fresh(&config, 3);
        model.attach_adapters(&lora("r = 4\nalpha = 8\ndropout = 0.1")).unwrap();
        let adapters = model.adapters.as_ref().unwrap();
        let expected = if matches!(config, ModelConfig::Gpt2(_)) { 3 * 4 } else { 3 * 7 };
        assert_eq!(adapters.modules.len(), expected, "{:?}", adapters.modules);
        randomise(&adapters.vs, 5);
        let (ids, mask) = batch(7);
        let base = model.without_adapters(|| logits(&model, &ids, &mask));
        let adapted = logits(&model, &ids, &mask);
        assert!(max_difference(&base, &adapted, &mask) > 1e-2, "the adapters change the output");
        model.merge_adapters();
        assert!(model.adapters.is_none());
        let merged = logits(&model, &ids, &mask);
        let difference = max_difference(&adapted, &merged, &mask);
        assert!(difference < 1e-5, "{}: adapted vs merged differ by {difference}", config.model_type());
    }
}

#[test]
fn the_base_with_adapters_off_is_a_separate_frozen_copy() {
    let work = tempfile::tempdir().unwrap();
    let base = fresh(&qwen2_config(), 11);
    base.save(work.path()).unwrap();
    let mut policy = LanguageModel::load(work.path(), Device::Cpu, Precision::Fp32).unwrap();
    let reference = LanguageModel::load(work.path(), Device::Cpu, Precision::Fp32).unwrap();
    policy.attach_adapters(&lora("r = 8")).unwrap();
    randomise(&policy.adapters.as_ref().unwrap().vs, 12);
    let (ids, mask) = batch(13);
    let logprobs = |logits: Tensor| logits.log_softmax(-1, Kind::Float);
    let separate = logprobs(logits(&reference, &ids, &mask));
    let switched_off = logprobs(policy.without_adapters(|| logits(&policy, &ids, &mask)));
    assert_eq!(max_difference(&separate, &switched_off, &mask), 0.0);
    let adapted = logprobs(logits(&policy, &ids, &mask));
    assert!(max_difference(&separate, &adapted, &mask) > 1e-2);
    // Only the adapters train: every base weight is frozen.
    assert!(policy.vs.variables().values().all(|t| !t.requires_grad()));
    assert!(policy.trained_vs().variables().values().all(|t| t.requires_grad() && t.kind() == Kind::Float));
}

/// The gradient of a next-token loss with respect to every trained variable.
fn gradients(model: &LanguageModel, ids: &Tensor, mask: &Tensor) -> Vec<(String, Tensor)> {
    let vs = model.trained_vs();
    for (_, variable) in vs.variables() {
        let mut grad = variable.grad();
        if grad.defined() {
            let _ = grad.zero_();
        }
    }
    let logits = model.transformer.forward_logits(ids, Some(mask), true);
    let (batch, time, vocab) = logits.size3().unwrap();
    let targets = ids.narrow(1, 1, time - 1).reshape([-1]);
    let weights = mask.narrow(1, 1, time - 1).reshape([-1]).to_kind(Kind::Float);
    let per_token = logits.narrow(1, 0, time - 1).reshape([batch * (time - 1), vocab]).cross_entropy_loss::<Tensor>(
        &targets,
        None,
        tch::Reduction::None,
        -100,
        0.0,
    );
    let loss = (per_token * &weights).sum(Kind::Float) / weights.sum(Kind::Float);
    rlhf_lab::model::blocks::backward(&loss);
    let mut grads: Vec<(String, Tensor)> = vs.variables().into_iter().map(|(name, t)| (name, t.grad().copy())).collect();
    grads.sort_by(|a, b| a.0.cmp(&b.0));
    grads
}

fn assert_same_gradients(plain: &[(String, Tensor)], checkpointed: &[(String, Tensor)], what: &str) {
    assert_eq!(plain.len(), checkpointed.len());
    for ((name, a), (_, b)) in plain.iter().zip(checkpointed) {
        assert!(a.defined() && b.defined(), "{what}: `{name}` has no gradient");
        let difference = (a - b).abs().max().double_value(&[]);
        assert!(difference < 1e-6, "{what}: `{name}` differs by {difference}");
        assert!(a.abs().max().double_value(&[]) > 0.0 || name.contains("lora_A"), "{what}: `{name}` has a zero gradient");
    }
}

#[test]
fn gradient_checkpointing_gives_the_plain_passes_gradients() {
    let (ids, mask) = batch(21);
    for config in [qwen2_config(), gpt2_config()] {
        let model = fresh(&config, 22);
        let plain = gradients(&model, &ids, &mask);
        model.set_gradient_checkpointing(true);
        let checkpointed = gradients(&model, &ids, &mask);
        assert_same_gradients(&plain, &checkpointed, &format!("{} full", config.model_type()));
        // And again, through adapters on a frozen base.
        let mut model = fresh(&config, 23);
        model.attach_adapters(&lora("r = 4")).unwrap();
        randomise(&model.adapters.as_ref().unwrap().vs, 24);
        let plain = gradients(&model, &ids, &mask);
        model.set_gradient_checkpointing(true);
        let checkpointed = gradients(&model, &ids, &mask);
        assert_same_gradients(&plain, &checkpointed, &format!("{} LoRA", config.model_type()));
        // The blocks were recomputed — also in a pass without dropout, as the RL stages train: a
        // plain `backward` alone leaves their weights without gradients, which the recomputation
        // then gives them.
        let model = fresh(&config, 25);
        model.set_gradient_checkpointing(true);
        let loss = model.transformer.forward_logits(&ids, Some(&mask), false).sum(Kind::Float);
        loss.backward();
        let block_weights = || model.vs.variables().into_iter().filter(|(name, _)| name.contains(".0.")).collect::<Vec<_>>();
        assert!(block_weights().iter().all(|(_, weight)| !weight.grad().defined()));
        rlhf_lab::model::blocks::backward(&Tensor::zeros([], (Kind::Float, Device::Cpu)).set_requires_grad(true));
        assert!(block_weights().iter().all(|(_, weight)| weight.grad().defined()));
    }
}

#[test]
fn targets_a_model_lacks_and_bad_settings_are_refused_by_name() {
    let mut gpt2 = fresh(&gpt2_config(), 31);
    let error = gpt2.attach_adapters(&lora("r = 4\ntargets = [\"q\", \"gate\"]")).unwrap_err().to_string();
    assert!(error.contains("lora.targets") && error.contains("q") && error.contains("c_attn"), "{error}");
    let error = gpt2.attach_adapters(&lora("r = 4\ntargets = [\"q\", \"k\", \"v\", \"gate\"]")).unwrap_err().to_string();
    assert!(error.contains("lora.targets") && error.contains("`gate`") && error.contains("gpt2"), "{error}");
    let unknown = toml::from_str::<LoraSettings>("r = 4\ntargets = [\"query\"]").unwrap_err().to_string();
    assert!(unknown.contains("query") && unknown.contains("gate"), "{unknown}");
    assert_eq!(lora("r = 0").check().unwrap_err().0, "lora.r");
    assert_eq!(lora("r = 4\nalpha = -1.0").check().unwrap_err().0, "lora.alpha");
    assert_eq!(lora("r = 4\ndropout = 1.0").check().unwrap_err().0, "lora.dropout");
    assert_eq!(lora("r = 4\ntargets = [\"q\", \"q\"]").check().unwrap_err().0, "lora.targets");
    assert_eq!(lora("r = 4\ntargets = []").check().unwrap_err().0, "lora.targets");
}

fn path_str(path: &std::path::Path) -> &str {
    path.to_str().unwrap()
}

/// Random rows of tokens (no padding: PEFT's reference reads them as they are).
fn rows(seed: i64) -> Vec<Vec<i64>> {
    tch::manual_seed(seed);
    [8i64, 8, 8].iter().map(|&n| Vec::<i64>::try_from(Tensor::randint_low(1, 300, [n], (Kind::Int64, Device::Cpu))).unwrap()).collect()
}

/// `peft`'s logits of `base` with the adapters of `adapter_dir`.
fn peft_logits(base: &std::path::Path, adapter_dir: &std::path::Path, rows: &[Vec<i64>], work: &std::path::Path) -> Tensor {
    let (inputs, out) = (work.join("inputs.json"), work.join("peft_logits.safetensors"));
    common::write_inputs(&inputs, rows);
    common::hf_reference(&["peft-logits", path_str(base), path_str(adapter_dir), path_str(&inputs), path_str(&out)]);
    Tensor::read_safetensors(&out).unwrap().into_iter().find(|(name, _)| name == "logits").unwrap().1
}

#[test]
fn adapters_round_trip_through_peft_both_ways() {
    let work = tempfile::tempdir().unwrap();
    for (config, targets, theirs) in [
        (qwen2_config(), "targets = [\"q\", \"v\", \"down\"]", "q_proj,v_proj,down_proj"),
        (gpt2_config(), "targets = [\"q\", \"k\", \"v\", \"o\"]", "c_attn,c_proj"),
    ] {
        let name = config.model_type();
        let base_dir = work.path().join(format!("{name}-base"));
        fresh(&config, 41).save(&base_dir).unwrap();
        let rows = rows(42);
        let (ids, mask) = left_pad(&rows, 0, Device::Cpu);

        // Saved here, read by peft: the same logits.
        let mut ours = LanguageModel::load(&base_dir, Device::Cpu, Precision::Fp32).unwrap();
        ours.attach_adapters(&lora(&format!("r = 4\nalpha = 16\n{targets}"))).unwrap();
        randomise(&ours.adapters.as_ref().unwrap().vs, 43);
        let adapter_dir = work.path().join(format!("{name}-ours"));
        ours.save(&adapter_dir).unwrap();
        let expected = logits(&ours, &ids, &mask);
        let difference = max_difference(&expected, &peft_logits(&base_dir, &adapter_dir, &rows, work.path()), &mask);
        assert!(difference < 1e-4, "{name}: ours read by peft differs by {difference}");
        // … and read back here (merged into the weights): the same logits again.
        let reloaded = LanguageModel::load(&adapter_dir, Device::Cpu, Precision::Fp32).unwrap();
        assert!(max_difference(&expected, &logits(&reloaded, &ids, &mask), &mask) < 1e-5);

        // `rlhf merge` writes a plain checkpoint transformers reads with the same logits.
        let merged_dir = work.path().join(format!("{name}-merged"));
        let (ok, _, stderr) = common::rlhf(&["merge", "--adapter", path_str(&adapter_dir), "--out", path_str(&merged_dir)], work.path());
        assert!(ok, "{stderr}");
        let (inputs, out) = (work.path().join("inputs.json"), work.path().join("merged_logits.safetensors"));
        common::write_inputs(&inputs, &rows);
        common::hf_reference(&["logits", path_str(&merged_dir), path_str(&inputs), path_str(&out)]);
        let merged = Tensor::read_safetensors(&out).unwrap().into_iter().find(|(name, _)| name == "logits").unwrap().1;
        let difference = max_difference(&expected, &merged, &mask);
        assert!(difference < 1e-4, "{name}: the merged checkpoint in transformers differs by {difference}");

        // Made by peft (A and B random), read here.
        let theirs_dir = work.path().join(format!("{name}-theirs"));
        common::hf_reference(&["make-peft", path_str(&base_dir), "causal", theirs, "4", "8", "44", path_str(&theirs_dir)]);
        let loaded = LanguageModel::load(&theirs_dir, Device::Cpu, Precision::Fp32).unwrap();
        let reference = peft_logits(&base_dir, &theirs_dir, &rows, work.path());
        let difference = max_difference(&logits(&loaded, &ids, &mask), &reference, &mask);
        assert!(difference < 1e-4, "{name}: peft's adapters read here differ by {difference}");
        let base = LanguageModel::load(&base_dir, Device::Cpu, Precision::Fp32).unwrap();
        assert!(max_difference(&logits(&base, &ids, &mask), &reference, &mask) > 1e-2, "{name}: peft's adapters change the output");
    }
}

/// `peft`'s scores of `base` read as a sequence classifier with the adapters of `adapter_dir`.
fn peft_scores(base: &std::path::Path, adapter_dir: &std::path::Path, rows: &[Vec<i64>], work: &std::path::Path) -> Vec<f64> {
    let (inputs, out) = (work.join("inputs.json"), work.join("peft_scores.json"));
    common::write_inputs(&inputs, rows);
    common::hf_reference(&["peft-scores", path_str(base), path_str(adapter_dir), path_str(&inputs), path_str(&out)]);
    let scores: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap();
    scores["scores"].as_array().unwrap().iter().map(|s| s.as_f64().unwrap()).collect()
}

fn assert_close(ours: &Tensor, theirs: &[f64], what: &str) {
    let ours = Vec::<f64>::try_from(ours.to_kind(Kind::Double)).unwrap();
    assert_eq!(ours.len(), theirs.len());
    for (a, b) in ours.iter().zip(theirs) {
        assert!((a - b).abs() < 1e-4, "{what}: {ours:?} vs {theirs:?}");
    }
}

#[test]
fn reward_model_adapters_round_trip_through_peft_both_ways() {
    use rlhf_lab::model::reward::RewardModel;
    let work = tempfile::tempdir().unwrap();
    let base_dir = work.path().join("base");
    fresh(&qwen2_config(), 51).save(&base_dir).unwrap();
    let rows = rows(52);
    let (ids, mask) = left_pad(&rows, 0, Device::Cpu);

    // A reward model trained with adapters: the head beside them, saved as PEFT's modules_to_save.
    tch::manual_seed(53);
    let mut ours = RewardModel::load(&base_dir, Device::Cpu, Precision::Fp32, true).unwrap();
    ours.attach_adapters(&lora("r = 4\ntargets = [\"q\", \"v\"]")).unwrap();
    let trained = ours.trained_vs();
    assert!(trained.variables().contains_key("score.weight") && ours.vs.variables().values().all(|t| !t.requires_grad()));
    randomise(trained, 54);
    tch::no_grad(|| trained.variables()["score.weight"].shallow_clone().copy_(&(Tensor::randn([1, 48], (Kind::Float, Device::Cpu)) * 0.3)));
    let adapter_dir = work.path().join("rm-ours");
    ours.save(&adapter_dir).unwrap();
    let expected = tch::no_grad(|| ours.scores(&ids, &mask, false));
    assert_close(&expected, &peft_scores(&base_dir, &adapter_dir, &rows, work.path()), "ours read by peft");
    let reloaded = RewardModel::load(&adapter_dir, Device::Cpu, Precision::Fp32, false).unwrap();
    assert_close(
        &tch::no_grad(|| reloaded.scores(&ids, &mask, false)),
        &Vec::<f64>::try_from(&expected.to_kind(Kind::Double)).unwrap(),
        "ours read back",
    );
    // Merged, it is a plain sequence classifier with the same scores.
    ours.merge_adapters();
    assert_close(
        &tch::no_grad(|| ours.scores(&ids, &mask, false)),
        &Vec::<f64>::try_from(&expected.to_kind(Kind::Double)).unwrap(),
        "merged",
    );

    // Made by peft (adapters and a perturbed head), read here as a reward model.
    let theirs_dir = work.path().join("rm-theirs");
    common::hf_reference(&["make-peft", path_str(&base_dir), "seq-cls", "q_proj,k_proj,up_proj", "4", "8", "55", path_str(&theirs_dir)]);
    let loaded = RewardModel::load(&theirs_dir, Device::Cpu, Precision::Fp32, false).unwrap();
    assert_close(
        &tch::no_grad(|| loaded.scores(&ids, &mask, false)),
        &peft_scores(&base_dir, &theirs_dir, &rows, work.path()),
        "peft's read here",
    );
    // A language model's adapters are no reward model.
    let lm_dir = work.path().join("lm-adapters");
    let mut lm = LanguageModel::load(&base_dir, Device::Cpu, Precision::Fp32).unwrap();
    lm.attach_adapters(&lora("r = 2")).unwrap();
    lm.save(&lm_dir).unwrap();
    let error = RewardModel::load(&lm_dir, Device::Cpu, Precision::Fp32, false).err().unwrap().to_string();
    assert!(error.contains("no `score` head"), "{error}");
}

/// The figures of a stage's metrics.jsonl that do not measure time.
fn stage_figures(run: &std::path::Path, stage: &str) -> Vec<(String, f64)> {
    let text = std::fs::read_to_string(run.join(stage).join("metrics.jsonl")).unwrap();
    let mut figures = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        for (name, value) in record.as_object().unwrap() {
            if let Some(value) = value.as_f64().filter(|_| !name.starts_with("time/") && !name.ends_with("_per_s")) {
                figures.push((format!("line {index}: {name}"), value));
            }
        }
    }
    figures
}

#[test]
fn rl_stages_train_alike_with_and_without_gradient_checkpointing() {
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("exp.toml"), common::ALL_KINDS_EXPERIMENT).unwrap();
    let run = |out: &str, extra: &[&str]| {
        let mut args = vec!["run", "exp.toml", "--out", out];
        for assignment in extra {
            args.extend(["--set", assignment]);
        }
        let (ok, stdout, stderr) = common::rlhf(&args, work.path());
        assert!(ok, "{stderr}");
        work.path().join(stdout.trim())
    };
    let plain = run("plain", &[]);
    let stages = ["ppo", "dpo", "grpo", "rloo"];
    let settings: Vec<String> = stages.iter().map(|stage| format!("stages.{stage}.gradient_checkpointing=true")).collect();
    let checkpointed = run("checkpointed", &settings.iter().map(String::as_str).collect::<Vec<_>>());
    for stage in stages {
        let (a, b) = (stage_figures(&plain, stage), stage_figures(&checkpointed, stage));
        assert_eq!(a.len(), b.len(), "{stage}");
        for ((name, x), (_, y)) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-4 * x.abs().max(1.0), "{stage} {name}: {x} plain, {y} checkpointed");
        }
    }
}
