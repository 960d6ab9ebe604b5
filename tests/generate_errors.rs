//! `rlhf generate` on bad input: a checkpoint missing a file, a tokenizer that does not fit the
//! model, an unsupported architecture, a prompt longer than the context, a broken prompts file.
//! Each is a clear error naming the thing, a non-zero exit, and no panic.

mod common;

use std::path::Path;

use rlhf_lab::model::{LanguageModel, Precision};
use tch::Device;

fn save_tiny_checkpoint(dir: &Path, vocab_size: i64) {
    let config = common::tiny_config(vocab_size, 16, 16, 1, 2);
    tch::manual_seed(0);
    LanguageModel::fresh(&config, common::tiny_tokenizer(300), Device::Cpu, Precision::Fp32).save(dir).unwrap();
}

fn generate(work: &Path, extra: &[&str]) -> (bool, String, String) {
    let mut args = vec!["generate", "--model", "ckpt", "--device", "cpu"];
    args.extend_from_slice(extra);
    common::rlhf(&args, work)
}

fn assert_error(result: (bool, String, String), needles: &[&str]) {
    let (ok, stdout, stderr) = result;
    assert!(!ok, "succeeded: {stdout}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stdout.is_empty(), "errors belong on stderr, stdout had: {stdout}");
    for needle in needles {
        assert!(stderr.contains(needle), "`{needle}` missing from:\n{stderr}");
    }
}

#[test]
fn a_working_checkpoint_generates_reproducibly() {
    let work = tempfile::tempdir().unwrap();
    save_tiny_checkpoint(&work.path().join("ckpt"), 300);
    let (ok, first, stderr) = generate(work.path(), &["--prompt", "the battery", "--max-new-tokens", "5", "--seed", "3"]);
    assert!(ok, "{stderr}");
    let (_, second, _) = generate(work.path(), &["--prompt", "the battery", "--max-new-tokens", "5", "--seed", "3"]);
    assert_eq!(first, second);
    assert_eq!(first.lines().count(), 1);
}

#[test]
fn each_missing_checkpoint_file_is_named() {
    for file in ["model.safetensors", "config.json", "tokenizer.json"] {
        let work = tempfile::tempdir().unwrap();
        save_tiny_checkpoint(&work.path().join("ckpt"), 300);
        std::fs::remove_file(work.path().join("ckpt").join(file)).unwrap();
        assert_error(generate(work.path(), &["--prompt", "hi"]), &["loading model from `ckpt`", &format!("has no `{file}`")]);
    }
}

#[test]
fn a_tokenizer_larger_than_the_vocabulary_is_rejected() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("ckpt");
    save_tiny_checkpoint(&dir, 300);
    // Swap in the weights of a model with a smaller vocabulary, as a mismatched pair would be.
    let small = work.path().join("small");
    save_tiny_checkpoint(&small, 100);
    std::fs::copy(small.join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    std::fs::copy(small.join("config.json"), dir.join("config.json")).unwrap();
    assert_error(generate(work.path(), &["--prompt", "hi"]), &["tokenizer has", "model's vocabulary has only 100"]);
}

#[test]
fn weights_that_do_not_match_the_config_are_named() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("ckpt");
    save_tiny_checkpoint(&dir, 300);
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap().replace("\"n_embd\": 16", "\"n_embd\": 32");
    std::fs::write(dir.join("config.json"), config).unwrap();
    assert_error(generate(work.path(), &["--prompt", "hi"]), &["model.safetensors", "has shape", "the model expects"]);
}

#[test]
fn unsupported_architectures_are_refused() {
    let cases = [
        ("\"activation_function\": \"gelu_new\"", "\"activation_function\": \"relu\"", "activation_function is `relu`"),
        ("\"add_cross_attention\": false", "\"add_cross_attention\": true", "add_cross_attention = true"),
        ("\"model_type\": \"gpt2\"", "\"model_type\": \"mistral\"", "model_type is `mistral`; supported: gpt2, llama, qwen2, qwen3"),
        ("\"tie_word_embeddings\": true", "\"tie_word_embeddings\": false", "must be tied"),
    ];
    for (from, to, message) in cases {
        let work = tempfile::tempdir().unwrap();
        let dir = work.path().join("ckpt");
        save_tiny_checkpoint(&dir, 300);
        let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
        assert!(config.contains(from), "{config}");
        std::fs::write(dir.join("config.json"), config.replace(from, to)).unwrap();
        assert_error(generate(work.path(), &["--prompt", "hi"]), &["config.json", "unsupported model", message]);
    }
}

/// A Llama-family checkpoint whose `config.json` asks for what is not implemented.
#[test]
fn unsupported_llama_settings_are_refused() {
    let config = serde_json::json!({"model_type": "llama", "vocab_size": 300, "hidden_size": 16, "intermediate_size": 32,
        "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 16, "bos_token_id": 0, "eos_token_id": 0});
    let cases = [
        (
            "rope_scaling",
            serde_json::json!({"rope_type": "yarn", "factor": 4.0}),
            "rope_scaling of type `yarn` is not supported (supported: none, `default`, `llama3`)",
        ),
        (
            "rope_scaling",
            serde_json::json!({"rope_type": "llama3", "factor": 8.0}),
            "rope_scaling of type llama3 needs a number `low_freq_factor`",
        ),
        ("hidden_act", serde_json::json!("gelu"), "hidden_act is `gelu`; only `silu` (SwiGLU) is implemented"),
        ("num_key_value_heads", serde_json::json!(3), "must be a positive multiple of num_key_value_heads = 3"),
        ("use_sliding_window", serde_json::json!(true), "sliding-window attention"),
    ];
    for (key, value, message) in cases {
        let work = tempfile::tempdir().unwrap();
        let dir = work.path().join("ckpt");
        tch::manual_seed(0);
        let model_config = rlhf_lab::model::ModelConfig::from_hf(&config).unwrap();
        LanguageModel::fresh(model_config, common::tiny_tokenizer(300), Device::Cpu, Precision::Fp32).save(&dir).unwrap();
        let mut written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
        written[key] = value;
        std::fs::write(dir.join("config.json"), written.to_string()).unwrap();
        assert_error(generate(work.path(), &["--prompt", "hi"]), &["config.json", "unsupported model", message]);
    }
}

#[test]
fn a_prompt_longer_than_the_context_is_an_error() {
    let work = tempfile::tempdir().unwrap();
    save_tiny_checkpoint(&work.path().join("ckpt"), 300);
    let long = "price ".repeat(40);
    assert_error(
        generate(work.path(), &["--prompt", &long, "--max-new-tokens", "4"]),
        &["prompt 1 of 1", "max_new_tokens = 4", "context of 16 positions"],
    );
}

#[test]
fn a_broken_prompts_file_names_the_line() {
    let work = tempfile::tempdir().unwrap();
    save_tiny_checkpoint(&work.path().join("ckpt"), 300);
    std::fs::write(work.path().join("prompts.jsonl"), "{\"prompt\": \"a\"}\n{\"promt\": \"b\"}\n").unwrap();
    assert_error(generate(work.path(), &["--prompts", "prompts.jsonl"]), &["prompts.jsonl:2: missing field `prompt`"]);
    assert_error(generate(work.path(), &["--prompts", "nope.jsonl"]), &["cannot read `nope.jsonl`"]);
}

/// The files beside the weights: tokenizer_config.json, generation_config.json and a shard index,
/// each broken as a hand edit or a partial copy would break it, is named with what is wrong.
#[test]
fn broken_tokenizer_generation_and_index_files_are_named() {
    let edit = |file: &str, contents: &str, needles: &[&str]| {
        let work = tempfile::tempdir().unwrap();
        let dir = work.path().join("ckpt");
        save_tiny_checkpoint(&dir, 300);
        std::fs::write(dir.join(file), contents).unwrap();
        assert_error(generate(work.path(), &["--prompt", "hi"]), needles);
    };
    edit(
        "tokenizer_config.json",
        "{\"eos_token\": \"<|im_end|>\"}",
        &["tokenizer_config.json", "`eos_token` is `<|im_end|>`", "does not hold"],
    );
    edit("tokenizer_config.json", "{\"eos_token\": 7}", &["tokenizer_config.json", "`eos_token` must be a token's text"]);
    edit("tokenizer_config.json", "{\"eos_token\": ", &["tokenizer_config.json", "not valid JSON"]);
    edit(
        "tokenizer_config.json",
        "{\"chat_template\": \"{% for m in messages %}\"}",
        &["tokenizer_config.json", "chat_template", "does not parse"],
    );
    edit("chat_template.jinja", "{{ messages[0]['content'] ", &["chat_template.jinja", "does not parse"]);
    edit(
        "generation_config.json",
        "{\"eos_token_id\": [0, \"x\"]}",
        &["generation_config.json", "`eos_token_id` must be an integer or a list of integers"],
    );
    edit(
        "generation_config.json",
        "{\"eos_token_id\": [0, 5000]}",
        &["generation_config.json", "`eos_token_id` names an id outside the model's vocabulary"],
    );

    // A sharded checkpoint whose index lists a shard that is not there, or one outside the directory.
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("ckpt");
    save_tiny_checkpoint(&dir, 300);
    std::fs::rename(dir.join("model.safetensors"), dir.join("model-00001-of-00001.safetensors")).unwrap();
    let index = |shard: &str| {
        format!("{{\"metadata\": {{}}, \"weight_map\": {{\"transformer.wte.weight\": \"{shard}\", \"transformer.wpe.weight\": \"model-00002-of-00002.safetensors\"}}}}")
    };
    std::fs::write(dir.join("model.safetensors.index.json"), index("model-00001-of-00001.safetensors")).unwrap();
    assert_error(
        generate(work.path(), &["--prompt", "hi"]),
        &["model-00002-of-00002.safetensors", "a shard that `model.safetensors.index.json` lists is missing"],
    );
    std::fs::write(dir.join("model.safetensors.index.json"), index("../elsewhere.safetensors")).unwrap();
    assert_error(
        generate(work.path(), &["--prompt", "hi"]),
        &["model.safetensors.index.json", "names a shard outside the checkpoint directory"],
    );
}
