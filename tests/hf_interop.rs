//! Hugging Face directories both ways, beyond the weights of one language model: chat templates
//! rendered and tokenised as `apply_chat_template` does, tokenizer files with their special
//! tokens, sharded weights, several end-of-sequence ids in `generation_config.json`, and reward
//! models as `*ForSequenceClassification`.

mod common;

use std::path::{Path, PathBuf};

use rlhf_lab::data::chat::{Message, Role};
use rlhf_lab::data::tokenizer::TextTokenizer;
use rlhf_lab::model::checkpoint::{SaveOptions, WEIGHTS_FILE, WEIGHTS_INDEX_FILE};
use rlhf_lab::model::generate::{generate, left_pad, GenerateOptions, Sampling};
use rlhf_lab::model::reward::RewardModel;
use rlhf_lab::model::{HfHead, LanguageModel, LlamaConfig, ModelConfig, Precision};
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-4;

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Three templates written for these tests in the styles real models use: ChatML with a default
/// system turn (Qwen), headers around each turn after a BOS (Llama 3), and `[INST]` turns that
/// must alternate, with a `namespace` counter and `raise_exception` (Llama 2 / Mistral) — the
/// last kept in `tokenizer_config.json`'s `chat_template` key, as older transformers did.
fn templates() -> Vec<(&'static str, &'static str, Value, &'static str)> {
    let chatml = "{%- if messages[0]['role'] == 'system' %}\n    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- set turns = messages[1:] %}\n{%- else %}\n    {{- '<|im_start|>system\\nYou review products.<|im_end|>\\n' }}\n    {%- set turns = messages %}\n{%- endif %}\n{%- for message in turns %}\n    {{- '<|im_start|>' + message.role + '\\n' + message.content | trim + '<|im_end|>\\n' }}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n";
    let headers = "{{ bos_token }}{% for message in messages %}\n<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'].strip() }}<|eot_id|>{% endfor %}\n{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}";
    let inst = "{% set ns = namespace(turn=0) %}\n{% for message in messages %}\n  {% if message['role'] == 'system' %}\n{{ '<<SYS>> ' + message['content'] + ' <</SYS>>\\n' }}\n  {% else %}\n    {% if (message['role'] == 'user') != (ns.turn % 2 == 0) %}\n{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}\n    {% endif %}\n    {% if message['role'] == 'user' %}\n{{ bos_token + '[INST] ' + message['content'].strip() + ' [/INST]' }}\n    {% else %}\n{{ ' ' + message['content'].strip() + eos_token }}\n    {% endif %}\n    {% set ns.turn = ns.turn + 1 %}\n  {% endif %}\n{% endfor %}";
    vec![
        (
            "chatml",
            chatml,
            json!({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "additional_special_tokens": ["<|im_start|>"]}),
            "file",
        ),
        (
            "headers",
            headers,
            json!({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>"]}),
            "file",
        ),
        ("inst", inst, json!({"bos_token": "<s>", "eos_token": "</s>"}), "key"),
    ]
}

fn conversations() -> Vec<Vec<Message>> {
    let system = Message { role: Role::System, content: "Be brief.".into() };
    vec![
        vec![Message::user("the battery?")],
        vec![system.clone(), Message::user("  is the screen bright? ")],
        vec![Message::user("price"), Message::assistant("fair, 12 €"), Message::user("and the battery\nlife?")],
        vec![system, Message::user("hi"), Message::assistant(" great review ")],
    ]
}

/// The ids (and text) of each conversation, with the generation prompt on and off, equal those
/// of transformers' `apply_chat_template` on the tokenizer directory transformers wrote.
#[test]
fn chat_templates_give_the_ids_apply_chat_template_gives() {
    let work = tempfile::tempdir().unwrap();
    let base = work.path().join("base");
    std::fs::create_dir(&base).unwrap();
    common::tiny_tokenizer(300).save(&base).unwrap();
    let cases: Vec<(Vec<Message>, bool)> = conversations().into_iter().flat_map(|c| [(c.clone(), true), (c, false)]).collect();
    let cases_json: Vec<Value> = cases.iter().map(|(m, g)| json!({"messages": m, "add_generation_prompt": g})).collect();
    let cases_path = work.path().join("cases.json");
    std::fs::write(&cases_path, serde_json::to_string(&cases_json).unwrap()).unwrap();

    for (name, template, special, place) in templates() {
        let dir = work.path().join(name);
        let out = work.path().join(format!("{name}.json"));
        let [tokenizer_json, dir_arg, cases_arg, out_arg] =
            [&base.join("tokenizer.json"), &dir, &cases_path, &out].map(|p| p.to_str().unwrap().to_string());
        common::hf_reference(&["chat-template", &tokenizer_json, &special.to_string(), template, &dir_arg, place, &cases_arg, &out_arg]);
        assert_eq!(dir.join("chat_template.jinja").exists(), place == "file", "{name}: where transformers kept the template");

        let tokenizer = TextTokenizer::load(&dir).unwrap();
        assert_eq!(tokenizer.chat_template().unwrap().source, template, "{name}");
        let eos = special["eos_token"].as_str().unwrap();
        assert_eq!(tokenizer.template_tokens().eos, eos);
        assert_eq!(tokenizer.decode(&[tokenizer.eos_id()]), "", "{name}: the end-of-sequence token is special");
        for ((messages, generation_prompt), reference) in cases.iter().zip(read_json(&out).as_array().unwrap()) {
            let text = tokenizer.chat_template().unwrap().render(messages, *generation_prompt, &tokenizer.template_tokens()).unwrap();
            assert_eq!(text, reference["text"].as_str().unwrap(), "{name}: {messages:?}, generation prompt {generation_prompt}");
            let ids = tokenizer.apply_chat_template(messages, *generation_prompt).unwrap();
            let expected: Vec<i64> = serde_json::from_value(reference["ids"].clone()).unwrap();
            assert_eq!(ids, expected, "{name}: {messages:?}, generation prompt {generation_prompt}");
        }

        // Our own save writes the files back so that they load as they were.
        let resaved = work.path().join(format!("{name}-resaved"));
        std::fs::create_dir(&resaved).unwrap();
        tokenizer.save(&resaved).unwrap();
        let again = TextTokenizer::load(&resaved).unwrap();
        assert_eq!(
            (again.eos_id(), again.pad_id(), again.template_tokens()),
            (tokenizer.eos_id(), tokenizer.pad_id(), tokenizer.template_tokens())
        );
        assert_eq!(
            again.apply_chat_template(&conversations()[2], true).unwrap(),
            tokenizer.apply_chat_template(&conversations()[2], true).unwrap()
        );
    }

    // The `[INST]` template refuses turns out of order, naming where it came from and the line.
    let tokenizer = TextTokenizer::load(&work.path().join("inst")).unwrap();
    let error = tokenizer.apply_chat_template(&[Message::assistant("first")], false).unwrap_err().to_string();
    assert!(
        error.contains("tokenizer_config.json")
            && error.contains("chat_template")
            && error.contains("line 7")
            && error.contains("must alternate"),
        "{error}"
    );

    // `rlhf generate --chat` renders the turn with the model's template and generation prompt.
    let chat_tokenizer = TextTokenizer::load(&work.path().join("chatml")).unwrap();
    let mut config = common::tiny_config(320, 64, 32, 1, 2);
    config.eos_token_id = chat_tokenizer.eos_id();
    let model_dir = work.path().join("chat-model");
    LanguageModel::fresh(&config, chat_tokenizer.clone(), Device::Cpu, Precision::Fp32).save(&model_dir).unwrap();
    let args = [
        "generate",
        "--model",
        path_str(&model_dir),
        "--chat",
        "the battery?",
        "--json",
        "--greedy",
        "--max-new-tokens",
        "4",
        "--device",
        "cpu",
    ];
    let (ok, stdout, stderr) = common::rlhf(&args, work.path());
    assert!(ok, "{stderr}");
    let line: Value = serde_json::from_str(stdout.trim()).unwrap();
    let reference = &read_json(&work.path().join("chatml.json"))[0];
    assert_eq!(line["prompt_ids"], reference["ids"], "{stdout}");
    assert_eq!(
        line["completion"].as_str().unwrap(),
        chat_tokenizer.decode(&serde_json::from_value::<Vec<i64>>(line["completion_ids"].clone()).unwrap())
    );

    // A model without a template says so.
    let plain_dir = work.path().join("plain-model");
    LanguageModel::fresh(common::tiny_config(300, 64, 32, 1, 2), common::tiny_tokenizer(300), Device::Cpu, Precision::Fp32)
        .save(&plain_dir)
        .unwrap();
    let (ok, _, stderr) = common::rlhf(&["generate", "--model", path_str(&plain_dir), "--chat", "hi", "--device", "cpu"], work.path());
    assert!(!ok && stderr.contains("no chat template") && stderr.contains("plain-model"), "{stderr}");
}

fn qwen3_config() -> Value {
    json!({"model_type": "qwen3", "vocab_size": 320, "hidden_size": 64, "intermediate_size": 96, "head_dim": 24,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
           "rms_norm_eps": 1e-6, "tie_word_embeddings": false, "initializer_range": 0.1,
           "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0})
}

fn random_rows(lengths: &[usize], seed: i64) -> Vec<Vec<i64>> {
    tch::manual_seed(seed);
    lengths.iter().map(|&n| Vec::<i64>::try_from(Tensor::randint_low(1, 300, [n as i64], (Kind::Int64, Device::Cpu))).unwrap()).collect()
}

/// transformers' logits for `rows` (left-padded with id 0).
fn hf_logits(model_dir: &Path, rows: &[Vec<i64>], work: &Path) -> Tensor {
    let (inputs, out) = (work.join("inputs.json"), work.join("logits.safetensors"));
    common::write_inputs(&inputs, rows);
    common::hf_reference(&["logits", path_str(model_dir), path_str(&inputs), path_str(&out)]);
    Tensor::read_safetensors(&out).unwrap().into_iter().find(|(name, _)| name == "logits").unwrap().1
}

fn max_diff_on_real_tokens(a: &Tensor, b: &Tensor, mask: &Tensor) -> f64 {
    ((a - b).abs().amax([-1], false) * mask.to_kind(Kind::Float)).max().double_value(&[])
}

fn shard_files(dir: &Path) -> Vec<PathBuf> {
    let mut shards: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_str().unwrap().ends_with("safetensors") && p.file_name().unwrap() != WEIGHTS_FILE)
        .collect();
    shards.sort();
    shards
}

/// Sharded weights read (as transformers writes them) and written (as transformers reads them),
/// and generation stopping at any of the ids `generation_config.json` lists, as `generate` does.
#[test]
fn sharded_weights_and_several_end_tokens_both_ways() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("hf");
    common::hf_reference(&["make-model", &qwen3_config().to_string(), path_str(&dir), "31"]);
    common::tiny_tokenizer(300).save(&dir).unwrap();
    let model = LanguageModel::load(&dir, Device::Cpu, Precision::Fp32).unwrap();
    let rows = random_rows(&[7, 12, 3], 4);
    let (ids, mask) = left_pad(&rows, 0, Device::Cpu);
    let logits = tch::no_grad(|| model.transformer.forward_logits(&ids, Some(&mask), false));

    // transformers' shards load here to the very same weights.
    let sharded = work.path().join("hf-sharded");
    common::hf_reference(&["reshard", path_str(&dir), path_str(&sharded), "60KB"]);
    common::tiny_tokenizer(300).save(&sharded).unwrap();
    assert!(!sharded.join(WEIGHTS_FILE).exists() && sharded.join(WEIGHTS_INDEX_FILE).exists());
    assert!(shard_files(&sharded).len() >= 3, "{:?}", shard_files(&sharded));
    let from_shards = LanguageModel::load(&sharded, Device::Cpu, Precision::Fp32).unwrap();
    let again = tch::no_grad(|| from_shards.transformer.forward_logits(&ids, Some(&mask), false));
    assert_eq!(max_diff_on_real_tokens(&logits, &again, &mask), 0.0);

    // Our shards: each at most the size asked (but for a larger tensor alone), every tensor
    // listed once, and transformers computes the same logits from them.
    let ours = work.path().join("ours-sharded");
    model.save_with(&ours, SaveOptions { max_shard_bytes: 50_000, ..SaveOptions::for_head(HfHead::CausalLm) }).unwrap();
    let index = read_json(&ours.join(WEIGHTS_INDEX_FILE));
    let weight_map = index["weight_map"].as_object().unwrap();
    assert_eq!(weight_map.len(), model.vs.variables().len());
    let shards = shard_files(&ours);
    assert!(shards.len() >= 3 && !ours.join(WEIGHTS_FILE).exists(), "{shards:?}");
    let biggest_tensor = model.vs.variables().values().map(|t| t.numel() * 4).max().unwrap() as u64;
    for shard in &shards {
        let size = std::fs::metadata(shard).unwrap().len();
        assert!(size <= 50_000.max(biggest_tensor) + 4_096, "{shard:?} is {size} bytes");
    }
    let total: u64 = index["metadata"]["total_size"].as_u64().unwrap();
    assert_eq!(total, model.vs.variables().values().map(|t| (t.numel() * 4) as u64).sum::<u64>());
    let diff = max_diff_on_real_tokens(&logits, &hf_logits(&ours, &rows, work.path()), &mask);
    assert!(diff <= TOLERANCE, "transformers reads other logits from our shards: {diff}");

    // A second end id in generation_config.json: generation stops at it, as transformers' does.
    let options = GenerateOptions { max_new_tokens: 12, sampling: Sampling::Greedy, seed: None, use_kv_cache: true };
    let free = generate(model.transformer.as_ref(), &rows, &[0], &options).unwrap().completions();
    // The first token of row 0 not generated before it, past its first token.
    let cut = (1..free[0].len()).find(|&k| !free[0][..k].contains(&free[0][k])).expect("a new token in row 0");
    let second_end = free[0][cut];
    let mut generation_config = read_json(&dir.join("generation_config.json"));
    generation_config["eos_token_id"] = json!([0, second_end]);
    std::fs::write(dir.join("generation_config.json"), generation_config.to_string()).unwrap();
    let model = LanguageModel::load(&dir, Device::Cpu, Precision::Fp32).unwrap();
    assert_eq!(model.tokenizer.stop_ids(), [0, second_end]);
    let generation = generate(model.transformer.as_ref(), &rows, model.tokenizer.stop_ids(), &options).unwrap();
    let stopped = generation.completions();
    assert_eq!(stopped[0], free[0][..cut], "row 0 goes on past the second end id");
    assert!(generation.stopped()[0]);
    let (inputs, out) = (work.path().join("inputs.json"), work.path().join("greedy.json"));
    common::write_inputs(&inputs, &rows);
    common::hf_reference(&["greedy", path_str(&dir), path_str(&inputs), "12", path_str(&out)]);
    for (row, (ours, theirs)) in stopped.iter().zip(read_json(&out)["completion_ids"].as_array().unwrap()).enumerate() {
        let theirs: Vec<i64> =
            theirs.as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).take_while(|id| ![0, second_end].contains(id)).collect();
        assert_eq!(ours, &theirs, "row {row}");
    }
    // Our checkpoint keeps both end ids.
    let resaved = work.path().join("resaved");
    model.save(&resaved).unwrap();
    assert_eq!(read_json(&resaved.join("generation_config.json"))["eos_token_id"], json!([0, second_end]));
    assert_eq!(LanguageModel::load(&resaved, Device::Cpu, Precision::Fp32).unwrap().tokenizer.stop_ids(), [0, second_end]);
}

/// transformers' scores of a sequence-classification directory, with its `architectures`.
fn hf_scores(model_dir: &Path, rows: &[Vec<i64>], work: &Path) -> (Vec<f64>, Value) {
    let (inputs, out) = (work.join("inputs.json"), work.join("scores.json"));
    common::write_inputs(&inputs, rows);
    common::hf_reference(&["scores", path_str(model_dir), path_str(&inputs), path_str(&out)]);
    let result = read_json(&out);
    (serde_json::from_value(result["scores"].clone()).unwrap(), result["architectures"].clone())
}

fn our_scores(model: &RewardModel, rows: &[Vec<i64>]) -> Vec<f64> {
    let (ids, mask) = left_pad(rows, 0, Device::Cpu);
    Vec::<f64>::try_from(tch::no_grad(|| model.scores(&ids, &mask, false)).to_kind(Kind::Double)).unwrap()
}

fn assert_close(ours: &[f64], theirs: &[f64], what: &str) {
    assert_eq!(ours.len(), theirs.len());
    for (a, b) in ours.iter().zip(theirs) {
        assert!((a - b).abs() <= TOLERANCE, "{what}: ours {ours:?}, transformers {theirs:?}");
    }
    assert!(ours.iter().any(|s| (s - ours[0]).abs() > 1e-3), "{what}: the rows score alike, so nothing was compared: {ours:?}");
}

/// Reward models are `*ForSequenceClassification`: one made by transformers scores the same
/// here, and ours (a new head on a GPT-2 or an untied Qwen3 language model) loads in
/// `AutoModelForSequenceClassification` with the same scores.
#[test]
fn reward_models_are_sequence_classifiers_both_ways() {
    let work = tempfile::tempdir().unwrap();
    let rows = random_rows(&[5, 11, 8, 2], 9);

    let theirs = work.path().join("hf-classifier");
    let mut config = qwen3_config();
    config["model_type"] = json!("qwen2");
    config["num_key_value_heads"] = json!(1);
    config.as_object_mut().unwrap().remove("head_dim");
    common::hf_reference(&["make-classifier", &config.to_string(), path_str(&theirs), "41"]);
    common::tiny_tokenizer(300).save(&theirs).unwrap();
    let reward_model = RewardModel::load(&theirs, Device::Cpu, Precision::Fp32, false).unwrap();
    let (reference, _) = hf_scores(&theirs, &rows, work.path());
    assert_close(&our_scores(&reward_model, &rows), &reference, "a Qwen2ForSequenceClassification made by transformers");

    let gpt2 = ModelConfig::from(common::tiny_config(300, 64, 32, 2, 2));
    let qwen3 = ModelConfig::from_hf(&qwen3_config()).unwrap();
    assert!(matches!(&qwen3, ModelConfig::Llama(LlamaConfig { tie_word_embeddings: false, .. })));
    for (name, config, class) in [("gpt2", gpt2, "GPT2ForSequenceClassification"), ("qwen3", qwen3, "Qwen3ForSequenceClassification")] {
        let lm_dir = work.path().join(format!("{name}-lm"));
        tch::manual_seed(3);
        LanguageModel::fresh(config, common::tiny_tokenizer(300), Device::Cpu, Precision::Fp32).save(&lm_dir).unwrap();
        let reward_model = RewardModel::load(&lm_dir, Device::Cpu, Precision::Fp32, true).unwrap();
        let saved = work.path().join(format!("{name}-rm"));
        reward_model.save(&saved).unwrap();
        let written = read_json(&saved.join("config.json"));
        assert_eq!((written["num_labels"].clone(), written["pad_token_id"].clone()), (json!(1), json!(0)), "{written}");
        let (reference, architectures) = hf_scores(&saved, &rows, work.path());
        assert_eq!(architectures, json!([class]));
        assert_close(&our_scores(&reward_model, &rows), &reference, &format!("our {name} reward model read by transformers"));
        let reloaded = RewardModel::load(&saved, Device::Cpu, Precision::Fp32, false).unwrap();
        assert_eq!(our_scores(&reloaded, &rows), our_scores(&reward_model, &rows));
    }
}
