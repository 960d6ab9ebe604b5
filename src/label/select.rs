//! Choosing which candidate pairs to label: those a reward model is least sure of (uncertainty
//! sampling, Lewis & Gale 1994; for preference pairs, the Bradley–Terry probability nearest ½),
//! or a seeded random subset of the same size — the control arm any active-labeling claim needs.

use std::collections::HashSet;
use std::path::Path;

use rand::seq::index;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::import::NewPair;
use super::LabelError;
use crate::data::chat::Prompt;
use crate::data::synthetic::annotators::sigmoid;
use crate::model::reward::{RewardModel, NORMALIZATION_FILE};
use crate::model::{DeviceSpec, Precision};

/// How `rlhf label import --select` chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Selection {
    /// The pairs whose preference probability under the reward model is nearest ½.
    Uncertain,
    /// A seeded random subset: the baseline to measure `uncertain` against.
    Random,
}

/// Scores per pair: the reward model's `(r_a, r_b)`.
pub type PairScores = (f64, f64);

/// P(response_a preferred) under the Bradley–Terry model the reward model was trained with.
pub fn preference_probability((reward_a, reward_b): PairScores) -> f64 {
    sigmoid(reward_a - reward_b)
}

/// Indices of the `count` pairs to label, in the order chosen. `Uncertain` ranks by
/// |P(a ≻ b) − ½| (nearest ½ first; equal distances keep the candidates' order), `Random` draws
/// `count` distinct indices from `seed`. Fewer candidates than `count`: all of them.
pub fn choose(selection: Selection, scores: &[PairScores], count: usize, seed: u64) -> Vec<usize> {
    let count = count.min(scores.len());
    match selection {
        Selection::Uncertain => {
            let mut order: Vec<usize> = (0..scores.len()).collect();
            let margin = |i: usize| (preference_probability(scores[i]) - 0.5).abs();
            order.sort_by(|&x, &y| margin(x).total_cmp(&margin(y)));
            order.truncate(count);
            order
        }
        Selection::Random => index::sample(&mut ChaCha8Rng::seed_from_u64(seed), scores.len(), count).into_vec(),
    }
}

/// Keeps the `count` pairs `selection` chooses among `candidates` that are not already in the
/// database (`present`: their content hashes), and records in each pair's metadata how it was
/// chosen: `{"selection": {"method", "preference_probability"}}`.
pub fn select_pairs(
    candidates: Vec<NewPair>,
    present: &HashSet<String>,
    reward_model: &RewardModel,
    selection: Selection,
    count: usize,
    seed: u64,
) -> Result<Vec<NewPair>, LabelError> {
    let fresh: Vec<NewPair> = candidates.into_iter().filter(|pair| !present.contains(&super::import::content_hash(pair))).collect();
    let scores = score_pairs(reward_model, &fresh)?;
    let mut chosen: Vec<Option<NewPair>> = fresh.into_iter().map(Some).collect();
    let method = match selection {
        Selection::Uncertain => "uncertain",
        Selection::Random => "random",
    };
    Ok(choose(selection, &scores, count, seed)
        .into_iter()
        .map(|i| {
            let mut pair = chosen[i].take().expect("choose returns distinct indices");
            let record = serde_json::json!({"method": method, "preference_probability": preference_probability(scores[i])});
            pair.metadata.insert("selection".into(), record);
            pair
        })
        .collect())
}

/// The reward model's `(r_a, r_b)` for each pair; a conversational prompt is rendered with the
/// model's chat template, as the reward stage does.
fn score_pairs(model: &RewardModel, pairs: &[NewPair]) -> Result<Vec<PairScores>, LabelError> {
    let prompts: Vec<String> = pairs
        .iter()
        .map(|pair| match &pair.messages {
            Some(messages) => model.tokenizer.prompt_text(&Prompt::Messages(messages.clone())),
            None => Ok(pair.prompt.clone()),
        })
        .collect::<Result<_, _>>()?;
    let texts: Vec<(&str, &str)> = prompts
        .iter()
        .zip(pairs)
        .flat_map(|(prompt, pair)| [(prompt.as_str(), pair.response_a.as_str()), (prompt.as_str(), pair.response_b.as_str())])
        .collect();
    let scores = model.score_texts(&texts, 32)?;
    Ok(scores.chunks(2).map(|two| (two[0], two[1])).collect())
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
        assert_eq!(choose(Selection::Uncertain, &scores, 3, 0), [4, 2, 1], "0.5, then 0.525, then 0.450 (tied with 0.550: first wins)");
        assert_eq!(choose(Selection::Uncertain, &scores, 10, 0).len(), 6, "never more than the candidates");
        assert!((preference_probability((0.6, 0.5)) - 0.524_979).abs() < 1e-6);
    }

    #[test]
    fn random_is_seeded_distinct_and_ignores_the_scores() {
        let scores = vec![(0.0, 0.0); 50];
        let first = choose(Selection::Random, &scores, 10, 7);
        assert_eq!(first, choose(Selection::Random, &scores, 10, 7), "same seed, same pairs");
        assert_ne!(first, choose(Selection::Random, &scores, 10, 8));
        let distinct: HashSet<usize> = first.iter().copied().collect();
        assert_eq!(distinct.len(), 10);
        assert!(first.iter().all(|&i| i < 50));
    }
}
