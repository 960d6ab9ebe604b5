//! Stage kinds. Each kind is one file defining its settings (the keys of its `[[stages]]` table)
//! and one line in `STAGE_KINDS`.

pub mod lm;

use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The validated settings of one stage kind.
pub trait StageSettings: Debug + Send + Sync {
    /// The keys of this stage that name a model source (an earlier stage, a `[models.X]`
    /// section, `run:RUN_DIR/STAGE` or a checkpoint path), with their values.
    fn inputs(&self) -> Vec<(&'static str, &str)>;

    /// Values that parse but cannot work (a learning rate ≤ 0, …), as `(key, what is expected)`.
    fn check(&self) -> Result<(), (&'static str, String)>;
}

/// Parses a stage table (without `name` and `kind`) into its settings and the same table with
/// every default filled in (what a run records as its resolved config).
pub type ParseSettings = fn(toml::Table) -> Result<(Box<dyn StageSettings>, toml::Table), toml::de::Error>;

pub struct StageKind {
    pub name: &'static str,
    pub parse: ParseSettings,
}

/// Every stage kind an experiment may use.
pub const STAGE_KINDS: &[StageKind] = &[
    StageKind { name: "lm", parse: parse_settings::<lm::LmSettings> },
    StageKind { name: "sft", parse: parse_settings::<lm::SftSettings> },
];

pub fn stage_kind(name: &str) -> Option<&'static StageKind> {
    STAGE_KINDS.iter().find(|kind| kind.name == name)
}

fn parse_settings<T>(table: toml::Table) -> Result<(Box<dyn StageSettings>, toml::Table), toml::de::Error>
where
    T: StageSettings + DeserializeOwned + Serialize + 'static,
{
    let settings: T = toml::Value::Table(table).try_into()?;
    let resolved = toml::Table::try_from(&settings).expect("stage settings serialise to a TOML table");
    Ok((Box::new(settings), resolved))
}
