//! `rlhf merge --adapter DIR --out DIR`: a LoRA adapter directory (ours or PEFT's) added into its
//! base's weights, written as a plain Hugging Face checkpoint (what `lora = { merge = true }`
//! writes at the end of a stage).

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::model::{LanguageModel, Precision};

#[derive(Debug, clap::Args)]
pub struct MergeArgs {
    /// An adapter directory (`adapter_config.json` + `adapter_model.safetensors`), e.g. the
    /// `checkpoint/` of a stage trained with `lora`.
    #[arg(long)]
    pub adapter: PathBuf,
    /// Where to write the merged checkpoint (replaced if it exists).
    #[arg(long)]
    pub out: PathBuf,
    /// The dtype of the merged weights.
    #[arg(long, default_value = "fp32")]
    pub dtype: Precision,
}

pub fn run(args: &MergeArgs) -> Result<()> {
    if !crate::model::peft::is_adapter_dir(&args.adapter) {
        anyhow::bail!(
            "`{}` is not an adapter directory (it needs `{}` and no `config.json`)",
            args.adapter.display(),
            crate::model::peft::ADAPTER_CONFIG_FILE
        );
    }
    let model = LanguageModel::load(&args.adapter, tch::Device::Cpu, args.dtype)
        .with_context(|| format!("loading adapters `{}`", args.adapter.display()))?;
    model
        .save_with(&args.out, crate::model::checkpoint::SaveOptions::for_head(crate::model::HfHead::CausalLm))
        .with_context(|| format!("writing `{}`", args.out.display()))?;
    println!("{}", args.out.display());
    Ok(())
}
