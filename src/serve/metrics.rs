//! The server's figures in Prometheus' text exposition format (version 0.0.4): counters of
//! requests, prompt and generated tokens, the queue and the running batch, and histograms of
//! batch sizes and latencies. Written by hand: a few atomics and one lock per histogram.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Every metric's name starts with this.
pub const PREFIX: &str = "rlhf_serve_";

/// Cumulative bucket counts over fixed upper bounds, their sum and count.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    state: Mutex<HistogramState>,
}

#[derive(Debug, Default)]
struct HistogramState {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram { bounds, state: Mutex::new(HistogramState { counts: vec![0; bounds.len()], ..Default::default() }) }
    }

    pub fn observe(&self, value: f64) {
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for (count, &bound) in state.counts.iter_mut().zip(self.bounds) {
            if value <= bound {
                *count += 1;
            }
        }
        state.sum += value;
        state.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let _ = writeln!(out, "# HELP {PREFIX}{name} {help}\n# TYPE {PREFIX}{name} histogram");
        for (count, bound) in state.counts.iter().zip(self.bounds) {
            let _ = writeln!(out, "{PREFIX}{name}_bucket{{le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "{PREFIX}{name}_bucket{{le=\"+Inf\"}} {}", state.count);
        let _ = writeln!(out, "{PREFIX}{name}_sum {}\n{PREFIX}{name}_count {}", state.sum, state.count);
    }
}

const SECONDS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];
const ROWS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

#[derive(Debug)]
pub struct Metrics {
    /// Answers by endpoint and status code.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    /// Sequences waiting to join the batch.
    pub queue_length: AtomicUsize,
    /// Sequences in the running batch.
    pub running: AtomicUsize,
    /// Rows of each decoding step.
    pub batch_size: Histogram,
    /// From a request's arrival to its last byte (a stream's end).
    pub request_latency: Histogram,
    /// From a request's arrival to its first generated token.
    pub time_to_first_token: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::default(),
            prompt_tokens: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            queue_length: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            batch_size: Histogram::new(ROWS),
            request_latency: Histogram::new(SECONDS),
            time_to_first_token: Histogram::new(SECONDS),
        }
    }
}

impl Metrics {
    pub fn count_request(&self, endpoint: &str, status: u16) {
        let mut requests = self.requests.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *requests.entry((endpoint.to_string(), status)).or_default() += 1;
    }

    /// The exposition text of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# HELP {PREFIX}requests_total Requests answered, by endpoint and status code.");
        let _ = writeln!(out, "# TYPE {PREFIX}requests_total counter");
        for ((endpoint, status), count) in self.requests.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).iter() {
            let _ = writeln!(out, "{PREFIX}requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {count}");
        }
        let mut scalar = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {PREFIX}{name} {help}\n# TYPE {PREFIX}{name} {kind}\n{PREFIX}{name} {value}");
        };
        scalar("prompt_tokens_total", "counter", "Prompt tokens prefilled.", self.prompt_tokens.load(Ordering::Relaxed));
        scalar("generated_tokens_total", "counter", "Tokens generated.", self.generated_tokens.load(Ordering::Relaxed));
        scalar("queue_length", "gauge", "Sequences waiting to join the running batch.", self.queue_length.load(Ordering::Relaxed) as u64);
        scalar("running_requests", "gauge", "Sequences in the running batch.", self.running.load(Ordering::Relaxed) as u64);
        self.batch_size.render(&mut out, "batch_size", "Sequences decoded together in each step.");
        self.request_latency.render(&mut out, "request_latency_seconds", "From a request's arrival to the end of its answer.");
        self.time_to_first_token.render(&mut out, "time_to_first_token_seconds", "From a request's arrival to its first generated token.");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_counters_labelled() {
        let metrics = Metrics::default();
        for rows in [1.0, 3.0, 3.0, 300.0] {
            metrics.batch_size.observe(rows);
        }
        metrics.count_request("/v1/completions", 200);
        metrics.count_request("/v1/completions", 200);
        metrics.count_request("/v1/completions", 400);
        let text = metrics.render();
        for line in [
            "rlhf_serve_batch_size_bucket{le=\"1\"} 1",
            "rlhf_serve_batch_size_bucket{le=\"2\"} 1",
            "rlhf_serve_batch_size_bucket{le=\"4\"} 3",
            "rlhf_serve_batch_size_bucket{le=\"256\"} 3",
            "rlhf_serve_batch_size_bucket{le=\"+Inf\"} 4",
            "rlhf_serve_batch_size_sum 307",
            "rlhf_serve_batch_size_count 4",
            "rlhf_serve_requests_total{endpoint=\"/v1/completions\",status=\"200\"} 2",
            "rlhf_serve_requests_total{endpoint=\"/v1/completions\",status=\"400\"} 1",
            "# TYPE rlhf_serve_generated_tokens_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "missing `{line}` in\n{text}");
        }
    }
}
