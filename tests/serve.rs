//! `rlhf serve` as clients see it, on small random checkpoints: the `openai` Python client's
//! completions and chat completions (streamed and not) give `rlhf generate`'s greedy outputs,
//! seeded samples, log-probs, stop strings and usage (tests/serve_support/openai_client.py);
//! concurrent requests are batched and answered as they are alone; bad requests get OpenAI's
//! error bodies; SIGTERM finishes the streams in flight and exits 0; a full queue answers 429;
//! a reward model's /v1/score gives `rlhf score`'s numbers.

mod common;
mod serve_support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{mpsc, Barrier, Mutex};
use std::time::{Duration, Instant};

use rlhf_lab::data::chat::ChatTemplate;
use rlhf_lab::data::tokenizer::{TextTokenizer, CHATML_END_OF_TURN, CHATML_SPECIAL_TOKENS, CHATML_TEMPLATE};
use rlhf_lab::model::reward::RewardModel;
use rlhf_lab::model::{LanguageModel, ModelConfig, Precision};
use serde_json::{json, Value};
use serve_support::{agent, get_text, post_json, Process};
use tch::Device;

/// A random GPT-2: 2 layers, a context of 128.
fn gpt2_config() -> Value {
    json!({"model_type": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 64, "n_positions": 128, "vocab_size": 320,
           "bos_token_id": 0, "eos_token_id": 0, "initializer_range": 0.1})
}

/// A random Qwen3 (rotary positions, grouped-query attention, an untied head), context 128.
fn qwen3_config() -> Value {
    json!({"model_type": "qwen3", "vocab_size": 320, "hidden_size": 64, "intermediate_size": 96, "head_dim": 16,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
           "rms_norm_eps": 1e-6, "tie_word_embeddings": false, "initializer_range": 0.1,
           "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0})
}

/// Models are made in this process from torch's global generator: one at a time.
static MAKING_MODELS: Mutex<()> = Mutex::new(());

/// A random language model with `config` (transformers' config.json keys) saved in `dir/name`.
fn language_model(dir: &Path, name: &str, config: &Value, tokenizer: TextTokenizer, seed: i64) -> PathBuf {
    let path = dir.join(name);
    let _one_at_a_time = MAKING_MODELS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    tch::manual_seed(seed);
    let config = ModelConfig::from_hf(config).unwrap();
    LanguageModel::fresh(config, tokenizer, Device::Cpu, Precision::Fp32).save(&path).unwrap();
    path
}

/// The tiny tokenizer with ChatML's special tokens and template; a turn's end also ends a
/// generation.
fn chat_tokenizer() -> TextTokenizer {
    let mut tokenizer = common::tiny_tokenizer(300);
    tokenizer.add_special_tokens(&CHATML_SPECIAL_TOKENS.map(String::from));
    tokenizer.set_chat_template(Some(ChatTemplate::new(CHATML_TEMPLATE.into(), "chatml".into()).unwrap()));
    let end_of_turn = tokenizer.token_id(CHATML_END_OF_TURN).unwrap();
    tokenizer.add_stop_ids(&[end_of_turn]);
    tokenizer
}

/// A running `rlhf serve`, killed when dropped.
struct Server {
    process: Process,
    /// `http://127.0.0.1:PORT`
    url: String,
}

impl Server {
    fn start(model: &Path, extra: &[&str]) -> Server {
        let mut process = Process::spawn(
            "rlhf serve",
            Command::new(env!("CARGO_BIN_EXE_rlhf"))
                .args(["serve", "--model", model.to_str().unwrap(), "--port", "0", "--device", "cpu"])
                .args(extra)
                .env("RUST_LOG", "info"),
            libc::SIGKILL,
        );
        let addr = process.listening_address(Duration::from_secs(60));
        match addr.strip_prefix("127.0.0.1:") {
            Some(port) if port.parse::<u16>().is_ok_and(|port| port > 0) => Server { url: format!("http://{addr}"), process },
            _ => panic!("not listening on http://127.0.0.1:PORT but on {addr:?}; stderr:\n{}", process.log()),
        }
    }
}

/// A metric's value in Prometheus text (the line `NAME VALUE`, labels included in `name`).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no `{name}` in /metrics:\n{text}"))
        .parse()
        .unwrap()
}

/// The server's /metrics once its engine has settled: nothing queued or running (the gauges are
/// set a moment after the last answer went out).
fn settled_metrics(agent: &ureq::Agent, server: &Server) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, text) = get_text(agent, &format!("{}/metrics", server.url));
        assert_eq!(status, 200, "{text}");
        let idle = metric(&text, "rlhf_serve_queue_length") == 0.0 && metric(&text, "rlhf_serve_running_requests") == 0.0;
        if idle || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `rlhf generate --greedy --json` lines for `args` (the prompt part) on `model`.
fn generate(model: &Path, args: &[&str], max_new_tokens: usize) -> Vec<Value> {
    let tokens = max_new_tokens.to_string();
    let mut all = vec!["generate", "--model", model.to_str().unwrap(), "--greedy", "--json", "--device", "cpu"];
    all.extend(["--max-new-tokens", &tokens, "--batch-size", "1"]);
    all.extend(args);
    let (ok, stdout, stderr) = common::rlhf(&all, model.parent().unwrap());
    assert!(ok, "rlhf {all:?} failed:\n{stderr}");
    stdout.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

/// What the server must answer for a greedy request: `rlhf generate`'s line as the Python
/// script's expectation (`prompt` and `message` both the line's prompt, for a completion or a
/// chat turn; `max_tokens` what the request asks, `None` to leave it to the default).
fn expectation(line: &Value, max_tokens: Option<usize>, generated_at_most: usize) -> Value {
    let completion_tokens = line["completion_ids"].as_array().unwrap().len();
    let finish_reason = if completion_tokens == generated_at_most { "length" } else { "stop" };
    json!({
        "prompt": line["prompt"],
        "message": line["prompt"],
        "max_tokens": max_tokens,
        "text": line["completion"],
        "prompt_tokens": line["prompt_ids"].as_array().unwrap().len(),
        "completion_tokens": completion_tokens,
        "finish_reason": finish_reason,
    })
}

/// Runs tests/serve_support/openai_client.py's `scenario` against `server` with `expected`;
/// panics with its output (and the server's log) when a check fails. Returns the checks made.
fn openai_client(server: &Server, scenario: &str, expected: &Value) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("expected.json");
    std::fs::write(&path, expected.to_string()).unwrap();
    let output = Command::new(common::python())
        .arg(common::repo_root().join("tests/serve_support/openai_client.py"))
        .args([&server.url, scenario, path.to_str().unwrap()])
        // The server is local: no proxy in between.
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .output()
        .expect("python runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "openai_client.py {scenario} failed:\n{stderr}\n{stdout}\nexpected: {expected:#}\nserver log:\n{}",
        server.process.log()
    );
    let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("openai_client.py printed {stdout:?}: {e}"));
    report["checks"].as_u64().unwrap()
}

/// The `openai` client's completions and chat completions are `rlhf generate`'s greedy outputs,
/// streamed or not, with OpenAI's finish reasons and usage; seeded samples repeat; log-probs,
/// stop strings and the streamed usage chunk are as OpenAI gives them.
#[test]
fn the_openai_client_gets_rlhf_generate_outputs_samples_logprobs_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let model = language_model(dir.path(), "qwen3-chat", &qwen3_config(), chat_tokenizer(), 11);
    let server = Server::start(&model, &[]);

    let prompts = ["review 3: the battery is", "the screen is dull, price", "great and fair"];
    let prompts_file = dir.path().join("prompts.jsonl");
    std::fs::write(&prompts_file, prompts.iter().map(|prompt| json!({"prompt": prompt}).to_string() + "\n").collect::<String>()).unwrap();
    const MAX_TOKENS: usize = 24;
    let mut completions: Vec<Value> = generate(&model, &["--prompts", prompts_file.to_str().unwrap()], MAX_TOKENS)
        .iter()
        .map(|line| expectation(line, Some(MAX_TOKENS), MAX_TOKENS))
        .collect();
    // Without `max_tokens`, OpenAI's default of 16.
    let default = generate(&model, &["--prompt", "the battery is great"], 16);
    completions.push(expectation(&default[0], None, 16));
    let chat: Vec<Value> = ["the battery?", "is the screen dull?"]
        .iter()
        .map(|turn| expectation(&generate(&model, &["--chat", turn], MAX_TOKENS)[0], Some(MAX_TOKENS), MAX_TOKENS))
        .collect();
    // The outputs test what they should: full-length answers long enough to hold a stop string.
    for case in completions.iter().chain(&chat) {
        assert_eq!(case["finish_reason"], "length", "{case}");
        assert!(case["text"].as_str().unwrap().chars().count() >= 12, "{case}");
    }
    let expected = json!({"model": "qwen3-chat", "context_length": 128, "completions": completions, "chat": chat});
    let checks = openai_client(&server, "generation", &expected);
    assert!(checks > 300, "only {checks} checks made");
}

/// 32 clients at once (a few milliseconds apart), each with its own prompt and length, get the
/// greedy answers their requests get alone, and the decoding steps ran several rows together.
fn concurrent_requests_are_answered_as_alone(model: &Path) {
    let server = Server::start(model, &[]);
    let client = agent();
    let url = format!("{}/v1/completions", server.url);
    let request = |i: usize| {
        json!({"prompt": format!("review {}: the {} is", i * 7, ["battery", "screen", "price"][i % 3]),
               "max_tokens": 5 + (i * 11) % 40, "temperature": 0})
    };
    let alone: Vec<Value> = (0..32)
        .map(|i| {
            let (status, answer) = post_json(&client, &url, &request(i));
            assert_eq!(status, 200, "{answer}");
            answer
        })
        .collect();
    let before = settled_metrics(&client, &server);
    let barrier = Barrier::new(32);
    let together: Vec<(u16, Value)> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..32)
            .map(|i| {
                let (barrier, url, request) = (&barrier, &url, request(i));
                scope.spawn(move || {
                    let agent = agent();
                    barrier.wait();
                    // Some arrive while the others are decoding: they join the running batch.
                    std::thread::sleep(Duration::from_millis(10 * (i % 4) as u64));
                    post_json(&agent, url, &request)
                })
            })
            .collect();
        clients.into_iter().map(|client| client.join().unwrap()).collect()
    });
    for (i, ((status, answer), alone)) in together.iter().zip(&alone).enumerate() {
        assert_eq!(*status, 200, "request {i}: {answer}");
        let choice = &answer["choices"][0];
        assert_eq!(choice["text"], alone["choices"][0]["text"], "request {i} {}: together vs alone", request(i));
        assert_eq!(choice["finish_reason"], alone["choices"][0]["finish_reason"], "request {i}");
        assert_eq!(answer["usage"], alone["usage"], "request {i}");
    }
    let lengths: Vec<u64> = alone.iter().map(|answer| answer["usage"]["completion_tokens"].as_u64().unwrap()).collect();
    assert!(lengths.iter().filter(|&&n| n >= 20).count() >= 8, "most requests stopped early: {lengths:?}");

    // Continuous batching: the steps during the 32 requests averaged more than two rows.
    let after = settled_metrics(&client, &server);
    let rows = metric(&after, "rlhf_serve_batch_size_sum") - metric(&before, "rlhf_serve_batch_size_sum");
    let steps = metric(&after, "rlhf_serve_batch_size_count") - metric(&before, "rlhf_serve_batch_size_count");
    assert!(rows > steps * 2.0, "{rows} rows in {steps} steps: the requests were not batched\n{after}");
    // Alone, every step had one row.
    assert_eq!(metric(&before, "rlhf_serve_batch_size_sum"), metric(&before, "rlhf_serve_batch_size_count"), "{before}");
    assert_eq!(metric(&after, "rlhf_serve_requests_total{endpoint=\"/v1/completions\",status=\"200\"}"), 64.0, "{after}");
    // Every request counted twice (alone and together).
    let generated: u64 = lengths.iter().sum();
    assert_eq!(metric(&after, "rlhf_serve_generated_tokens_total"), 2.0 * generated as f64, "{after}");
    let prompt_tokens: u64 = alone.iter().map(|answer| answer["usage"]["prompt_tokens"].as_u64().unwrap()).sum();
    assert_eq!(metric(&after, "rlhf_serve_prompt_tokens_total"), 2.0 * prompt_tokens as f64, "{after}");
    assert_eq!(metric(&after, "rlhf_serve_request_latency_seconds_count"), 64.0, "{after}");
    let answered = lengths.iter().filter(|&&n| n > 0).count();
    assert_eq!(metric(&after, "rlhf_serve_time_to_first_token_seconds_count"), 2.0 * answered as f64, "{after}");
    assert_eq!((metric(&after, "rlhf_serve_queue_length"), metric(&after, "rlhf_serve_running_requests")), (0.0, 0.0), "{after}");
}

/// GPT-2: learned positions.
#[test]
fn concurrent_requests_are_batched_and_answered_as_alone_gpt2() {
    let dir = tempfile::tempdir().unwrap();
    concurrent_requests_are_answered_as_alone(&language_model(dir.path(), "gpt2", &gpt2_config(), common::tiny_tokenizer(320), 5));
}

/// Qwen3: rotary positions, each row's counted from its own first token.
#[test]
fn concurrent_requests_are_batched_and_answered_as_alone_qwen3() {
    let dir = tempfile::tempdir().unwrap();
    concurrent_requests_are_answered_as_alone(&language_model(dir.path(), "qwen3", &qwen3_config(), chat_tokenizer(), 6));
}

/// Bad requests get the status and error body OpenAI's API gives, which the `openai` client
/// turns into its exception classes.
#[test]
fn bad_requests_get_openai_error_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let model = language_model(dir.path(), "qwen3-chat", &qwen3_config(), chat_tokenizer(), 11);
    let server = Server::start(&model, &["--max-body-bytes", "2000"]);
    let expected = json!({"model": "qwen3-chat", "context_length": 128, "max_body_bytes": 2000});
    let checks = openai_client(&server, "errors", &expected);
    assert!(checks > 50, "only {checks} checks made");
}

/// The `data:` payloads of a server-sent event stream, each with when it arrived, read on a
/// thread of its own; the channel closes at the stream's end.
fn read_events(response: ureq::http::Response<ureq::Body>) -> mpsc::Receiver<(Instant, String)> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(response.into_body().into_reader());
        let mut line = String::new();
        while lines.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            if let Some(data) = line.trim_end().strip_prefix("data: ") {
                if sender.send((Instant::now(), data.to_string())).is_err() {
                    return;
                }
            }
            line.clear();
        }
    });
    receiver
}

/// SIGTERM while a stream is being generated: the server stops taking requests (a new one is
/// refused), the stream goes on to its last token and `[DONE]`, and the server exits with 0.
#[test]
fn sigterm_finishes_the_streams_in_flight_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = gpt2_config();
    config["n_positions"] = json!(512);
    let model = language_model(dir.path(), "gpt2", &config, common::tiny_tokenizer(320), 1);
    let mut server = Server::start(&model, &[]);
    let url = format!("{}/v1/completions", server.url);
    const MAX_TOKENS: u64 = 400;
    let request = json!({"prompt": "review 1: the battery is", "max_tokens": MAX_TOKENS, "temperature": 0});
    let started = Instant::now();
    let (status, alone) = post_json(&agent(), &url, &request);
    let alone_time = started.elapsed();
    assert_eq!(status, 200, "{alone}");
    // The greedy answer runs to its length: the stream below has that many tokens to give.
    assert_eq!(alone["choices"][0]["finish_reason"], "length", "{alone}");
    assert_eq!(alone["usage"]["completion_tokens"], MAX_TOKENS, "{alone}");

    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let response = agent().post(&url).send_json(&streamed).unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let events = read_events(response);
    let first = events.recv_timeout(Duration::from_secs(30)).expect("a first chunk");
    server.process.signal(libc::SIGTERM);

    // Draining: /health says so (503) until the listener closes (refused).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match agent().get(format!("{}/health", server.url)).call() {
            Ok(response) if response.status().as_u16() == 200 => {
                assert!(Instant::now() < deadline, "still healthy 10 s after SIGTERM; log:\n{}", server.process.log());
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(response) => {
                assert_eq!(response.status().as_u16(), 503);
                break;
            }
            Err(_) => break,
        }
    }
    let draining = Instant::now();
    // A new request is refused: its connection (the listener is closed) or with 503.
    match agent().post(&url).send_json(&request) {
        Ok(mut response) => {
            let status = response.status().as_u16();
            let body = response.body_mut().read_to_string().unwrap();
            assert_eq!(status, 503, "a request while draining: {body}");
            let error: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(error["error"]["code"], "shutting_down", "{body}");
        }
        Err(error) => {
            let text = error.to_string();
            assert!(matches!(error, ureq::Error::Io(_) | ureq::Error::ConnectionFailed), "a request while draining: {text}")
        }
    }

    // The stream goes on to its end.
    let mut all = vec![first];
    all.extend(events.iter());
    let log = server.process.log();
    let datas: Vec<&str> = all.iter().map(|(_, data)| data.as_str()).collect();
    assert_eq!(datas.last(), Some(&"[DONE]"), "the stream's end; log:\n{log}");
    let chunks: Vec<Value> = datas[..datas.len() - 1].iter().map(|data| serde_json::from_str(data).unwrap()).collect();
    let text: String = chunks.iter().filter_map(|chunk| chunk["choices"][0]["text"].as_str()).collect();
    assert_eq!(text, alone["choices"][0]["text"].as_str().unwrap(), "the streamed text");
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], MAX_TOKENS, "{usage}");
    let finishes: Vec<&Value> =
        chunks.iter().filter_map(|chunk| chunk["choices"][0].get("finish_reason")).filter(|r| !r.is_null()).collect();
    assert_eq!(finishes, [&json!("length")]);
    // The stream was in flight while the server drained (it did not end before SIGTERM took).
    let after = all.iter().filter(|(at, _)| *at > draining).count();
    assert!(after > 10, "{after} of {} events came after draining began (the answer alone took {alone_time:?}); log:\n{log}", all.len());

    let status = server.process.wait(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "the server's exit; log:\n{}", server.process.log());
}

/// With one sequence decoding and one waiting, more requests at once are refused with 429
/// `queue_full`; every other one is answered, and so is a request once the queue is free.
#[test]
fn a_full_queue_answers_429() {
    let dir = tempfile::tempdir().unwrap();
    let model = language_model(dir.path(), "gpt2", &gpt2_config(), common::tiny_tokenizer(320), 5);
    let server = Server::start(&model, &["--max-queue", "1", "--max-batch", "1"]);
    let url = format!("{}/v1/completions", server.url);
    let request = |i: usize| json!({"prompt": format!("review {i}: the price is"), "max_tokens": 100, "temperature": 0});
    const CLIENTS: usize = 6;
    let barrier = Barrier::new(CLIENTS);
    let answers: Vec<(u16, Value)> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let (barrier, url, request) = (&barrier, &url, request(i));
                scope.spawn(move || {
                    let client = agent();
                    barrier.wait();
                    post_json(&client, url, &request)
                })
            })
            .collect();
        clients.into_iter().map(|client| client.join().unwrap()).collect()
    });
    let refused = answers.iter().filter(|(status, _)| *status == 429).count();
    assert!(refused >= 1, "no request was refused: {answers:?}");
    assert!(refused < CLIENTS, "every request was refused: {answers:?}");
    for (status, answer) in &answers {
        match status {
            429 => assert_eq!(
                answer["error"],
                json!({"message": answer["error"]["message"], "type": "rate_limit_error", "param": null, "code": "queue_full"}),
                "{answer}"
            ),
            200 => assert_eq!(answer["choices"].as_array().unwrap().len(), 1, "{answer}"),
            _ => panic!("{status}: {answer}"),
        }
        if *status == 429 {
            assert!(answer["error"]["message"].as_str().is_some_and(|message| !message.is_empty()), "{answer}");
        }
    }
    // The queue has room again.
    let (status, answer) = post_json(&agent(), &url, &request(0));
    assert_eq!(status, 200, "{answer}");
    let metrics = settled_metrics(&agent(), &server);
    assert_eq!(metric(&metrics, "rlhf_serve_requests_total{endpoint=\"/v1/completions\",status=\"429\"}"), refused as f64, "{metrics}");
    assert_eq!(metric(&metrics, "rlhf_serve_queue_length"), 0.0, "nothing waits once all is answered: {metrics}");
}

/// A reward model's /v1/score gives `rlhf score`'s rewards, and σ(r_chosen − r_rejected) for
/// pairs; it serves no completions.
#[test]
fn a_reward_model_scores_as_rlhf_score_does() {
    let dir = tempfile::tempdir().unwrap();
    let language = language_model(dir.path(), "gpt2", &gpt2_config(), common::tiny_tokenizer(320), 8);
    let reward = dir.path().join("rm");
    {
        let _one_at_a_time = MAKING_MODELS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        tch::manual_seed(9);
        RewardModel::load(&language, Device::Cpu, Precision::Fp32, true).unwrap().save(&reward).unwrap();
    }
    let items = [
        ("review 1: the battery is", " great"),
        ("review 1: the battery is", " dull and the price fair"),
        ("review 2: the screen is", " dull"),
        ("the price", " is fair"),
        ("", "a response without a prompt"),
    ];
    let pairs = [("review 3: the battery is", " great", " dull"), ("the screen", " is great", " is dull, price fair")];
    let input = dir.path().join("input.jsonl");
    let lines: Vec<String> = items
        .iter()
        .map(|(prompt, response)| json!({"prompt": prompt, "response": response}).to_string())
        .chain(pairs.iter().map(|(prompt, chosen, rejected)| json!({"prompt": prompt, "chosen": chosen, "rejected": rejected}).to_string()))
        .collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let (ok, stdout, stderr) =
        common::rlhf(&["score", "--model", reward.to_str().unwrap(), "--input", input.to_str().unwrap(), "--device", "cpu"], dir.path());
    assert!(ok, "{stderr}");
    let scored: Vec<Value> = stdout.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(scored.len(), items.len() + pairs.len(), "{stdout}");
    let expected_rewards: Vec<f64> = scored[..items.len()].iter().map(|line| line["reward"].as_f64().unwrap()).collect();
    assert!(expected_rewards.iter().any(|r| (r - expected_rewards[0]).abs() > 1e-3), "the items score alike: {expected_rewards:?}");

    let server = Server::start(&reward, &["--name", "judge"]);
    let client = agent();
    let (status, models) = get_text(&client, &format!("{}/v1/models", server.url));
    assert_eq!(status, 200);
    let models: Value = serde_json::from_str(&models).unwrap();
    assert_eq!(models["data"].as_array().unwrap().iter().map(|model| model["id"].clone()).collect::<Vec<_>>(), [json!("judge")]);
    let score = format!("{}/v1/score", server.url);
    let close = |got: &Value, want: f64, what: &str| {
        let got = got.as_f64().unwrap_or_else(|| panic!("{what}: {got} is not a number"));
        assert!((got - want).abs() <= 1e-5, "{what}: served {got}, rlhf score {want}");
    };

    let body = json!({"model": "judge", "items": items.iter().map(|(prompt, response)| json!({"prompt": prompt, "response": response})).collect::<Vec<_>>()});
    let (status, answer) = post_json(&client, &score, &body);
    assert_eq!(status, 200, "{answer}");
    let rewards = answer["rewards"].as_array().unwrap();
    assert_eq!(rewards.len(), items.len(), "{answer}");
    for (i, (got, want)) in rewards.iter().zip(&expected_rewards).enumerate() {
        close(got, *want, &format!("item {i}"));
    }

    let body = json!({"pairs": pairs.iter().map(|(prompt, chosen, rejected)| json!({"prompt": prompt, "chosen": chosen, "rejected": rejected})).collect::<Vec<_>>()});
    let (status, answer) = post_json(&client, &score, &body);
    assert_eq!(status, 200, "{answer}");
    let (rewards, probabilities) = (answer["rewards"].as_array().unwrap(), answer["probabilities"].as_array().unwrap());
    assert_eq!((rewards.len(), probabilities.len()), (pairs.len(), pairs.len()), "{answer}");
    for (i, line) in scored[items.len()..].iter().enumerate() {
        close(&rewards[i][0], line["reward_first"].as_f64().unwrap(), &format!("pair {i}: chosen"));
        close(&rewards[i][1], line["reward_second"].as_f64().unwrap(), &format!("pair {i}: rejected"));
        close(&probabilities[i], line["p_first_preferred"].as_f64().unwrap(), &format!("pair {i}: probability"));
        let (chosen, rejected) = (rewards[i][0].as_f64().unwrap(), rewards[i][1].as_f64().unwrap());
        let sigmoid = 1.0 / (1.0 + (rejected - chosen).exp());
        assert!((probabilities[i].as_f64().unwrap() - sigmoid).abs() < 1e-12, "pair {i}: {answer}");
    }

    // No completions from a reward model; its id is `--name`'s.
    for (path, body) in [
        ("/v1/completions", json!({"model": "judge", "prompt": "a"})),
        ("/v1/chat/completions", json!({"model": "judge", "messages": [{"role": "user", "content": "a"}]})),
    ] {
        let (status, answer) = post_json(&client, &format!("{}{path}", server.url), &body);
        assert_eq!(status, 404, "{path}: {answer}");
        assert_eq!(answer["error"]["type"], "invalid_request_error", "{path}: {answer}");
    }
    let (status, answer) = post_json(&client, &score, &json!({"model": "rm", "items": [{"prompt": "a", "response": "b"}]}));
    assert_eq!((status, &answer["error"]["code"]), (404, &json!("model_not_found")), "{answer}");
}
