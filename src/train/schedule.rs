//! Learning rate at a step: linear warmup from 0, then cosine or linear decay to
//! `lr × min_lr_ratio` at the last step, or constant.

use serde::{Deserialize, Serialize};

/// How the learning rate moves after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Cosine,
    Linear,
    Constant,
}

#[derive(Debug, Clone, Copy)]
pub struct LrSchedule {
    pub lr: f64,
    pub min_lr_ratio: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    pub shape: Schedule,
}

impl LrSchedule {
    /// The rate for optimizer step `step` (1-based).
    pub fn at(&self, step: u64) -> f64 {
        if step <= self.warmup_steps {
            return self.lr * step as f64 / self.warmup_steps as f64;
        }
        let min_lr = self.lr * self.min_lr_ratio;
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / decay_steps as f64).min(1.0);
        match self.shape {
            Schedule::Constant => self.lr,
            Schedule::Linear => self.lr - (self.lr - min_lr) * progress,
            Schedule::Cosine => min_lr + 0.5 * (self.lr - min_lr) * (1.0 + (std::f64::consts::PI * progress).cos()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(shape: Schedule) -> LrSchedule {
        LrSchedule { lr: 1e-3, min_lr_ratio: 0.1, warmup_steps: 10, total_steps: 110, shape }
    }

    #[test]
    fn warmup_is_linear_from_zero() {
        let s = schedule(Schedule::Cosine);
        assert!((s.at(1) - 1e-4).abs() < 1e-15);
        assert!((s.at(5) - 5e-4).abs() < 1e-15);
        assert!((s.at(10) - 1e-3).abs() < 1e-15);
    }

    #[test]
    fn cosine_and_linear_reach_the_floor_at_the_last_step() {
        let cosine = schedule(Schedule::Cosine);
        // halfway through the decay: min + (max − min)/2 = 1e-4 + 4.5e-4
        assert!((cosine.at(60) - 5.5e-4).abs() < 1e-12);
        assert!((cosine.at(110) - 1e-4).abs() < 1e-12);
        let linear = schedule(Schedule::Linear);
        assert!((linear.at(35) - (1e-3 - 9e-4 * 0.25)).abs() < 1e-12);
        assert!((linear.at(110) - 1e-4).abs() < 1e-12);
        assert_eq!(schedule(Schedule::Constant).at(80), 1e-3);
    }
}
