//! The model side: the architectures (GPT-2, the Llama family) behind one interface, scalar
//! heads, devices, checkpoints and generation.

pub mod architecture;
pub mod attention;
pub mod checkpoint;
pub mod device;
pub mod generate;
pub mod gpt2;
pub mod llama;
pub mod reward;

use std::path::Path;

use tch::nn::VarStore;
use tch::Device;

pub use architecture::{HfHead, ModelConfig, Transformer};
pub use attention::KvCache;
pub use checkpoint::CheckpointError;
pub use device::{DeviceSpec, Precision};
pub use gpt2::{Gpt2, Gpt2Config};
pub use llama::LlamaConfig;
pub use reward::ScalarHead;

use crate::data::tokenizer::TextTokenizer;

/// A transformer with its variables and the tokenizer it reads.
pub struct LanguageModel {
    pub vs: VarStore,
    pub transformer: Box<dyn Transformer>,
    pub tokenizer: TextTokenizer,
}

impl LanguageModel {
    /// A freshly initialised model (initialisation drawn from libtorch's global RNG: seed it first).
    pub fn fresh(config: impl Into<ModelConfig>, tokenizer: TextTokenizer, device: Device, precision: Precision) -> Self {
        let mut vs = VarStore::new(device);
        let transformer = config.into().build(&vs.root());
        precision.cast(&mut vs);
        LanguageModel { vs, transformer, tokenizer }
    }

    /// Loads a checkpoint directory (ours or one written by `transformers`).
    pub fn load(dir: &Path, device: Device, precision: Precision) -> Result<Self, CheckpointError> {
        let config = checkpoint::read_config(dir)?;
        let tokenizer = checkpoint::read_tokenizer(dir, &config)?;
        let mut model = LanguageModel::fresh(config, tokenizer, device, precision);
        let report = checkpoint::load_weights(&mut model.vs, dir, &[])?;
        if !report.unused.is_empty() {
            tracing::debug!(unused = ?report.unused, "checkpoint tensors not used by a language model");
        }
        Ok(model)
    }

    pub fn save(&self, dir: &Path) -> Result<(), CheckpointError> {
        self.save_with(dir, checkpoint::SaveOptions::for_head(HfHead::CausalLm))
    }

    /// Saves with other options (shard size).
    pub fn save_with(&self, dir: &Path, options: checkpoint::SaveOptions) -> Result<(), CheckpointError> {
        checkpoint::save(dir, &self.vs, self.transformer.config(), &self.tokenizer, &[], options)
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }
}
