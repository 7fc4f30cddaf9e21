//! The JSON Schema of a rules file, generated from the same types the loader reads, so editors
//! complete and check rules exactly as `qscale check` does (`qscale schema` prints it;
//! config/rules.schema.json is the checked-in copy).

use super::rule::{Defaults, Rule};

/// A qscale rules file: optional `defaults` and a list of `rules`.
#[derive(schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // only its schema is used; the loader reads rules one by one
struct RulesFile {
    /// Any rule field except name, target and triggers; rules override field by field.
    defaults: Option<Defaults>,
    /// The rules; each maps triggers onto one scale target.
    rules: Vec<Rule>,
}

/// The schema as pretty-printed JSON, with a trailing newline.
pub fn json_schema() -> String {
    let mut schema = schemars::schema_for!(RulesFile);
    schema.insert("title".into(), "qscale rules file".into());
    let text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    format!("{text}\n")
}
