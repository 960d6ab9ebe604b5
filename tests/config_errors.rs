//! `rlhf validate` on broken experiment files: every error names the file, the line and column,
//! the key and what was expected, exits non-zero, and never panics.

mod common;

use std::path::Path;

const VALID: &str = r#"name = "tiny"
seed = 3

[task]
kind = "synthetic-reviews"

[models.base]
n_layer = 2
n_head = 2
n_embd = 32
n_ctx = 128

[[stages]]
name = "pretrain"
kind = "lm"
model = "base"
steps = 10

[[stages]]
name = "sft"
kind = "sft"
init = "pretrain"
lr = 1e-4
"#;

/// Writes `text` as an experiment and validates it; returns (success, stdout, stderr).
fn validate(text: &str, extra: &[&str]) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("exp.toml");
    std::fs::write(&path, text).unwrap();
    let mut args = vec!["validate", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    common::rlhf(&args, dir.path())
}

fn assert_error(text: &str, extra: &[&str], needles: &[&str]) {
    let (ok, _, stderr) = validate(text, extra);
    assert!(!ok, "accepted:\n{text}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "`{needle}` missing from:\n{stderr}");
    }
}

#[test]
fn a_valid_file_passes_and_its_resolved_form_validates_to_itself() {
    let (ok, stdout, stderr) = validate(VALID, &[]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("pretrain (lm) → sft (sft)"), "{stdout}");
    let (ok, resolved, stderr) = validate(VALID, &["--print"]);
    assert!(ok, "{stderr}");
    // defaults are filled in
    assert!(resolved.contains("batch_size = 16") && resolved.contains("schedule = \"cosine\""), "{resolved}");
    let (ok, again, _) = validate(&resolved, &["--print"]);
    assert!(ok);
    assert_eq!(resolved, again, "the resolved config is not a fixed point");
}

#[test]
fn syntax_errors_name_file_line_and_column() {
    let broken = VALID.replace("seed = 3", "seed = = 3");
    assert_error(&broken, &[], &["exp.toml", "line 2, column"]);
}

#[test]
fn unknown_keys_are_rejected_at_their_line() {
    assert_error(&VALID.replace("seed = 3", "seed = 3\nsede = 4"), &[], &["exp.toml", "line 3", "unknown field `sede`"]);
    let in_stage = VALID.replace("lr = 1e-4", "lr = 1e-4\nlearning_rate = 1e-4");
    assert_error(&in_stage, &[], &["exp.toml:24:1", "stage `sft` (sft)", "unknown field `learning_rate`", "expected one of"]);
    let in_model = VALID.replace("n_ctx = 128", "n_ctx = 128\nn_kv = 2");
    assert_error(&in_model, &[], &["unknown field `n_kv`", "line 12"]);
}

#[test]
fn wrong_types_and_impossible_values_name_the_key() {
    assert_error(&VALID.replace("steps = 10", "steps = \"ten\""), &[], &["exp.toml:17:1", "invalid type", "steps"]);
    assert_error(&VALID.replace("lr = 1e-4", "lr = -1.0"), &[], &["exp.toml:23:1", "`lr`: expected a value > 0, got -1"]);
    assert_error(&VALID.replace("n_embd = 32", "n_embd = 33"), &[], &["[models.base]", "multiple of `n_head`"]);
    assert_error(&VALID.replace("kind = \"synthetic-reviews\"", "kind = \"reviews\""), &[], &["unknown variant `reviews`"]);
    let family_key = VALID.replace("n_ctx = 128", "n_ctx = 128\nn_kv_head = 1");
    assert_error(&family_key, &[], &["[models.base]", "`n_kv_head` is a key of the Llama family", "not of GPT-2"]);
    let llama = VALID.replace("n_ctx = 128", "n_ctx = 128\narch = \"llama\"\nn_kv_head = 3");
    assert_error(&llama, &[], &["[models.base]", "`n_kv_head` (3) must divide `n_head` (2)"]);
    assert_error(&VALID.replace("n_ctx = 128", "n_ctx = 128\narch = \"mistral\""), &[], &["unknown variant `mistral`", "llama"]);
    let reward = format!("{VALID}\n[[stages]]\nname = \"rm\"\nkind = \"reward\"\ninit = \"sft\"\noff_prompt_pairs = 1.5\n");
    assert_error(&reward, &[], &["`off_prompt_pairs`: expected a probability in [0, 1], got 1.5"]);
    let ensemble = reward.replace("off_prompt_pairs = 1.5", "ensemble = 0");
    assert_error(&ensemble, &[], &["`ensemble`: expected a number of reward heads ≥ 1, got 0"]);
    let half = reward.replace("off_prompt_pairs = 1.5", "ensemble = 3\ndtype = \"fp16\"");
    assert_error(&half, &[], &["`ensemble`: expected 1 under dtype = \"fp16\""]);
}

#[test]
fn the_arithmetic_tasks_keys_are_checked() {
    let arithmetic = VALID.replace("kind = \"synthetic-reviews\"", "kind = \"synthetic-arithmetic\"");
    let (ok, resolved, stderr) = validate(&arithmetic, &["--print"]);
    assert!(ok, "{stderr}");
    assert!(resolved.contains("kind = \"synthetic-arithmetic\""), "{resolved}");
    let with = |keys: &str| arithmetic.replace("kind = \"synthetic-arithmetic\"", &format!("kind = \"synthetic-arithmetic\"\n{keys}"));
    let (ok, resolved, stderr) = validate(&with("terms = 3\nmax_operand = 20\nformat_reward = 0.5"), &["--print"]);
    assert!(ok, "{stderr}");
    assert!(resolved.contains("max_operand = 20\nterms = 3\nformat_reward = 0.5"), "{resolved}");
    assert_error(&with("terms = 1"), &[], &["exp.toml:4:1", "[task]: `terms` must be in [2, 10]", "got 1"]);
    assert_error(&with("max_operand = 0"), &[], &["[task]: `max_operand` must be in [1, 1000000000], got 0"]);
    assert_error(&with("format_reward = -0.5"), &[], &["[task]: `format_reward` must be a finite value ≥ 0, got -0.5"]);
    assert_error(&with("chat = true"), &[], &["[task]: `chat` is for the synthetic-reviews task"]);
    // 2000 demonstrations and 200 prompts hold out 110 problems: more than half of the 7 with operands 0 and 1.
    assert_error(&with("max_operand = 1"), &[], &["`max_operand` = 1 allows 7 different two-operand problems, too few for 110 held-out"]);
    assert_error(&arithmetic, &["--set", "task.terms=0"], &["after applying --set task.terms=0", "`terms` must be in [2, 10]", "got 0"]);
}

#[test]
fn stage_references_must_exist_and_come_earlier() {
    let later = VALID.replace("model = \"base\"", "init = \"sft\"");
    assert_error(&later, &[], &["exp.toml:16:1", "stage `pretrain`: `init`: stage `sft` comes later"]);
    let missing = VALID.replace("init = \"pretrain\"", "init = \"pretrian\"");
    assert_error(&missing, &[], &["exp.toml:22:1", "`pretrian` is not an earlier stage", "stage `pretrain`", "model `base`"]);
    let itself = VALID.replace("init = \"pretrain\"", "init = \"sft\"");
    assert_error(&itself, &[], &["cannot take its own output"]);
    let both = VALID.replace("init = \"pretrain\"", "init = \"pretrain\"\nmodel = \"base\"");
    assert_error(&both, &[], &["either `model` or `init`, not both"]);
    let duplicate = VALID.replace("name = \"sft\"", "name = \"pretrain\"");
    assert_error(&duplicate, &[], &["a second stage named `pretrain`"]);
    let kind = VALID.replace("kind = \"sft\"", "kind = \"kto\"");
    assert_error(&kind, &[], &["unknown kind `kto`, expected one of lm, sft, reward, ppo, dpo, grpo, rloo, best_of_n"]);
    assert_error("name = \"x\"\n[task]\nkind = \"synthetic-reviews\"\n", &[], &["no `[[stages]]`"]);
}

#[test]
fn overrides_are_type_checked_and_address_stages_by_name() {
    let (ok, resolved, stderr) = validate(VALID, &["--print", "--set", "stages.sft.lr=0.002", "--set", "models.base.n_layer=3"]);
    assert!(ok, "{stderr}");
    assert!(resolved.contains("lr = 0.002") && resolved.contains("n_layer = 3"), "{resolved}");
    assert_error(VALID, &["--set", "stages.sft.lr=fast"], &["--set `stages.sft.lr=fast`", "type float", "type string"]);
    assert_error(VALID, &["--set", "stages.rm.lr=1"], &["no stage named `rm` (stages: pretrain, sft)"]);
    assert_error(VALID, &["--set", "stages.sft.lrr=1"], &["after applying --set stages.sft.lrr=1", "unknown field `lrr`"]);
    assert_error(VALID, &["--set", "stages.sft.steps=0"], &["`steps`: expected a value > 0"]);
}

#[test]
fn a_missing_file_and_missing_jsonl_data_are_named() {
    let (ok, _, stderr) = common::rlhf(&["validate", "nowhere.toml"], Path::new("."));
    assert!(!ok && stderr.contains("cannot read experiment file `nowhere.toml`"), "{stderr}");
    let jsonl = VALID.replace("kind = \"synthetic-reviews\"", "kind = \"jsonl\"\ncorpus = \"missing.jsonl\"");
    assert_error(&jsonl, &[], &["[task]", "`corpus`: no file `missing.jsonl`"]);
}

#[test]
fn sequences_longer_than_a_models_context_are_rejected_before_training() {
    // Every model of the tiny experiment has a context of 64 tokens; its prompts take ~15.
    let (ok, _, stderr) = validate(common::TINY_RLHF_EXPERIMENT, &[]);
    assert!(ok, "{stderr}");
    assert_error(
        common::TINY_RLHF_EXPERIMENT,
        &["--set", "stages.ppo.max_new_tokens=60"],
        &[
            "stage `ppo`: `max_new_tokens`: the longest prompt (",
            "tokens) + max_new_tokens (60) = ",
            "exceed the context of the policy model `policy` = \"sft\" (64 tokens)",
        ],
    );
    assert_error(
        common::TINY_RLHF_EXPERIMENT,
        &["--set", "stages.sft.seq_len=100"],
        &["stage `sft`: `seq_len`: 100 tokens exceed the context of `model` = \"base\" (64 tokens)"],
    );

    // `rlhf run` refuses it too, before any stage trains.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("exp.toml"), common::TINY_RLHF_EXPERIMENT).unwrap();
    let (ok, _, stderr) = common::rlhf(&["run", "exp.toml", "--out", "out", "--set", "stages.ppo.max_new_tokens=60"], dir.path());
    assert!(!ok && !stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("exceed the context of the policy model"), "{stderr}");
    assert!(!stderr.contains("stage starts"), "a stage started training:\n{stderr}");
    // Redirected, the log is plain text: no colour codes.
    assert!(stderr.contains("INFO") && !stderr.contains('\u{1b}'), "escape codes in a redirected log:\n{stderr:?}");
}

#[test]
fn the_printed_config_includes_the_sweep_table() {
    let text = format!("{VALID}\n[sweep]\nseeds = [1, 2]\n[sweep.parameters]\n\"stages.sft.lr\" = [1e-4, 3e-4]\n");
    let (ok, resolved, stderr) = validate(&text, &["--print"]);
    assert!(ok, "{stderr}");
    assert!(resolved.contains("[sweep]\nmethod = \"grid\"\nseeds = [1, 2]"), "{resolved}");
    assert!(resolved.contains("[sweep.parameters]\n\"stages.sft.lr\" = [0.0001, 0.0003]"), "{resolved}");
    let (ok, again, _) = validate(&resolved, &["--print"]);
    assert!(ok);
    assert_eq!(resolved, again, "the resolved config with its sweep is not a fixed point");
}

/// `VALID` followed by a reward stage and a PPO stage; `extra` lines end the PPO stage.
fn with_ppo_stage(extra: &str) -> String {
    let ppo = "[[stages]]\nname = \"ppo\"\nkind = \"ppo\"\npolicy = \"sft\"\nreference = \"sft\"\nreward = \"rm\"\nvalue = \"rm\"\n";
    format!("{VALID}\n[[stages]]\nname = \"rm\"\nkind = \"reward\"\ninit = \"sft\"\n\n{ppo}{extra}")
}

/// Every check of a PPO stage's settings, each naming the stage, the key and what it expected.
#[test]
fn ppo_settings_are_checked_before_anything_runs() {
    let (ok, stdout, stderr) = validate(&with_ppo_stage(""), &[]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("→ rm (reward) → ppo (ppo)"), "{stdout}");
    let without_value = with_ppo_stage("").replace("value = \"rm\"\n", "");
    let other_reward = with_ppo_stage("").replace("reward = \"rm\"\n", "reward = \"critic\"\n");
    let cases: Vec<(String, &str)> = vec![
        (with_ppo_stage("iterations = 0"), "`iterations`: expected a value > 0, got 0"),
        (with_ppo_stage("temperature = 0.0"), "`temperature`: expected a value > 0, got 0"),
        (with_ppo_stage("policy_lr = inf"), "`policy_lr`: expected a value > 0, got inf"),
        (with_ppo_stage("cliprange = -0.2"), "`cliprange`: expected a value > 0, got -0.2"),
        (with_ppo_stage("adaptive_kl = true\nkl_target = 0.0"), "`kl_target`: expected a value > 0, got 0"),
        (with_ppo_stage("kl_coef = -0.1"), "`kl_coef`: expected a value ≥ 0, got -0.1"),
        (with_ppo_stage("missing_eos_penalty = -1.0"), "`missing_eos_penalty`: expected a value ≥ 0, got -1"),
        (with_ppo_stage("entropy_coef = nan"), "`entropy_coef`: expected a value ≥ 0, got NaN"),
        (with_ppo_stage("gamma = 1.5"), "`gamma`: expected a value in [0, 1], got 1.5"),
        (with_ppo_stage("lam = -0.1"), "`lam`: expected a value in [0, 1], got -0.1"),
        (without_value, "`value`: expected the value model's starting checkpoint (or shared_backbone = true)"),
        (with_ppo_stage("shared_backbone = true"), "`value`: expected no value model with shared_backbone = true"),
        (with_ppo_stage("rollout_batch = 64\nminibatch_size = 24"), "`minibatch_size`: expected a divisor of rollout_batch = 64, got 24"),
        (with_ppo_stage("minibatch_size = 16\ngrad_accum = 3"), "`grad_accum`: expected a divisor of minibatch_size = 16, got 3"),
        (with_ppo_stage("score_clip = 0.0"), "`score_clip`: expected a value > 0, got 0"),
        (with_ppo_stage("target_approx_kl = -1.0"), "`target_approx_kl`: expected a value > 0, got -1"),
        (with_ppo_stage("max_new_tokens = 200"), "exceed the context of the policy model"),
        (with_ppo_stage("reward_normalization = \"sometimes\""), "unknown variant `sometimes`"),
        (other_reward, "`reward`: `critic` is not an earlier stage"),
    ];
    for (text, expected) in &cases {
        let (ok, _, stderr) = validate(text, &[]);
        assert!(!ok, "accepted (expected `{expected}`):\n{text}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(stderr.contains("exp.toml") && stderr.contains(expected), "expected `{expected}` in:\n{stderr}");
    }
}

#[test]
fn lora_settings_are_checked_by_key_and_need_a_trained_base() {
    let with_lora = |table: &str| VALID.replace("lr = 1e-4", &format!("lr = 1e-4\nlora = {table}"));
    let (ok, _, stderr) = validate(&with_lora("{ r = 8, targets = [\"q\", \"v\"], merge = true }"), &[]);
    assert!(ok, "{stderr}");
    assert_error(&with_lora("{ r = 0 }"), &[], &["stage `sft`", "lora.r", "at least 1"]);
    assert_error(&with_lora("{ r = 4, dropout = 1.5 }"), &[], &["lora.dropout"]);
    assert_error(&with_lora("{ r = 4, targets = [\"query\"] }"), &[], &["query", "gate"]);
    assert_error(&with_lora("{ r = 4, rank = 8 }"), &[], &["rank"]);
    assert_error(&with_lora("{ r = 4 }"), &["--set", "stages.sft.lora.alpha=-2.0"], &["lora.alpha"]);
    // A stage that trains nothing has no `lora`.
    let best_of_n =
        format!("{VALID}\n[[stages]]\nname = \"bon\"\nkind = \"best_of_n\"\npolicy = \"sft\"\nreward = \"gold\"\nlora = {{ r = 4 }}\n");
    assert_error(&best_of_n, &[], &["lora"]);
    // Adapters on a fresh, random model are refused when the stage starts, naming the key.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("exp.toml");
    std::fs::write(&path, VALID.replace("steps = 10", "steps = 10\nlora = { r = 4 }")).unwrap();
    let (ok, _, stderr) = common::rlhf(&["run", path.to_str().unwrap(), "--out", "runs"], dir.path());
    assert!(!ok && !stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("`lora`") && stderr.contains("fresh model"), "{stderr}");
}

#[test]
fn alert_thresholds_and_the_tensorboard_switch_are_checked() {
    assert_error(&format!("{VALID}\n[alerts]\npatience = 0\n"), &[], &["exp.toml", "[alerts]: `patience`: expected ≥ 1"]);
    assert_error(&format!("{VALID}\n[alerts]\nclip_fraction_max = 1.5\n"), &[], &["`clip_fraction_max`: expected a value in (0, 1]"]);
    assert_error(&format!("{VALID}\n[alerts]\nkl_limit = 3\n"), &[], &["unknown field `kl_limit`"]);
    assert_error(&VALID.replace("seed = 3", "seed = 3\ntensorboard = \"yes\""), &[], &["tensorboard", "bool"]);
    let (ok, resolved, stderr) = validate(&format!("{VALID}\n[alerts]\nkl_max = 4.0\n"), &["--print"]);
    assert!(ok, "{stderr}");
    assert!(
        resolved.contains("tensorboard = true") && resolved.contains("kl_max = 4.0") && resolved.contains("patience = 3"),
        "{resolved}"
    );
}
