//! Preference pairs for reward modeling, and the `{"prompt", "chosen", "rejected"}` JSONL files
//! that hold them (an optional `"margin"`, and `"judgement": "tie"` for ties), plain or in TRL's
//! conversational form — the prompt a list of messages, each answer a list of one assistant
//! message — which the chat template renders. The labeling database yields the same pairs
//! through `label::export::read_preference_pairs`.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::chat::{parse_messages, Prompt, Role};
use super::jsonl::{read_records, JsonlError};
use super::tokenizer::{TextTokenizer, TokenizerError};

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
    #[error("{path}:{line}: {source}")]
    Template { path: PathBuf, line: usize, source: TokenizerError },
}

/// Reads a preference JSONL file; each record is checked: the three fields present, text (or
/// messages: the prompt a conversation, rendered with `tokenizer`'s chat template and its
/// generation prompt; each answer one assistant message), `chosen` ≠ `rejected`, `margin` a
/// number, `judgement` (if any) one of `preference`, `tie` (a tie pair) or `skip` (left out).
pub fn read_jsonl(path: &Path, tokenizer: &TextTokenizer) -> Result<Vec<PreferencePair>, PreferenceError> {
    // Line numbers of the non-blank lines, to name the line of a record that fails a check.
    let text = std::fs::read_to_string(path).map_err(|source| JsonlError::Io { path: path.into(), source })?;
    let line_numbers: Vec<usize> = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).map(|(i, _)| i + 1).collect();
    let records: Vec<Map<String, Value>> = read_records(path)?;
    records
        .into_iter()
        .zip(line_numbers)
        .map(|(record, line)| {
            let bad = |message: String| PreferenceError::BadRecord { path: path.into(), line, message };
            let field = |name: &str| {
                record.get(name).ok_or_else(|| bad(format!("missing field `{name}` (a preference has prompt, chosen, rejected)")))
            };
            let answer = |name: &str| match field(name)? {
                Value::String(text) => Ok(text.clone()),
                Value::Array(_) => {
                    let messages = parse_messages(field(name)?, name).map_err(&bad)?;
                    match messages.as_slice() {
                        [only] if only.role == Role::Assistant => Ok(only.content.clone()),
                        _ => Err(bad(format!("`{name}` must hold one assistant message (the answer to the prompt)"))),
                    }
                }
                other => Err(bad(format!("`{name}` must be a string or a list of messages, found {other}"))),
            };
            let prompt = Prompt::parse(field("prompt")?, "prompt").map_err(&bad)?;
            let prompt = tokenizer.prompt_text(&prompt).map_err(|source| PreferenceError::Template { path: path.into(), line, source })?;
            let (chosen, rejected) = (answer("chosen")?, answer("rejected")?);
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

    fn tokenizer() -> TextTokenizer {
        let corpus = ["the battery is good<|endoftext|>"; 20];
        let mut tokenizer = TextTokenizer::train(corpus.iter(), 280).unwrap();
        tokenizer.set_chat_template(Some(
            crate::data::chat::ChatTemplate::new(
                "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}"
                    .into(),
                "test".into(),
            )
            .unwrap(),
        ));
        tokenizer
    }

    #[test]
    fn conversational_pairs_render_the_prompt_and_take_each_answer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prefs.jsonl");
        let line = r#"{"prompt": [{"role": "system", "content": "be kind"}, {"role": "user", "content": "the battery?"}], "chosen": [{"role": "assistant", "content": "good"}], "rejected": [{"role": "assistant", "content": "bad"}]}"#;
        std::fs::write(&path, format!("{line}\n")).unwrap();
        let pairs = read_jsonl(&path, &tokenizer()).unwrap();
        assert_eq!(
            (pairs[0].prompt.as_str(), pairs[0].chosen.as_str(), pairs[0].rejected.as_str()),
            ("[system] be kind\n[user] the battery?\n[assistant] ", "good", "bad")
        );
        let two =
            r#"{"prompt": "p", "chosen": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}], "rejected": "c"}"#;
        assert!(error_for(two).contains("prefs.jsonl:1: `chosen` must hold one assistant message"));
        let robot = r#"{"prompt": [{"role": "robot", "content": "x"}], "chosen": "a", "rejected": "b"}"#;
        assert!(error_for(robot).contains("prefs.jsonl:1: `prompt[0].role` is `robot`; expected system, user or assistant"));
        let untemplated = TextTokenizer::train(["the battery is good<|endoftext|>"; 20].iter(), 280).unwrap();
        std::fs::write(&path, format!("{line}\n")).unwrap();
        let error = read_jsonl(&path, &untemplated).unwrap_err().to_string();
        assert!(error.contains("prefs.jsonl:1:") && error.contains("no chat template"), "{error}");
    }

    fn error_for(contents: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prefs.jsonl");
        std::fs::write(&path, contents).unwrap();
        read_jsonl(&path, &tokenizer()).unwrap_err().to_string()
    }

    #[test]
    fn bad_preference_files_name_the_line_and_the_problem() {
        let good = r#"{"prompt": "p", "chosen": "a", "rejected": "b"}"#;
        assert!(error_for(&format!("{good}\n\n{{\"prompt\": \"p\", \"chosen\": \"a\"}}\n"))
            .ends_with("prefs.jsonl:3: missing field `rejected` (a preference has prompt, chosen, rejected)"));
        assert!(error_for(&format!("{good}\n{{\"prompt\": \"p\", \"chosen\": \"x\", \"rejected\": \"x\"}}\n"))
            .ends_with("prefs.jsonl:2: `chosen` and `rejected` are identical: the pair says nothing"));
        assert!(error_for(r#"{"prompt": "p", "chosen": 1, "rejected": "b"}"#)
            .contains("prefs.jsonl:1: `chosen` must be a string or a list of messages, found 1"));
        assert!(error_for(r#"{"prompt": "p", "chosen": "a", "rejected": "b", "margin": "big"}"#).contains("`margin` must be a number"));
        assert!(error_for("\n\n").contains("holds no records"));
        assert!(error_for("{not json\n").contains("prefs.jsonl:1:"));
    }

    #[test]
    fn margins_ties_and_extra_fields_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prefs.jsonl");
        std::fs::write(&path, "{\"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": \"b\", \"margin\": 2, \"source\": \"x\"}\n{\"prompt\": \"q\", \"chosen\": \"c\", \"rejected\": \"d\", \"judgement\": \"tie\"}\n").unwrap();
        let pairs = read_jsonl(&path, &tokenizer()).unwrap();
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
        let pairs = read_jsonl(&path, &tokenizer()).unwrap();
        assert_eq!(pairs.len(), 2);
        assert!(!pairs[0].tie && pairs[1].tie);
        assert!(
            error_for(&line("maybe")).contains("prefs.jsonl:1: `judgement` must be \"preference\", \"tie\" or \"skip\", found \"maybe\"")
        );
    }
}
