//! `kind = "rloo"`: REINFORCE Leave-One-Out (Ahmadian et al. 2024, "Back to Basics"): `k`
//! responses per prompt, the KL penalty folded into each response's reward,
//! r = score − β·Σ(log π − log π_ref), and each reward's baseline the mean of the other k − 1 of
//! its group. The loss is the sequence-level clipped surrogate, which on an on-policy rollout is
//! REINFORCE.

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::rl::{GroupAlgorithm, GroupKeys, PolicyGradientKeys};
use super::StageFigures;
use crate::run::Metrics;
use crate::train::policy_gradient::{leave_one_out_advantages, rloo_sequence_loss, MicroBatch, Normaliser};
use crate::train::rollout::ScoredRollout;

pub use super::grpo::FIGURES;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RlooKeys {
    /// Responses per prompt.
    #[serde(default = "defaults::k")]
    pub k: usize,
    /// β of the KL penalty folded into the reward.
    #[serde(default = "defaults::kl_coef")]
    pub kl_coef: f64,
    /// ε of the clipped sequence ratio (it matters only with `updates_per_rollout` > 1 or
    /// several minibatches).
    #[serde(default = "defaults::cliprange")]
    pub cliprange: f64,
}

#[rustfmt::skip]
mod defaults {
    pub fn k() -> usize { 4 }
    pub fn kl_coef() -> f64 { 0.05 }
    pub fn cliprange() -> f64 { 0.2 }
}

impl GroupKeys for RlooKeys {
    fn group(&self) -> (&'static str, usize) {
        ("k", self.k)
    }

    fn check(&self) -> Result<(), (&'static str, String)> {
        if !(self.kl_coef >= 0.0 && self.kl_coef.is_finite()) {
            return Err(("kl_coef", format!("a value ≥ 0, got {}", self.kl_coef)));
        }
        if !(self.cliprange > 0.0 && self.cliprange < 1.0) {
            return Err(("cliprange", format!("a value in (0, 1), got {}", self.cliprange)));
        }
        Ok(())
    }

    fn algorithm(&self, _shared: &PolicyGradientKeys) -> Box<dyn GroupAlgorithm> {
        Box::new(self.clone())
    }

    fn figures(&self) -> &'static StageFigures {
        &FIGURES
    }
}

impl GroupAlgorithm for RlooKeys {
    fn group_size(&self) -> usize {
        self.k
    }

    fn advantages(&self, rollout: &ScoredRollout, scores: &Tensor, reference_logprobs: &Tensor) -> (Tensor, Tensor, Metrics) {
        let sequence_kl = (&rollout.logprobs - reference_logprobs).sum_dim_intlist(1, false, Kind::Float);
        let rewards = scores - self.kl_coef * &sequence_kl;
        let metrics = Metrics::from([("objective/rlhf_reward".to_string(), rewards.mean(Kind::Float).double_value(&[]))]);
        (leave_one_out_advantages(&rewards, self.k as i64), rollout.tokens.response_mask.to_kind(Kind::Float), metrics)
    }

    fn normaliser(&self) -> Normaliser {
        Normaliser::Sequences
    }

    fn loss(&self, batch: &MicroBatch) -> (Tensor, Vec<(&'static str, Tensor)>) {
        let (per_response, clipped) =
            rloo_sequence_loss(&batch.logprobs, &batch.old_logprobs, &batch.advantages, &batch.mask, self.cliprange);
        (per_response.sum(Kind::Float), vec![("policy/clipfrac_avg", clipped.mean(Kind::Float))])
    }
}
