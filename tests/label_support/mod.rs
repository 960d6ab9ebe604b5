//! Helpers shared by the labeling tests (`tests/label_*.rs`): the `rlhf` binary, a server
//! process on 127.0.0.1 with a free port, an HTTP client, and direct database reads.
#![allow(dead_code)] // each test binary uses its own subset

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const RLHF: &str = env!("CARGO_BIN_EXE_rlhf");

/// Runs `rlhf ARGS…`.
pub fn rlhf(args: &[&str]) -> Output {
    Command::new(RLHF).args(args).output().expect("rlhf runs")
}

/// Runs `rlhf ARGS…`, asserts success and returns stdout.
pub fn rlhf_ok(args: &[&str]) -> String {
    let output = rlhf(args);
    assert!(output.status.success(), "rlhf {args:?} failed:\n{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("utf-8 stdout")
}

/// Runs `rlhf ARGS…`, asserts failure and returns stderr.
pub fn rlhf_err(args: &[&str]) -> String {
    let output = rlhf(args);
    assert!(!output.status.success(), "rlhf {args:?} should fail, printed:\n{}", String::from_utf8_lossy(&output.stdout));
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// Writes `lines` (JSON values) as a JSONL file.
pub fn write_jsonl(path: &Path, lines: &[Value]) {
    let text: String = lines.iter().map(|line| format!("{line}\n")).collect();
    std::fs::write(path, text).unwrap();
}

/// `count` distinct pairs: prompt `prompt {i}`, responses `a{i}` / `b{i}`.
pub fn numbered_pairs(count: usize) -> Vec<Value> {
    (0..count).map(|i| json!({"prompt": format!("prompt {i}"), "response_a": format!("a{i}"), "response_b": format!("b{i}")})).collect()
}

/// A database at `dir/labels.db` holding `pairs`.
pub fn database_with(dir: &Path, pairs: &[Value]) -> PathBuf {
    let db = dir.join("labels.db");
    let file = dir.join("pairs.jsonl");
    write_jsonl(&file, pairs);
    rlhf_ok(&["label", "import", "--db", path_str(&db), path_str(&file)]);
    db
}

pub fn add_annotator(db: &Path, name: &str) -> String {
    rlhf_ok(&["label", "annotator", "add", "--db", path_str(db), name]).trim().to_string()
}

/// Annotators `annotator-00`, `annotator-01`, … through the library (faster than a process
/// each); returns their tokens.
pub fn add_annotators(db: &Path, count: usize) -> Vec<String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let store = rlhf_lab::label::Store::open(db).await.unwrap();
        let mut tokens = Vec::new();
        for i in 0..count {
            tokens.push(store.add_annotator(&format!("annotator-{i:02}"), rlhf_lab::label::Role::Annotator).await.unwrap());
        }
        store.close().await;
        tokens
    })
}

/// A new annotator `name` labels, through the library as the server records labels, every pair
/// the store hands them (at most `limit`), answering each with `answer`; returns the pairs as
/// shown (left/right in the random order drawn for them) with the answers.
pub fn label_through_library(
    db: &Path,
    name: &str,
    limit: usize,
    mut answer: impl FnMut(usize, &rlhf_lab::label::assign::ShownPair) -> rlhf_lab::label::Preferred,
) -> Vec<(rlhf_lab::label::assign::ShownPair, rlhf_lab::label::Preferred)> {
    let token = add_annotator(db, name);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let store = rlhf_lab::label::Store::open(db).await.unwrap();
        let annotator = store.annotator_by_token(&token).await.unwrap().unwrap();
        let policy = rlhf_lab::label::Policy::default();
        let mut labeled = Vec::new();
        while labeled.len() < limit {
            let Some(pair) = store.next_pair(annotator.id, &policy).await.unwrap() else { break };
            let preferred = answer(labeled.len(), &pair);
            store.record_label(annotator.id, pair.pair_id, preferred, &policy).await.unwrap();
            labeled.push((pair, preferred));
        }
        store.close().await;
        labeled
    })
}

/// A `rlhf label serve` process on 127.0.0.1 with a port of its own; killed when dropped.
pub struct Server {
    child: Child,
    pub url: String,
    pub addr: String,
    log: Arc<Mutex<String>>,
}

/// The clock of a server started with `Server::start_with_clock`: moved forward by the test
/// (`RLHF_TEST_CLOCK_SHIFT`), never by waiting.
pub struct TestClock {
    file: PathBuf,
    shift_ms: std::cell::Cell<i64>,
}

impl TestClock {
    pub fn advance(&self, by: Duration) {
        self.shift_ms.set(self.shift_ms.get() + by.as_millis() as i64);
        std::fs::write(&self.file, self.shift_ms.get().to_string()).unwrap();
    }
}

impl Server {
    pub fn start(db: &Path, extra_args: &[&str]) -> Server {
        Self::spawn(db, extra_args, None, None)
    }

    /// A server that may hold at most `limit` open files, sockets included (`ulimit -n`).
    pub fn start_with_fd_limit(db: &Path, limit: u32, extra_args: &[&str]) -> Server {
        Self::spawn(db, extra_args, None, Some(limit))
    }

    /// A server whose clock only moves when the test advances it (beside the real one, whose
    /// progress during a test is negligible against the windows it tests).
    pub fn start_with_clock(db: &Path, extra_args: &[&str]) -> (Server, TestClock) {
        let file = db.with_extension("clock");
        let clock = TestClock { file, shift_ms: std::cell::Cell::new(0) };
        clock.advance(Duration::ZERO);
        (Self::spawn(db, extra_args, Some(&clock.file), None), clock)
    }

    fn spawn(db: &Path, extra_args: &[&str], clock_file: Option<&Path>, fd_limit: Option<u32>) -> Server {
        let mut command = match fd_limit {
            // `exec` keeps the pid: `terminate` signals the server itself, not the shell.
            Some(limit) => {
                let mut shell = Command::new("sh");
                shell.args(["-c", &format!("ulimit -n {limit} && exec \"$0\" \"$@\""), RLHF]);
                shell
            }
            None => Command::new(RLHF),
        };
        if let Some(file) = clock_file {
            command.env("RLHF_TEST_CLOCK_SHIFT", file);
        }
        let mut child = command
            .args(["label", "serve", "--db", path_str(db), "--bind", "127.0.0.1:0"])
            .args(extra_args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("rlhf label serve starts");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let log = Arc::new(Mutex::new(String::new()));
        let mut addr = None;
        let mut line = String::new();
        while addr.is_none() {
            line.clear();
            if stderr.read_line(&mut line).unwrap() == 0 {
                let status = child.wait().unwrap();
                panic!("server exited ({status}) before listening; stderr:\n{}", log.lock().unwrap());
            }
            log.lock().unwrap().push_str(&line);
            addr = line.trim().strip_prefix("listening on http://").map(str::to_string);
        }
        // Keep reading so the server never blocks on a full pipe; keep the text for failures.
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut rest = String::new();
            while stderr.read_line(&mut rest).map(|n| n > 0).unwrap_or(false) {
                sink.lock().unwrap().push_str(&rest);
                rest.clear();
            }
        });
        let addr = addr.unwrap();
        Server { child, url: format!("http://{addr}"), addr, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the server's log shows `needle` within `limit`: its stderr is read by a thread of
    /// its own, so a line the server wrote may reach the log a moment after its effect is seen.
    pub fn log_shows(&self, needle: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while !self.log().contains(needle) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn client(&self, token: &str) -> Client {
        Client::new(&self.url, token)
    }

    /// SIGKILL: the process gets no chance to clean up.
    pub fn kill_hard(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits (at most `limit`) for the process to exit.
    pub fn terminate(&mut self, limit: Duration) -> ExitStatus {
        let status = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status().unwrap();
        assert!(status.success());
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "server still running {limit:?} after SIGTERM; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A status and a body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// The `error` message of an error reply.
    pub fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_else(|| panic!("no error message: {}", self.body)).to_string()
    }
}

/// One annotator's HTTP client (keep-alive, no redirects, errors as plain statuses).
pub struct Client {
    agent: ureq::Agent,
    base: String,
    token: String,
}

impl Client {
    pub fn new(base: &str, token: &str) -> Client {
        let config = ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(20))).build();
        Client { agent: ureq::Agent::new_with_config(config), base: base.into(), token: token.into() }
    }

    fn auth(&self) -> String {
        format!("Bearer {}", self.token)
    }

    fn reply(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<Reply, ureq::Error> {
        let mut response = result?;
        let status = response.status().as_u16();
        let body = response.body_mut().read_to_string()?;
        Ok(Reply { status, body })
    }

    pub fn try_get(&self, path: &str) -> Result<Reply, ureq::Error> {
        Self::reply(self.agent.get(format!("{}{path}", self.base)).header("Authorization", self.auth()).call())
    }

    pub fn get(&self, path: &str) -> Reply {
        self.try_get(path).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    pub fn try_post(&self, path: &str, body: &str) -> Result<Reply, ureq::Error> {
        Self::reply(
            self.agent
                .post(format!("{}{path}", self.base))
                .header("Authorization", self.auth())
                .header("Content-Type", "application/json")
                .send(body),
        )
    }

    pub fn post(&self, path: &str, body: &str) -> Reply {
        self.try_post(path, body).unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    pub fn delete(&self, path: &str) -> Reply {
        Self::reply(self.agent.delete(format!("{}{path}", self.base)).header("Authorization", self.auth()).call())
            .unwrap_or_else(|e| panic!("DELETE {path}: {e}"))
    }

    /// `GET /api/pairs/next`: the pair, or `None` on 204.
    pub fn next(&self) -> Option<Value> {
        let reply = self.get("/api/pairs/next");
        match reply.status {
            200 => Some(reply.json()),
            204 => None,
            other => panic!("GET /api/pairs/next answered {other}: {}", reply.body),
        }
    }

    /// `POST /api/labels`.
    pub fn label(&self, pair_id: i64, preferred: &str) -> Reply {
        self.post("/api/labels", &json!({"pair_id": pair_id, "preferred": preferred}).to_string())
    }
}

/// Sends `request` as is over a fresh connection and returns the status code (for requests an
/// HTTP client would normalise, like `..` in paths).
pub fn raw_status(addr: &str, request: &str) -> u16 {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or_else(|| panic!("no status line: {answer:?}"))
}

/// Runs `query` on the database at `db` and returns its rows.
pub fn db_rows<T>(db: &Path, query: &str) -> Vec<T>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow> + Send + Unpin,
{
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let options = sqlx::sqlite::SqliteConnectOptions::new().filename(db).read_only(true);
        let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
        let rows = sqlx::query_as(query).fetch_all(&pool).await.unwrap();
        pool.close().await;
        rows
    })
}

/// The JSONL lines of `rlhf label export` with `flags`.
pub fn export(db: &Path, dir: &Path, flags: &[&str]) -> Vec<Value> {
    let out = dir.join("prefs.jsonl");
    let mut args = vec!["label", "export", "--db", path_str(db), "-o", path_str(&out)];
    args.extend_from_slice(flags);
    rlhf_ok(&args);
    std::fs::read_to_string(&out).unwrap().lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}
