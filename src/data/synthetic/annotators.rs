//! Simulated annotators: each labels a pair by a Bradley–Terry draw on the gold scores,
//! P(first preferred) = σ((gold₁ − gold₂) / temperature + bias), after declaring a tie with
//! probability `tie_rate` and answering at random with probability `noise`.

use rand::Rng;
use serde::{Deserialize, Serialize};

/// One annotator's quirks.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Annotator {
    /// Probability of ignoring the texts and answering at random.
    pub noise: f64,
    /// Added to the Bradley–Terry logit: > 0 favours whichever response is shown first.
    pub bias: f64,
}

/// A label for a shown pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preference {
    First,
    Second,
    Tie,
}

/// A pool of annotators sharing the oracle's temperature and a tie rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnnotatorPool {
    pub annotators: Vec<Annotator>,
    /// Scale of gold differences: lower is more decisive.
    pub temperature: f64,
    pub tie_rate: f64,
}

impl AnnotatorPool {
    /// `count` annotators whose noise is spread evenly over [0, 2·mean_noise] (so the pool mixes
    /// careful and careless labelers) and whose bias is drawn from N(0, bias_std²).
    pub fn new(count: usize, mean_noise: f64, bias_std: f64, temperature: f64, tie_rate: f64, rng: &mut impl Rng) -> Self {
        let annotators = (0..count)
            .map(|i| {
                let spread = if count > 1 { 2.0 * i as f64 / (count - 1) as f64 } else { 1.0 };
                Annotator { noise: (mean_noise * spread).clamp(0.0, 1.0), bias: bias_std * standard_normal(rng) }
            })
            .collect();
        AnnotatorPool { annotators, temperature, tie_rate }
    }

    /// Annotator `index` labels a pair whose gold scores are `first` and `second`.
    pub fn label(&self, index: usize, first: f64, second: f64, rng: &mut impl Rng) -> Preference {
        let annotator = &self.annotators[index % self.annotators.len()];
        if rng.random_bool(self.tie_rate) {
            return Preference::Tie;
        }
        let p_first = if rng.random_bool(annotator.noise) { 0.5 } else { sigmoid((first - second) / self.temperature + annotator.bias) };
        if rng.random_bool(p_first) {
            Preference::First
        } else {
            Preference::Second
        }
    }
}

pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// A standard normal draw by Box–Muller (rand has no normal distribution without rand_distr).
fn standard_normal(rng: &mut impl Rng) -> f64 {
    let (u, v): (f64, f64) = (rng.random(), rng.random());
    (-2.0 * (1.0 - u).ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn rate(pool: &AnnotatorPool, first: f64, second: f64, want: Preference) -> f64 {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let n = 20_000;
        (0..n).filter(|i| pool.label(*i, first, second, &mut rng) == want).count() as f64 / n as f64
    }

    #[test]
    fn noiseless_annotators_follow_bradley_terry() {
        let pool = AnnotatorPool { annotators: vec![Annotator { noise: 0.0, bias: 0.0 }], temperature: 0.5, tie_rate: 0.0 };
        // σ((1.0 − 0.5) / 0.5) = σ(1) ≈ 0.731
        let observed = rate(&pool, 1.0, 0.5, Preference::First);
        assert!((observed - sigmoid(1.0)).abs() < 0.01, "{observed}");
    }

    #[test]
    fn noise_ties_and_bias_move_the_rates_as_specified() {
        let noisy = AnnotatorPool { annotators: vec![Annotator { noise: 1.0, bias: 0.0 }], temperature: 0.1, tie_rate: 0.0 };
        assert!((rate(&noisy, 5.0, 0.0, Preference::First) - 0.5).abs() < 0.015);
        let ties = AnnotatorPool { annotators: vec![Annotator { noise: 0.0, bias: 0.0 }], temperature: 0.1, tie_rate: 0.2 };
        assert!((rate(&ties, 5.0, 0.0, Preference::Tie) - 0.2).abs() < 0.01);
        let biased = AnnotatorPool { annotators: vec![Annotator { noise: 0.0, bias: 1.0 }], temperature: 1.0, tie_rate: 0.0 };
        assert!((rate(&biased, 0.0, 0.0, Preference::First) - sigmoid(1.0)).abs() < 0.01);
    }

    #[test]
    fn pool_spreads_noise_around_the_mean() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let pool = AnnotatorPool::new(5, 0.2, 0.1, 1.0, 0.0, &mut rng);
        let noises: Vec<f64> = pool.annotators.iter().map(|a| a.noise).collect();
        assert_eq!(noises, vec![0.0, 0.1, 0.2, 0.30000000000000004, 0.4]);
        let mean = noises.iter().sum::<f64>() / 5.0;
        assert!((mean - 0.2).abs() < 1e-12);
    }
}
