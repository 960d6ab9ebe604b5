//! `rlhf compress --model DIR --out DIR --prune FRACTION`: a language-model checkpoint with the
//! smallest weights of each linear layer set to zero, written as a plain checkpoint that
//! `generate`, the stages and `transformers` load, with `compression.json` saying what was done.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::model::checkpoint::SaveOptions;
use crate::model::compress::prune_by_magnitude;
use crate::model::{HfHead, LanguageModel, Precision};

/// What `rlhf compress` did, beside the compressed weights.
pub const COMPRESSION_FILE: &str = "compression.json";

#[derive(Debug, clap::Args)]
pub struct CompressArgs {
    /// A language-model checkpoint directory (ours or one `transformers` wrote).
    #[arg(long)]
    pub model: PathBuf,
    /// Where to write the compressed checkpoint (replaced if it exists).
    #[arg(long)]
    pub out: PathBuf,
    /// Magnitude pruning: the fraction of each linear layer's weights to set to zero, the
    /// smallest in magnitude, in [0, 1).
    #[arg(long, value_name = "FRACTION")]
    pub prune: f64,
}

pub fn run(args: &CompressArgs) -> Result<()> {
    if !(0.0..1.0).contains(&args.prune) {
        bail!("--prune: a fraction of each layer's weights in [0, 1), got {}", args.prune);
    }
    let model = LanguageModel::load(&args.model, tch::Device::Cpu, Precision::Fp32)
        .with_context(|| format!("loading the model `{}`", args.model.display()))?;
    let layers = prune_by_magnitude(&model.vs, args.prune);
    let (zeros, total) = layers.values().fold((0, 0), |(z, t), layer| (z + layer.zeros, t + layer.total));
    model.save_with(&args.out, SaveOptions::for_head(HfHead::CausalLm)).with_context(|| format!("writing `{}`", args.out.display()))?;
    let record = serde_json::json!({
        "source": args.model,
        "prune": args.prune,
        "sparsity": zeros as f64 / total.max(1) as f64,
        "layers": layers,
    });
    let path = args.out.join(COMPRESSION_FILE);
    crate::run::write_atomic(&path, &serde_json::to_string_pretty(&record).expect("JSON serialises"))
        .with_context(|| format!("writing `{}`", path.display()))?;
    tracing::info!(layers = layers.len(), sparsity = zeros as f64 / total.max(1) as f64, "pruned");
    println!("{}", args.out.display());
    Ok(())
}
