//! What `--resume` needs of a training stage: the weights, the optimizer's moments and the
//! stage's progress counters, in `<stage>/state/`. A save replaces the directory as a whole
//! (`run::durable`): a crash during a save leaves the previous state or the new one, complete,
//! never new weights beside old progress; `progress.json`, written last, marks it complete.

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tch::nn::VarStore;

use super::optimizer::AdamW;
use crate::run::durable;
use crate::run::RunDirError;

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

/// Makes `state_dir` the newest complete state a crash left (see `run::durable`); whether there
/// is one.
pub fn recover(state_dir: &Path) -> Result<bool, StateError> {
    Ok(durable::recover_dir(state_dir, PROGRESS_FILE)?)
}

fn weights_file(name: &str) -> String {
    format!("{name}.safetensors")
}

fn optimizer_file(name: &str) -> String {
    format!("{name}.optimizer.safetensors")
}

/// Saves the parts and the progress as the new state. `hook` is called with the name of each file
/// once it is written and flushed, then at the points of the directory swap (for tests that stop
/// the process there).
pub fn save<P: Serialize>(state_dir: &Path, parts: &[Part], progress: &P, hook: &dyn Fn(&str)) -> Result<(), StateError> {
    let write = |dir: &Path| -> Result<(), StateError> {
        let torch = |source| StateError::Torch { dir: dir.display().to_string(), source };
        for part in parts {
            let (weights, optimizer) = (weights_file(part.name), optimizer_file(part.name));
            part.vs.save(dir.join(&weights)).map_err(torch)?;
            durable::sync(&dir.join(&weights))?;
            hook(&weights);
            part.optimizer.save(&dir.join(&optimizer)).map_err(torch)?;
            durable::sync(&dir.join(&optimizer))?;
            hook(&optimizer);
        }
        // Written last: its presence means the files above belong to this progress.
        durable::write_file(&dir.join(PROGRESS_FILE), serde_json::to_string(progress).expect("progress serialises").as_bytes())?;
        hook(PROGRESS_FILE);
        Ok(())
    };
    durable::replace_dir(state_dir, write, hook)
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
