//! Parity with Hugging Face `transformers` (the reference implementation of GPT-2): logits on
//! padded and unpadded batches, greedy generation (the library and `rlhf generate`), and
//! checkpoints loaded both ways.

mod common;

use std::path::Path;

use rlhf_lab::model::generate::{generate, left_pad, GenerateOptions, Sampling};
use rlhf_lab::model::{Gpt2Config, LanguageModel, Precision};
use serde_json::json;
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-4;

/// Random GPT-2 shapes: depth, heads, widths (n_inner included) and context all vary.
fn configs() -> Vec<serde_json::Value> {
    let base = |n_layer: i64, n_head: i64, n_embd: i64, n_positions: i64, vocab_size: i64| {
        json!({"n_layer": n_layer, "n_head": n_head, "n_embd": n_embd, "n_positions": n_positions,
               "vocab_size": vocab_size, "bos_token_id": 0, "eos_token_id": 0, "initializer_range": 0.1})
    };
    let mut with_inner = base(3, 4, 64, 96, 400);
    with_inner["n_inner"] = json!(100);
    vec![base(2, 2, 32, 64, 320), with_inner, base(1, 1, 16, 48, 300)]
}

/// Makes a random model with transformers, plus our tokenizer, in `dir`.
fn hf_model(dir: &Path, config: &serde_json::Value, seed: u64) -> LanguageModel {
    common::hf_reference(&["make-model", &config.to_string(), dir.to_str().unwrap(), &seed.to_string()]);
    common::tiny_tokenizer(config["vocab_size"].as_u64().unwrap() as usize).save(dir).unwrap();
    LanguageModel::load(dir, Device::Cpu, Precision::Fp32).unwrap()
}

fn random_rows(lengths: &[usize], vocab: i64, seed: i64) -> Vec<Vec<i64>> {
    tch::manual_seed(seed);
    lengths.iter().map(|&n| Vec::<i64>::try_from(Tensor::randint_low(1, vocab, [n as i64], (Kind::Int64, Device::Cpu))).unwrap()).collect()
}

fn write_inputs(path: &Path, ids: &Tensor, mask: &Tensor) {
    let inputs = json!({
        "input_ids": Vec::<Vec<i64>>::try_from(ids).unwrap(),
        "attention_mask": Vec::<Vec<i64>>::try_from(mask).unwrap(),
    });
    std::fs::write(path, inputs.to_string()).unwrap();
}

fn hf_logits(model_dir: &Path, ids: &Tensor, mask: &Tensor, work: &Path) -> Tensor {
    let inputs = work.join("inputs.json");
    let out = work.join("hf_logits.safetensors");
    write_inputs(&inputs, ids, mask);
    common::hf_reference(&["logits", model_dir.to_str().unwrap(), inputs.to_str().unwrap(), out.to_str().unwrap()]);
    Tensor::read_safetensors(&out).unwrap().into_iter().find(|(name, _)| name == "logits").unwrap().1
}

/// Largest |a − b| over the positions where `mask` is 1.
fn max_diff_on_real_tokens(a: &Tensor, b: &Tensor, mask: &Tensor) -> f64 {
    let diff = (a - b).abs().amax([-1], false) * mask.to_kind(Kind::Float);
    diff.max().double_value(&[])
}

/// Each row alone, unpadded, gives the logits `in_batch` it had in the left-padded batch.
fn assert_rows_alone_match_the_batch(model: &LanguageModel, rows: &[Vec<i64>], in_batch: &Tensor, config: &serde_json::Value) {
    let width = in_batch.size()[1];
    for (index, row) in rows.iter().enumerate() {
        let alone = tch::no_grad(|| model.transformer.forward_logits(&Tensor::from_slice(row).unsqueeze(0), None, false));
        let padded = in_batch.get(index as i64).narrow(0, width - row.len() as i64, row.len() as i64);
        let diff = (alone.squeeze_dim(0) - padded).abs().max().double_value(&[]);
        assert!(diff <= TOLERANCE, "config {config}: row {index} padded vs unpadded differ by {diff}");
    }
}

#[test]
fn logits_match_transformers_on_padded_and_unpadded_batches() {
    let work = tempfile::tempdir().unwrap();
    for (index, config) in configs().iter().enumerate() {
        let dir = work.path().join(format!("model{index}"));
        let model = hf_model(&dir, config, 10 + index as u64);
        let vocab = model.transformer.config().vocab_size();
        let rows = random_rows(&[9, 14, 3, 14], vocab, index as i64);
        let (ids, mask) = left_pad(&rows, 0, Device::Cpu);

        let ours = tch::no_grad(|| model.transformer.forward_logits(&ids, Some(&mask), false));
        let reference = hf_logits(&dir, &ids, &mask, work.path());
        let diff = max_diff_on_real_tokens(&ours, &reference, &mask);
        assert!(diff <= TOLERANCE, "config {config}: padded logits differ from transformers by {diff}");
        assert_rows_alone_match_the_batch(&model, &rows, &ours, config);
    }
}

#[test]
fn greedy_generation_matches_transformers_token_for_token() {
    const NEW_TOKENS: i64 = 24;
    let work = tempfile::tempdir().unwrap();
    let config = &configs()[1];
    let dir = work.path().join("model");
    let model = hf_model(&dir, config, 7);
    let prompts = ["the battery", "review 12: the screen is dull and the price", "great and fair"];
    let rows: Vec<Vec<i64>> = prompts.iter().map(|p| model.tokenizer.encode(p).unwrap()).collect();
    let (ids, mask) = left_pad(&rows, 0, Device::Cpu);

    let options = GenerateOptions { max_new_tokens: NEW_TOKENS, sampling: Sampling::Greedy, seed: None, use_kv_cache: true };
    let ours = generate(model.transformer.as_ref(), &rows, model.tokenizer.stop_ids(), &options).unwrap().completions();
    let without_cache =
        generate(model.transformer.as_ref(), &rows, model.tokenizer.stop_ids(), &GenerateOptions { use_kv_cache: false, ..options })
            .unwrap()
            .completions();
    assert_eq!(ours, without_cache, "the KV cache changed greedy outputs");

    let inputs = work.path().join("inputs.json");
    let out = work.path().join("greedy.json");
    write_inputs(&inputs, &ids, &mask);
    common::hf_reference(&["greedy", dir.to_str().unwrap(), inputs.to_str().unwrap(), &NEW_TOKENS.to_string(), out.to_str().unwrap()]);
    let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    for (row, (ours, theirs)) in ours.iter().zip(reference["completion_ids"].as_array().unwrap()).enumerate() {
        let theirs: Vec<i64> = theirs.as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).take_while(|&id| id != 0).collect();
        assert_eq!(ours, &theirs, "row {row}: greedy tokens differ from transformers");
        assert!(ours.len() >= 20, "row {row}: only {} tokens compared (stopped early at end-of-text)", ours.len());
    }

    // `rlhf generate` gives the same tokens from the prompts' text, one JSON line per prompt in
    // order, in batches of two (so rows are padded differently than above), with or without the
    // cache; its text is the decoded tokens.
    let file = work.path().join("prompts.jsonl");
    std::fs::write(&file, prompts.iter().map(|p| format!("{}\n", json!({"prompt": p}))).collect::<String>()).unwrap();
    for cache in [None, Some("--no-kv-cache")] {
        let mut args = vec!["generate", "--model", dir.to_str().unwrap(), "--prompts", file.to_str().unwrap(), "--greedy", "--json"];
        args.extend(["--max-new-tokens", "24", "--batch-size", "2", "--device", "cpu"]);
        args.extend(cache);
        let (ok, stdout, stderr) = common::rlhf(&args, work.path());
        assert!(ok, "{stderr}");
        let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), prompts.len(), "{stdout}");
        for ((line, prompt), expected) in lines.iter().zip(prompts).zip(&ours) {
            assert_eq!(line["prompt"], prompt);
            let ids: Vec<i64> = line["completion_ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
            assert_eq!(&ids, expected, "rlhf generate {cache:?}: {prompt:?}");
            assert_eq!(line["completion"], model.tokenizer.decode(&ids));
        }
    }
}

#[test]
fn transformers_loads_our_checkpoint_with_identical_logits() {
    let work = tempfile::tempdir().unwrap();
    let config = Gpt2Config {
        vocab_size: 320,
        n_positions: 64,
        n_embd: 48,
        n_layer: 2,
        n_head: 4,
        n_inner: None,
        layer_norm_epsilon: 1e-5,
        embd_pdrop: 0.1,
        attn_pdrop: 0.1,
        resid_pdrop: 0.1,
        initializer_range: 0.1,
        bos_token_id: 0,
        eos_token_id: 0,
    };
    tch::manual_seed(5);
    let model = LanguageModel::fresh(&config, common::tiny_tokenizer(320), Device::Cpu, Precision::Fp32);
    let dir = work.path().join("ours");
    model.save(&dir).unwrap();

    let rows = random_rows(&[6, 13], config.vocab_size, 1);
    let (ids, mask) = left_pad(&rows, 0, Device::Cpu);
    let ours = tch::no_grad(|| model.transformer.forward_logits(&ids, Some(&mask), false));
    let reference = hf_logits(&dir, &ids, &mask, work.path());
    let diff = max_diff_on_real_tokens(&ours, &reference, &mask);
    assert!(diff <= TOLERANCE, "transformers computes other logits from our checkpoint: {diff}");

    // And our loader reads back exactly what we wrote.
    let reloaded = LanguageModel::load(&dir, Device::Cpu, Precision::Fp32).unwrap();
    let again = tch::no_grad(|| reloaded.transformer.forward_logits(&ids, Some(&mask), false));
    assert_eq!(max_diff_on_real_tokens(&ours, &again, &mask), 0.0);
}

/// Random Llama-family shapes: full (Llama 3, tied, with its rope scaling and attention biases),
/// multi-query (Qwen2, tied, q/k/v biases) and grouped-query attention (Qwen3, untied, per-head
/// q/k norms, a `head_dim` other than hidden/heads).
fn llama_family_configs() -> Vec<serde_json::Value> {
    let base = |model_type: &str, heads: i64, kv_heads: i64, tied: bool| {
        json!({"model_type": model_type, "vocab_size": 320, "hidden_size": 64, "intermediate_size": 96,
               "num_hidden_layers": 2, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
               "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "tie_word_embeddings": tied,
               "initializer_range": 0.1, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0})
    };
    let mut llama3 = base("llama", 4, 4, true);
    llama3["attention_bias"] = json!(true);
    llama3["rope_theta"] = json!(500000.0);
    llama3["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 16});
    let mut qwen2 = base("qwen2", 4, 1, true);
    qwen2["rope_theta"] = json!(1000000.0);
    let mut qwen3 = base("qwen3", 4, 2, false);
    qwen3["head_dim"] = json!(24);
    vec![llama3, qwen2, qwen3]
}

/// For each Llama-family shape made by transformers: logits within 1e-4 on padded and unpadded
/// batches, greedy generation token for token with and without the KV cache, and the checkpoint
/// written back by us loaded by transformers with the same logits.
#[test]
fn llama_family_models_match_transformers() {
    const NEW_TOKENS: i64 = 16;
    let work = tempfile::tempdir().unwrap();
    for (index, config) in llama_family_configs().iter().enumerate() {
        let dir = work.path().join(format!("model{index}"));
        let model = hf_model(&dir, config, 20 + index as u64);
        let rows = random_rows(&[9, 14, 3, 14], 320, index as i64);
        let (ids, mask) = left_pad(&rows, 0, Device::Cpu);
        let (inputs, logits_out, greedy_out) =
            (work.path().join("inputs.json"), work.path().join("logits.safetensors"), work.path().join("greedy.json"));
        write_inputs(&inputs, &ids, &mask);
        let [dir_arg, inputs_arg, logits_arg, greedy_arg] = [&dir, &inputs, &logits_out, &greedy_out].map(|p| p.to_str().unwrap());
        common::hf_reference(&["logits-and-greedy", dir_arg, inputs_arg, &NEW_TOKENS.to_string(), logits_arg, greedy_arg]);
        let reference_logits = Tensor::read_safetensors(&logits_out).unwrap().into_iter().find(|(name, _)| name == "logits").unwrap().1;
        let ours = tch::no_grad(|| model.transformer.forward_logits(&ids, Some(&mask), false));
        let diff = max_diff_on_real_tokens(&ours, &reference_logits, &mask);
        assert!(diff <= TOLERANCE, "config {config}: padded logits differ from transformers by {diff}");
        assert_rows_alone_match_the_batch(&model, &rows, &ours, config);

        let options = GenerateOptions { max_new_tokens: NEW_TOKENS, sampling: Sampling::Greedy, seed: None, use_kv_cache: true };
        let cached = generate(model.transformer.as_ref(), &rows, &[0], &options).unwrap().completions();
        let uncached =
            generate(model.transformer.as_ref(), &rows, &[0], &GenerateOptions { use_kv_cache: false, ..options }).unwrap().completions();
        assert_eq!(cached, uncached, "config {config}: the KV cache changed greedy outputs");
        let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&greedy_out).unwrap()).unwrap();
        for (row, (ours, theirs)) in cached.iter().zip(reference["completion_ids"].as_array().unwrap()).enumerate() {
            let theirs: Vec<i64> = theirs.as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).take_while(|&id| id != 0).collect();
            assert_eq!(ours, &theirs, "config {config}, row {row}: greedy tokens differ from transformers");
        }
        assert!(cached.iter().map(Vec::len).sum::<usize>() >= 40, "config {config}: too few tokens compared: {cached:?}");

        let saved = work.path().join(format!("ours{index}"));
        model.save(&saved).unwrap();
        let diff = max_diff_on_real_tokens(&ours, &hf_logits(&saved, &ids, &mask, work.path()), &mask);
        assert!(diff <= TOLERANCE, "config {config}: transformers reads other logits from our checkpoint: {diff}");
        let written: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(saved.join("config.json")).unwrap()).unwrap();
        assert_eq!(written["model_type"], config["model_type"]);
    }
}
