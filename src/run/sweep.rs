//! A sweep directory (`results/<experiment>/sweep-<time>/`): `sweep.json` lists the variants
//! (their `--set` assignments and seeds), `experiment.toml` is the experiment file as it was
//! when the sweep started, and each variant is an ordinary run directory named after it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::RunDirError;
use crate::config::Variant;

pub const SWEEP_FILE: &str = "sweep.json";
/// The experiment file copied into the sweep, so that resuming builds the same variants.
pub const EXPERIMENT_FILE: &str = "experiment.toml";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepRecord {
    pub experiment: String,
    /// The `--set` assignments given for every variant.
    pub overrides: Vec<String>,
    /// The swept keys, in order.
    pub keys: Vec<String>,
    pub variants: Vec<Variant>,
}

impl SweepRecord {
    pub fn read(dir: &Path) -> Result<SweepRecord, RunDirError> {
        let path = dir.join(SWEEP_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| RunDirError::Read { path: path.clone(), source })?;
        serde_json::from_str(&text).map_err(|error| RunDirError::Corrupt { path, message: error.to_string() })
    }

    pub fn write(&self, dir: &Path) -> Result<(), RunDirError> {
        super::write_atomic(&dir.join(SWEEP_FILE), &serde_json::to_string_pretty(self).expect("JSON serialises"))
    }

    pub fn variant_dir(dir: &Path, variant: &Variant) -> PathBuf {
        dir.join(&variant.name)
    }
}
