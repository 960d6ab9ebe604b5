//! Load client for `scripts/bench_label`: concurrent annotators label pairs on a running
//! `rlhf label serve` (GET /api/pairs/next, then POST /api/labels) for a bounded time and count,
//! and it prints sustained labels/s and latency percentiles as a Markdown table.
//!
//!   cargo run --release --example label_load -- --url http://127.0.0.1:PORT --tokens TOKENS.txt
//!
//! Only loopback addresses are accepted: this is a benchmark, not a load generator for others.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// The server, e.g. http://127.0.0.1:8080 (loopback only).
    #[arg(long)]
    url: String,
    /// Annotator tokens, one a line; one client thread per token.
    #[arg(long)]
    tokens: PathBuf,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Warm-up seconds, not measured.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Stop after this many labels in all, whatever the time.
    #[arg(long, default_value_t = 200_000)]
    max_labels: u64,
}

/// Latencies in microseconds of one thread's measured requests.
#[derive(Default)]
struct Samples {
    next: Vec<u32>,
    label: Vec<u32>,
    /// GET next + POST label, the time an annotator's label costs the server round trips.
    cycle: Vec<u32>,
    errors: u64,
    /// When this thread's last label was acknowledged.
    last_label: Option<Instant>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let host = args.url.trim_start_matches("http://").rsplit_once(':').map(|(host, _)| host).unwrap_or_default();
    let loopback = host == "localhost" || host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    ensure!(args.url.starts_with("http://") && loopback, "--url must be http:// on a loopback address, got {}", args.url);
    let tokens: Vec<String> = std::fs::read_to_string(&args.tokens)
        .with_context(|| format!("cannot read {}", args.tokens.display()))?
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(String::from)
        .collect();
    ensure!(!tokens.is_empty(), "{} holds no token", args.tokens.display());

    let labels = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(args.warmup);
    let stop_at = measure_from + Duration::from_secs(args.seconds);
    let threads: Vec<_> = tokens
        .into_iter()
        .map(|token| {
            let (url, labels, max_labels) = (args.url.clone(), labels.clone(), args.max_labels);
            std::thread::spawn(move || annotate(&url, &token, &labels, max_labels, measure_from, stop_at))
        })
        .collect();
    let mut all = Samples::default();
    let annotators = threads.len();
    for thread in threads {
        let samples = thread.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        all.next.extend(samples.next);
        all.label.extend(samples.label);
        all.cycle.extend(samples.cycle);
        all.errors += samples.errors;
        all.last_label = all.last_label.max(samples.last_label);
    }
    // Annotators stop early when the pairs run out: measure up to the last label then.
    let ended = all.last_label.unwrap_or(stop_at).min(stop_at);
    if ended + Duration::from_millis(500) < stop_at {
        eprintln!("warning: the pairs ran out {:.1} s before the end; import more for a full run", (stop_at - ended).as_secs_f64());
    }
    let measured = ended.saturating_duration_since(measure_from).as_secs_f64();
    if all.label.is_empty() {
        bail!("no label was measured (were there pairs left, and was the run long enough?)");
    }
    let per_second = all.label.len() as f64 / measured;
    println!("| annotators | measured | labels | labels/s | requests/s | errors |");
    println!("|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {annotators} | {measured:.1} s | {} | **{per_second:.0}** | {:.0} | {} |",
        all.label.len(),
        (all.next.len() + all.label.len()) as f64 / measured,
        all.errors
    );
    println!();
    println!("| latency (client side) | p50 | p90 | p99 | max |");
    println!("|---|---:|---:|---:|---:|");
    for (name, samples) in [("GET /api/pairs/next", &mut all.next), ("POST /api/labels", &mut all.label), ("next + label", &mut all.cycle)]
    {
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
        println!("| {name} | {:.2} ms | {:.2} ms | **{:.2} ms** | {:.2} ms |", at(0.5), at(0.9), at(0.99), at(1.0));
    }
    Ok(())
}

/// One annotator: label until `stop_at`, or until `max_labels` labels were given in all.
fn annotate(url: &str, token: &str, labels: &AtomicU64, max_labels: u64, measure_from: Instant, stop_at: Instant) -> Result<Samples> {
    let config = ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(10))).build();
    let agent = ureq::Agent::new_with_config(config);
    let auth = format!("Bearer {token}");
    let mut samples = Samples::default();
    let mut answer = 0usize;
    while Instant::now() < stop_at && labels.load(Ordering::Relaxed) < max_labels {
        let began = Instant::now();
        let mut next = agent.get(format!("{url}/api/pairs/next")).header("Authorization", &auth).call()?;
        let next_done = Instant::now();
        if next.status() == 204 {
            break; // nothing left for this annotator
        }
        if next.status() != 200 {
            samples.errors += 1;
            continue;
        }
        let pair: serde_json::Value = next.body_mut().read_json()?;
        answer += 1;
        let preferred = ["left", "right", "tie"][answer % 3];
        let body = serde_json::json!({"pair_id": pair["pair_id"], "preferred": preferred});
        let mut posted = agent
            .post(format!("{url}/api/labels"))
            .header("Authorization", &auth)
            .header("Content-Type", "application/json")
            .send(body.to_string())?;
        // Read to the end, so that the connection goes back to the pool for the next request.
        posted.body_mut().read_to_vec()?;
        let done = Instant::now();
        if posted.status() != 201 {
            samples.errors += 1;
            continue;
        }
        labels.fetch_add(1, Ordering::Relaxed);
        samples.last_label = Some(done);
        if began >= measure_from && done <= stop_at {
            let micros = |d: Duration| u32::try_from(d.as_micros()).unwrap_or(u32::MAX);
            samples.next.push(micros(next_done - began));
            samples.label.push(micros(done - next_done));
            samples.cycle.push(micros(done - began));
        }
    }
    Ok(samples)
}
