//! The `[sweep]` table: variants of one experiment, each a set of `--set` assignments, crossed
//! with seeds.
//!
//! ```toml
//! [sweep]
//! method = "grid"                       # every combination; or "random": `count` draws
//! seeds = [1, 2]                        # each variant runs once per seed (sets `seed`)
//! [sweep.parameters]
//! "stages.ppo.kl_coef" = [0.02, 0.1]    # a list: grid values, or choices for random
//! "stages.ppo.policy_lr" = { min = 1e-5, max = 1e-4, log = true }   # random only
//! "task.augment.copies,stages.rm.augment.copies" = [0, 2]             # linked: each takes the value
//! ```

use std::collections::BTreeMap;
use std::ops::Range;

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use toml::{Spanned, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    #[default]
    Grid,
    Random,
}

/// The table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSweep {
    #[serde(default)]
    method: Method,
    #[serde(default)]
    seeds: Vec<u64>,
    /// Random: how many draws.
    #[serde(default)]
    count: Option<usize>,
    /// Random: the sampler's seed.
    #[serde(default)]
    seed: u64,
    parameters: BTreeMap<Spanned<String>, Spanned<Value>>,
}

/// What one swept key takes.
#[derive(Debug, Clone, PartialEq)]
enum Domain {
    /// Grid values, or the choices of a random draw.
    Values(Vec<Value>),
    /// Random only: uniform (or log-uniform) between `min` and `max`; integers when both are.
    Range { min: Value, max: Value, log: bool },
}

/// One run of a sweep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variant {
    /// Its directory name inside the sweep directory.
    pub name: String,
    /// `(dotted key, TOML value)`, as `--set KEY=VALUE` takes them.
    pub assignments: Vec<(String, String)>,
    pub seed: Option<u64>,
}

impl Variant {
    /// The `--set` assignments that make this variant, the seed included.
    pub fn set_arguments(&self) -> Vec<String> {
        let mut arguments: Vec<String> = self.assignments.iter().map(|(key, value)| format!("{key}={value}")).collect();
        if let Some(seed) = self.seed {
            arguments.push(format!("seed={seed}"));
        }
        arguments
    }
}

/// An expanded sweep: its keys (in order) and every variant.
#[derive(Debug, Clone, PartialEq)]
pub struct Sweep {
    pub keys: Vec<String>,
    pub variants: Vec<Variant>,
    /// The `[sweep]` table with its defaults filled in, as `rlhf validate --print` shows it.
    pub resolved: toml::Table,
}

impl Sweep {
    /// The resolved table as TOML, `[sweep]` header included.
    pub fn to_toml(&self) -> String {
        let wrapped = toml::Table::from_iter([("sweep".to_string(), Value::Table(self.resolved.clone()))]);
        toml::to_string(&wrapped).expect("a TOML table serialises")
    }
}

/// A problem in the `[sweep]` table, with the byte span it is about.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct SweepProblem {
    pub span: Option<Range<usize>>,
    pub message: String,
}

impl SweepProblem {
    fn at(span: Range<usize>, message: String) -> Self {
        SweepProblem { span: Some(span), message }
    }
}

/// Where each swept key is written in the file.
pub(super) type KeySpans = Vec<(String, Range<usize>)>;

/// Checks the table and expands it into variants. Returns the key spans too, so that the
/// caller can point at the key whose values do not fit the experiment.
pub(super) fn expand(raw: &RawSweep) -> Result<(Sweep, KeySpans), SweepProblem> {
    if raw.parameters.is_empty() {
        return Err(SweepProblem { span: None, message: "[sweep]: `parameters` lists no key to sweep".into() });
    }
    // (the keys a parameter sets — several when linked — where it is written, its values)
    let mut domains: Vec<(Vec<String>, Range<usize>, Domain)> = Vec::new();
    for (key, value) in &raw.parameters {
        let name = key.get_ref();
        // Linked keys, `a.b,c.d`: each takes the parameter's value (one switch for settings of
        // several tables).
        let linked: Vec<String> = name.split(',').map(|part| part.trim().to_string()).collect();
        for (index, part) in linked.iter().enumerate() {
            if part.split('.').any(str::is_empty) || part.contains('=') {
                return Err(SweepProblem::at(key.span(), format!("[sweep]: `{part}` is not a dotted key like stages.ppo.kl_coef")));
            }
            if part == "seed" {
                return Err(SweepProblem::at(key.span(), "[sweep]: sweep seeds with `seeds = [...]`, not as a parameter".into()));
            }
            if domains.iter().flat_map(|(keys, _, _)| keys).chain(&linked[..index]).any(|k| k == part) {
                return Err(SweepProblem::at(key.span(), format!("[sweep]: `{part}` is swept twice")));
            }
        }
        let domain = domain(value.get_ref()).map_err(|message| SweepProblem::at(value.span(), format!("[sweep] `{name}`: {message}")))?;
        if raw.method == Method::Grid && matches!(domain, Domain::Range { .. }) {
            return Err(SweepProblem::at(
                value.span(),
                format!("[sweep] `{name}`: a {{ min, max }} range needs method = \"random\"; a grid needs a list of values"),
            ));
        }
        domains.push((linked, key.span(), domain));
    }
    let combinations: Vec<Vec<Value>> = match raw.method {
        Method::Grid => {
            if raw.count.is_some() {
                return Err(SweepProblem {
                    span: None,
                    message: "[sweep]: `count` is for method = \"random\"; a grid runs every combination".into(),
                });
            }
            grid(&domains.iter().map(|(_, _, d)| d).collect::<Vec<_>>())
        }
        Method::Random => {
            let count = raw.count.filter(|&c| c > 0).ok_or_else(|| SweepProblem {
                span: None,
                message: "[sweep]: method = \"random\" needs `count` ≥ 1 (how many variants to draw)".into(),
            })?;
            let mut rng = ChaCha8Rng::seed_from_u64(raw.seed);
            (0..count).map(|_| domains.iter().map(|(_, _, d)| draw(d, &mut rng)).collect()).collect()
        }
    };
    let mut seen_seeds = Vec::new();
    for seed in &raw.seeds {
        if seen_seeds.contains(seed) {
            return Err(SweepProblem { span: None, message: format!("[sweep]: seed {seed} is listed twice in `seeds`") });
        }
        seen_seeds.push(*seed);
    }
    let seeds: Vec<Option<u64>> = if raw.seeds.is_empty() { vec![None] } else { raw.seeds.iter().copied().map(Some).collect() };
    let keys: Vec<String> = domains.iter().flat_map(|(linked, _, _)| linked.iter().cloned()).collect();
    let total = combinations.len() * seeds.len();
    let width = total.to_string().len().max(2);
    let mut variants = Vec::with_capacity(total);
    for values in &combinations {
        let assignments: Vec<(String, String)> = domains
            .iter()
            .zip(values)
            .flat_map(|((linked, _, _), value)| linked.iter().map(move |key| (key.clone(), value.to_string())))
            .collect();
        for seed in &seeds {
            let index = variants.len() + 1;
            variants.push(Variant { name: variant_name(index, width, &assignments, *seed), assignments: assignments.clone(), seed: *seed });
        }
    }
    let spans = domains.into_iter().flat_map(|(linked, span, _)| linked.into_iter().map(move |key| (key, span.clone()))).collect();
    let mut resolved = toml::Table::new();
    resolved.insert("method".into(), Value::String(if raw.method == Method::Grid { "grid" } else { "random" }.into()));
    resolved.insert("seeds".into(), Value::Array(raw.seeds.iter().map(|&seed| Value::Integer(seed as i64)).collect()));
    if raw.method == Method::Random {
        resolved.insert("count".into(), Value::Integer(raw.count.unwrap_or_default() as i64));
        resolved.insert("seed".into(), Value::Integer(raw.seed as i64));
    }
    let parameters: toml::Table = raw.parameters.iter().map(|(key, value)| (key.get_ref().clone(), value.get_ref().clone())).collect();
    resolved.insert("parameters".into(), Value::Table(parameters));
    Ok((Sweep { keys, variants, resolved }, spans))
}

fn domain(value: &Value) -> Result<Domain, String> {
    match value {
        Value::Array(values) if values.is_empty() => Err("the list of values is empty".into()),
        Value::Array(values) => Ok(Domain::Values(values.clone())),
        Value::Table(table) => {
            if let Some(unknown) = table.keys().find(|k| !["min", "max", "log"].contains(&k.as_str())) {
                return Err(format!("unknown key `{unknown}` in a range (expected min, max, log)"));
            }
            let bound = |name: &str| match table.get(name) {
                Some(v @ (Value::Integer(_) | Value::Float(_))) => Ok(v.clone()),
                Some(other) => Err(format!("`{name}` must be a number, found {}", other.type_str())),
                None => Err(format!("a range needs `{name}`")),
            };
            let (min, max) = (bound("min")?, bound("max")?);
            let log = match table.get("log") {
                None => false,
                Some(Value::Boolean(log)) => *log,
                Some(other) => return Err(format!("`log` must be true or false, found {}", other.type_str())),
            };
            let (low, high) = (as_f64(&min), as_f64(&max));
            if !(low < high) {
                return Err(format!("`min` ({low}) must be less than `max` ({high})"));
            }
            if log && !(low > 0.0) {
                return Err(format!("a log range needs `min` > 0, got {low}"));
            }
            Ok(Domain::Range { min, max, log })
        }
        other => Err(format!("expected a list of values or a {{ min, max }} range, found a {}", other.type_str())),
    }
}

fn as_f64(value: &Value) -> f64 {
    value.as_float().or_else(|| value.as_integer().map(|i| i as f64)).unwrap_or(f64::NAN)
}

/// Every combination, the last key varying fastest.
fn grid(domains: &[&Domain]) -> Vec<Vec<Value>> {
    let mut combinations: Vec<Vec<Value>> = vec![Vec::new()];
    for domain in domains {
        let Domain::Values(values) = domain else { unreachable!("ranges are rejected for grids") };
        combinations = combinations
            .into_iter()
            .flat_map(|prefix| {
                values.iter().map(move |value| {
                    let mut combination = prefix.clone();
                    combination.push(value.clone());
                    combination
                })
            })
            .collect();
    }
    combinations
}

fn draw(domain: &Domain, rng: &mut ChaCha8Rng) -> Value {
    match domain {
        Domain::Values(values) => values.choose(rng).expect("lists are non-empty").clone(),
        Domain::Range { min: Value::Integer(min), max: Value::Integer(max), log: false } => Value::Integer(rng.random_range(*min..=*max)),
        Domain::Range { min, max, log } => {
            let (low, high) = (as_f64(min), as_f64(max));
            let value = if *log { (rng.random_range(low.ln()..high.ln())).exp() } else { rng.random_range(low..high) };
            let value = if matches!((min, max), (Value::Integer(_), Value::Integer(_))) { value.round() } else { value };
            // Four significant digits: readable names, and the same number on every machine.
            Value::Float(format!("{value:.3e}").parse().expect("a formatted float parses"))
        }
    }
}

/// `03_kl_coef=0.1_seed=2`: the number keeps the order, the last key segment and value tell
/// what it is; characters a shell or a file system may mind become `-`.
fn variant_name(index: usize, width: usize, assignments: &[(String, String)], seed: Option<u64>) -> String {
    let mut parts = vec![format!("{index:0width$}")];
    for (key, value) in assignments {
        let last = key.rsplit('.').next().unwrap_or(key);
        let part = format!("{last}={}", value.trim_matches('"'));
        // Linked keys with one short name (`task.augment.copies,stages.rm.augment.copies`) say it once.
        if !parts.contains(&part) {
            parts.push(part);
        }
    }
    if let Some(seed) = seed {
        parts.push(format!("seed={seed}"));
    }
    let name: String = parts.join("_").chars().map(|c| if c.is_ascii_alphanumeric() || "._=+-".contains(c) { c } else { '-' }).collect();
    name.chars().take(120).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> RawSweep {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn grid_crosses_keys_then_seeds() {
        let (sweep, _) = expand(&raw(r#"
seeds = [1, 2]
[parameters]
"stages.ppo.kl_coef" = [0.1, 0.2]
"stages.sft.lr" = [1e-4]
"#))
        .unwrap();
        assert_eq!(sweep.keys, ["stages.ppo.kl_coef", "stages.sft.lr"]);
        let names: Vec<&str> = sweep.variants.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "01_kl_coef=0.1_lr=0.0001_seed=1",
                "02_kl_coef=0.1_lr=0.0001_seed=2",
                "03_kl_coef=0.2_lr=0.0001_seed=1",
                "04_kl_coef=0.2_lr=0.0001_seed=2"
            ]
        );
        assert_eq!(sweep.variants[3].set_arguments(), ["stages.ppo.kl_coef=0.2", "stages.sft.lr=0.0001", "seed=2"]);
    }

    #[test]
    fn random_draws_are_reproducible_and_in_range() {
        let text = r#"
method = "random"
count = 5
seed = 3
[parameters]
"stages.ppo.policy_lr" = { min = 1e-6, max = 1e-4, log = true }
"stages.ppo.ppo_epochs" = { min = 1, max = 4 }
"stages.ppo.adaptive_kl" = [true, false]
"#;
        let (first, _) = expand(&raw(text)).unwrap();
        let (again, _) = expand(&raw(text)).unwrap();
        assert_eq!(first, again);
        assert_eq!(first.variants.len(), 5);
        let (other, _) = expand(&raw(&text.replace("seed = 3", "seed = 4"))).unwrap();
        assert_ne!(first.variants, other.variants);
        for variant in &first.variants {
            let lr: f64 = variant.assignments[1].1.parse().unwrap();
            assert!((1e-6..=1e-4).contains(&lr), "{variant:?}");
            let epochs: i64 = variant.assignments[2].1.parse().unwrap();
            assert!((1..=4).contains(&epochs), "{variant:?}");
        }
    }

    #[test]
    fn bad_tables_are_explained() {
        let problem = |text: &str| expand(&raw(text)).unwrap_err().message;
        assert!(problem("[parameters]\n\"a.b\" = { min = 0.1, max = 1.0 }").contains("needs method = \"random\""));
        assert!(problem("method = \"random\"\n[parameters]\n\"a.b\" = [1]").contains("needs `count`"));
        assert!(problem("[parameters]\n\"a.b\" = []").contains("empty"));
        assert!(problem("[parameters]\n\"a..b\" = [1]").contains("not a dotted key"));
        assert!(problem("[parameters]\nseed = [1]").contains("seeds = [...]"));
        assert!(problem("method = \"random\"\ncount = 1\n[parameters]\n\"a\" = { min = 0.0, max = 1.0, log = true }")
            .contains("log range needs `min` > 0"));
        assert!(problem("seeds = [1, 1]\n[parameters]\n\"a\" = [1]").contains("listed twice"));
        assert!(problem("[parameters]").contains("no key to sweep"));
        assert!(problem("[parameters]\n\"a.b,\" = [1]").contains("`` is not a dotted key"));
        assert!(problem("[parameters]\n\"a.b, seed\" = [1]").contains("seeds = [...]"));
        assert!(problem("[parameters]\n\"a.b,c\" = [1]\n\"c\" = [2]").contains("`c` is swept twice"));
        assert!(problem("[parameters]\n\"a.b,a.b\" = [1]").contains("`a.b` is swept twice"));
    }

    #[test]
    fn linked_keys_take_the_same_value_in_every_variant() {
        let (sweep, spans) = expand(&raw(r#"
seeds = [1]
[parameters]
"task.augment.copies, stages.rm.augment.copies" = [0, 2]
"stages.ppo.kl_coef" = [0.1]
"#))
        .unwrap();
        assert_eq!(sweep.keys, ["stages.ppo.kl_coef", "task.augment.copies", "stages.rm.augment.copies"]);
        assert_eq!(sweep.variants.len(), 2);
        assert_eq!(
            sweep.variants[1].set_arguments(),
            ["stages.ppo.kl_coef=0.1", "task.augment.copies=2", "stages.rm.augment.copies=2", "seed=1"]
        );
        assert_eq!(sweep.variants[1].name, "02_kl_coef=0.1_copies=2_seed=1");
        assert_eq!(spans[1].1, spans[2].1, "linked keys point at their parameter");
    }
}
