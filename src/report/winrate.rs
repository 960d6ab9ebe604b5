//! Win rate of one run's responses against a baseline's, judged by per-response scores (the gold
//! oracle's, or a reward model's), with a seeded percentile-bootstrap confidence interval.
//!
//! Responses to the same prompt are compared pairwise: a win counts 1, a tie ½. Runs with
//! different seeds draw different evaluation prompts; with no prompt in common, every response
//! of one run is compared with every response of the other (the probability that a random
//! response of the run beats a random one of the baseline), and the bootstrap resamples each
//! side on its own.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Level of the confidence interval.
pub const CONFIDENCE: f64 = 0.95;

#[derive(Debug, Clone, PartialEq)]
pub struct WinRate {
    pub wins: f64,
    pub ties: f64,
    pub losses: f64,
    /// (wins + ties / 2) / comparisons.
    pub rate: f64,
    pub low: f64,
    pub high: f64,
    /// Responses to shared prompts, compared pairwise; else all against all.
    pub paired: bool,
    /// Pairs (paired), or responses of (run, baseline) (unpaired).
    pub sizes: (usize, usize),
}

fn outcome(a: f64, b: f64) -> f64 {
    if a > b {
        1.0
    } else if a == b {
        0.5
    } else {
        0.0
    }
}

/// Win rate of `run[i]` over `baseline[i]`; `None` for empty input.
pub fn paired(run: &[f64], baseline: &[f64], resamples: usize, seed: u64) -> Option<WinRate> {
    assert_eq!(run.len(), baseline.len(), "paired scores");
    let n = run.len();
    if n == 0 {
        return None;
    }
    let outcomes: Vec<f64> = run.iter().zip(baseline).map(|(&a, &b)| outcome(a, b)).collect();
    let wins = outcomes.iter().filter(|&&o| o == 1.0).count() as f64;
    let ties = outcomes.iter().filter(|&&o| o == 0.5).count() as f64;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let rates: Vec<f64> = (0..resamples).map(|_| (0..n).map(|_| outcomes[rng.random_range(0..n)]).sum::<f64>() / n as f64).collect();
    let (low, high) = interval(rates);
    Some(WinRate {
        wins,
        ties,
        losses: n as f64 - wins - ties,
        rate: outcomes.iter().sum::<f64>() / n as f64,
        low,
        high,
        paired: true,
        sizes: (n, n),
    })
}

/// P(a random response of `run` beats a random one of `baseline`), ties ½; `None` if a side is empty.
pub fn unpaired(run: &[f64], baseline: &[f64], resamples: usize, seed: u64) -> Option<WinRate> {
    if run.is_empty() || baseline.is_empty() {
        return None;
    }
    let all_against_all =
        |a: &[f64], b: &[f64]| a.iter().map(|&x| b.iter().map(|&y| outcome(x, y)).sum::<f64>()).sum::<f64>() / (a.len() * b.len()) as f64;
    let comparisons = (run.len() * baseline.len()) as f64;
    let wins = run.iter().map(|&x| baseline.iter().filter(|&&y| x > y).count()).sum::<usize>() as f64;
    let ties = run.iter().map(|&x| baseline.iter().filter(|&&y| x == y).count()).sum::<usize>() as f64;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut draw = |values: &[f64]| -> Vec<f64> { (0..values.len()).map(|_| values[rng.random_range(0..values.len())]).collect() };
    let rates: Vec<f64> = (0..resamples).map(|_| all_against_all(&draw(run), &draw(baseline))).collect();
    let (low, high) = interval(rates);
    Some(WinRate {
        wins,
        ties,
        losses: comparisons - wins - ties,
        rate: all_against_all(run, baseline),
        low,
        high,
        paired: false,
        sizes: (run.len(), baseline.len()),
    })
}

/// Percentile interval of bootstrap rates at `CONFIDENCE` (the nearest-rank percentiles).
fn interval(mut rates: Vec<f64>) -> (f64, f64) {
    if rates.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    rates.sort_by(f64::total_cmp);
    let tail = (1.0 - CONFIDENCE) / 2.0;
    // Nearest rank ⌈q·n⌉; the epsilon keeps 0.025 · 40 (= 1.0000000000000002 in floating point) at 1.
    let rank = |q: f64| ((q * rates.len() as f64 - 1e-9).ceil() as usize).clamp(1, rates.len()) - 1;
    (rates[rank(tail)], rates[rank(1.0 - tail)])
}

/// Scores of the two runs' responses: paired by shared prompt when there are any, else all.
pub fn compare(run: &[(&str, f64)], baseline: &[(&str, f64)], resamples: usize, seed: u64) -> Option<WinRate> {
    let shared: Vec<(f64, f64)> =
        run.iter().filter_map(|(prompt, score)| baseline.iter().find(|(p, _)| p == prompt).map(|(_, b)| (*score, *b))).collect();
    if shared.is_empty() {
        let scores = |side: &[(&str, f64)]| side.iter().map(|(_, s)| *s).collect::<Vec<f64>>();
        unpaired(&scores(run), &scores(baseline), resamples, seed)
    } else {
        let (a, b): (Vec<f64>, Vec<f64>) = shared.into_iter().unzip();
        paired(&a, &b, resamples, seed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_uses_nearest_rank_percentiles() {
        let rates: Vec<f64> = (1..=40).map(f64::from).collect();
        // 2.5 % of 40 = 1 → the 1st value; 97.5 % of 40 = 39 → the 39th.
        assert_eq!(interval(rates), (1.0, 39.0));
    }

    #[test]
    fn a_run_that_always_wins_has_a_degenerate_interval() {
        let result = paired(&[2.0, 3.0, 4.0], &[1.0, 1.0, 1.0], 500, 7).unwrap();
        assert_eq!((result.rate, result.low, result.high), (1.0, 1.0, 1.0));
        assert!(paired(&[], &[], 10, 0).is_none());
    }
}
