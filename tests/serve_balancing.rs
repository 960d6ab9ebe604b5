//! Two `rlhf serve` replicas behind nginx configured with the repository's `deploy/nginx.conf`
//! (the file docker-compose.yml mounts; only the replica addresses and the listening port are
//! rendered for the test): requests are spread over both replicas, a replica killed with SIGKILL
//! costs no request, streams pass through, nginx's body limit is the server's, and nginx's own
//! errors have OpenAI's error body. Needs Debian's nginx at /usr/sbin/nginx (`scripts/setup
//! --test` installs it); no Docker.

mod common;
mod serve_support;

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use serve_support::{agent, get_text, post, Process};

const NGINX: &str = "/usr/sbin/nginx";
/// The model's directory name, hence the model id the replicas serve.
const MODEL_ID: &str = "tiny";
/// `rlhf serve --max-body-bytes`'s default; deploy/nginx.conf's `client_max_body_size 1m`.
const MAX_BODY_BYTES: usize = 1_048_576;

/// An `rlhf serve` process on 127.0.0.1 with a port the system picked.
struct Replica {
    process: Process,
    /// `127.0.0.1:PORT`
    addr: String,
}

impl Replica {
    fn start(name: &str, model: &Path) -> Replica {
        let mut process = Process::spawn(
            name,
            Command::new(env!("CARGO_BIN_EXE_rlhf"))
                .args(["serve", "--model", model.to_str().unwrap(), "--host", "127.0.0.1", "--port", "0"])
                .env("RUST_LOG", "info"),
            libc::SIGKILL,
        );
        let addr = process.listening_address(Duration::from_secs(120));
        Replica { addr, process }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// nginx running deploy/nginx.conf (replica addresses and port rendered) in a directory of its
/// own: pid file, logs and temporary files stay there, so it runs as root or not.
fn start_nginx(dir: &Path, replicas: [&str; 2]) -> (Process, String) {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let deploy = std::fs::read_to_string(common::repo_root().join("deploy/nginx.conf")).unwrap();
    let site = render_site(&deploy, replicas, port);
    std::fs::write(dir.join("rlhf.conf"), site).unwrap();

    let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
    // As root, nginx's workers would switch to `nobody`, who cannot enter the test's directory.
    // SAFETY: geteuid has no preconditions.
    let user = if unsafe { libc::geteuid() } == 0 { "user root;" } else { "" };
    let main = format!(
        "# The part of the official nginx image's main config that matters, with every path in the test's directory.
daemon off;
master_process on;
worker_processes 1;
{user}
error_log stderr notice;
pid {pid};
events {{ worker_connections 256; }}
http {{
    access_log {access};
    client_body_temp_path {body};
    proxy_temp_path {proxy};
    fastcgi_temp_path {fastcgi};
    uwsgi_temp_path {uwsgi};
    scgi_temp_path {scgi};
    include {site};
}}
",
        pid = path("nginx.pid"),
        access = path("access.log"),
        body = path("client_body_temp"),
        proxy = path("proxy_temp"),
        fastcgi = path("fastcgi_temp"),
        uwsgi = path("uwsgi_temp"),
        scgi = path("scgi_temp"),
        site = path("rlhf.conf"),
    );
    std::fs::write(dir.join("nginx.conf"), main).unwrap();
    assert!(Path::new(NGINX).exists(), "no nginx at {NGINX}: run scripts/setup --test (installs Debian's nginx)");
    let mut nginx =
        Process::spawn("nginx", Command::new(NGINX).args(["-e", "stderr", "-p", &path(""), "-c", &path("nginx.conf")]), libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        nginx.assert_running();
        assert!(Instant::now() < deadline, "nginx does not listen on port {port}; its log:\n{}", nginx.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    (nginx, format!("http://127.0.0.1:{port}"))
}

/// deploy/nginx.conf with the replicas' addresses for `rlhf-a:8000` and `rlhf-b:8000` and
/// `listen 127.0.0.1:PORT;` for `listen 8000;` (comments left as they are); panics unless each
/// appears exactly once.
fn render_site(deploy: &str, replicas: [&str; 2], port: u16) -> String {
    let listen = format!("listen 127.0.0.1:{port};");
    let substitutions = [("rlhf-a:8000", replicas[0]), ("rlhf-b:8000", replicas[1]), ("listen 8000;", listen.as_str())];
    let mut found = [0; 3];
    let mut site = String::new();
    for line in deploy.lines() {
        let mut line = line.to_string();
        if !line.trim_start().starts_with('#') {
            for ((from, to), found) in substitutions.iter().zip(&mut found) {
                if line.contains(from) {
                    *found += 1;
                    line = line.replace(from, to);
                }
            }
        }
        site.push_str(&line);
        site.push('\n');
    }
    for ((from, _), found) in substitutions.iter().zip(found) {
        assert_eq!(found, 1, "deploy/nginx.conf: `{from}` expected on one line outside comments");
    }
    site
}

fn completion_request(i: usize) -> String {
    json!({"model": MODEL_ID, "prompt": format!("review {i}: the battery is"), "max_tokens": 6, "temperature": 0}).to_string()
}

/// Asserts that a /v1/completions answer is a 200 with one completion in it.
fn assert_completion(status: u16, body: &str, what: &str) {
    assert_eq!(status, 200, "{what}: {body}");
    let answer: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {body}"));
    assert_eq!(answer["object"], "text_completion", "{what}: {body}");
    let choices = answer["choices"].as_array().unwrap_or_else(|| panic!("{what}: no choices: {body}"));
    assert_eq!(choices.len(), 1, "{what}: {body}");
    assert!(choices[0]["text"].as_str().is_some_and(|text| !text.is_empty()), "{what}: no completion text: {body}");
}

/// `rlhf_serve_requests_total{endpoint="/v1/completions",status="200"}` on a replica's /metrics
/// (0 before the first such request).
fn completions_served(agent: &ureq::Agent, replica: &Replica) -> u64 {
    let url = format!("{}/metrics", replica.url());
    let (status, text) = get_text(agent, &url);
    assert_eq!(status, 200);
    let mut total = 0.0;
    for line in text.lines().filter(|line| line.starts_with("rlhf_serve_requests_total{")) {
        let (labels, value) = line["rlhf_serve_requests_total{".len()..].rsplit_once('}').unwrap();
        let labels: BTreeMap<&str, &str> = labels
            .split(',')
            .filter_map(|pair| pair.split_once('='))
            .map(|(name, value)| (name.trim(), value.trim().trim_matches('"')))
            .collect();
        if labels.get("endpoint") == Some(&"/v1/completions") && labels.get("status") == Some(&"200") {
            total += value.trim().parse::<f64>().unwrap_or_else(|e| panic!("{line}: {e}"));
        }
    }
    total as u64
}

/// Both replicas' counts once they add up to `expected` (a replica may count a request a moment
/// after answering it).
fn served_by_each(agent: &ureq::Agent, replicas: [&Replica; 2], expected: u64) -> [u64; 2] {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let counts = replicas.map(|replica| completions_served(agent, replica));
        if counts.iter().sum::<u64>() == expected || Instant::now() > deadline {
            return counts;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A random GPT-2 made by transformers, with a tokenizer, in `dir/tiny`.
fn tiny_model(dir: &Path) -> PathBuf {
    let model = dir.join(MODEL_ID);
    let config = json!({"model_type": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 32, "n_positions": 64, "vocab_size": 320,
                        "bos_token_id": 0, "eos_token_id": 0, "initializer_range": 0.1});
    common::hf_reference(&["make-model", &config.to_string(), model.to_str().unwrap(), "3"]);
    common::tiny_tokenizer(320).save(&model).unwrap();
    model
}

#[test]
fn nginx_spreads_requests_over_two_replicas_and_routes_around_a_killed_one() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let mut a = Replica::start("replica a", &model);
    let mut b = Replica::start("replica b", &model);
    let (mut nginx, base) = start_nginx(dir.path(), [&a.addr, &b.addr]);
    let agent = agent();
    let completions = format!("{base}/v1/completions");

    // 20 requests, 4 at a time: every one answered, by both replicas between them.
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|worker| {
                let (agent, completions) = (&agent, &completions);
                scope.spawn(move || {
                    for i in (worker..20).step_by(4) {
                        let (status, body) = post(agent, completions, &completion_request(i));
                        assert_completion(status, &body, &format!("request {i} through nginx"));
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().unwrap();
        }
    });
    let [by_a, by_b] = served_by_each(&agent, [&a, &b], 20);
    assert!(by_a > 0 && by_b > 0 && by_a + by_b == 20, "completions served: a {by_a}, b {by_b} (20 sent)");

    // A stream passes through as server-sent events, to its end.
    let mut request: Value = serde_json::from_str(&completion_request(20)).unwrap();
    request["stream"] = json!(true);
    let (status, body) = post(&agent, &completions, &request.to_string());
    assert_eq!(status, 200, "{body}");
    let events: Vec<&str> = body.lines().filter_map(|line| line.strip_prefix("data: ")).collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{body}");
    assert!(events.len() >= 2, "{body}");
    for event in &events[..events.len() - 1] {
        let chunk: Value = serde_json::from_str(event).unwrap_or_else(|e| panic!("event not JSON ({e}): {event}"));
        assert_eq!(chunk["object"], "text_completion", "{event}");
    }

    // nginx's limit is the server's: a body of exactly --max-body-bytes (a short prompt padded
    // with spaces) is served, one byte more is refused by nginx with an OpenAI-style error.
    let padded = |size: usize| {
        let mut body = completion_request(21);
        body.push_str(&" ".repeat(size - body.len()));
        body
    };
    let (status, body) = post(&agent, &completions, &padded(MAX_BODY_BYTES));
    assert_completion(status, &body, "a body of exactly the limit");
    let (status, body) = post(&agent, &completions, &padded(MAX_BODY_BYTES + 1));
    assert_eq!(status, 413, "{body}");
    let error: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("413 not JSON ({e}): {body}"));
    assert_eq!(error["error"]["type"], "invalid_request_error", "{body}");

    // /metrics is per replica, not load-balanced.
    let (status, body) = get_text(&agent, &format!("{base}/metrics"));
    assert_eq!(status, 404, "{body}");

    // SIGKILL one replica: nginx sends the next requests to the other, none fails.
    let before = completions_served(&agent, &a);
    b.process.signal(libc::SIGKILL);
    b.process.wait(Duration::from_secs(10));
    for i in 0..10 {
        let (status, body) = post(&agent, &completions, &completion_request(100 + i));
        assert_completion(status, &body, &format!("request {i} after replica b was killed"));
    }
    assert_eq!(completions_served(&agent, &a), before + 10);

    // With no replica left, nginx's own 502 has an OpenAI-style body too.
    a.process.signal(libc::SIGKILL);
    a.process.wait(Duration::from_secs(10));
    let (status, body) = post(&agent, &completions, &completion_request(200));
    assert_eq!(status, 502, "{body}");
    let error: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("502 not JSON ({e}): {body}"));
    assert_eq!(error["error"]["code"], "bad_gateway", "{body}");
    nginx.assert_running();
}
