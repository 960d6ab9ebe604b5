//! Labels read back as preference records `{"prompt", "chosen", "rejected", "annotator",
//! "pair_id", "labeled_at"}` plus the pair's metadata, left/right mapped back to the stored
//! responses through each assignment's order.

use std::path::Path;

use serde_json::{Map, Value};

use super::assign::{Outcome, Preferred};
use super::store::{rfc3339_sql, Store};
use super::LabelError;
use crate::data::chat::{Message, Prompt};
use crate::data::preferences::PreferencePair;
use crate::data::tokenizer::TextTokenizer;

/// Which labels become records besides real preferences.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportFilter {
    pub ties: bool,
    pub skips: bool,
}

/// What the annotator said about the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Judgement {
    /// `chosen` was preferred over `rejected`.
    Preference,
    /// Neither was better; `chosen` is response_a, `rejected` response_b.
    Tie,
    /// The annotator declined to judge; `chosen` is response_a, `rejected` response_b.
    Skip,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PreferenceRecord {
    pub prompt: String,
    /// The conversation, for a pair whose prompt is one (`prompt` is then its transcript).
    pub messages: Option<Vec<Message>>,
    pub chosen: String,
    pub rejected: String,
    pub judgement: Judgement,
    pub annotator: String,
    pub pair_id: i64,
    /// RFC 3339, UTC.
    pub labeled_at: String,
    /// The pair's metadata (extra fields of the imported line).
    pub metadata: Map<String, Value>,
}

impl PreferenceRecord {
    /// The JSON line: metadata first, then the record's own fields (which win over metadata
    /// fields of the same name). A conversational prompt is written as its list of messages
    /// (TRL's conversational format), which the reward stage reads back.
    pub fn to_json(&self) -> Value {
        let mut object = self.metadata.clone();
        let prompt = match &self.messages {
            Some(messages) => serde_json::to_value(messages).expect("messages serialise"),
            None => self.prompt.clone().into(),
        };
        object.insert("prompt".into(), prompt);
        object.insert("chosen".into(), self.chosen.clone().into());
        object.insert("rejected".into(), self.rejected.clone().into());
        object.insert("judgement".into(), serde_json::to_value(self.judgement).unwrap_or(Value::Null));
        object.insert("annotator".into(), self.annotator.clone().into());
        object.insert("pair_id".into(), self.pair_id.into());
        object.insert("labeled_at".into(), self.labeled_at.clone().into());
        Value::Object(object)
    }
}

type LabelRow = (i64, String, Option<String>, String, String, String, bool, String, String, String);

impl Store {
    /// The labels as preference records, oldest first; ties and skips only when `filter` asks.
    pub async fn preferences(&self, filter: ExportFilter) -> Result<Vec<PreferenceRecord>, LabelError> {
        let rows: Vec<LabelRow> = sqlx::query_as(&format!(
            "SELECT p.id, p.prompt, p.messages, p.response_a, p.response_b, p.metadata, a.swapped, l.preferred, n.name, {labeled_at} \
             FROM labels l JOIN assignments a ON a.id = l.assignment_id \
             JOIN pairs p ON p.id = a.pair_id JOIN annotators n ON n.id = a.annotator_id \
             ORDER BY l.labeled_at, l.id",
            labeled_at = rfc3339_sql("l.labeled_at"),
        ))
        .fetch_all(self.reader())
        .await?;
        let mut records = Vec::with_capacity(rows.len());
        for (pair_id, prompt, messages, response_a, response_b, metadata, swapped, preferred, annotator, labeled_at) in rows {
            let (judgement, a_wins) = match Preferred::from_db(&preferred)?.outcome(swapped) {
                Some(Outcome::A) => (Judgement::Preference, true),
                Some(Outcome::B) => (Judgement::Preference, false),
                Some(Outcome::Tie) => (Judgement::Tie, true),
                None => (Judgement::Skip, true),
            };
            let wanted = match judgement {
                Judgement::Preference => true,
                Judgement::Tie => filter.ties,
                Judgement::Skip => filter.skips,
            };
            if !wanted {
                continue;
            }
            let (chosen, rejected) = if a_wins { (response_a, response_b) } else { (response_b, response_a) };
            let metadata = match serde_json::from_str(&metadata) {
                Ok(Value::Object(map)) => map,
                // The schema's CHECK admits only JSON objects.
                _ => Map::new(),
            };
            // The schema admits only JSON arrays, and only `import_pairs` writes them.
            let messages = messages.and_then(|json| serde_json::from_str(&json).ok());
            records.push(PreferenceRecord { prompt, messages, chosen, rejected, judgement, annotator, pair_id, labeled_at, metadata });
        }
        Ok(records)
    }
}

/// Writes records as JSONL to `path` (created or replaced as a whole: a crash leaves the previous
/// file or the complete new one, never a truncated export); returns how many.
pub fn write_jsonl(path: &Path, records: &[PreferenceRecord]) -> Result<usize, LabelError> {
    let mut text = String::new();
    for record in records {
        text.push_str(&record.to_json().to_string());
        text.push('\n');
    }
    crate::run::durable::write_file(path, text.as_bytes()).map_err(|error| match error {
        crate::run::RunDirError::Write { path, source } => LabelError::Write { path, source },
        other => LabelError::Write { path: path.into(), source: std::io::Error::other(other.to_string()) },
    })?;
    Ok(records.len())
}

/// The labeled pairs of the database at `db` as reward-model training pairs, for callers outside
/// an async runtime (the reward stage): preferences, and ties as `tie = true` pairs exactly as a
/// JSONL line with `"judgement": "tie"` is read; skips say nothing about the pair and are left out.
/// Conversational prompts are rendered with `tokenizer`'s chat template, as in a JSONL file.
pub fn read_preference_pairs(db: &Path, tokenizer: &TextTokenizer) -> Result<Vec<PreferencePair>, LabelError> {
    let records = Store::read_blocking(db, async |store| store.preferences(ExportFilter { ties: true, skips: false }).await)?;
    records
        .into_iter()
        .map(|record| {
            let prompt = match record.messages {
                Some(messages) => tokenizer.prompt_text(&Prompt::Messages(messages))?,
                None => record.prompt,
            };
            Ok(PreferencePair {
                tie: record.judgement == Judgement::Tie,
                prompt,
                chosen: record.chosen,
                rejected: record.rejected,
                margin: None,
                gold: None,
            })
        })
        .collect()
}
