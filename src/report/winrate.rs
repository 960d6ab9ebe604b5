//! Win rate of one run's responses against a baseline's, judged by per-response scores (the gold
//! oracle's, or a reward model's), with a seeded percentile-bootstrap confidence interval.
//!
//! Only responses to the same prompt are compared (a win counts 1, a tie ½), and only when the
//! runs share at least `MIN_SHARED_PROMPTS` prompts: below that an interval says nothing, and
//! runs evaluated on different prompts are not comparable response by response.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Level of the confidence interval.
pub const CONFIDENCE: f64 = 0.95;

/// The fewest shared prompts a win rate is computed on.
pub const MIN_SHARED_PROMPTS: usize = 20;

#[derive(Debug, Clone, PartialEq)]
pub struct WinRate {
    pub wins: f64,
    pub ties: f64,
    pub losses: f64,
    /// (wins + ties / 2) / comparisons.
    pub rate: f64,
    pub low: f64,
    pub high: f64,
    /// Shared prompts compared.
    pub prompts: usize,
}

/// A run's comparison with the baseline.
#[derive(Debug, Clone, PartialEq)]
pub enum Comparison {
    Rate(WinRate),
    /// Fewer than `MIN_SHARED_PROMPTS` prompts in common.
    NotComparable {
        shared: usize,
    },
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
    Some(WinRate { wins, ties, losses: n as f64 - wins - ties, rate: outcomes.iter().sum::<f64>() / n as f64, low, high, prompts: n })
}

/// Percentile interval of bootstrap estimates at `CONFIDENCE` (the nearest-rank percentiles).
pub fn interval(mut rates: Vec<f64>) -> (f64, f64) {
    if rates.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    rates.sort_by(f64::total_cmp);
    let tail = (1.0 - CONFIDENCE) / 2.0;
    // Nearest rank ⌈q·n⌉; the epsilon keeps 0.025 · 40 (= 1.0000000000000002 in floating point) at 1.
    let rank = |q: f64| ((q * rates.len() as f64 - 1e-9).ceil() as usize).clamp(1, rates.len()) - 1;
    (rates[rank(tail)], rates[rank(1.0 - tail)])
}

/// The win rate of `run` over `baseline` on the prompts both answered (scores by prompt), if
/// there are at least `MIN_SHARED_PROMPTS` of them. A prompt asked k times in an evaluation
/// set pairs its k-th answers.
pub fn compare(run: &[(&str, f64)], baseline: &[(&str, f64)], resamples: usize, seed: u64) -> Comparison {
    let mut answers: std::collections::HashMap<&str, std::collections::VecDeque<f64>> = std::collections::HashMap::new();
    for (prompt, score) in baseline {
        answers.entry(prompt).or_default().push_back(*score);
    }
    let (a, b): (Vec<f64>, Vec<f64>) =
        run.iter().filter_map(|(prompt, score)| answers.get_mut(prompt)?.pop_front().map(|b| (*score, b))).unzip();
    match paired(&a, &b, resamples, seed) {
        Some(rate) if a.len() >= MIN_SHARED_PROMPTS => Comparison::Rate(rate),
        _ => Comparison::NotComparable { shared: a.len() },
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

    #[test]
    fn runs_are_compared_only_on_enough_shared_prompts() {
        let names: Vec<String> = (0..MIN_SHARED_PROMPTS + 1).map(|i| format!("p{i}")).collect();
        let side = |skip: usize, score: f64| -> Vec<(&str, f64)> { names.iter().skip(skip).map(|n| (n.as_str(), score)).collect() };
        // 21 prompts each, 20 in common: compared (and always won); 19 in common: not.
        let Comparison::Rate(rate) = compare(&side(1, 2.0), &side(0, 1.0), 100, 0) else { panic!("20 shared prompts suffice") };
        assert_eq!((rate.prompts, rate.rate), (MIN_SHARED_PROMPTS, 1.0));
        assert_eq!(compare(&side(2, 2.0), &side(0, 1.0), 100, 0), Comparison::NotComparable { shared: MIN_SHARED_PROMPTS - 1 });
    }
}
