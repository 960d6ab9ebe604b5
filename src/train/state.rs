//! What `--resume` needs of a training stage: the weights, the optimizer's moments and the
//! stage's progress counters, in `<stage>/state/`.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tch::nn::VarStore;

use super::optimizer::AdamW;
use crate::run::{write_atomic, RunDirError};

const PROGRESS_FILE: &str = "progress.json";

/// One trained model of a stage: its name in the state directory, weights and optimizer.
/// Stages with one model call it `model`; PPO saves `policy` and `value`.
pub struct Part<'a> {
    pub name: &'a str,
    pub vs: &'a VarStore,
    pub optimizer: &'a AdamW,
}

/// The same, borrowed mutably to restore into.
pub struct PartMut<'a> {
    pub name: &'a str,
    pub vs: &'a mut VarStore,
    pub optimizer: &'a mut AdamW,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    #[error("resume state in `{dir}`: {source}")]
    Torch { dir: String, source: tch::TchError },
}

/// Whether `state_dir` holds a complete state.
pub fn exists(state_dir: &Path) -> bool {
    state_dir.join(PROGRESS_FILE).is_file()
}

fn weights_file(name: &str) -> String {
    format!("{name}.safetensors")
}

fn optimizer_file(name: &str) -> String {
    format!("{name}.optimizer.safetensors")
}

pub fn save<P: Serialize>(state_dir: &Path, parts: &[Part], progress: &P) -> Result<(), StateError> {
    std::fs::create_dir_all(state_dir).map_err(|source| RunDirError::Write { path: state_dir.into(), source })?;
    let torch = |source| StateError::Torch { dir: state_dir.display().to_string(), source };
    for part in parts {
        part.vs.save(state_dir.join(weights_file(part.name))).map_err(torch)?;
        part.optimizer.save(&state_dir.join(optimizer_file(part.name))).map_err(torch)?;
    }
    // Written last: its presence means the files above belong to this progress.
    write_atomic(&state_dir.join(PROGRESS_FILE), &serde_json::to_string(progress).expect("progress serialises"))?;
    Ok(())
}

pub fn restore<P: DeserializeOwned>(state_dir: &Path, parts: &mut [PartMut]) -> Result<P, StateError> {
    let path = state_dir.join(PROGRESS_FILE);
    let text = std::fs::read_to_string(&path).map_err(|source| RunDirError::Read { path: path.clone(), source })?;
    let progress = serde_json::from_str(&text).map_err(|e| RunDirError::Corrupt { path: path.clone(), message: e.to_string() })?;
    let torch = |source| StateError::Torch { dir: state_dir.display().to_string(), source };
    for part in parts {
        part.vs.load(state_dir.join(weights_file(part.name))).map_err(torch)?;
        part.optimizer.load(&state_dir.join(optimizer_file(part.name))).map_err(torch)?;
    }
    Ok(progress)
}
