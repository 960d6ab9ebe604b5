//! Helpers shared by the `rlhf serve` tests (`tests/serve.rs`, `tests/serve_balancing.rs`): a
//! child process whose output is kept for failure messages, and an HTTP client.
#![allow(dead_code)] // each test binary uses its own subset

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A child process stopped when dropped, its stderr and stdout kept for failure messages.
pub struct Process {
    name: String,
    child: Child,
    log: Arc<Mutex<String>>,
    /// Stdout's first line, which a server uses to say where it listens (not in `log`).
    first_stdout_line: mpsc::Receiver<String>,
    /// How to stop it: nginx's master gets SIGTERM so that it takes its worker with it.
    stop_signal: libc::c_int,
}

impl Process {
    pub fn spawn(name: &str, command: &mut Command, stop_signal: libc::c_int) -> Process {
        // SAFETY: prctl is async-signal-safe; between fork and exec nothing else runs. The child
        // gets `stop_signal` should the thread that spawned it die without dropping it.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, stop_signal) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name} does not start: {e}"));
        let log = Arc::new(Mutex::new(String::new()));
        drain_into(child.stderr.take().unwrap(), Arc::clone(&log));
        let stdout = child.stdout.take().unwrap();
        let (sender, first_stdout_line) = mpsc::channel();
        let stdout_log = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut stdout = BufReader::new(stdout);
            let mut line = String::new();
            let _ = stdout.read_line(&mut line);
            let _ = sender.send(line);
            drain_into(stdout, stdout_log);
        });
        Process { name: name.to_string(), child, log, first_stdout_line, stop_signal }
    }

    /// `HOST:PORT` from the `listening on http://HOST:PORT` line on stdout; kills the process
    /// and panics with its log when no such line comes within `timeout` (a server that never
    /// listens fails the test instead of hanging it).
    pub fn listening_address(&mut self, timeout: Duration) -> String {
        let line = self.first_stdout_line.recv_timeout(timeout).unwrap_or_default();
        if let Some(addr) = line.trim_end().strip_prefix("listening on http://") {
            return addr.to_string();
        }
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
        panic!("{}: no `listening on http://…` line on stdout (got {line:?}); stderr:\n{}", self.name, self.log());
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Panics with the log when the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("{} exited ({status}); its log:\n{}", self.name, self.log());
        }
    }

    pub fn signal(&mut self, signal: libc::c_int) {
        if self.child.try_wait().unwrap().is_none() {
            // SAFETY: kill(2) on the pid of a child this process has not reaped yet.
            unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        }
    }

    /// Its exit status, once it exits within `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not exit within {timeout:?}; its log:\n{}", self.name, self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.signal(self.stop_signal);
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads `from` to its end on a thread of its own (a child never blocks on a full pipe).
fn drain_into(from: impl Read + Send + 'static, log: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        let mut lines = BufReader::new(from);
        let mut line = String::new();
        while lines.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            log.lock().unwrap().push_str(&line);
            line.clear();
        }
    });
}

/// Errors as plain statuses; a minute at most per request.
pub fn agent() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(60))).build(),
    )
}

/// Status and body of a GET of `url`.
pub fn get_text(agent: &ureq::Agent, url: &str) -> (u16, String) {
    status_and_body(agent.get(url).call(), "GET", url)
}

/// Status and body of a POST of `body` (JSON text, sent as is) to `url`.
pub fn post(agent: &ureq::Agent, url: &str, body: &str) -> (u16, String) {
    status_and_body(agent.post(url).header("Content-Type", "application/json").send(body), "POST", url)
}

/// Status and JSON body of a POST of `body` to `url`.
pub fn post_json(agent: &ureq::Agent, url: &str, body: &Value) -> (u16, Value) {
    let (status, text) = status_and_body(agent.post(url).send_json(body), "POST", url);
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("POST {url} {body}: {status}, not JSON ({e}): {text}")))
}

/// Panics on a failed exchange (no connection, a timeout), not on an error status.
fn status_and_body(result: Result<ureq::http::Response<ureq::Body>, ureq::Error>, method: &str, url: &str) -> (u16, String) {
    let mut response = result.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    (status, response.body_mut().with_config().limit(16 << 20).read_to_string().unwrap())
}
