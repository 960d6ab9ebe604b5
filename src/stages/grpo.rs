//! `kind = "grpo"`: Group Relative Policy Optimization (Shao et al. 2024, "DeepSeekMath", §4):
//! `group_size` responses per prompt, each advantaged by its reward against its group's, no
//! critic, a k3 KL term to the reference weighted by `beta`. `loss_type` picks the variant:
//! `grpo` (each response's token mean, averaged), `dr_grpo` (Liu et al. 2025, "Understanding
//! R1-Zero-Like Training": no std scaling, a constant normaliser) or `dapo` (Yu et al. 2025:
//! a token-level mean, clip-higher with `epsilon_low`/`epsilon_high`, optionally no loss on
//! truncated completions).

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::rl::{GroupAlgorithm, GroupKeys, PolicyGradientKeys, POLICY_READINGS};
use super::{Frontier, StageFigures};
use crate::run::Metrics;
use crate::train::alerts::Watched;
use crate::train::policy_gradient::{group_advantages, grpo_token_loss, k3_kl, MicroBatch, Normaliser, ScaleRewards};
use crate::train::rollout::ScoredRollout;

/// What reports and logs show of the RL stages without a critic.
pub const FIGURES: StageFigures = StageFigures {
    headline: &["eval/rm_score", "eval/gold_score", "eval/kl"],
    curves: &[
        "objective/scores",
        "objective/kl",
        "objective/entropy",
        "policy/clipfrac_avg",
        "eval/rm_score",
        "eval/gold_score",
        "eval/kl",
    ],
    primary: &["eval/gold_score", "eval/rm_score"],
    readings: &POLICY_READINGS,
    frontier: Some(Frontier { kl: "eval/kl", proxy: "eval/rm_score", gold: "eval/gold_score" }),
    shown: &["objective/scores", "objective/kl"],
    logged: &["eval/rm_score", "eval/gold_score", "eval/kl"],
    step_name: "iteration",
    watched: Watched {
        kl: Some("objective/kl"),
        clip_fraction: Some("policy/clipfrac_avg"),
        entropy: Some("objective/entropy"),
        ..Watched::NOTHING
    },
};

/// How the per-token losses of a minibatch are averaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossType {
    Grpo,
    DrGrpo,
    Dapo,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpoKeys {
    /// Responses per prompt.
    #[serde(default = "defaults::group_size")]
    pub group_size: usize,
    #[serde(default = "defaults::loss_type")]
    pub loss_type: LossType,
    /// How advantages are scaled; by default `group`, or `none` with `loss_type = "dr_grpo"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_rewards: Option<ScaleRewards>,
    /// β of the k3 KL term to the reference (0: no KL term).
    #[serde(default = "defaults::beta")]
    pub beta: f64,
    /// ε of the clip below 1.
    #[serde(default = "defaults::epsilon_low")]
    pub epsilon_low: f64,
    /// ε of the clip above 1; by default `epsilon_low`, or 0.28 with `loss_type = "dapo"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon_high: Option<f64>,
    /// No loss on responses cut off by `max_new_tokens` (DAPO's overlong filtering).
    #[serde(default)]
    pub mask_truncated_completions: bool,
}

#[rustfmt::skip]
mod defaults {
    use super::LossType;
    pub fn group_size() -> usize { 8 }
    pub fn loss_type() -> LossType { LossType::Grpo }
    pub fn beta() -> f64 { 0.04 }
    pub fn epsilon_low() -> f64 { 0.2 }
}

impl GrpoKeys {
    fn scale(&self) -> ScaleRewards {
        self.scale_rewards.unwrap_or(if self.loss_type == LossType::DrGrpo { ScaleRewards::None } else { ScaleRewards::Group })
    }

    fn epsilon_high(&self) -> f64 {
        self.epsilon_high.unwrap_or(if self.loss_type == LossType::Dapo { 0.28 } else { self.epsilon_low })
    }
}

impl GroupKeys for GrpoKeys {
    fn group(&self) -> (&'static str, usize) {
        ("group_size", self.group_size)
    }

    fn check(&self) -> Result<(), (&'static str, String)> {
        if !(self.beta >= 0.0 && self.beta.is_finite()) {
            return Err(("beta", format!("a value ≥ 0, got {}", self.beta)));
        }
        for (key, epsilon) in [("epsilon_low", self.epsilon_low), ("epsilon_high", self.epsilon_high())] {
            if !(epsilon > 0.0 && epsilon < 1.0) {
                return Err((key, format!("a value in (0, 1), got {epsilon}")));
            }
        }
        Ok(())
    }

    fn algorithm(&self, shared: &PolicyGradientKeys) -> Box<dyn GroupAlgorithm> {
        Box::new(Grpo {
            group_size: self.group_size,
            scale: self.scale(),
            clip: (self.epsilon_low, self.epsilon_high()),
            beta: self.beta,
            mask_truncated: self.mask_truncated_completions,
            normaliser: match self.loss_type {
                LossType::Grpo => Normaliser::Sequences,
                LossType::DrGrpo => Normaliser::Constant(shared.max_new_tokens as f64),
                LossType::Dapo => Normaliser::Tokens,
            },
        })
    }

    fn figures(&self) -> &'static StageFigures {
        &FIGURES
    }
}

struct Grpo {
    group_size: usize,
    scale: ScaleRewards,
    clip: (f64, f64),
    beta: f64,
    mask_truncated: bool,
    normaliser: Normaliser,
}

impl GroupAlgorithm for Grpo {
    fn group_size(&self) -> usize {
        self.group_size
    }

    fn advantages(&self, rollout: &ScoredRollout, scores: &Tensor, _reference_logprobs: &Tensor) -> (Tensor, Tensor, Metrics) {
        let advantages = group_advantages(scores, self.group_size as i64, self.scale);
        let mut loss_mask = rollout.tokens.response_mask.to_kind(Kind::Float);
        if self.mask_truncated {
            loss_mask *= Tensor::from_slice(&rollout.stopped).to_kind(Kind::Float).unsqueeze(1);
        }
        // Groups whose responses all score alike teach nothing (DAPO's dynamic sampling would
        // replace them); the share says how much of a rollout was wasted.
        let grouped = scores.view([-1, self.group_size as i64]);
        let flat = grouped.std_dim(1, false, false).le(1e-6).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
        let metrics = Metrics::from([("objective/zero_std_fraction".to_string(), flat)]);
        (advantages, loss_mask, metrics)
    }

    fn normaliser(&self) -> Normaliser {
        self.normaliser
    }

    fn loss(&self, batch: &MicroBatch) -> (Tensor, Vec<(&'static str, Tensor)>) {
        let (per_token, clipped) =
            grpo_token_loss(&batch.logprobs, &batch.old_logprobs, &batch.reference_logprobs, &batch.advantages, self.clip, self.beta);
        let mask = &batch.mask;
        let tokens = mask.sum(Kind::Float).clamp_min(1.0);
        let mean = |values: &Tensor| (values * mask).sum(Kind::Float) / &tokens;
        let kl = k3_kl(&batch.logprobs.detach(), &batch.reference_logprobs);
        (self.normaliser.sum(&per_token, mask), vec![("policy/clipfrac_avg", mean(&clipped)), ("policy/kl_k3_avg", mean(&kl))])
    }
}
