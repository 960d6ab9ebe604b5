//! Pairs to label: read from a JSONL file of `{"prompt", "response_a", "response_b"}` lines or
//! built from a run stage's `samples.jsonl`, and stored idempotently (by content hash) in one
//! transaction.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::store::{now_ms, sha256_hex, Store};
use super::LabelError;
use crate::data::jsonl;

/// A pair of responses to store; `metadata` holds the line's other fields.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(try_from = "PairLine")]
pub struct NewPair {
    pub prompt: String,
    pub response_a: String,
    pub response_b: String,
    pub metadata: Map<String, Value>,
}

#[derive(serde::Deserialize)]
struct PairLine {
    prompt: String,
    response_a: String,
    response_b: String,
    #[serde(flatten)]
    metadata: Map<String, Value>,
}

impl TryFrom<PairLine> for NewPair {
    type Error = &'static str;

    fn try_from(line: PairLine) -> Result<Self, Self::Error> {
        if line.response_a == line.response_b {
            return Err("`response_a` and `response_b` are identical: there is nothing to compare");
        }
        Ok(Self { prompt: line.prompt, response_a: line.response_a, response_b: line.response_b, metadata: line.metadata })
    }
}

/// A line of a stage's `samples.jsonl`: a generation and whatever the stage recorded with it.
#[derive(serde::Deserialize)]
struct SampleLine {
    prompt: String,
    completion: String,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

/// What an import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportSummary {
    pub added: u64,
    /// Pairs already in the database (or repeated in the input).
    pub already_present: u64,
}

/// Reads a pairs file; the first bad line is an error naming the file and line.
pub fn read_pairs(path: &Path) -> Result<Vec<NewPair>, LabelError> {
    Ok(jsonl::read_records(path)?)
}

/// Builds pairs from `STAGE_DIR/samples.jsonl`: completions are grouped by prompt and each two
/// different completions of a prompt make a pair (first with second, third with fourth, …).
/// Prompts with a single distinct completion make none.
pub fn pairs_from_samples(stage_dir: &Path) -> Result<Vec<NewPair>, LabelError> {
    let path = samples_path(stage_dir);
    let samples: Vec<SampleLine> = jsonl::read_records(&path)?;
    let mut by_prompt: Vec<(String, Vec<SampleLine>)> = Vec::new();
    let mut index_of: HashMap<String, usize> = HashMap::new();
    for sample in samples {
        let index = *index_of.entry(sample.prompt.clone()).or_insert_with(|| {
            by_prompt.push((sample.prompt.clone(), Vec::new()));
            by_prompt.len() - 1
        });
        let completions = &mut by_prompt[index].1;
        if !completions.iter().any(|seen| seen.completion == sample.completion) {
            completions.push(sample);
        }
    }
    let source = Value::String(path.display().to_string());
    let mut pairs = Vec::new();
    for (prompt, completions) in by_prompt {
        let mut completions = completions.into_iter();
        while let (Some(a), Some(b)) = (completions.next(), completions.next()) {
            let metadata = Map::from_iter([
                ("source".to_string(), source.clone()),
                ("sample_a".to_string(), Value::Object(a.extra)),
                ("sample_b".to_string(), Value::Object(b.extra)),
            ]);
            pairs.push(NewPair { prompt: prompt.clone(), response_a: a.completion, response_b: b.completion, metadata });
        }
    }
    if pairs.is_empty() {
        return Err(LabelError::NoPairs { path });
    }
    Ok(pairs)
}

/// Identifies a pair by its texts; the two responses are sorted so that the same comparison
/// imported with A and B swapped is still the same pair.
pub fn content_hash(pair: &NewPair) -> String {
    let (first, second) = if pair.response_a <= pair.response_b {
        (&pair.response_a, &pair.response_b)
    } else {
        (&pair.response_b, &pair.response_a)
    };
    // JSON encoding keeps field boundaries unambiguous.
    let canonical = Value::from(vec![pair.prompt.as_str(), first.as_str(), second.as_str()]).to_string();
    sha256_hex(canonical.as_bytes())
}

impl Store {
    /// Stores `pairs` in one transaction, skipping those already present.
    pub async fn import_pairs(&self, pairs: &[NewPair]) -> Result<ImportSummary, LabelError> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let mut added = 0;
        for pair in pairs {
            let result = sqlx::query(
                "INSERT INTO pairs (prompt, response_a, response_b, metadata, content_hash, imported_at) \
                 VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (content_hash) DO NOTHING",
            )
            .bind(&pair.prompt)
            .bind(&pair.response_a)
            .bind(&pair.response_b)
            .bind(Value::Object(pair.metadata.clone()).to_string())
            .bind(content_hash(pair))
            .bind(now)
            .execute(&mut *tx)
            .await?;
            added += result.rows_affected();
        }
        tx.commit().await?;
        Ok(ImportSummary { added, already_present: pairs.len() as u64 - added })
    }
}

/// The file `--from-run STAGE_DIR` reads.
pub fn samples_path(stage_dir: &Path) -> PathBuf {
    stage_dir.join("samples.jsonl")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_hash_ignores_response_order_but_not_text() {
        let pair = |a: &str, b: &str| NewPair {
            prompt: "p".into(),
            response_a: a.into(),
            response_b: b.into(),
            metadata: Map::new(),
        };
        assert_eq!(content_hash(&pair("x", "y")), content_hash(&pair("y", "x")));
        assert_ne!(content_hash(&pair("x", "y")), content_hash(&pair("x", "z")));
        // field boundaries matter: ("ab", "c") is not ("a", "bc")
        assert_ne!(content_hash(&pair("ab", "c")), content_hash(&pair("a", "bc")));
    }

    #[test]
    fn pairs_from_samples_groups_by_prompt() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("samples.jsonl"),
            [
                r#"{"prompt": "p1", "completion": "a", "score": 1.0}"#,
                r#"{"prompt": "p2", "completion": "only"}"#,
                r#"{"prompt": "p1", "completion": "a"}"#,
                r#"{"prompt": "p1", "completion": "b", "score": 2.0}"#,
                r#"{"prompt": "p1", "completion": "c"}"#,
            ]
            .join("\n"),
        )
        .unwrap();
        let pairs = pairs_from_samples(dir.path()).unwrap();
        assert_eq!(pairs.len(), 1, "p1 gives (a, b), c has no partner, p2 has one completion");
        assert_eq!((pairs[0].response_a.as_str(), pairs[0].response_b.as_str()), ("a", "b"));
        assert_eq!(pairs[0].metadata["sample_a"]["score"], 1.0);
        assert_eq!(pairs[0].metadata["sample_b"]["score"], 2.0);
    }
}
