//! A leaderboard of the models (checkpoints) behind the responses, from human judgements, as
//! Chatbot Arena ranks chat models (Chiang et al. 2024, "Chatbot Arena: An Open Platform for
//! Evaluating LLMs by Human Preference"): pairs whose metadata names the model of each response
//! (`model_a`, `model_b`, as an import from several stages writes them) are judged by annotators,
//! and a Bradley–Terry model (Bradley & Terry 1952) fitted to the judgements by maximum
//! likelihood rates each model, with percentile-bootstrap intervals over the judgements.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::assign::{Outcome, Preferred};
use super::store::Store;
use super::LabelError;
use crate::report::winrate::{interval, CONFIDENCE};

/// Rating points per unit of strength: Elo's scale, on which 400 points are odds of 10 to 1.
const ELO_PER_STRENGTH: f64 = 400.0 / std::f64::consts::LN_10;

/// The rating of a model of average strength.
const ELO_CENTER: f64 = 1000.0;

/// Weight of the L2 penalty on the strengths. The likelihood alone has no maximum when a model
/// won (or lost) every comparison it was in — common in bootstrap resamples of few judgements —
/// and the penalty keeps those strengths finite (large); elsewhere it moves strengths by about
/// its own size, far below any interval's width.
const RIDGE: f64 = 1e-6;

/// Newton steps at most; a fit takes a handful, a model that never lost a few dozen.
const MAX_NEWTON_STEPS: usize = 200;

/// One judgement of a response of `model_a` against one of `model_b`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comparison {
    pub model_a: String,
    pub model_b: String,
    pub outcome: Outcome,
}

/// How the intervals are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Bootstrap resamples of the judgements.
    pub rounds: usize,
    pub seed: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self { rounds: 1000, seed: 0 }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Leaderboard {
    /// Judgements rated: preferences and ties between two different models.
    pub judgements: usize,
    pub rounds: usize,
    pub seed: u64,
    /// Level of the intervals.
    pub confidence: f64,
    /// Best first.
    pub models: Vec<Rating>,
    /// What was observed between each two models that met, rows in the order of `models`.
    pub win_rates: Vec<HeadToHead>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Rating {
    pub model: String,
    /// Bradley–Terry strength on the log-odds scale: P(i beats j) = σ(s_i − s_j); the strengths
    /// of all models average 0.
    pub strength: f64,
    pub strength_low: f64,
    pub strength_high: f64,
    /// 1000 + 400 · log10(e) · strength: a difference of 400 is odds of 10 to 1.
    pub rating: f64,
    pub rating_low: f64,
    pub rating_high: f64,
    pub wins: usize,
    pub losses: usize,
    pub ties: usize,
    pub comparisons: usize,
}

/// One model's observed results against another.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HeadToHead {
    pub model: String,
    pub opponent: String,
    pub wins: usize,
    pub losses: usize,
    pub ties: usize,
    pub comparisons: usize,
    /// (wins + ties / 2) / comparisons.
    pub win_rate: f64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Record {
    wins: usize,
    losses: usize,
    ties: usize,
}

impl Record {
    fn comparisons(&self) -> usize {
        self.wins + self.losses + self.ties
    }
}

/// Rates the models of `comparisons`. A judgement of a model against itself says nothing about
/// its strength and is left out. Ties count as half a win to each side, as Chatbot Arena counts
/// them. The interval of each model is the percentile interval of its strength refitted on
/// `settings.rounds` resamples of the judgements (with replacement, seeded).
pub fn rank(comparisons: &[Comparison], settings: Settings) -> Leaderboard {
    let comparisons: Vec<&Comparison> = comparisons.iter().filter(|c| c.model_a != c.model_b).collect();
    let names: Vec<&str> =
        comparisons.iter().flat_map(|c| [c.model_a.as_str(), c.model_b.as_str()]).collect::<BTreeSet<_>>().into_iter().collect();
    let index = |name: &str| names.binary_search(&name).expect("every model is named");
    let judgements: Vec<(usize, usize, Outcome)> = comparisons.iter().map(|c| (index(&c.model_a), index(&c.model_b), c.outcome)).collect();
    let k = names.len();
    let strengths = fit(&wins(k, &judgements), k);

    let mut rng = ChaCha8Rng::seed_from_u64(settings.seed);
    let mut resampled = vec![Vec::with_capacity(settings.rounds); k];
    if !judgements.is_empty() {
        for _ in 0..settings.rounds {
            let draw: Vec<(usize, usize, Outcome)> =
                (0..judgements.len()).map(|_| judgements[rng.random_range(0..judgements.len())]).collect();
            for (model, strength) in fit(&wins(k, &draw), k).into_iter().enumerate() {
                resampled[model].push(strength);
            }
        }
    }

    // results[i][j]: i's record against j.
    let mut results = vec![vec![Record::default(); k]; k];
    for &(a, b, outcome) in &judgements {
        match outcome {
            Outcome::A => {
                results[a][b].wins += 1;
                results[b][a].losses += 1;
            }
            Outcome::B => {
                results[a][b].losses += 1;
                results[b][a].wins += 1;
            }
            Outcome::Tie => {
                results[a][b].ties += 1;
                results[b][a].ties += 1;
            }
        }
    }
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&i, &j| strengths[j].total_cmp(&strengths[i]).then(names[i].cmp(names[j])));
    let elo = |strength: f64| ELO_CENTER + ELO_PER_STRENGTH * strength;
    let models = order
        .iter()
        .map(|&m| {
            let (low, high) = interval(std::mem::take(&mut resampled[m]));
            let record = results[m].iter().fold(Record::default(), |total, r| Record {
                wins: total.wins + r.wins,
                losses: total.losses + r.losses,
                ties: total.ties + r.ties,
            });
            Rating {
                model: names[m].to_string(),
                strength: strengths[m],
                strength_low: low,
                strength_high: high,
                rating: elo(strengths[m]),
                rating_low: elo(low),
                rating_high: elo(high),
                wins: record.wins,
                losses: record.losses,
                ties: record.ties,
                comparisons: record.comparisons(),
            }
        })
        .collect();
    let win_rates = order
        .iter()
        .flat_map(|&m| order.iter().map(move |&o| (m, o)))
        .filter(|&(m, o)| results[m][o].comparisons() > 0)
        .map(|(m, o)| {
            let r = results[m][o];
            HeadToHead {
                model: names[m].to_string(),
                opponent: names[o].to_string(),
                wins: r.wins,
                losses: r.losses,
                ties: r.ties,
                comparisons: r.comparisons(),
                win_rate: (r.wins as f64 + r.ties as f64 / 2.0) / r.comparisons() as f64,
            }
        })
        .collect();
    Leaderboard { judgements: judgements.len(), rounds: settings.rounds, seed: settings.seed, confidence: CONFIDENCE, models, win_rates }
}

/// `wins[i · k + j]`: how often model i beat model j in `judgements`, a tie counting ½ to each.
fn wins(k: usize, judgements: &[(usize, usize, Outcome)]) -> Vec<f64> {
    let mut wins = vec![0.0; k * k];
    for &(a, b, outcome) in judgements {
        match outcome {
            Outcome::A => wins[a * k + b] += 1.0,
            Outcome::B => wins[b * k + a] += 1.0,
            Outcome::Tie => {
                wins[a * k + b] += 0.5;
                wins[b * k + a] += 0.5;
            }
        }
    }
    wins
}

/// The Bradley–Terry strengths that maximise Σ_ij w_ij log σ(s_i − s_j) − RIDGE/2 · Σ_i s_i²
/// for `wins` (k × k, as `wins` builds it), by Newton's method with step halving (the objective
/// is strictly concave, so this converges from anywhere).
///
/// Identifiability: the likelihood sees only differences of strengths; the penalty picks the
/// solution whose strengths average 0 (its gradient, RIDGE · Σ s_i summed over models, must
/// vanish), which each step keeps exactly by taking out its mean. Models that never met (a
/// comparison graph in pieces) are placed by that alone; their difference means nothing.
fn fit(wins: &[f64], k: usize) -> Vec<f64> {
    // Minimised: the negative penalised log-likelihood, with −log σ(x) = softplus(−x).
    let objective = |s: &[f64]| -> f64 {
        let mut value = RIDGE / 2.0 * s.iter().map(|x| x * x).sum::<f64>();
        for i in 0..k {
            for j in 0..k {
                if wins[i * k + j] > 0.0 {
                    value += wins[i * k + j] * softplus(s[j] - s[i]);
                }
            }
        }
        value
    };
    let mut s = vec![0.0; k];
    let mut current = objective(&s);
    for _ in 0..MAX_NEWTON_STEPS {
        let mut gradient: Vec<f64> = s.iter().map(|x| RIDGE * x).collect();
        let mut hessian = vec![0.0; k * k];
        for i in 0..k {
            hessian[i * k + i] = RIDGE;
        }
        for i in 0..k {
            for j in i + 1..k {
                let met = wins[i * k + j] + wins[j * k + i];
                if met == 0.0 {
                    continue;
                }
                let p = sigmoid(s[i] - s[j]);
                let g = met * p - wins[i * k + j];
                gradient[i] += g;
                gradient[j] -= g;
                let h = met * p * (1.0 - p);
                hessian[i * k + i] += h;
                hessian[j * k + j] += h;
                hessian[i * k + j] -= h;
                hessian[j * k + i] -= h;
            }
        }
        let mut step = solve_spd(hessian, gradient, k);
        // The mean's direction is the ill-conditioned one (curvature RIDGE alone); the optimum's
        // mean is 0, where `s` already is.
        let mean = step.iter().sum::<f64>() / k as f64;
        step.iter_mut().for_each(|d| *d -= mean);
        let mut scale = 1.0;
        loop {
            let candidate: Vec<f64> = s.iter().zip(&step).map(|(x, d)| x - scale * d).collect();
            let value = objective(&candidate);
            if value <= current {
                s = candidate;
                current = value;
                break;
            }
            scale /= 2.0;
            if scale < 1e-12 {
                // No decrease left at floating-point precision: converged.
                return s;
            }
        }
        if step.iter().all(|d| (scale * d).abs() < 1e-10) {
            break;
        }
    }
    s
}

/// log(1 + eˣ), without overflow.
fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Solves a · x = b for a symmetric positive-definite a (k × k, row-major) by Cholesky.
fn solve_spd(mut a: Vec<f64>, mut b: Vec<f64>, k: usize) -> Vec<f64> {
    for j in 0..k {
        let diagonal = (a[j * k + j] - (0..j).map(|m| a[j * k + m] * a[j * k + m]).sum::<f64>()).sqrt();
        a[j * k + j] = diagonal;
        for i in j + 1..k {
            a[i * k + j] = (a[i * k + j] - (0..j).map(|m| a[i * k + m] * a[j * k + m]).sum::<f64>()) / diagonal;
        }
    }
    for i in 0..k {
        b[i] = (b[i] - (0..i).map(|m| a[i * k + m] * b[m]).sum::<f64>()) / a[i * k + i];
    }
    for i in (0..k).rev() {
        b[i] = (b[i] - (i + 1..k).map(|m| a[m * k + i] * b[m]).sum::<f64>()) / a[i * k + i];
    }
    b
}

/// Pairs (`p`) whose metadata names two different models.
const BETWEEN_MODELS: &str = "json_type(p.metadata, '$.model_a') = 'text' AND json_type(p.metadata, '$.model_b') = 'text' \
     AND json_extract(p.metadata, '$.model_a') != json_extract(p.metadata, '$.model_b')";

impl Store {
    /// The leaderboard of the models named by the pairs' metadata, from every judgement on those
    /// pairs (left/right mapped back to A/B through the order each annotator saw; skips left out).
    /// An error says why there is none: no pair names its models, or none of them is judged.
    pub async fn leaderboard(&self, settings: Settings) -> Result<Leaderboard, LabelError> {
        let pairs: i64 =
            sqlx::query_scalar(&format!("SELECT count(*) FROM pairs p WHERE {BETWEEN_MODELS}")).fetch_one(self.reader()).await?;
        if pairs == 0 {
            return Err(LabelError::NoModelPairs);
        }
        // Oldest first, so that the same labels always draw the same resamples.
        let rows: Vec<(String, String, String, bool)> = sqlx::query_as(&format!(
            "SELECT json_extract(p.metadata, '$.model_a'), json_extract(p.metadata, '$.model_b'), l.preferred, a.swapped \
             FROM labels l JOIN assignments a ON a.id = l.assignment_id JOIN pairs p ON p.id = a.pair_id \
             WHERE {BETWEEN_MODELS} ORDER BY l.labeled_at, l.id"
        ))
        .fetch_all(self.reader())
        .await?;
        let mut comparisons = Vec::with_capacity(rows.len());
        for (model_a, model_b, preferred, swapped) in rows {
            if let Some(outcome) = Preferred::from_db(&preferred)?.outcome(swapped) {
                comparisons.push(Comparison { model_a, model_b, outcome });
            }
        }
        if comparisons.is_empty() {
            return Err(LabelError::NothingJudged(pairs));
        }
        Ok(rank(&comparisons, settings))
    }
}

/// `Store::leaderboard` of the database at `db`, for callers outside an async runtime (reports).
pub fn read_leaderboard(db: &Path, settings: Settings) -> Result<Leaderboard, LabelError> {
    Store::read_blocking(db, async |store| store.leaderboard(settings).await)
}

impl fmt::Display for Leaderboard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} models rated from {} judgements (Bradley–Terry; {:.0} % intervals from {} bootstrap rounds, seed {})\n",
            self.models.len(),
            self.judgements,
            self.confidence * 100.0,
            self.rounds,
            self.seed
        )?;
        let width = self.models.iter().map(|m| m.model.chars().count()).max().unwrap_or(0).max("model".len());
        let interval_header = format!("{:.0} % interval", self.confidence * 100.0);
        writeln!(
            f,
            "{:>4}  {:<width$}  {:>6}  {:>13}  {:>8}  {:>5}  {:>6}  {:>5}  {:>11}",
            "rank", "model", "rating", interval_header, "strength", "wins", "losses", "ties", "comparisons"
        )?;
        for (rank, m) in self.models.iter().enumerate() {
            writeln!(
                f,
                "{:>4}  {:<width$}  {:>6.0}  {:>13}  {:>+8.3}  {:>5}  {:>6}  {:>5}  {:>11}",
                rank + 1,
                m.model,
                m.rating,
                format!("[{:.0}, {:.0}]", m.rating_low, m.rating_high),
                m.strength,
                m.wins,
                m.losses,
                m.ties,
                m.comparisons
            )?;
        }
        writeln!(f, "\nwin rate of the row's model against the column's (a tie counts ½; comparisons in parentheses)")?;
        let column = width.max("0.00 (00000)".len());
        write!(f, "{:<width$}", "")?;
        for m in &self.models {
            write!(f, "  {:>column$}", m.model)?;
        }
        writeln!(f)?;
        for m in &self.models {
            write!(f, "{:<width$}", m.model)?;
            for o in &self.models {
                let cell = match self.win_rates.iter().find(|h| h.model == m.model && h.opponent == o.model) {
                    Some(h) => format!("{:.2} ({})", h.win_rate, h.comparisons),
                    None if m.model == o.model => "—".to_string(),
                    None => "-".to_string(),
                };
                write!(f, "  {cell:>column$}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `count` judgements of `a` against `b`, each with `outcome`.
    fn judged(a: &str, b: &str, outcome: Outcome, count: usize) -> Vec<Comparison> {
        vec![Comparison { model_a: a.into(), model_b: b.into(), outcome }; count]
    }

    fn strength(board: &Leaderboard, model: &str) -> f64 {
        board.models.iter().find(|m| m.model == model).unwrap().strength
    }

    #[test]
    fn two_models_three_wins_in_four_differ_by_ln_3() {
        // σ(d) = 3/4 ⇔ d = ln 3; mean 0 puts them at ±ln 3 / 2. The ridge moves this by ~1e-6.
        let mut comparisons = judged("a", "b", Outcome::A, 2);
        comparisons.extend(judged("b", "a", Outcome::B, 1));
        comparisons.extend(judged("b", "a", Outcome::A, 1));
        let board = rank(&comparisons, Settings { rounds: 0, seed: 0 });
        let (a, b) = (&board.models[0], &board.models[1]);
        assert_eq!((a.model.as_str(), b.model.as_str()), ("a", "b"));
        assert!((a.strength - 3f64.ln() / 2.0).abs() < 1e-5 && (b.strength + 3f64.ln() / 2.0).abs() < 1e-5, "{board:?}");
        assert!((a.strength + b.strength).abs() < 1e-12, "strengths average 0");
        // Elo's scale: 400 · log10(3) ≈ 190.8 points between them, centred on 1000.
        assert!((a.rating - b.rating - 400.0 * 3f64.log10()).abs() < 1e-3);
        assert!((a.rating + b.rating - 2000.0).abs() < 1e-9);
        assert_eq!((a.wins, a.losses, a.ties, a.comparisons), (3, 1, 0, 4));
        assert_eq!((b.wins, b.losses, b.ties, b.comparisons), (1, 3, 0, 4));
        assert_eq!(board.judgements, 4);
        let rates: Vec<(&str, &str, f64, usize)> =
            board.win_rates.iter().map(|h| (h.model.as_str(), h.opponent.as_str(), h.win_rate, h.comparisons)).collect();
        assert_eq!(rates, [("a", "b", 0.75, 4), ("b", "a", 0.25, 4)]);
    }

    #[test]
    fn ties_count_half_a_win_to_each_side() {
        // One win and two ties: 2 wins to 1, so d = ln 2.
        let mut comparisons = judged("a", "b", Outcome::A, 1);
        comparisons.extend(judged("a", "b", Outcome::Tie, 2));
        let board = rank(&comparisons, Settings { rounds: 0, seed: 0 });
        assert!((strength(&board, "a") - strength(&board, "b") - 2f64.ln()).abs() < 1e-5, "{board:?}");
        assert_eq!((board.models[0].wins, board.models[0].ties, board.models[1].losses, board.models[1].ties), (1, 2, 1, 2));
        assert!((board.win_rates[0].win_rate - 2.0 / 3.0).abs() < 1e-12);
        // Only ties: equal.
        let board = rank(&judged("a", "b", Outcome::Tie, 3), Settings { rounds: 0, seed: 0 });
        assert!(strength(&board, "a").abs() < 1e-12 && strength(&board, "b").abs() < 1e-12);
    }

    #[test]
    fn a_symmetric_cycle_rates_everyone_equal() {
        // a beats b, b beats c, c beats a, twice each: nobody is stronger.
        let mut comparisons = judged("a", "b", Outcome::A, 2);
        comparisons.extend(judged("b", "c", Outcome::A, 2));
        comparisons.extend(judged("a", "c", Outcome::B, 2));
        let board = rank(&comparisons, Settings { rounds: 0, seed: 0 });
        for model in &board.models {
            assert!(model.strength.abs() < 1e-9 && (model.rating - 1000.0).abs() < 1e-6, "{board:?}");
            assert_eq!((model.wins, model.losses, model.comparisons), (2, 2, 4));
        }
    }

    #[test]
    fn results_that_follow_the_model_exactly_recover_its_strengths() {
        // Strengths 0, ln 2, ln 4 give P(b > a) = 2/3, P(c > b) = 2/3, P(c > a) = 4/5; results in
        // exactly those proportions satisfy the likelihood equations there: −ln 2, 0, ln 2.
        let mut comparisons = judged("a", "b", Outcome::B, 2);
        comparisons.extend(judged("a", "b", Outcome::A, 1));
        comparisons.extend(judged("c", "b", Outcome::A, 2));
        comparisons.extend(judged("c", "b", Outcome::B, 1));
        comparisons.extend(judged("a", "c", Outcome::B, 4));
        comparisons.extend(judged("a", "c", Outcome::A, 1));
        let board = rank(&comparisons, Settings { rounds: 0, seed: 0 });
        let order: Vec<&str> = board.models.iter().map(|m| m.model.as_str()).collect();
        assert_eq!(order, ["c", "b", "a"]);
        for (model, expected) in [("a", -2f64.ln()), ("b", 0.0), ("c", 2f64.ln())] {
            assert!((strength(&board, model) - expected).abs() < 1e-5, "{model}: {board:?}");
        }
    }

    #[test]
    fn a_model_that_never_lost_gets_a_finite_top_strength() {
        let board = rank(&judged("a", "b", Outcome::A, 5), Settings { rounds: 20, seed: 0 });
        let top = &board.models[0];
        assert_eq!(top.model, "a");
        assert!(top.strength.is_finite() && top.strength > 5.0, "{board:?}");
        assert!(board.models.iter().all(|m| m.strength_low.is_finite() && m.strength_high.is_finite()));
    }

    #[test]
    fn bootstrap_intervals_contain_the_estimate_and_are_reproducible() {
        let mut comparisons = Vec::new();
        for (a, b, won, lost, tied) in [("a", "b", 26, 10, 4), ("b", "c", 20, 15, 5), ("a", "c", 30, 6, 4)] {
            comparisons.extend(judged(a, b, Outcome::A, won));
            comparisons.extend(judged(a, b, Outcome::B, lost));
            comparisons.extend(judged(a, b, Outcome::Tie, tied));
        }
        let settings = Settings { rounds: 300, seed: 7 };
        let board = rank(&comparisons, settings);
        assert_eq!(board.models.iter().map(|m| m.model.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
        for m in &board.models {
            assert!(m.strength_low < m.strength && m.strength < m.strength_high, "{m:?}");
            assert!(m.rating_low < m.rating && m.rating < m.rating_high, "{m:?}");
            assert!(m.strength_high - m.strength_low < 1.5, "120 judgements pin strengths down: {m:?}");
        }
        assert_eq!(rank(&comparisons, settings), board, "the same seed draws the same resamples");
        let other = rank(&comparisons, Settings { seed: 8, ..settings });
        assert_ne!(other.models[0].strength_low, board.models[0].strength_low, "another seed, other resamples");
        assert_eq!(other.models[0].strength, board.models[0].strength, "the estimate does not depend on the seed");
    }

    #[test]
    fn self_comparisons_say_nothing_and_nothing_rates_nobody() {
        let mut comparisons = judged("a", "a", Outcome::A, 3);
        comparisons.extend(judged("c", "c", Outcome::B, 1));
        comparisons.extend(judged("a", "b", Outcome::Tie, 1));
        let board = rank(&comparisons, Settings { rounds: 10, seed: 0 });
        assert_eq!(board.judgements, 1);
        let rated: Vec<(&str, usize)> = board.models.iter().map(|m| (m.model.as_str(), m.comparisons)).collect();
        assert_eq!(rated, [("a", 1), ("b", 1)], "c only met itself");
        let empty = rank(&[], Settings::default());
        assert!(empty.models.is_empty() && empty.win_rates.is_empty() && empty.judgements == 0);
    }

    #[test]
    fn text_shows_the_table_and_the_win_rate_matrix() {
        let mut comparisons = judged("run-a/ppo", "run-b/ppo", Outcome::A, 3);
        comparisons.extend(judged("run-a/ppo", "run-b/ppo", Outcome::B, 1));
        let text = rank(&comparisons, Settings { rounds: 50, seed: 0 }).to_string();
        assert!(text.starts_with("2 models rated from 4 judgements"), "{text}");
        let rows: Vec<&str> = text.lines().filter(|l| ["1  ", "2  "].iter().any(|rank| l.trim_start().starts_with(rank))).collect();
        assert!(rows[0].contains("run-a/ppo") && rows[0].contains("1095") && rows[0].contains("+0.549"), "{text}");
        assert!(rows[1].contains("run-b/ppo") && rows[1].contains(" 905"), "{text}");
        assert!(text.contains("0.75 (4)") && text.contains("0.25 (4)"), "{text}");
    }
}
