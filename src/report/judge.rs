//! Who decides which of two responses is better: the gold oracle's scores recorded with the
//! samples, or a reward model (`--judge RM_DIR`) that scores the samples afresh.

use std::path::{Path, PathBuf};

use super::load::SampleLine;
use super::ReportError;
use crate::model::reward::RewardModel;
use crate::model::Precision;
use crate::stages::CHECKPOINT_DIR;

pub enum Judge {
    /// The `gold_score` field of each sample (synthetic tasks).
    Gold,
    RewardModel {
        path: PathBuf,
        model: Box<RewardModel>,
    },
}

impl Judge {
    /// Loads a reward model from a checkpoint directory, or from a stage directory holding one.
    pub fn reward_model(dir: &Path) -> Result<Judge, ReportError> {
        if !dir.exists() {
            return Err(ReportError::Judge { path: dir.to_path_buf(), message: "no such directory".into() });
        }
        let checkpoint = if dir.join(CHECKPOINT_DIR).is_dir() { dir.join(CHECKPOINT_DIR) } else { dir.to_path_buf() };
        let model = RewardModel::load(&checkpoint, tch::Device::Cpu, Precision::Fp32, false)
            .map_err(|error| ReportError::Judge { path: dir.to_path_buf(), message: error.to_string() })?;
        tracing::info!(judge = %checkpoint.display(), "judging samples with a reward model");
        Ok(Judge::RewardModel { path: checkpoint, model: Box::new(model) })
    }

    pub fn describe(&self) -> String {
        match self {
            Judge::Gold => "gold oracle".into(),
            Judge::RewardModel { path, .. } => format!("reward model {}", path.display()),
        }
    }

    /// Whether `sample` can be judged without running a model.
    pub fn can_judge(&self, sample: &SampleLine) -> bool {
        match self {
            Judge::Gold => sample.gold_score.is_some(),
            Judge::RewardModel { .. } => true,
        }
    }

    /// One score per sample (`None`: this judge cannot score it).
    pub fn score(&self, samples: &[&SampleLine]) -> Result<Vec<Option<f64>>, ReportError> {
        match self {
            Judge::Gold => Ok(samples.iter().map(|s| s.gold_score).collect()),
            Judge::RewardModel { path, model } => {
                let texts: Vec<(&str, &str)> = samples.iter().map(|s| (s.prompt.as_str(), s.completion.as_str())).collect();
                let scores =
                    model.score_texts(&texts, 16).map_err(|error| ReportError::Judge { path: path.clone(), message: error.to_string() })?;
                Ok(scores.into_iter().map(Some).collect())
            }
        }
    }
}
