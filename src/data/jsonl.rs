//! JSONL files (one JSON object per line) in the record formats of DESIGN.md.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum JsonlError {
    #[error("cannot read `{path}`: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}: {message}")]
    BadLine { path: PathBuf, line: usize, message: String },
    #[error("`{path}` holds no records")]
    Empty { path: PathBuf },
}

/// `{"prompt"}` records (extra fields ignored).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct PromptRecord {
    pub prompt: String,
}

/// Reads every non-blank line of `path` as a `T`; the first line that is not valid JSON or lacks
/// a field is an error naming the file and line.
pub fn read_records<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>, JsonlError> {
    let file = std::fs::File::open(path).map_err(|source| JsonlError::Io { path: path.into(), source })?;
    let mut records = Vec::new();
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| JsonlError::Io { path: path.into(), source })?;
        if line.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str(&line).map_err(|error| JsonlError::BadLine {
            path: path.into(),
            line: index + 1,
            message: describe(&error),
        })?;
        records.push(record);
    }
    if records.is_empty() {
        return Err(JsonlError::Empty { path: path.into() });
    }
    Ok(records)
}

/// serde_json's message without its trailing "at line 1 column N" (always line 1 here).
fn describe(error: &serde_json::Error) -> String {
    let message = error.to_string();
    match message.rfind(" at line ") {
        Some(cut) => message[..cut].to_string(),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prompts.jsonl");
        std::fs::write(&path, "{\"prompt\": \"a\"}\n\n{\"text\": \"b\"}\n").unwrap();
        let error = read_records::<PromptRecord>(&path).unwrap_err().to_string();
        assert!(error.ends_with("prompts.jsonl:3: missing field `prompt`"), "{error}");
        std::fs::write(&path, "{\"prompt\": \"a\"}\n{\"prompt\": \"b\"\n").unwrap();
        let error = read_records::<PromptRecord>(&path).unwrap_err().to_string();
        assert!(error.contains("prompts.jsonl:2: EOF while parsing"), "{error}");
        std::fs::write(&path, "\n  \n").unwrap();
        assert!(matches!(read_records::<PromptRecord>(&path), Err(JsonlError::Empty { .. })));
    }

    #[test]
    fn reads_records_and_skips_blank_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prompts.jsonl");
        std::fs::write(&path, "{\"prompt\": \"a\", \"id\": 1}\n\n{\"prompt\": \"b\"}\n").unwrap();
        let prompts: Vec<String> = read_records::<PromptRecord>(&path).unwrap().into_iter().map(|r| r.prompt).collect();
        assert_eq!(prompts, ["a", "b"]);
    }
}
