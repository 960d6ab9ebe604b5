//! The model side: the architectures (GPT-2, the Llama family) behind one interface, scalar
//! heads, devices, checkpoints and generation.

pub mod architecture;
pub mod attention;
pub mod blocks;
pub mod checkpoint;
pub mod compress;
pub mod device;
pub mod generate;
pub mod gpt2;
pub mod llama;
pub mod lora;
pub mod peft;
pub mod quantize;
pub mod reward;
pub mod threads;

use std::path::{Path, PathBuf};

use tch::nn::VarStore;
use tch::Device;

pub use architecture::{HfHead, ModelConfig, Transformer};
pub use attention::KvCache;
pub use checkpoint::CheckpointError;
pub use device::{DeviceSpec, Precision};
pub use gpt2::{Gpt2, Gpt2Config};
pub use llama::LlamaConfig;
pub use lora::{Adapters, LoraError, LoraSettings};
pub use reward::ScalarHead;

use crate::data::tokenizer::TextTokenizer;

/// The frozen reference policy of the RL stages and DPO.
pub enum ReferenceModel {
    /// A model of its own.
    Separate(Box<LanguageModel>),
    /// The policy's base: the policy with its LoRA adapters switched off, no second copy.
    PolicyBase,
}

impl ReferenceModel {
    /// Runs `f` on the reference of `policy`.
    pub fn with<T>(&self, policy: &LanguageModel, f: impl FnOnce(&LanguageModel) -> T) -> T {
        match self {
            ReferenceModel::Separate(model) => f(model),
            ReferenceModel::PolicyBase => policy.without_adapters(|| f(policy)),
        }
    }
}

/// A transformer with its variables and the tokenizer it reads, and low-rank adapters when it
/// trains with LoRA.
pub struct LanguageModel {
    pub vs: VarStore,
    pub transformer: Box<dyn Transformer>,
    pub tokenizer: TextTokenizer,
    pub adapters: Option<Adapters>,
    /// The checkpoint directory the model was loaded from: the base its adapters are saved over.
    pub base_dir: Option<PathBuf>,
}

impl LanguageModel {
    /// A freshly initialised model (initialisation drawn from libtorch's global RNG: seed it first).
    pub fn fresh(config: impl Into<ModelConfig>, tokenizer: TextTokenizer, device: Device, precision: Precision) -> Self {
        let mut vs = VarStore::new(device);
        let transformer = config.into().build(&vs.root());
        precision.cast(&mut vs);
        LanguageModel { vs, transformer, tokenizer, adapters: None, base_dir: None }
    }

    /// Loads a checkpoint directory (ours or one written by `transformers`), or an adapter
    /// directory (ours or PEFT's) over one, merged.
    pub fn load(dir: &Path, device: Device, precision: Precision) -> Result<Self, CheckpointError> {
        if peft::is_adapter_dir(dir) {
            return peft::load_merged(dir, device, precision);
        }
        let config = checkpoint::read_config(dir)?;
        let tokenizer = checkpoint::read_tokenizer(dir, &config)?;
        let quantization = checkpoint::read_quantization(dir)?;
        if quantization.is_some() && (device != Device::Cpu || precision != Precision::Fp32) {
            let source = quantize::QuantizeError::Placement { device, kind: precision.kind() };
            return Err(CheckpointError::Quantized { path: dir.to_path_buf(), source });
        }
        let mut model = LanguageModel::fresh(config, tokenizer, device, precision);
        // A quantized checkpoint holds its projections' weights in their own form instead.
        let projection_weights: Vec<String> = match quantization {
            Some(_) => model.transformer.blocks().projections().into_iter().map(|(module, ..)| format!("{module}.weight")).collect(),
            None => Vec::new(),
        };
        let may_be_missing: Vec<&str> = projection_weights.iter().map(String::as_str).collect();
        let mut reader = checkpoint::WeightReader::open(dir)?;
        let report = checkpoint::load_weights_from(&mut model.vs, &mut reader, &may_be_missing)?;
        if let Some(scheme) = quantization {
            quantize::attach(model.transformer.blocks(), &mut reader, scheme)?;
        } else if !report.unused.is_empty() {
            tracing::debug!(unused = ?report.unused, "checkpoint tensors not used by a language model");
        }
        model.base_dir = Some(dir.to_path_buf());
        Ok(model)
    }

    /// Saves the model; with adapters attached, the adapters in PEFT's format over the
    /// checkpoint the model was loaded from, or the merged model when their settings ask.
    pub fn save(&self, dir: &Path) -> Result<(), CheckpointError> {
        match &self.adapters {
            Some(adapters) if adapters.settings.merge => self.merged_copy().save(dir),
            Some(adapters) => peft::save(
                dir,
                adapters,
                peft::AdapterFiles {
                    transformer: self.transformer.as_ref(),
                    tokenizer: &self.tokenizer,
                    base_dir: self.base_dir.as_deref(),
                    score: None,
                    extra: &[],
                },
            ),
            None => self.save_with(dir, checkpoint::SaveOptions::for_head(HfHead::CausalLm)),
        }
    }

    /// Saves with other options (shard size).
    pub fn save_with(&self, dir: &Path, options: checkpoint::SaveOptions) -> Result<(), CheckpointError> {
        if self.is_quantized() {
            return Err(CheckpointError::Quantized { path: dir.to_path_buf(), source: quantize::QuantizeError::Resave });
        }
        checkpoint::save(dir, &self.vs, self.transformer.config(), &self.tokenizer, &[], options)
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Whether the blocks compute from int8 or int4 weights (a quantized checkpoint's model).
    pub fn is_quantized(&self) -> bool {
        quantize::is_quantized(self.transformer.blocks())
    }

    /// Attaches fresh LoRA adapters and freezes every other weight: training then updates the
    /// adapters alone, and the model with them switched off is the one loaded.
    pub fn attach_adapters(&mut self, settings: &LoraSettings) -> Result<(), LoraError> {
        let architecture = self.transformer.config().model_type();
        self.adapters = Some(Adapters::attach(self.transformer.blocks(), settings, architecture, self.device())?);
        self.vs.freeze();
        Ok(())
    }

    /// Adds the adapters' updates into the weights and drops the adapters.
    pub fn merge_adapters(&mut self) {
        lora::merge(self.transformer.blocks());
        self.adapters = None;
    }

    /// A copy of the model with its adapters' updates in the weights, and no adapters.
    pub fn merged_copy(&self) -> LanguageModel {
        let mut vs = VarStore::new(self.device());
        let transformer = self.transformer.config().build(&vs.root());
        if self.transformer.kind() != tch::Kind::Float {
            vs.set_kind(self.transformer.kind());
        }
        vs.copy(&self.vs).expect("a model of the same configuration has the same variables");
        let copy = LanguageModel { vs, transformer, tokenizer: self.tokenizer.clone(), adapters: None, base_dir: None };
        lora::add_updates(self.transformer.blocks(), copy.transformer.blocks());
        copy
    }

    /// The variables training updates: the adapters' when attached, else the model's.
    pub fn trained_vs(&self) -> &VarStore {
        self.adapters.as_ref().map_or(&self.vs, |adapters| &adapters.vs)
    }

    pub fn trained_vs_mut(&mut self) -> &mut VarStore {
        self.adapters.as_mut().map_or(&mut self.vs, |adapters| &mut adapters.vs)
    }

    /// Recompute each block's activations in the backward pass instead of keeping them.
    pub fn set_gradient_checkpointing(&self, on: bool) {
        self.transformer.blocks().set_checkpointing(on);
    }

    /// Runs `f` on the model without its adapters (the model itself when it has none).
    pub fn without_adapters<T>(&self, f: impl FnOnce() -> T) -> T {
        match &self.adapters {
            Some(adapters) => adapters.without(f),
            None => f(),
        }
    }
}
