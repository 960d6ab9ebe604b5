//! What `--resume` needs of a training stage: the weights, the optimizer's moments and the
//! stage's progress counters, in `<stage>/state/`.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tch::nn::VarStore;

use super::optimizer::AdamW;
use crate::run::{write_atomic, RunDirError};

const PROGRESS_FILE: &str = "progress.json";
const WEIGHTS_FILE: &str = "model.safetensors";
const OPTIMIZER_FILE: &str = "optimizer.safetensors";

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

pub fn save<P: Serialize>(state_dir: &Path, vs: &VarStore, optimizer: &AdamW, progress: &P) -> Result<(), StateError> {
    std::fs::create_dir_all(state_dir).map_err(|source| RunDirError::Write { path: state_dir.into(), source })?;
    let torch = |source| StateError::Torch { dir: state_dir.display().to_string(), source };
    vs.save(state_dir.join(WEIGHTS_FILE)).map_err(torch)?;
    optimizer.save(&state_dir.join(OPTIMIZER_FILE)).map_err(torch)?;
    // Written last: its presence means the files above belong to this progress.
    write_atomic(&state_dir.join(PROGRESS_FILE), &serde_json::to_string(progress).expect("progress serialises"))?;
    Ok(())
}

pub fn restore<P: DeserializeOwned>(state_dir: &Path, vs: &mut VarStore, optimizer: &mut AdamW) -> Result<P, StateError> {
    let path = state_dir.join(PROGRESS_FILE);
    let text = std::fs::read_to_string(&path).map_err(|source| RunDirError::Read { path: path.clone(), source })?;
    let progress = serde_json::from_str(&text).map_err(|e| RunDirError::Corrupt { path: path.clone(), message: e.to_string() })?;
    let torch = |source| StateError::Torch { dir: state_dir.display().to_string(), source };
    vs.load(state_dir.join(WEIGHTS_FILE)).map_err(torch)?;
    optimizer.load(&state_dir.join(OPTIMIZER_FILE)).map_err(torch)?;
    Ok(progress)
}
