//! Critic-free policy gradients on groups of responses (GRPO, RLOO): the advantages each
//! algorithm derives from a group's rewards, their losses, and the optimisation passes over a
//! rollout. Masks are 1 for response tokens up to and including end-of-text, 0 after.

use std::collections::BTreeMap;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::optimizer::{AdamW, OptimizerError};
use super::rollout::{response_logprobs, response_states, RolloutTokens};
use crate::model::LanguageModel;
use crate::rng::step_seed;
use crate::run::Metrics;

/// How GRPO scales a group's centred rewards (TRL's `scale_rewards`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScaleRewards {
    /// By the std of the response's own group (Shao et al. 2024, eq. 3).
    Group,
    /// By the std of the whole rollout's rewards (Hu et al. 2025, REINFORCE++ style).
    Batch,
    /// Not at all: the group's mean is subtracted only (Liu et al. 2025, Dr. GRPO).
    None,
}

/// Advantages `[B]` of responses in consecutive groups of `group_size`: the reward less its
/// group's mean, divided by a std as `scale` says (+1e-4 so that a group of equal rewards gets
/// zero advantages, not a division by zero).
pub fn group_advantages(rewards: &Tensor, group_size: i64, scale: ScaleRewards) -> Tensor {
    let grouped = rewards.to_kind(Kind::Float).view([-1, group_size]);
    let centred = (&grouped - grouped.mean_dim(1, true, Kind::Float)).view([-1]);
    match scale {
        ScaleRewards::Group => centred / (grouped.std_dim(1, true, true).expand_as(&grouped).reshape([-1]) + 1e-4),
        ScaleRewards::Batch => centred / (rewards.to_kind(Kind::Float).std(true) + 1e-4),
        ScaleRewards::None => centred,
    }
}

/// RLOO's advantages `[B]` (Ahmadian et al. 2024, eq. 5): each reward less the mean of the other
/// k − 1 rewards of its group, r_i − (Σ_j r_j − r_i)/(k − 1).
pub fn leave_one_out_advantages(rewards: &Tensor, k: i64) -> Tensor {
    let grouped = rewards.to_kind(Kind::Float).view([-1, k]);
    let others_mean = (grouped.sum_dim_intlist(1, true, Kind::Float) - &grouped) / (k - 1) as f64;
    (grouped - others_mean).view([-1])
}

/// The k3 estimator of KL(π‖π_ref) per token (Schulman 2020, "Approximating KL divergence"):
/// exp(log π_ref − log π) − (log π_ref − log π) − 1, unbiased and never negative.
pub fn k3_kl(logprobs: &Tensor, reference_logprobs: &Tensor) -> Tensor {
    let log_ratio = reference_logprobs - logprobs;
    log_ratio.exp() - &log_ratio - 1.0
}

/// What a loss of a micro-batch is summed over and what the minibatch's sum is divided by.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Normaliser {
    /// Each response's token mean, averaged over responses (GRPO).
    Sequences,
    /// A mean over all tokens of the minibatch (DAPO).
    Tokens,
    /// The sum over tokens divided by responses × this many tokens (Dr. GRPO: `max_new_tokens`).
    Constant(f64),
}

impl Normaliser {
    /// What a minibatch's summed loss is divided by, given its mask `[b, T]`.
    fn denominator(self, mask: &Tensor) -> f64 {
        let rows = mask.size()[0] as f64;
        match self {
            Normaliser::Sequences => rows,
            Normaliser::Tokens => mask.sum(Kind::Float).double_value(&[]).max(1.0),
            Normaliser::Constant(tokens) => rows * tokens,
        }
    }

    /// Sums per-token losses `[b, T]` as this normaliser weighs them: each row's masked mean
    /// for `Sequences`, all masked tokens otherwise.
    pub fn sum(self, per_token: &Tensor, mask: &Tensor) -> Tensor {
        let masked = per_token * mask;
        match self {
            Normaliser::Sequences => (masked.sum_dim_intlist(1, false, Kind::Float)
                / mask.sum_dim_intlist(1, false, Kind::Float).clamp_min(1.0))
            .sum(Kind::Float),
            Normaliser::Tokens | Normaliser::Constant(_) => masked.sum(Kind::Float),
        }
    }
}

/// GRPO's per-token loss `[b, T]` to minimise (Shao et al. 2024, eq. 3; Yu et al. 2025, eq. 10
/// for the asymmetric clip): −min(ρ·A, clip(ρ, 1 − ε_low, 1 + ε_high)·A) + β·k3, with ρ the
/// ratio to the rollout's policy. Returns `(loss, clipped)`, `clipped` 1 where the clipped term
/// was the smaller.
pub fn grpo_token_loss(
    logprobs: &Tensor,
    old_logprobs: &Tensor,
    reference_logprobs: &Tensor,
    advantages: &Tensor,
    clip: (f64, f64),
    beta: f64,
) -> (Tensor, Tensor) {
    let ratio = (logprobs - old_logprobs).exp();
    let advantages = advantages.unsqueeze(1);
    let unclipped = &ratio * &advantages;
    let clipped = ratio.clamp(1.0 - clip.0, 1.0 + clip.1) * &advantages;
    let surrogate = unclipped.minimum(&clipped);
    let was_clipped = clipped.lt_tensor(&unclipped).to_kind(Kind::Float);
    let loss = if beta > 0.0 { -surrogate + beta * k3_kl(logprobs, reference_logprobs) } else { -surrogate };
    (loss, was_clipped)
}

/// RLOO's loss per response `[b]` (Ahmadian et al. 2024; the sequence-level clipped ratio of
/// TRL's implementation): max(−A·ρ, −A·clip(ρ, 1 − ε, 1 + ε)), ρ = π(y)/π_old(y) over the whole
/// response. With one pass over an on-policy rollout ρ = 1 and this is REINFORCE with the
/// leave-one-out baseline. Returns `(loss, clipped)`.
pub fn rloo_sequence_loss(logprobs: &Tensor, old_logprobs: &Tensor, advantages: &Tensor, mask: &Tensor, clip: f64) -> (Tensor, Tensor) {
    let log_ratio = ((logprobs - old_logprobs) * mask).sum_dim_intlist(1, false, Kind::Float);
    let ratio = log_ratio.exp();
    let unclipped = -advantages * &ratio;
    let clipped = -advantages * ratio.clamp(1.0 - clip, 1.0 + clip);
    let was_clipped = clipped.gt_tensor(&unclipped).to_kind(Kind::Float);
    (unclipped.maximum(&clipped), was_clipped)
}

/// A rollout to optimise on, on the CPU: its tokens and, per response, the log-probs of the
/// policy that sampled it and of the reference, and the advantages.
pub struct PolicyRollout {
    pub tokens: RolloutTokens,
    /// `[B, T]`, masked.
    pub old_logprobs: Tensor,
    /// `[B, T]`, masked.
    pub reference_logprobs: Tensor,
    /// `[B]` one advantage per response.
    pub advantages: Tensor,
    /// `[B, T]` the tokens the loss sees: the response mask, less any response left out (e.g.
    /// DAPO's truncated completions).
    pub loss_mask: Tensor,
}

/// One micro-batch, on the policy's device, as a loss sees it.
pub struct MicroBatch {
    /// `[b, T]` the policy's current log-probs (with gradient).
    pub logprobs: Tensor,
    pub old_logprobs: Tensor,
    pub reference_logprobs: Tensor,
    pub advantages: Tensor,
    pub mask: Tensor,
}

/// How the optimisation passes over a rollout run.
#[derive(Debug, Clone, Copy)]
pub struct Passes {
    /// Passes over the rollout (GRPO's μ, TRL's `num_iterations`).
    pub updates_per_rollout: usize,
    pub minibatch_size: usize,
    pub grad_accum: usize,
    pub temperature: f64,
    pub grad_clip: f64,
    pub normaliser: Normaliser,
}

/// A micro-batch's loss, summed as the passes' normaliser weighs it, and figures to average.
pub type MicroBatchLoss<'a> = &'a dyn Fn(&MicroBatch) -> (Tensor, Vec<(&'static str, Tensor)>);

/// `updates_per_rollout` passes over shuffled minibatches of `rollout`; `loss` returns a
/// micro-batch's loss *summed* as `passes.normaliser` weighs it, and figures to average. Each
/// minibatch's summed loss is divided by its normaliser's denominator, so that the accumulated
/// gradient is the minibatch's, however it is split into micro-batches.
pub fn optimise(
    policy: &LanguageModel,
    optimizer: &mut AdamW,
    rollout: &PolicyRollout,
    passes: Passes,
    lr: f64,
    seed: u64,
    loss: MicroBatchLoss,
) -> Result<Metrics, OptimizerError> {
    let device = policy.device();
    let micro_size = (passes.minibatch_size / passes.grad_accum).max(1);
    let world = crate::distributed::world();
    let mut sums: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut order: Vec<i64> = (0..rollout.tokens.sequence.size()[0]).collect();
    for pass in 0..passes.updates_per_rollout {
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(step_seed(seed, SHUFFLE_SEED, pass as u64)));
        for minibatch in order.chunks(passes.minibatch_size) {
            let denominator = passes.normaliser.denominator(&rollout.loss_mask.index_select(0, &Tensor::from_slice(minibatch)));
            let scale = optimizer.loss_scale() / denominator;
            // Under data parallelism each rank takes its share of the micro-batches (every rank
            // holds the whole rollout); the optimizer sums their gradients.
            let micros: Vec<&[i64]> = minibatch.chunks(micro_size).collect();
            for micro in &micros[world.shard(micros.len())] {
                let index = Tensor::from_slice(micro);
                let tokens = rollout.tokens.rows(&index);
                let rows = |t: &Tensor| t.index_select(0, &index).to(device);
                let states = response_states(policy.transformer.as_ref(), &tokens);
                let (logprobs, _) = response_logprobs(policy.transformer.as_ref(), &states, &tokens, passes.temperature, false);
                let batch = MicroBatch {
                    logprobs,
                    old_logprobs: rows(&rollout.old_logprobs),
                    reference_logprobs: rows(&rollout.reference_logprobs),
                    advantages: rows(&rollout.advantages),
                    mask: rows(&rollout.loss_mask),
                };
                let (summed, figures) = loss(&batch);
                crate::model::blocks::backward(&(&summed * scale));
                sums.entry("loss/policy_avg").or_default().push(summed.double_value(&[]) / denominator);
                for (name, value) in figures {
                    sums.entry(name).or_default().push(value.double_value(&[]));
                }
            }
            let grad_norm = optimizer.update(lr, passes.grad_clip)?;
            sums.entry("policy/grad_norm").or_default().push(grad_norm);
        }
    }
    Ok(world.means(&sums)?)
}

const SHUFFLE_SEED: u64 = 71;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::tensor_testing::{assert_close, t, values};

    #[test]
    fn group_advantages_under_each_scaling() {
        // two groups of 3: [1, 2, 3] (mean 2, sample std 1) and [0, 0, 6] (mean 2, std √12)
        let rewards = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 0.0, 0.0, 6.0]);
        let none = values(&group_advantages(&rewards, 3, ScaleRewards::None));
        assert_close(&none, &[-1.0, 0.0, 1.0, -2.0, -2.0, 4.0]);
        let group = values(&group_advantages(&rewards, 3, ScaleRewards::Group));
        let s2 = 12f64.sqrt() + 1e-4;
        assert_close(&group, &[-1.0 / 1.0001, 0.0, 1.0 / 1.0001, -2.0 / s2, -2.0 / s2, 4.0 / s2]);
        // the batch's sample std: mean 2, squares 1+0+1+4+4+16 = 26 over 5
        let sb = (26.0f64 / 5.0).sqrt() + 1e-4;
        let batch = values(&group_advantages(&rewards, 3, ScaleRewards::Batch));
        assert_close(&batch, &none.iter().map(|a| a / sb).collect::<Vec<_>>());
        // a group of equal rewards learns nothing
        let equal = values(&group_advantages(&Tensor::from_slice(&[5.0f32, 5.0]), 2, ScaleRewards::Group));
        assert_close(&equal, &[0.0, 0.0]);
    }

    #[test]
    fn leave_one_out_baseline() {
        // group [1, 2, 6]: baselines (2+6)/2 = 4, (1+6)/2 = 3.5, (1+2)/2 = 1.5
        let advantages = values(&leave_one_out_advantages(&Tensor::from_slice(&[1.0f32, 2.0, 6.0, 0.0, 4.0, 2.0]), 3));
        assert_close(&advantages, &[-3.0, -1.5, 4.5, -3.0, 3.0, 0.0]);
        // k = 2: each against the other
        assert_close(&values(&leave_one_out_advantages(&Tensor::from_slice(&[1.0f32, 3.0]), 2)), &[-2.0, 2.0]);
    }

    #[test]
    fn k3_estimator_on_hand_values() {
        // log π = −1, log π_ref = −2: r = e^{−1} ⇒ e^{−1} + 1 − 1 = 0.367879; equal: 0
        let kl = values(&k3_kl(&t(&[&[-1.0, -0.5]]), &t(&[&[-2.0, -0.5]])));
        assert_close(&kl, &[(-1.0f64).exp(), 0.0]);
        // log π_ref − log π = 1: e − 1 − 1 = 0.718282
        assert_close(&values(&k3_kl(&t(&[&[-2.0]]), &t(&[&[-1.0]]))), &[std::f64::consts::E - 2.0]);
    }

    #[test]
    fn clip_higher_is_asymmetric() {
        // ratios e^{0.3} ≈ 1.3499 and e^{−0.3} ≈ 0.7408, both with A = 1 and A = −1
        let old = t(&[&[0.0, 0.0, 0.0, 0.0]]);
        let new = t(&[&[0.3, 0.3, -0.3, -0.3]]);
        let advantages = Tensor::from_slice(&[1.0f32]);
        let (r_up, r_down) = (0.3f64.exp(), (-0.3f64).exp());
        let reference = new.shallow_clone();
        // ε_low = 0.2, ε_high = 0.28: a positive advantage is clipped at 1.28, not 1.2
        let (loss, clipped) = grpo_token_loss(&new, &old, &reference, &advantages, (0.2, 0.28), 0.0);
        assert_close(&values(&loss), &[-1.28, -1.28, -r_down, -r_down]);
        assert_close(&values(&clipped), &[1.0, 1.0, 0.0, 0.0]);
        let (symmetric, _) = grpo_token_loss(&new, &old, &reference, &advantages, (0.2, 0.2), 0.0);
        assert_close(&values(&symmetric), &[-1.2, -1.2, -r_down, -r_down]);
        // a negative advantage: the low side clips at 0.8 (min(−0.7408, −0.8) = −0.8 ⇒ loss 0.8)
        let (negative, clipped) = grpo_token_loss(&new, &old, &reference, &Tensor::from_slice(&[-1.0f32]), (0.2, 0.28), 0.0);
        assert_close(&values(&negative), &[r_up, r_up, 0.8, 0.8]);
        assert_close(&values(&clipped), &[0.0, 0.0, 1.0, 1.0]);
    }

    #[test]
    fn the_kl_term_adds_beta_times_k3() {
        let old = t(&[&[-1.0, -1.0]]);
        let new = old.shallow_clone();
        let reference = t(&[&[-2.0, -1.0]]);
        let (loss, _) = grpo_token_loss(&new, &old, &reference, &Tensor::from_slice(&[0.5f32]), (0.2, 0.2), 0.1);
        assert_close(&values(&loss), &[-0.5 + 0.1 * (-1.0f64).exp(), -0.5]);
    }

    #[test]
    fn each_normaliser_weighs_tokens_as_its_paper_does() {
        // row 0 has 3 tokens of loss 1; row 1 one token of loss 4 (its other tokens are after its end)
        let per_token = t(&[&[1.0, 1.0, 1.0], &[4.0, 9.0, 9.0]]);
        let mask = t(&[&[1.0, 1.0, 1.0], &[1.0, 0.0, 0.0]]);
        // GRPO: (mean 1 + mean 4) / 2 rows = 2.5
        let grpo = Normaliser::Sequences;
        assert_close(&[grpo.sum(&per_token, &mask).double_value(&[]) / grpo.denominator(&mask)], &[2.5]);
        // DAPO: (3 + 4) / 4 tokens = 1.75
        let dapo = Normaliser::Tokens;
        assert_close(&[dapo.sum(&per_token, &mask).double_value(&[]) / dapo.denominator(&mask)], &[1.75]);
        // Dr. GRPO: 7 / (2 rows × 5 max_new_tokens) = 0.7
        let dr = Normaliser::Constant(5.0);
        assert_close(&[dr.sum(&per_token, &mask).double_value(&[]) / dr.denominator(&mask)], &[0.7]);
    }

    #[test]
    fn rloo_clips_the_ratio_of_the_whole_response() {
        // response log-ratio 0.1 + 0.2 = 0.3 (the token after the end does not count)
        let old = t(&[&[0.0, 0.0, 0.0], &[0.0, 0.0, 0.0]]);
        let new = t(&[&[0.1, 0.2, 5.0], &[0.0, 0.0, 0.0]]);
        let mask = t(&[&[1.0, 1.0, 0.0], &[1.0, 1.0, 1.0]]);
        let advantages = Tensor::from_slice(&[2.0f32, -1.0]);
        let (loss, clipped) = rloo_sequence_loss(&new, &old, &advantages, &mask, 0.2);
        // row 0: max(−2·e^{0.3}, −2·1.2) = −2.4 (clipped); row 1: ratio 1 ⇒ 1
        assert_close(&values(&loss), &[-2.4, 1.0]);
        assert_close(&values(&clipped), &[1.0, 0.0]);
    }
}
