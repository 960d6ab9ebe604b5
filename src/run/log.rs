//! Logging: `tracing` to stderr (never stdout, which carries command output), and, once a run
//! directory exists, to its `run.log` as well.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Mutex;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

static RUN_LOG: Mutex<Option<File>> = Mutex::new(None);

/// Installs the global subscriber; `RUST_LOG` overrides the default `info` level.
pub fn init() {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour codes only for a person at a terminal: a redirected log stays plain text.
    let stderr =
        tracing_subscriber::fmt::layer().with_ansi(std::io::stderr().is_terminal()).with_writer(std::io::stderr).with_filter(filter());
    let run_log = tracing_subscriber::fmt::layer().with_ansi(false).with_writer(RunLogWriter).with_filter(filter());
    // A second init (tests calling commands in-process) keeps the first subscriber.
    let _ = tracing_subscriber::registry().with(stderr).with(run_log).try_init();
}

/// From now on, log lines are also appended to `path`.
pub fn attach_run_log(path: &Path) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    *RUN_LOG.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(file);
    Ok(())
}

#[derive(Clone, Copy)]
struct RunLogWriter;

impl Write for RunLogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        match RUN_LOG.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).as_mut() {
            Some(file) => file.write(bytes),
            None => Ok(bytes.len()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match RUN_LOG.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).as_mut() {
            Some(file) => file.flush(),
            None => Ok(()),
        }
    }
}

impl<'a> MakeWriter<'a> for RunLogWriter {
    type Writer = RunLogWriter;
    fn make_writer(&'a self) -> Self::Writer {
        *self
    }
}
