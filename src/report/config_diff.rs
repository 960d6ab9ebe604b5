//! Which settings differ between runs: each recorded config.toml flattened to dotted keys (stages
//! addressed by name, as `--set` does), keeping only keys whose values are not all equal.

use std::collections::BTreeMap;

use toml::Value;

use super::load::Run;
use super::table::{Cell, Table};

/// `key → value` with stages as `stages.NAME.key` and nested tables dotted.
pub fn flatten(config: &toml::Table) -> BTreeMap<String, String> {
    let mut flat = BTreeMap::new();
    for (key, value) in config {
        if key == "stages" {
            if let Some(stages) = value.as_array() {
                for (index, stage) in stages.iter().enumerate() {
                    let Some(table) = stage.as_table() else { continue };
                    let name = table.get("name").and_then(Value::as_str).map_or_else(|| index.to_string(), str::to_string);
                    for (stage_key, stage_value) in table.iter().filter(|(k, _)| *k != "name") {
                        add(&mut flat, format!("stages.{name}.{stage_key}"), stage_value);
                    }
                }
                continue;
            }
        }
        add(&mut flat, key.clone(), value);
    }
    flat
}

fn add(flat: &mut BTreeMap<String, String>, key: String, value: &Value) {
    match value {
        Value::Table(table) => {
            for (inner, inner_value) in table {
                add(flat, format!("{key}.{inner}"), inner_value);
            }
        }
        Value::String(text) => {
            flat.insert(key, text.clone());
        }
        other => {
            flat.insert(key, other.to_string());
        }
    }
}

/// Rows `key | value per run` for the keys that differ; `None` when fewer than two runs have a
/// config (nothing to compare).
pub fn diff(runs: &[Run]) -> Option<Table> {
    let with_config: Vec<(&Run, BTreeMap<String, String>)> =
        runs.iter().filter_map(|run| run.config.as_ref().map(|config| (run, flatten(config)))).collect();
    if with_config.len() < 2 {
        return None;
    }
    let mut keys: Vec<&String> = with_config.iter().flat_map(|(_, flat)| flat.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut headers = vec!["key".to_string()];
    headers.extend(with_config.iter().map(|(run, _)| run.label.clone()));
    let rows = keys
        .into_iter()
        .filter_map(|key| {
            let values: Vec<Option<&String>> = with_config.iter().map(|(_, flat)| flat.get(key)).collect();
            if values.iter().all(|v| *v == values[0]) {
                return None;
            }
            let mut row = vec![Cell::text(key.clone())];
            row.extend(values.iter().map(|v| Cell::text(v.map_or("—".to_string(), |s| s.clone()))));
            Some(row)
        })
        .collect();
    Some(Table { headers, rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_are_addressed_by_name_and_tables_dotted() {
        let config: toml::Table = r#"
name = "x"
[models.base]
n_layer = 2
[[stages]]
name = "ppo"
kind = "ppo"
kl_coef = 0.1
devices = { policy = "cpu" }
"#
        .parse()
        .unwrap();
        let flat = flatten(&config);
        let expected: BTreeMap<String, String> = [
            ("name", "x"),
            ("models.base.n_layer", "2"),
            ("stages.ppo.kind", "ppo"),
            ("stages.ppo.kl_coef", "0.1"),
            ("stages.ppo.devices.policy", "cpu"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(flat, expected);
    }
}
