//! Pieces every training stage uses: the optimizer and the learning-rate schedule.

pub mod optimizer;
pub mod schedule;
