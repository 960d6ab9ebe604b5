//! Conversations through every stage: a Llama-shaped quickstart through rlhf-lab's chat
//! template, conversational JSONL data (SFT messages with the loss on assistant turns, prompts
//! as message lists, TRL's conversational preferences), and the errors bad conversations get.

mod common;
mod label_support;

use std::path::{Path, PathBuf};

use rlhf_lab::data::chat::{ChatTemplate, Message, Prompt, Role};
use rlhf_lab::data::preferences::read_jsonl;
use rlhf_lab::data::tokenizer::{TextTokenizer, CHATML_SPECIAL_TOKENS, CHATML_TEMPLATE};
use rlhf_lab::label::export::{read_preference_pairs, ExportFilter};
use rlhf_lab::label::{Policy, Preferred, Store};
use rlhf_lab::stages::lm::Example;
use serde_json::{json, Value};

fn run(dir: &Path, args: &[&str]) -> PathBuf {
    let (ok, stdout, stderr) = common::rlhf(args, dir);
    assert!(ok, "rlhf {args:?} failed:\n{stderr}");
    dir.join(stdout.trim())
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn chatml_tokenizer() -> TextTokenizer {
    let mut tokenizer = common::tiny_tokenizer(300);
    tokenizer.add_special_tokens(&CHATML_SPECIAL_TOKENS.map(String::from));
    tokenizer.set_chat_template(Some(ChatTemplate::new(CHATML_TEMPLATE.into(), "chatml".into()).unwrap()));
    tokenizer
}

/// On a crafted two-turn conversation the targets are exactly the assistant's two answers, each
/// with the end-of-turn marker and newline that close it; the ids are the template's.
#[test]
fn only_assistant_turns_carry_the_sft_loss() {
    let tokenizer = chatml_tokenizer();
    let messages = [
        Message { role: Role::System, content: "be brief".into() },
        Message::user("the battery?"),
        Message::assistant("great and fair"),
        Message::user("the screen?"),
        Message::assistant("dull"),
    ];
    let example = Example::conversation(&tokenizer, &messages).unwrap();
    assert_eq!(example.ids, tokenizer.apply_chat_template(&messages, false).unwrap());
    let targets: Vec<i64> = example.ids.iter().zip(&example.is_target).filter(|(_, &t)| t).map(|(&id, _)| id).collect();
    let expected: Vec<i64> =
        ["great and fair<|im_end|>\n", "dull<|im_end|>\n"].iter().flat_map(|text| tokenizer.encode(text).unwrap()).collect();
    assert_eq!(targets, expected);
    // The targets are two runs: nothing of the user's turns or the headers in between.
    let runs = example.is_target.windows(2).filter(|w| !w[0] && w[1]).count();
    assert_eq!(runs, 2);
}

/// experiments/quickstart-llama.toml at a reduced size: a Llama-shaped model through the chat
/// template, every stage; the template, its tokens and the end-of-turn stop id travel with the
/// run and every checkpoint, and the prompts the stages see are the rendered conversations.
#[test]
fn the_llama_quickstart_runs_at_a_reduced_size() {
    let work = tempfile::tempdir().unwrap();
    let experiment = common::repo_root().join("experiments/quickstart-llama.toml");
    let reduced = [
        "threads=1",
        "task.corpus_size=300",
        "task.demonstrations_size=200",
        "task.prompts_size=40",
        "tokenizer.vocab_size=400",
        "models.base.n_layer=2",
        "models.base.n_embd=64",
        "stages.pretrain.steps=40",
        "stages.pretrain.eval_every=20",
        "stages.pretrain.batch_size=8",
        "stages.pretrain.seq_len=64",
        "stages.sft.steps=40",
        "stages.sft.eval_every=20",
        "stages.sft.batch_size=8",
        "stages.sft.samples=2",
        "stages.rm.pairs=120",
        "stages.rm.eval_pairs=40",
        "stages.rm.steps=30",
        "stages.rm.eval_every=15",
        "stages.rm.warmup_steps=5",
        "stages.rm.batch_size=8",
        "stages.ppo.iterations=3",
        "stages.ppo.rollout_batch=8",
        "stages.ppo.minibatch_size=4",
        "stages.ppo.ppo_epochs=1",
        "stages.ppo.eval_every=3",
        "stages.ppo.max_new_tokens=24",
    ];
    let mut args = vec!["run", experiment.to_str().unwrap(), "--out", "out"];
    for setting in &reduced {
        args.extend(["--set", setting]);
    }
    let run_dir = run(work.path(), &args);

    let tokenizer = TextTokenizer::load(&run_dir).unwrap();
    assert_eq!(tokenizer.chat_template().unwrap().source, CHATML_TEMPLATE);
    let end_of_turn = tokenizer.token_id("<|im_end|>").unwrap();
    assert_eq!(read_json(&run_dir.join("generation_config.json"))["eos_token_id"], json!([0, end_of_turn]));
    for stage in ["pretrain", "sft", "rm", "ppo"] {
        let checkpoint = run_dir.join(stage).join("checkpoint");
        let config = read_json(&checkpoint.join("config.json"));
        assert_eq!((config["model_type"].as_str(), config["num_key_value_heads"].as_i64()), (Some("llama"), Some(2)), "{stage}");
        assert_eq!(std::fs::read_to_string(checkpoint.join("chat_template.jinja")).unwrap(), CHATML_TEMPLATE, "{stage}");
        assert_eq!(read_json(&checkpoint.join("generation_config.json"))["eos_token_id"], json!([0, end_of_turn]), "{stage}");
    }
    assert_eq!(read_json(&run_dir.join("rm/checkpoint/config.json"))["architectures"], json!(["LlamaForSequenceClassification"]));

    // The SFT stage learned (its eval loss fell) and its samples answer rendered conversations.
    let evals: Vec<f64> = lines(&run_dir.join("sft/metrics.jsonl")).iter().filter_map(|m| m["eval/loss"].as_f64()).collect();
    assert!(evals.last().unwrap() < &evals[0], "SFT eval loss did not fall: {evals:?}");
    let samples = lines(&run_dir.join("sft/samples.jsonl"));
    assert!(!samples.is_empty());
    for sample in &samples {
        let prompt = sample["prompt"].as_str().unwrap();
        assert!(prompt.starts_with("<|im_start|>user\nWrite a ") && prompt.ends_with("<|im_end|>\n<|im_start|>assistant\n"), "{prompt:?}");
    }
    let summary = read_json(&run_dir.join("summary.json"));
    assert!(summary["ppo"]["eval/gold_score"].is_f64() && summary["rm"]["eval/accuracy"].is_f64(), "{summary}");

    // `rlhf generate --chat` on the SFT model renders the turn as the stages did.
    let sft = run_dir.join("sft/checkpoint");
    let turn = "Write a positive review of the phone about its battery.\nReview:";
    let (ok, stdout, stderr) = common::rlhf(
        &["generate", "--model", sft.to_str().unwrap(), "--chat", turn, "--max-new-tokens", "8", "--json", "--device", "cpu"],
        work.path(),
    );
    assert!(ok, "{stderr}");
    let line: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(line["prompt_ids"], json!(tokenizer.apply_chat_template(&[Message::user(turn)], true).unwrap()));
}

const CONVERSATIONAL_EXPERIMENT: &str = r#"name = "conversations"
seed = 3
threads = 1

[task]
kind = "jsonl"
demonstrations = "demonstrations.jsonl"
prompts = "prompts.jsonl"
eval_fraction = 0.2
min_chars = 1
near_duplicate_threshold = 1.0

[tokenizer]
vocab_size = 300
chat_template = "chatml"

[models.base]
arch = "qwen2"
n_kv_head = 1
n_layer = 1
n_head = 2
n_embd = 32
n_ctx = 192
device = "cpu"

[[stages]]
name = "sft"
kind = "sft"
init = "base"
steps = 12
batch_size = 4
seq_len = 160
eval_every = 6
eval_batches = 1
samples = 2
device = "cpu"

[[stages]]
name = "rm"
kind = "reward"
init = "sft"
source = "jsonl"
preferences = "preferences.jsonl"
steps = 6
batch_size = 4
eval_every = 3
normalization_samples = 4
device = "cpu"

[[stages]]
name = "ppo"
kind = "ppo"
policy = "sft"
reference = "sft"
reward = "rm"
value = "rm"
iterations = 2
rollout_batch = 4
minibatch_size = 2
ppo_epochs = 1
max_new_tokens = 8
eval_every = 2
eval_prompts = 4
devices = { policy = "cpu", reference = "cpu", reward = "cpu", value = "cpu" }
"#;

const PRODUCTS: [&str; 6] = ["phone", "kettle", "lamp", "chair", "watch", "camera"];

/// Multi-turn `messages`, prompt lists with a response, plain records beside them; prompts as
/// text and as messages; TRL's conversational preference pairs.
fn write_conversational_files(dir: &Path) {
    let mut demonstrations = String::new();
    for (i, product) in PRODUCTS.iter().cycle().take(24).enumerate() {
        let line = match i % 3 {
            0 => json!({"messages": [
                {"role": "system", "content": "You write short reviews."},
                {"role": "user", "content": format!("Review the {product}, item {i}.")},
                {"role": "assistant", "content": format!("The {product} is great.")},
                {"role": "user", "content": "And its price?"},
                {"role": "assistant", "content": format!("Fair for a {product}.")},
            ]}),
            1 => {
                json!({"prompt": [{"role": "user", "content": format!("Review the {product}, item {i}.")}], "response": format!("A fine {product}.")})
            }
            _ => json!({"prompt": format!("Review of the {product}, item {i}:"), "response": format!("the {product} works.")}),
        };
        demonstrations.push_str(&format!("{line}\n"));
    }
    std::fs::write(dir.join("demonstrations.jsonl"), demonstrations).unwrap();
    let prompts: String = PRODUCTS
        .iter()
        .enumerate()
        .map(|(i, product)| {
            let line = if i % 2 == 0 {
                json!({"prompt": [{"role": "user", "content": format!("Review the {product}.")}]})
            } else {
                json!({"prompt": format!("Review of the {product}:")})
            };
            format!("{line}\n")
        })
        .collect();
    std::fs::write(dir.join("prompts.jsonl"), prompts).unwrap();
    let preferences: String = PRODUCTS
        .iter()
        .cycle()
        .take(16)
        .enumerate()
        .map(|(i, product)| {
            let line = json!({
                "prompt": [{"role": "system", "content": "You write short reviews."}, {"role": "user", "content": format!("Review the {product}, pair {i}.")}],
                "chosen": [{"role": "assistant", "content": format!("The {product} is great.")}],
                "rejected": [{"role": "assistant", "content": format!("{product} {product} {product}")}],
            });
            format!("{line}\n")
        })
        .collect();
    std::fs::write(dir.join("preferences.jsonl"), preferences).unwrap();
}

/// Conversational JSONL data trains every stage: SFT on rendered conversations, the reward
/// model on rendered conversational pairs, PPO on prompts given as text or as messages.
#[test]
fn conversational_jsonl_data_trains_every_stage() {
    let work = tempfile::tempdir().unwrap();
    write_conversational_files(work.path());
    std::fs::write(work.path().join("chat.toml"), CONVERSATIONAL_EXPERIMENT).unwrap();
    let run_dir = run(work.path(), &["run", "chat.toml", "--out", "out"]);
    let summary = read_json(&run_dir.join("summary.json"));
    assert!(summary["rm"]["eval/accuracy"].is_f64() && summary["ppo"]["eval/kl"].is_f64(), "{summary}");
    // SFT's samples answer prompts rendered from the conversations (or plain ones).
    for sample in lines(&run_dir.join("sft/samples.jsonl")) {
        let prompt = sample["prompt"].as_str().unwrap();
        let rendered = prompt.starts_with("<|im_start|>") && prompt.ends_with("<|im_start|>assistant\n");
        assert!(rendered || prompt.starts_with("Review of the "), "{prompt:?}");
    }
    // PPO's evaluation prompts include the message-list prompts, rendered.
    let ppo_samples = lines(&run_dir.join("ppo/samples.jsonl"));
    assert!(ppo_samples.iter().any(|s| s["prompt"].as_str().unwrap().starts_with("<|im_start|>user\nReview the ")), "{ppo_samples:?}");
}

/// Bad conversations are named by file, line and field before anything trains.
#[test]
fn bad_conversations_are_named() {
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("chat.toml"), CONVERSATIONAL_EXPERIMENT).unwrap();
    let validate = |demonstrations: &str| {
        write_conversational_files(work.path());
        std::fs::write(work.path().join("demonstrations.jsonl"), demonstrations).unwrap();
        common::rlhf(&["validate", "chat.toml"], work.path())
    };
    let good = r#"{"prompt": "a review:", "response": "fine"}"#;
    let cases = [
        (
            r#"{"messages": [{"role": "user", "content": "hi"}]}"#,
            "demonstrations.jsonl:2: the conversation in `messages` has no assistant turn",
        ),
        (
            r#"{"messages": [{"role": "robot", "content": "hi"}]}"#,
            "demonstrations.jsonl:2: `messages[0].role` is `robot`; expected system, user or assistant",
        ),
        (
            r#"{"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}"#,
            "demonstrations.jsonl:2: `messages[0]` has no `content` text",
        ),
        (r#"{"prompt": [{"role": "user", "content": "hi"}]}"#, "demonstrations.jsonl:2: missing field `response`"),
    ];
    for (bad, expected) in cases {
        let (ok, _, stderr) = validate(&format!("{good}\n{bad}\n"));
        assert!(!ok && stderr.contains(expected), "{bad}: {stderr}");
    }

    // A template that cannot render a conversation names itself and the line.
    write_conversational_files(work.path());
    std::fs::write(work.path().join("strict.jinja"), "{% for m in messages %}\n{% if m.role == 'system' %}{{ raise_exception('no system turns here') }}{% endif %}{{ m.content }}{% endfor %}").unwrap();
    let (ok, _, stderr) = common::rlhf(&["validate", "chat.toml", "--set", "tokenizer.chat_template=strict.jinja"], work.path());
    assert!(!ok && stderr.contains("`strict.jinja`") && stderr.contains("line 2") && stderr.contains("no system turns here"), "{stderr}");

    // `chat = true` needs a template, and is the synthetic task's.
    let synthetic = "name = \"x\"\n[task]\nkind = \"synthetic-reviews\"\nchat = true\n[models.base]\nn_layer = 1\nn_head = 1\nn_embd = 8\nn_ctx = 16\n[[stages]]\nname = \"p\"\nkind = \"lm\"\nmodel = \"base\"\nsteps = 1\n";
    std::fs::write(work.path().join("synthetic.toml"), synthetic).unwrap();
    let (ok, _, stderr) = common::rlhf(&["validate", "synthetic.toml"], work.path());
    assert!(!ok && stderr.contains("synthetic.toml:2") && stderr.contains("[tokenizer] chat_template = \"chatml\""), "{stderr}");
    let (ok, _, stderr) = common::rlhf(&["validate", "chat.toml", "--set", "task.chat=true"], work.path());
    assert!(!ok && stderr.contains("`chat` is for the synthetic task"), "{stderr}");
}

/// Conversational pairs labeled in the database reach the reward stage rendered with the chat
/// template, and exactly as the export of the same labels, read back as a preference file, does.
#[test]
fn labeled_conversations_reach_the_reward_stage_rendered() {
    let work = tempfile::tempdir().unwrap();
    let conversation =
        |i: usize| json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": format!("Review item {i}.")}]);
    let pairs: Vec<Value> =
        (0..4).map(|i| json!({"prompt": conversation(i), "response_a": format!("good {i}"), "response_b": format!("bad {i}")})).collect();
    let db = label_support::database_with(work.path(), &pairs);
    let token = label_support::add_annotator(&db, "alice");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let records = runtime.block_on(async {
        let store = Store::open(&db).await.unwrap();
        let alice = store.annotator_by_token(&token).await.unwrap().unwrap();
        let policy = Policy::default();
        while let Some(pair) = store.next_pair(alice.id, &policy).await.unwrap() {
            assert!(pair.messages.is_some(), "{pair:?}");
            let preferred = if pair.left.starts_with("good") { Preferred::Left } else { Preferred::Right };
            store.record_label(alice.id, pair.pair_id, preferred, &policy).await.unwrap();
        }
        let records = store.preferences(ExportFilter { ties: false, skips: false }).await.unwrap();
        store.close().await;
        records
    });
    let tokenizer = chatml_tokenizer();
    let from_database = read_preference_pairs(&db, &tokenizer).unwrap();
    assert_eq!(from_database.len(), 4);
    for pair in &from_database {
        let i: usize = pair.chosen.strip_prefix("good ").unwrap().parse().unwrap();
        let messages = serde_json::from_value(conversation(i)).unwrap();
        assert_eq!(pair.prompt, tokenizer.prompt_text(&Prompt::Messages(messages)).unwrap());
        assert_eq!(pair.rejected, format!("bad {i}"));
    }
    let file = work.path().join("exported.jsonl");
    label_support::write_jsonl(&file, &records.iter().map(|r| r.to_json()).collect::<Vec<_>>());
    assert_eq!(read_jsonl(&file, &tokenizer).unwrap(), from_database);
}
