//! `rlhf generate`: completions from a checkpoint, one per prompt, on stdout.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::data::chat::Message;
use crate::data::jsonl::{read_records, PromptRecord};
use crate::model::generate::{generate, GenerateError, GenerateOptions, Sampling};
use crate::model::{DeviceSpec, LanguageModel, Precision};

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// A checkpoint directory (model.safetensors, config.json, tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    /// One prompt, as plain text.
    #[arg(long, conflicts_with_all = ["prompts", "chat"], required_unless_present_any = ["prompts", "chat"])]
    pub prompt: Option<String>,
    /// A JSONL file of {"prompt": ...} lines.
    #[arg(long, conflicts_with = "chat")]
    pub prompts: Option<PathBuf>,
    /// One user turn, rendered with the model's chat template and its generation prompt.
    #[arg(long)]
    pub chat: Option<String>,
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: i64,
    /// Always take the most likely token.
    #[arg(long, conflicts_with_all = ["temperature", "top_k", "top_p"])]
    pub greedy: bool,
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    #[arg(long)]
    pub top_k: Option<i64>,
    #[arg(long)]
    pub top_p: Option<f64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// fp32, bf16 or fp16.
    #[arg(long, default_value = "fp32")]
    pub dtype: Precision,
    /// Prompts per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Recompute the whole prefix at every step instead of using the KV cache (for comparison).
    #[arg(long)]
    pub no_kv_cache: bool,
    /// One JSON object per line: {"prompt", "prompt_ids", "completion", "completion_ids"}.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &GenerateArgs) -> Result<()> {
    let device = args.device.resolve()?;
    let model =
        LanguageModel::load(&args.model, device, args.dtype).with_context(|| format!("loading model from `{}`", args.model.display()))?;
    let (prompts, encoded): (Vec<String>, Vec<Vec<i64>>) = match (&args.prompt, &args.prompts, &args.chat) {
        (_, _, Some(turn)) => {
            let ids = model
                .tokenizer
                .apply_chat_template(&[Message::user(turn.clone())], true)
                .with_context(|| format!("--chat with the model in `{}`", args.model.display()))?;
            (vec![turn.clone()], vec![ids])
        }
        (Some(prompt), _, _) => (vec![prompt.clone()], vec![model.tokenizer.encode(prompt)?]),
        (None, Some(file), None) => {
            let prompts: Vec<String> = read_records::<PromptRecord>(file)?.into_iter().map(|r| r.prompt).collect();
            let encoded = prompts.iter().map(|p| model.tokenizer.encode(p)).collect::<Result<Vec<_>, _>>()?;
            (prompts, encoded)
        }
        (None, None, None) => unreachable!("clap requires --prompt, --prompts or --chat"),
    };
    let sampling = if args.greedy {
        Sampling::Greedy
    } else {
        Sampling::Sample { temperature: args.temperature, top_k: args.top_k, top_p: args.top_p }
    };
    let options = GenerateOptions { max_new_tokens: args.max_new_tokens, sampling, seed: Some(args.seed), use_kv_cache: !args.no_kv_cache };

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let batch_size = args.batch_size.max(1);
    for (batch_index, (texts, ids)) in prompts.chunks(batch_size).zip(encoded.chunks(batch_size)).enumerate() {
        let generation = generate(model.transformer.as_ref(), ids, model.tokenizer.stop_ids(), &options).map_err(|error| match error {
            // Indices inside the error count within this batch; say which prompt of the input it is.
            GenerateError::TooLong { index, .. } => {
                anyhow::anyhow!("{error}").context(format!("prompt {} of {}", batch_index * batch_size + index + 1, prompts.len()))
            }
            other => other.into(),
        })?;
        for ((prompt, prompt_ids), completion_ids) in texts.iter().zip(ids).zip(generation.completions()) {
            let completion = model.tokenizer.decode(&completion_ids);
            if args.json {
                let line = serde_json::json!({"prompt": prompt, "prompt_ids": prompt_ids, "completion": completion, "completion_ids": completion_ids});
                writeln!(out, "{line}")?;
            } else {
                writeln!(out, "{completion}")?;
            }
        }
    }
    Ok(())
}
