//! Preference pairs for reward modeling: `{"prompt", "chosen", "rejected"}` JSONL files (an
//! optional `"margin"`, and `"judgement": "tie"` for ties), or the labeling database.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::jsonl::{read_records, JsonlError};

/// One comparison: `chosen` was preferred to `rejected` (or neither, when `tie`).
#[derive(Debug, Clone, PartialEq)]
pub struct PreferencePair {
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    pub tie: bool,
    /// How much better `chosen` is, when the data says (Touvron et al. 2023's margin loss).
    pub margin: Option<f64>,
    /// Gold scores of (chosen, rejected), on synthetic tasks.
    pub gold: Option<(f64, f64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum PreferenceError {
    #[error(transparent)]
    Jsonl(#[from] JsonlError),
    #[error("{path}:{line}: {message}")]
    BadRecord { path: PathBuf, line: usize, message: String },
    #[error("labeling database `{path}`: {message}")]
    Database { path: PathBuf, message: String },
    #[error("labeling database `{path}` holds no preferences yet (label some pairs first)")]
    NoLabels { path: PathBuf },
}

/// Reads a preference JSONL file; each record is checked: the three fields present and text,
/// `chosen` ≠ `rejected`, `margin` a number.
pub fn read_jsonl(path: &Path) -> Result<Vec<PreferencePair>, PreferenceError> {
    // Line numbers of the non-blank lines, to name the line of a record that fails a check.
    let text = std::fs::read_to_string(path).map_err(|source| JsonlError::Io { path: path.into(), source })?;
    let line_numbers: Vec<usize> = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).map(|(i, _)| i + 1).collect();
    let records: Vec<Map<String, Value>> = read_records(path)?;
    records
        .into_iter()
        .zip(line_numbers)
        .map(|(record, line)| {
            let bad = |message: String| PreferenceError::BadRecord { path: path.into(), line, message };
            let text_field = |name: &str| match record.get(name) {
                Some(Value::String(text)) => Ok(text.clone()),
                Some(other) => Err(bad(format!("`{name}` must be a string, found {other}"))),
                None => Err(bad(format!("missing field `{name}` (a preference has prompt, chosen, rejected)"))),
            };
            let (prompt, chosen, rejected) = (text_field("prompt")?, text_field("chosen")?, text_field("rejected")?);
            if chosen == rejected {
                return Err(bad("`chosen` and `rejected` are identical: the pair says nothing".into()));
            }
            let margin = match record.get("margin") {
                None | Some(Value::Null) => None,
                Some(value) => Some(value.as_f64().ok_or_else(|| bad(format!("`margin` must be a number, found {value}")))?),
            };
            let tie = record.get("judgement").and_then(Value::as_str) == Some("tie");
            Ok(PreferencePair { prompt, chosen, rejected, tie, margin, gold: None })
        })
        .collect()
}

/// The preferences stored by the labeling server (ties and skips excluded).
pub fn read_label_database(path: &Path) -> Result<Vec<PreferencePair>, PreferenceError> {
    if !path.is_file() {
        return Err(PreferenceError::Database { path: path.into(), message: "no such file".into() });
    }
    let records = crate::label::export::read_preferences(path)
        .map_err(|e| PreferenceError::Database { path: path.into(), message: e.to_string() })?;
    if records.is_empty() {
        return Err(PreferenceError::NoLabels { path: path.into() });
    }
    Ok(records
        .into_iter()
        .map(|r| PreferencePair { prompt: r.prompt, chosen: r.chosen, rejected: r.rejected, tie: false, margin: None, gold: None })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_for(contents: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prefs.jsonl");
        std::fs::write(&path, contents).unwrap();
        read_jsonl(&path).unwrap_err().to_string()
    }

    #[test]
    fn bad_preference_files_name_the_line_and_the_problem() {
        let good = r#"{"prompt": "p", "chosen": "a", "rejected": "b"}"#;
        assert!(error_for(&format!("{good}\n\n{{\"prompt\": \"p\", \"chosen\": \"a\"}}\n"))
            .ends_with("prefs.jsonl:3: missing field `rejected` (a preference has prompt, chosen, rejected)"));
        assert!(error_for(&format!("{good}\n{{\"prompt\": \"p\", \"chosen\": \"x\", \"rejected\": \"x\"}}\n"))
            .ends_with("prefs.jsonl:2: `chosen` and `rejected` are identical: the pair says nothing"));
        assert!(error_for(r#"{"prompt": "p", "chosen": 1, "rejected": "b"}"#).contains("prefs.jsonl:1: `chosen` must be a string, found 1"));
        assert!(error_for(r#"{"prompt": "p", "chosen": "a", "rejected": "b", "margin": "big"}"#).contains("`margin` must be a number"));
        assert!(error_for("\n\n").contains("holds no records"));
        assert!(error_for("{not json\n").contains("prefs.jsonl:1:"));
    }

    #[test]
    fn margins_ties_and_extra_fields_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prefs.jsonl");
        std::fs::write(&path, "{\"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": \"b\", \"margin\": 2, \"source\": \"x\"}\n{\"prompt\": \"q\", \"chosen\": \"c\", \"rejected\": \"d\", \"judgement\": \"tie\"}\n").unwrap();
        let pairs = read_jsonl(&path).unwrap();
        assert_eq!(pairs[0].margin, Some(2.0));
        assert!(!pairs[0].tie && pairs[1].tie);
    }
}
