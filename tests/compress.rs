//! `rlhf compress --prune`: on random GPT-2 and Qwen3 checkpoints made by `transformers`, each
//! linear layer loses exactly the asked share of its weights, the smallest in magnitude, and
//! nothing else changes; the result loads for generation; bad arguments are named.

mod common;

use std::collections::HashMap;
use std::path::Path;

use rlhf_lab::model::compress::is_linear_weight;
use serde_json::{json, Value};
use tch::{Kind, Tensor};

fn weights(dir: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(dir.join("model.safetensors")).unwrap().into_iter().collect()
}

fn compress(model: &Path, out: &Path, prune: &str) -> (bool, String) {
    let (ok, _, stderr) = common::rlhf(
        &["compress", "--model", model.to_str().unwrap(), "--out", out.to_str().unwrap(), "--prune", prune],
        model.parent().unwrap(),
    );
    (ok, stderr)
}

#[test]
fn pruning_zeroes_the_asked_share_of_each_linear_layer_smallest_first() {
    let configs = [
        json!({"model_type": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 32, "n_positions": 64, "vocab_size": 320,
               "bos_token_id": 0, "eos_token_id": 0, "initializer_range": 0.1}),
        json!({"model_type": "qwen3", "vocab_size": 320, "hidden_size": 64, "intermediate_size": 96, "head_dim": 24,
               "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
               "rms_norm_eps": 1e-6, "tie_word_embeddings": false, "initializer_range": 0.1,
               "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}),
    ];
    for config in configs {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model");
        common::hf_reference(&["make-model", &config.to_string(), model.to_str().unwrap(), "5"]);
        common::tiny_tokenizer(320).save(&model).unwrap();
        // Pruning nothing: the model as we save it (our tensor names), the reference below.
        let (original, pruned) = (dir.path().join("original"), dir.path().join("pruned"));
        assert!(compress(&model, &original, "0").0);
        let (ok, stderr) = compress(&model, &pruned, "0.3");
        assert!(ok, "{stderr}");
        let (before, after) = (weights(&original), weights(&pruned));
        assert_eq!(before.len(), after.len());
        let record: Value = serde_json::from_str(&std::fs::read_to_string(pruned.join("compression.json")).unwrap()).unwrap();
        let mut linear = 0;
        for (name, weight) in &after {
            let original = &before[name];
            if !is_linear_weight(name, weight) {
                assert!(weight.equal(original), "{name} must not change");
                continue;
            }
            linear += 1;
            let total = weight.numel() as i64;
            let zeros = weight.eq(0.0).sum(Kind::Int64).int64_value(&[]);
            assert_eq!(zeros, (0.3 * total as f64).round() as i64, "{}: {name}", config["model_type"]);
            assert_eq!(record["layers"][name]["zeros"], zeros);
            let kept = weight.ne(0.0);
            assert!(weight.masked_select(&kept).equal(&original.masked_select(&kept)), "{name}: kept weights unchanged");
            let largest_pruned = original.masked_select(&kept.logical_not()).abs().max().double_value(&[]);
            let smallest_kept = original.masked_select(&kept).abs().min().double_value(&[]);
            assert!(largest_pruned <= smallest_kept, "{name}: pruned {largest_pruned} > kept {smallest_kept}");
        }
        // Every block's attention and MLP projections: GPT-2 has 4 per block, Qwen3 7.
        let per_block = if config["model_type"] == "gpt2" { 4 } else { 7 };
        assert_eq!(linear, 2 * per_block, "{}", config["model_type"]);
        assert_eq!(record["layers"].as_object().unwrap().len(), linear);
        // The pruned checkpoint is a plain one: generation reads it.
        let (ok, stdout, stderr) =
            common::rlhf(&["generate", "--model", pruned.to_str().unwrap(), "--prompt", "a b", "--max-new-tokens", "4"], dir.path());
        assert!(ok && !stdout.is_empty(), "{stderr}");
    }
}

#[test]
fn bad_compress_arguments_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let (ok, stderr) = compress(&missing, &dir.path().join("out"), "1.0");
    assert!(!ok && stderr.contains("--prune: a fraction of each layer's weights in [0, 1), got 1"), "{stderr}");
    let (ok, stderr) = compress(&missing, &dir.path().join("out"), "0.5");
    assert!(!ok && stderr.contains("missing") && stderr.contains("config.json"), "{stderr}");
}
