//! Pieces every training stage uses: the stage loop, the optimizer, the learning-rate schedule,
//! resume state, the rollout machinery, the alerts raised while a stage trains.

pub mod alerts;
pub mod optimizer;
pub mod policy_gradient;
pub mod rollout;
pub mod schedule;
pub mod stage_loop;
pub mod state;
#[cfg(test)]
pub mod tensor_testing;
