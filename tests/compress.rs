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

/// `rlhf compress --model MODEL --out OUT OPTIONS…`: whether it succeeded, and its stderr.
fn compress(model: &Path, out: &Path, options: &[&str]) -> (bool, String) {
    let mut args = vec!["compress", "--model", model.to_str().unwrap(), "--out", out.to_str().unwrap()];
    args.extend(options);
    let (ok, _, stderr) = common::rlhf(&args, model.parent().unwrap());
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
        assert!(compress(&model, &original, &["--prune", "0"]).0);
        let (ok, stderr) = compress(&model, &pruned, &["--prune", "0.3"]);
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
    let (ok, stderr) = compress(&missing, &dir.path().join("out"), &["--prune", "1.0"]);
    assert!(!ok && stderr.contains("--prune: a fraction of each layer's weights in [0, 1), got 1"), "{stderr}");
    let (ok, stderr) = compress(&missing, &dir.path().join("out"), &["--prune", "0.5"]);
    assert!(!ok && stderr.contains("missing") && stderr.contains("config.json"), "{stderr}");
}

/// Logits of `dir`'s model (loaded as `rlhf` loads it) on fixed rows of token ids.
fn logits(dir: &Path, rows: &[Vec<i64>]) -> Tensor {
    let model = rlhf_lab::model::LanguageModel::load(dir, tch::Device::Cpu, rlhf_lab::model::Precision::Fp32).unwrap();
    let (ids, mask) = rlhf_lab::model::generate::left_pad(rows, 0, tch::Device::Cpu);
    tch::no_grad(|| model.transformer.forward_logits(&ids, Some(&mask), false)).masked_select(&mask.unsqueeze(-1).ne(0))
}

/// Logits of the float model `model` with each projection's weight replaced by what the
/// quantized checkpoint `quantized` stores, dequantized here: `q·s` (int8), `(q − 8)·s + z` (int4).
fn dequantized_logits(model: &Path, quantized: &Path, rows: &[Vec<i64>]) -> Tensor {
    let float = rlhf_lab::model::LanguageModel::load(model, tch::Device::Cpu, rlhf_lab::model::Precision::Fp32).unwrap();
    let stored = weights(quantized);
    let _no_grad = tch::no_grad_guard();
    for (module, _, projection) in float.transformer.blocks().projections() {
        let q = &stored[&format!("{module}.qweight")];
        let scale = &stored[&format!("{module}.weight_scale")];
        let weight = match stored.get(&format!("{module}.weight_zero")) {
            None => q.to_kind(Kind::Float) * scale.unsqueeze(1),
            Some(zero) => {
                let (outputs, half) = q.size2().unwrap();
                let q = q.to_kind(Kind::Int64);
                let codes = Tensor::stack(&[q.divide_scalar_mode(16, "floor"), q.remainder(16)], 2).view([outputs, 2 * half]);
                let group = 2 * half / scale.size()[0];
                let per_input = |t: &Tensor| t.tr().repeat_interleave_self_int(group, Some(1), None);
                (codes.to_kind(Kind::Float) - 8.0) * per_input(scale) + per_input(zero)
            }
        };
        let weight = match projection.layout {
            rlhf_lab::model::lora::Layout::OutIn => weight,
            rlhf_lab::model::lora::Layout::InOut => weight.tr(),
        };
        projection.weight.shallow_clone().copy_(&weight);
    }
    let (ids, mask) = rlhf_lab::model::generate::left_pad(rows, 0, tch::Device::Cpu);
    float.transformer.forward_logits(&ids, Some(&mask), false).masked_select(&mask.unsqueeze(-1).ne(0))
}

#[test]
fn quantized_checkpoints_compute_close_to_the_float_model_and_are_smaller() {
    let configs = [
        json!({"model_type": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 64, "n_positions": 64, "vocab_size": 320,
               "bos_token_id": 0, "eos_token_id": 0, "initializer_range": 0.05}),
        json!({"model_type": "qwen3", "vocab_size": 320, "hidden_size": 64, "intermediate_size": 128, "head_dim": 32,
               "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
               "rms_norm_eps": 1e-6, "tie_word_embeddings": false, "initializer_range": 0.05,
               "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}),
    ];
    let rows: Vec<Vec<i64>> = (0..4).map(|row| (0..20).map(|i| (row * 37 + i * 11) % 319 + 1).collect()).collect();
    for config in configs {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("model");
        common::hf_reference(&["make-model", &config.to_string(), model.to_str().unwrap(), "3"]);
        common::tiny_tokenizer(320).save(&model).unwrap();
        let reference = logits(&model, &rows);
        let spread = reference.std(true).double_value(&[]);
        let size = |dir: &Path| std::fs::metadata(dir.join("model.safetensors")).unwrap().len();
        // Tolerances against the float model, relative to the logits' spread: int8 (8 bits per
        // output channel) within 10 % at most and 2 % on average; int4 (16 levels per group of
        // 32 weights) within 25 % on average (a random Qwen3, whose q/k norms amplify the
        // weights' error, moves 15 % on average, as transformers computes it from the same
        // dequantized weights). Against the float model on the dequantized weights, both agree
        // to rounding: the kernels compute what the stored weights say.
        for (bits, worst, mean) in [("int8", 0.10, 0.02), ("int4", f64::INFINITY, 0.25)] {
            let out = dir.path().join(bits);
            let (ok, stderr) = compress(&model, &out, &["--quantize", bits]);
            assert!(ok, "{stderr}");
            let quantized = logits(&out, &rows);
            let error = (&quantized - &reference).abs() / spread;
            let (max, avg) = (error.max().double_value(&[]), error.mean(Kind::Float).double_value(&[]));
            assert!(max < worst && avg < mean, "{} {bits}: error max {max}, mean {avg} of the logits' spread", config["model_type"]);
            assert!(max > 0.0, "{bits}: the quantized model must compute from its own weights");
            let exact = (&quantized - dequantized_logits(&model, &out, &rows)).abs().max().double_value(&[]) / spread;
            assert!(exact < 1e-4, "{} {bits}: {exact} of the spread from the dequantized float model", config["model_type"]);
            assert!(size(&out) < size(&model), "{bits}: {} bytes against {}", size(&out), size(&model));
            let saved: Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
            assert_eq!(saved["quantization_config"]["quant_method"], "rlhf-lab");
            let record: Value = serde_json::from_str(&std::fs::read_to_string(out.join("compression.json")).unwrap()).unwrap();
            assert_eq!(record["quantize"], bits);
            // What loads it: generation, and refusals named.
            let (ok, stdout, stderr) =
                common::rlhf(&["generate", "--model", out.to_str().unwrap(), "--prompt", "a b", "--max-new-tokens", "4"], dir.path());
            assert!(ok && !stdout.is_empty(), "{stderr}");
            let (ok, _, stderr) = common::rlhf(
                &["generate", "--model", out.to_str().unwrap(), "--prompt", "a", "--dtype", "bf16", "--device", "cpu"],
                dir.path(),
            );
            assert!(!ok && stderr.contains("quantized weights run on the CPU in fp32"), "{stderr}");
            let (ok, stderr) = compress(&out, &dir.path().join("again"), &["--quantize", "int8"]);
            assert!(!ok && stderr.contains("already quantized"), "{stderr}");
        }
        // Pruned then quantized: zeros stay zeros in int8 (symmetric scales).
        let both = dir.path().join("both");
        let (ok, stderr) = compress(&model, &both, &["--quantize", "int8", "--prune", "0.5"]);
        assert!(ok, "{stderr}");
        let stored: HashMap<String, Tensor> = weights(&both);
        let qweights: Vec<&Tensor> = stored.iter().filter(|(name, _)| name.ends_with(".qweight")).map(|(_, t)| t).collect();
        assert_eq!(qweights.len(), if config["model_type"] == "gpt2" { 8 } else { 14 });
        for weight in qweights {
            let zeros = weight.eq(0).sum(Kind::Int64).int64_value(&[]) as f64 / weight.numel() as f64;
            assert!(zeros >= 0.5, "int8 codes of a half-pruned layer: {zeros} zeros");
        }
    }
}

#[test]
fn int4_needs_groups_that_divide_the_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    let config = json!({"model_type": "gpt2", "n_layer": 1, "n_head": 2, "n_embd": 48, "n_positions": 32, "vocab_size": 320,
                        "bos_token_id": 0, "eos_token_id": 0});
    common::hf_reference(&["make-model", &config.to_string(), model.to_str().unwrap(), "1"]);
    common::tiny_tokenizer(320).save(&model).unwrap();
    let (ok, stderr) = compress(&model, &dir.path().join("out"), &["--quantize", "int4", "--group-size", "32"]);
    assert!(!ok && stderr.contains("48 inputs do not split into groups of 32"), "{stderr}");
}
