//! `rlhf score --model RM_DIR --input FILE.jsonl`: a reward per `{"prompt", "response"}` line,
//! or, for `{"prompt", "chosen", "rejected"}` / `{"prompt", "response_a", "response_b"}` lines,
//! both rewards and the probability that the first is preferred, σ(r₁ − r₂). One JSON object per
//! line on stdout; `normalized` is present when the checkpoint stores its score statistics.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};

use crate::data::jsonl::read_records;
use crate::data::synthetic::annotators::sigmoid;
use crate::model::reward::RewardModel;
use crate::model::{DeviceSpec, Precision};

#[derive(Debug, clap::Args)]
pub struct ScoreArgs {
    /// A reward-model checkpoint (the `checkpoint/` of a reward stage).
    #[arg(long)]
    pub model: PathBuf,
    /// JSONL with {"prompt", "response"} or pairs {"prompt", "chosen", "rejected"} /
    /// {"prompt", "response_a", "response_b"}.
    #[arg(long)]
    pub input: PathBuf,
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
}

/// The texts to score in one input line.
enum Item {
    Single(String, String),
    Pair(String, String, String),
}

pub fn run(args: &ScoreArgs) -> Result<()> {
    let records: Vec<Map<String, Value>> = read_records(&args.input)?;
    let mut items = Vec::with_capacity(records.len());
    for (index, record) in records.iter().enumerate() {
        let text = |name: &str| record.get(name).and_then(Value::as_str).map(str::to_string);
        let where_ = || format!("{} record {}", args.input.display(), index + 1);
        let Some(prompt) = text("prompt") else { bail!("{}: missing string field `prompt`", where_()) };
        let item = match (text("response"), text("chosen").or(text("response_a")), text("rejected").or(text("response_b"))) {
            (Some(response), None, None) => Item::Single(prompt, response),
            (None, Some(first), Some(second)) => Item::Pair(prompt, first, second),
            _ => bail!("{}: expected `response`, or `chosen` and `rejected`, or `response_a` and `response_b`", where_()),
        };
        items.push(item);
    }
    let model = RewardModel::load(&args.model, args.device.resolve()?, Precision::Fp32, false)
        .with_context(|| format!("loading reward model from `{}`", args.model.display()))?;
    let texts: Vec<(&str, &str)> = items
        .iter()
        .flat_map(|item| match item {
            Item::Single(prompt, response) => vec![(prompt.as_str(), response.as_str())],
            Item::Pair(prompt, first, second) => vec![(prompt.as_str(), first.as_str()), (prompt.as_str(), second.as_str())],
        })
        .collect();
    let mut scores = model.score_texts(&texts, args.batch_size)?.into_iter();
    let normalize = |score: f64| model.normalization.map(|n| (score - n.mean) / n.std);

    let mut out = std::io::stdout().lock();
    for item in &items {
        let line = match item {
            Item::Single(..) => {
                let reward = scores.next().expect("one score per text");
                json!({"reward": reward, "normalized": normalize(reward)})
            }
            Item::Pair(..) => {
                let (first, second) = (scores.next().expect("score"), scores.next().expect("score"));
                json!({"reward_first": first, "reward_second": second, "p_first_preferred": sigmoid(first - second)})
            }
        };
        writeln!(out, "{line}")?;
    }
    Ok(())
}
