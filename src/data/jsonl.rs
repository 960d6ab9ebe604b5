//! JSONL files (one JSON object per line) in the record formats of docs/reference.md §3.

use std::io::{BufRead, BufReader};

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";
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

/// `{"text"}` records: the corpus.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct TextRecord {
    pub text: String,
}

/// Reads every non-blank line of `path` as a `T`; the first line that is not valid JSON or lacks
/// a field is an error naming the file and line.
pub fn read_records<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>, JsonlError> {
    read(path, false).map(|(records, _)| records)
}

/// Like `read_records`, but a bad line is skipped and returned (as its error) instead of
/// ending the read.
pub fn read_records_skipping_bad<T: DeserializeOwned>(path: &Path) -> Result<(Vec<T>, Vec<JsonlError>), JsonlError> {
    read(path, true)
}

fn read<T: DeserializeOwned>(path: &Path, skip_bad: bool) -> Result<(Vec<T>, Vec<JsonlError>), JsonlError> {
    read_converted(path, skip_bad, |record: T| Ok(record))
}

/// Reads every non-blank line as a `T` and converts it; a line that does not parse, or whose
/// conversion fails (with a message saying why), is an error naming the file and line — or,
/// with `skip_bad`, is skipped and returned.
pub fn read_converted<T: DeserializeOwned, R>(
    path: &Path,
    skip_bad: bool,
    convert: impl Fn(T) -> Result<R, String>,
) -> Result<(Vec<R>, Vec<JsonlError>), JsonlError> {
    let file = std::fs::File::open(path).map_err(|source| JsonlError::Io { path: path.into(), source })?;
    let mut records = Vec::new();
    let mut skipped = Vec::new();
    // Lines are read as bytes so that invalid UTF-8 is reported with its line like any bad line.
    for (index, bytes) in BufReader::new(file).split(b'\n').enumerate() {
        let bytes = bytes.map_err(|source| JsonlError::Io { path: path.into(), source })?;
        // Editors on Windows start files with a byte-order mark; it is not part of the JSON.
        let bytes = if index == 0 { bytes.strip_prefix(UTF8_BOM).unwrap_or(&bytes) } else { &bytes };
        let parsed = std::str::from_utf8(bytes)
            .map_err(|error| format!("not valid UTF-8 (byte {} of the line)", error.valid_up_to() + 1))
            .and_then(|line| {
                if line.trim().is_empty() {
                    return Ok(None);
                }
                serde_json::from_str(line).map_err(|error| describe(&error)).and_then(&convert).map(Some)
            });
        match parsed {
            Ok(None) => {}
            Ok(Some(record)) => records.push(record),
            Err(message) => {
                let bad = JsonlError::BadLine { path: path.into(), line: index + 1, message };
                if !skip_bad {
                    return Err(bad);
                }
                skipped.push(bad);
            }
        }
    }
    if records.is_empty() {
        return Err(JsonlError::Empty { path: path.into() });
    }
    Ok((records, skipped))
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
    fn skipping_mode_returns_good_records_and_the_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("corpus.jsonl");
        std::fs::write(&path, "{\"text\": \"a\"}\nnot json\n{\"text\": 3}\n{\"text\": \"b\"}\n").unwrap();
        let (records, bad) = read_records_skipping_bad::<TextRecord>(&path).unwrap();
        assert_eq!(records.iter().map(|r| r.text.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        let lines: Vec<usize> = bad
            .iter()
            .map(|e| match e {
                JsonlError::BadLine { line, .. } => *line,
                _ => 0,
            })
            .collect();
        assert_eq!(lines, [2, 3]);
    }

    #[test]
    fn a_byte_order_mark_is_skipped_and_invalid_utf8_is_named_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prompts.jsonl");
        std::fs::write(&path, b"\xEF\xBB\xBF{\"prompt\": \"a\"}\r\n{\"prompt\": \"b\"}\r\n").unwrap();
        let prompts: Vec<String> = read_records::<PromptRecord>(&path).unwrap().into_iter().map(|r| r.prompt).collect();
        assert_eq!(prompts, ["a", "b"], "BOM and CRLF line ends");
        std::fs::write(&path, b"{\"prompt\": \"a\"}\n{\"prompt\": \"\xFFb\"}\n").unwrap();
        let error = read_records::<PromptRecord>(&path).unwrap_err().to_string();
        assert!(error.ends_with("prompts.jsonl:2: not valid UTF-8 (byte 13 of the line)"), "{error}");
        // A byte-order mark is only one at the start of the file.
        std::fs::write(&path, b"{\"prompt\": \"a\"}\n\xEF\xBB\xBF{\"prompt\": \"b\"}\n").unwrap();
        let error = read_records::<PromptRecord>(&path).unwrap_err().to_string();
        assert!(error.contains("prompts.jsonl:2: "), "{error}");
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
