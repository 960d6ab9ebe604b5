//! `rlhf compress --model DIR --out DIR [--quantize int8|int4] [--prune FRACTION]`: a
//! language-model checkpoint made smaller for deployment — the smallest weights of each linear
//! layer set to zero, and/or the blocks' projections stored in int8 or int4 — that `generate`,
//! `serve` and the stages load, with `compression.json` saying what was done.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::model::checkpoint::{save_tensors, SaveOptions};
use crate::model::compress::prune_by_magnitude;
use crate::model::quantize::{quantize_blocks, Scheme};
use crate::model::{HfHead, LanguageModel, Precision};

/// What `rlhf compress` did, beside the compressed weights.
pub const COMPRESSION_FILE: &str = "compression.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Bits {
    Int8,
    Int4,
}

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
    #[arg(long, value_name = "FRACTION", required_unless_present = "quantize")]
    pub prune: Option<f64>,
    /// Weight-only quantization of the blocks' linear projections (after pruning, if asked):
    /// int8 per output channel, or int4 in groups of `--group-size` inputs.
    #[arg(long)]
    pub quantize: Option<Bits>,
    /// Inputs sharing one int4 scale and zero.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(i64).range(2..=4096))]
    pub group_size: i64,
}

pub fn run(args: &CompressArgs) -> Result<()> {
    if let Some(fraction) = args.prune.filter(|fraction| !(0.0..1.0).contains(fraction)) {
        bail!("--prune: a fraction of each layer's weights in [0, 1), got {fraction}");
    }
    let model = LanguageModel::load(&args.model, tch::Device::Cpu, Precision::Fp32)
        .with_context(|| format!("loading the model `{}`", args.model.display()))?;
    if model.is_quantized() {
        bail!("`{}` is already quantized: compress the float checkpoint it came from", args.model.display());
    }
    let mut record = serde_json::json!({"source": args.model});
    if let Some(fraction) = args.prune {
        let layers = prune_by_magnitude(&model.vs, fraction);
        let (zeros, total) = layers.values().fold((0, 0), |(z, t), layer| (z + layer.zeros, t + layer.total));
        let sparsity = zeros as f64 / total.max(1) as f64;
        tracing::info!(layers = layers.len(), sparsity, "pruned");
        record["prune"] = fraction.into();
        record["sparsity"] = sparsity.into();
        record["layers"] = serde_json::to_value(&layers).expect("sparsities serialise");
    }
    let writing = || format!("writing `{}`", args.out.display());
    match args.quantize {
        None => model.save_with(&args.out, SaveOptions::for_head(HfHead::CausalLm)).with_context(writing)?,
        Some(bits) => {
            let scheme = match bits {
                Bits::Int8 => Scheme::Int8,
                Bits::Int4 => Scheme::Int4 { group_size: args.group_size },
            };
            let blocks = model.transformer.blocks();
            let stored = quantize_blocks(blocks, scheme).with_context(|| format!("quantizing `{}`", args.model.display()))?;
            let replaced: Vec<String> = blocks.projections().into_iter().map(|(module, ..)| format!("{module}.weight")).collect();
            let mut tensors: Vec<(String, tch::Tensor)> =
                model.vs.variables().into_iter().filter(|(name, _)| !replaced.contains(name)).collect();
            tensors.extend(stored);
            let options = SaveOptions { quantization: Some(scheme.to_config()), ..SaveOptions::for_head(HfHead::CausalLm) };
            save_tensors(&args.out, tensors, model.transformer.config(), &model.tokenizer, &[], options).with_context(writing)?;
            record["quantize"] = serde_json::to_value(bits).expect("bits serialise");
            if let Scheme::Int4 { group_size } = scheme {
                record["group_size"] = group_size.into();
            }
            tracing::info!(projections = replaced.len(), ?bits, "quantized");
        }
    }
    let path = args.out.join(COMPRESSION_FILE);
    crate::run::write_atomic(&path, &serde_json::to_string_pretty(&record).expect("JSON serialises"))
        .with_context(|| format!("writing `{}`", path.display()))?;
    println!("{}", args.out.display());
    Ok(())
}
