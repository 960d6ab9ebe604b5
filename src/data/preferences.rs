//! Preference pairs for reward modeling, and the `{"prompt", "chosen", "rejected"}` JSONL files
//! that hold them (an optional `"margin"`, and `"judgement": "tie"` for ties). The labeling
//! database yields the same pairs through `label::export::read_preference_pairs`.

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
}

/// Reads a preference JSONL file; each record is checked: the three fields present and text,
/// `chosen` ≠ `rejected`, `margin` a number, `judgement` (if any) one of `preference`, `tie`
/// (a tie pair) or `skip` (left out).
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
            // As `rlhf label export` writes them: a skip says nothing about the pair.
            let tie = match record.get("judgement") {
                None | Some(Value::Null) => false,
                Some(Value::String(judgement)) if judgement == "preference" => false,
                Some(Value::String(judgement)) if judgement == "tie" => true,
                Some(Value::String(judgement)) if judgement == "skip" => return Ok(None),
                Some(other) => return Err(bad(format!("`judgement` must be \"preference\", \"tie\" or \"skip\", found {other}"))),
            };
            Ok(Some(PreferencePair { prompt, chosen, rejected, tie, margin, gold: None }))
        })
        .filter_map(Result::transpose)
        .collect()
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

    /// The judgements `rlhf label export` writes read as the labels database reads them.
    #[test]
    fn exported_skips_are_left_out_and_unknown_judgements_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prefs.jsonl");
        let line =
            |judgement: &str| format!("{{\"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": \"b\", \"judgement\": \"{judgement}\"}}\n");
        std::fs::write(&path, line("preference") + &line("skip") + &line("tie")).unwrap();
        let pairs = read_jsonl(&path).unwrap();
        assert_eq!(pairs.len(), 2);
        assert!(!pairs[0].tie && pairs[1].tie);
        assert!(
            error_for(&line("maybe")).contains("prefs.jsonl:1: `judgement` must be \"preference\", \"tie\" or \"skip\", found \"maybe\"")
        );
    }
}
