//! Pieces every training stage uses: the optimizer, the learning-rate schedule, resume state.

pub mod optimizer;
pub mod schedule;
pub mod state;
