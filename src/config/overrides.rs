//! `--set dotted.key=value`: edits the parsed TOML before it is checked against the schema.
//! `stages.NAME.key` addresses the stage whose `name` is NAME.

use toml::{Table, Value};

#[derive(Debug, thiserror::Error)]
pub enum OverrideError {
    #[error("--set `{0}`: expected KEY=VALUE with a dotted KEY, e.g. stages.sft.lr=1e-4")]
    Syntax(String),
    #[error("--set `{assignment}`: no stage named `{stage}` (stages: {known})")]
    UnknownStage { assignment: String, stage: String, known: String },
    #[error("--set `{assignment}`: `{key}` is a {found}, not a table, so it has no `{next}`")]
    NotATable { assignment: String, key: String, found: &'static str, next: String },
    #[error("--set `{assignment}`: `{key}` holds a value of type {expected}, the value given is of type {found}")]
    TypeMismatch { assignment: String, key: String, expected: &'static str, found: &'static str },
}

/// Applies one `KEY=VALUE` to `root`. VALUE is read as a TOML value (`0.05`, `true`, `"text"`,
/// `[1, 2]`); anything that is not valid TOML is taken as a plain string. Replacing an existing
/// value requires the same type (an integer may replace a float).
pub fn apply(root: &mut Table, assignment: &str) -> Result<(), OverrideError> {
    let syntax = || OverrideError::Syntax(assignment.to_string());
    let (key, raw_value) = assignment.split_once('=').ok_or_else(syntax)?;
    let path: Vec<&str> = key.trim().split('.').collect();
    if path.iter().any(|part| part.is_empty()) {
        return Err(syntax());
    }
    let value = parse_value(raw_value.trim());

    let (last, parents) = path.split_last().expect("split yields at least one part");
    let mut table = root;
    let mut index = 0;
    while index < parents.len() {
        let part = parents[index];
        if part == "stages" && index == 0 && parents.len() > 1 {
            let stage_name = parents[1];
            let known = stage_names(table);
            table = stage_table(table, stage_name).ok_or_else(|| OverrideError::UnknownStage {
                assignment: assignment.to_string(),
                stage: stage_name.to_string(),
                known,
            })?;
            index += 2;
            continue;
        }
        let entry = table.entry(part.to_string()).or_insert_with(|| Value::Table(Table::new()));
        table = match entry {
            Value::Table(inner) => inner,
            other => {
                return Err(OverrideError::NotATable {
                    assignment: assignment.to_string(),
                    key: path[..=index].join("."),
                    found: other.type_str(),
                    next: path[index + 1].to_string(),
                })
            }
        };
        index += 1;
    }

    let value = match table.get(*last) {
        Some(Value::Float(_)) if value.is_integer() => Value::Float(value.as_integer().expect("checked") as f64),
        Some(existing) if existing.type_str() != value.type_str() => {
            return Err(OverrideError::TypeMismatch {
                assignment: assignment.to_string(),
                key: key.trim().to_string(),
                expected: existing.type_str(),
                found: value.type_str(),
            })
        }
        _ => value,
    };
    table.insert(last.to_string(), value);
    Ok(())
}

fn parse_value(raw: &str) -> Value {
    format!("value = {raw}")
        .parse::<Table>()
        .ok()
        .and_then(|mut table| table.remove("value"))
        .unwrap_or_else(|| Value::String(raw.to_string()))
}

fn stage_table<'a>(root: &'a mut Table, name: &str) -> Option<&'a mut Table> {
    root.get_mut("stages")?
        .as_array_mut()?
        .iter_mut()
        .filter_map(Value::as_table_mut)
        .find(|stage| stage.get("name").and_then(Value::as_str) == Some(name))
}

fn stage_names(root: &Table) -> String {
    let names: Vec<&str> = root
        .get("stages")
        .and_then(Value::as_array)
        .map(|stages| stages.iter().filter_map(|s| s.get("name")?.as_str()).collect())
        .unwrap_or_default();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document() -> Table {
        r#"
name = "x"
[models.base]
n_layer = 2
[[stages]]
name = "sft"
kind = "sft"
lr = 0.001
[[stages]]
name = "ppo"
kind = "ppo"
"#
        .parse()
        .unwrap()
    }

    #[test]
    fn sets_stage_keys_by_stage_name() {
        let mut doc = document();
        apply(&mut doc, "stages.ppo.kl_coef=0.05").unwrap();
        apply(&mut doc, "stages.sft.lr=1").unwrap();
        let stages = doc["stages"].as_array().unwrap();
        assert_eq!(stages[1]["kl_coef"].as_float(), Some(0.05));
        // an integer replacing a float stays a float
        assert_eq!(stages[0]["lr"].as_float(), Some(1.0));
    }

    #[test]
    fn sets_nested_tables_and_strings() {
        let mut doc = document();
        apply(&mut doc, "models.base.n_layer=6").unwrap();
        apply(&mut doc, "task.kind=jsonl").unwrap();
        apply(&mut doc, "name=\"renamed\"").unwrap();
        assert_eq!(doc["models"]["base"]["n_layer"].as_integer(), Some(6));
        assert_eq!(doc["task"]["kind"].as_str(), Some("jsonl"));
        assert_eq!(doc["name"].as_str(), Some("renamed"));
    }

    #[test]
    fn rejects_bad_assignments_with_the_reason() {
        let mut doc = document();
        let error = |doc: &mut Table, a: &str| apply(doc, a).unwrap_err().to_string();
        assert!(error(&mut doc, "stages.rm.lr=1").contains("no stage named `rm` (stages: sft, ppo)"));
        assert!(error(&mut doc, "models.base.n_layer=deep").contains("type integer, the value given is of type string"));
        assert!(error(&mut doc, "novalue").contains("expected KEY=VALUE"));
        assert!(error(&mut doc, "name.inner=1").contains("`name` is a string, not a table"));
        assert!(error(&mut doc, "a..b=1").contains("expected KEY=VALUE"));
    }
}
