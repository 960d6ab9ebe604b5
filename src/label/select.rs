//! Choosing which candidate pairs to label: those a reward model is least sure of (uncertainty
//! sampling, Lewis & Gale 1994; for preference pairs, the Bradley–Terry probability nearest ½),
//! those the members of a reward ensemble disagree on most (query by committee, Seung et al.
//! 1992), or a seeded random subset of the same size — the control arm any active-labeling claim
//! needs.

use std::collections::HashSet;
use std::path::Path;

use rand::seq::index;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::import::NewPair;
use super::LabelError;
use crate::data::chat::Prompt;
use crate::data::synthetic::annotators::sigmoid;
use crate::model::reward::{mean_and_population_std, RewardModel, NORMALIZATION_FILE};
use crate::model::{DeviceSpec, Precision};

/// How `rlhf label import --select` chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Selection {
    /// The pairs whose preference probability under the reward model is nearest ½.
    Uncertain,
    /// The pairs whose preference probability varies most across the members of the reward
    /// model's ensemble (a reward stage trained with `ensemble` > 1).
    Disagreement,
    /// A seeded random subset: the baseline to measure `uncertain` against.
    Random,
}

/// Scores per pair: the reward model's `(r_a, r_b)`.
pub type PairScores = (f64, f64);

/// P(response_a preferred) under the Bradley–Terry model the reward model was trained with.
pub fn preference_probability((reward_a, reward_b): PairScores) -> f64 {
    sigmoid(reward_a - reward_b)
}

/// What the reward model makes of a candidate pair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Judged {
    /// P(a ≻ b): of the model's head, or with an ensemble the mean of the members'.
    pub preference_probability: f64,
    /// The std across the ensemble's members of their P(a ≻ b); `None` without an ensemble.
    pub disagreement: Option<f64>,
}

impl Judged {
    pub fn of_scores(scores: PairScores) -> Self {
        Judged { preference_probability: preference_probability(scores), disagreement: None }
    }

    /// From each member's `(r_a, r_b)`: the mean and (population) std of their P(a ≻ b).
    pub fn of_members(members: &[PairScores]) -> Self {
        let probabilities: Vec<f64> = members.iter().map(|&scores| preference_probability(scores)).collect();
        let (mean, std) = mean_and_population_std(&probabilities);
        Judged { preference_probability: mean, disagreement: Some(std) }
    }
}

/// Indices of the `count` pairs to label, in the order chosen. `Uncertain` ranks by
/// |P(a ≻ b) − ½| (nearest ½ first), `Disagreement` by the members' disagreement (largest first;
/// a pair without one counts as 0); equal keys keep the candidates' order. `Random` draws `count`
/// distinct indices from `seed`. Fewer candidates than `count`: all of them.
pub fn choose(selection: Selection, judged: &[Judged], count: usize, seed: u64) -> Vec<usize> {
    let count = count.min(judged.len());
    let ranked = |key: &dyn Fn(&Judged) -> f64| {
        let mut order: Vec<usize> = (0..judged.len()).collect();
        order.sort_by(|&x, &y| key(&judged[x]).total_cmp(&key(&judged[y])));
        order.truncate(count);
        order
    };
    match selection {
        Selection::Uncertain => ranked(&|j| (j.preference_probability - 0.5).abs()),
        Selection::Disagreement => ranked(&|j| -j.disagreement.unwrap_or(0.0)),
        Selection::Random => index::sample(&mut ChaCha8Rng::seed_from_u64(seed), judged.len(), count).into_vec(),
    }
}

/// Keeps the `count` pairs `selection` chooses among `candidates` that are not already in the
/// database (`present`: their content hashes), and records in each pair's metadata how it was
/// chosen: `{"selection": {"method", "preference_probability"}}`, and `"disagreement"` for
/// `Disagreement`, which needs the reward model (from `reward_dir`) to have an ensemble.
pub fn select_pairs(
    candidates: Vec<NewPair>,
    present: &HashSet<String>,
    (reward_model, reward_dir): (&RewardModel, &Path),
    selection: Selection,
    count: usize,
    seed: u64,
) -> Result<Vec<NewPair>, LabelError> {
    let fresh: Vec<NewPair> = candidates.into_iter().filter(|pair| !present.contains(&super::import::content_hash(pair))).collect();
    let texts = pair_texts(reward_model, &fresh)?;
    let texts: Vec<(&str, &str)> = texts.iter().map(|(prompt, response)| (prompt.as_str(), *response)).collect();
    let judged: Vec<Judged> = if selection == Selection::Disagreement {
        let members =
            reward_model.member_scores_texts(&texts, 32)?.ok_or_else(|| LabelError::NoEnsemble { checkpoint: reward_dir.to_path_buf() })?;
        members.chunks(2).map(|two| Judged::of_members(&two[0].iter().copied().zip(two[1].iter().copied()).collect::<Vec<_>>())).collect()
    } else {
        reward_model.score_texts(&texts, 32)?.chunks(2).map(|two| Judged::of_scores((two[0], two[1]))).collect()
    };
    let mut chosen: Vec<Option<NewPair>> = fresh.into_iter().map(Some).collect();
    let method = match selection {
        Selection::Uncertain => "uncertain",
        Selection::Disagreement => "disagreement",
        Selection::Random => "random",
    };
    Ok(choose(selection, &judged, count, seed)
        .into_iter()
        .map(|i| {
            let mut pair = chosen[i].take().expect("choose returns distinct indices");
            let mut record = serde_json::json!({"method": method, "preference_probability": judged[i].preference_probability});
            if let Some(disagreement) = judged[i].disagreement {
                record["disagreement"] = disagreement.into();
            }
            pair.metadata.insert("selection".into(), record);
            pair
        })
        .collect())
}

/// (prompt, response_a) then (prompt, response_b) of each pair, the texts the reward model
/// scores; a conversational prompt is rendered with the model's chat template, as the reward
/// stage does.
fn pair_texts<'a>(model: &RewardModel, pairs: &'a [NewPair]) -> Result<Vec<(String, &'a str)>, LabelError> {
    let prompts: Vec<String> = pairs
        .iter()
        .map(|pair| match &pair.messages {
            Some(messages) => model.tokenizer.prompt_text(&Prompt::Messages(messages.clone())),
            None => Ok(pair.prompt.clone()),
        })
        .collect::<Result<_, _>>()?;
    Ok(prompts
        .into_iter()
        .zip(pairs)
        .flat_map(|(prompt, pair)| [(prompt.clone(), pair.response_a.as_str()), (prompt, pair.response_b.as_str())])
        .collect())
}

/// The reward model of the run a stage directory belongs to: the one stage of `RUN_DIR` whose
/// checkpoint is a reward model (it has `reward.json`). Several: the caller must name one.
pub fn run_reward_model(stage_dir: &Path) -> Result<std::path::PathBuf, LabelError> {
    let run_dir = stage_dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut found: Vec<std::path::PathBuf> = std::fs::read_dir(run_dir)
        .map_err(|source| LabelError::Read { path: run_dir.into(), source })?
        .filter_map(|entry| entry.ok().map(|e| e.path().join(crate::stages::CHECKPOINT_DIR)))
        .filter(|checkpoint| checkpoint.join(NORMALIZATION_FILE).is_file())
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        _ => Err(LabelError::RewardModelChoice {
            run: run_dir.into(),
            found: found.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
        }),
    }
}

/// Loads a reward model to select with (fp32, on `device`).
pub fn load_reward_model(dir: &Path, device: DeviceSpec) -> Result<RewardModel, LabelError> {
    Ok(RewardModel::load(dir, device.resolve()?, Precision::Fp32, false)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncertain_picks_the_probabilities_nearest_one_half() {
        // Δ = r_a − r_b: 3 → p 0.953, −0.2 → 0.450, 0.1 → 0.525, −4 → 0.018, 0 → 0.5, 0.2 → 0.550.
        let scores = [(3.0, 0.0), (0.0, 0.2), (0.6, 0.5), (-4.0, 0.0), (1.0, 1.0), (0.2, 0.0)];
        let scores = scores.map(Judged::of_scores);
        assert_eq!(choose(Selection::Uncertain, &scores, 3, 0), [4, 2, 1], "0.5, then 0.525, then 0.450 (tied with 0.550: first wins)");
        assert_eq!(choose(Selection::Uncertain, &scores, 10, 0).len(), 6, "never more than the candidates");
        assert!((preference_probability((0.6, 0.5)) - 0.524_979).abs() < 1e-6);
    }

    #[test]
    fn random_is_seeded_distinct_and_ignores_the_scores() {
        let scores = vec![Judged::of_scores((0.0, 0.0)); 50];
        let first = choose(Selection::Random, &scores, 10, 7);
        assert_eq!(first, choose(Selection::Random, &scores, 10, 7), "same seed, same pairs");
        assert_ne!(first, choose(Selection::Random, &scores, 10, 8));
        let distinct: HashSet<usize> = first.iter().copied().collect();
        assert_eq!(distinct.len(), 10);
        assert!(first.iter().all(|&i| i < 50));
    }

    #[test]
    fn disagreement_picks_the_pairs_the_members_differ_on_most() {
        // Two members' (r_a, r_b). Pair 0: Δ 0 and 0 → p ½, ½: std 0. Pair 1: Δ 2 and −2 →
        // p 0.881, 0.119: std 0.381. Pair 2: Δ 1 and 0 → 0.731, 0.5: std 0.116. Pair 3: Δ 4 and
        // 4: std 0, though the members are sure. Pair 4: Δ 0 and 3 → 0.5, 0.953: std 0.226.
        let members = [
            [(0.0, 0.0), (1.0, 1.0)],
            [(2.0, 0.0), (0.0, 2.0)],
            [(1.0, 0.0), (0.5, 0.5)],
            [(4.0, 0.0), (5.0, 1.0)],
            [(0.0, 0.0), (3.0, 0.0)],
        ];
        let judged: Vec<Judged> = members.iter().map(|m| Judged::of_members(m)).collect();
        assert_eq!(choose(Selection::Disagreement, &judged, 3, 0), [1, 4, 2]);
        assert!((judged[1].disagreement.unwrap() - 0.380_797).abs() < 1e-6, "{:?}", judged[1]);
        assert!((judged[1].preference_probability - 0.5).abs() < 1e-12, "the mean of 0.881 and 0.119");
        assert!((judged[4].disagreement.unwrap() - 0.226_288).abs() < 1e-6, "{:?}", judged[4]);
        assert_eq!(judged[0].disagreement, Some(0.0));
    }
}
