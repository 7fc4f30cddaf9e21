//! Reading a rules file: figment for the layering (file, then `QSCALE_` environment), serde for
//! the shape, then [`super::validate`] for what serde cannot say.

use std::path::Path;
use std::sync::Arc;

use figment::providers::{Env, Format as _, Serialized, Toml};
use figment::value::Value;
use figment::Figment;
use serde::Deserialize;

use super::error::{ConfigError, Problem, RuleLocator};
use super::rule::{Defaults, Rule};
use super::validate;

/// The syntax of a rules file, chosen by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    Yaml,
}

impl Format {
    pub fn from_path(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "toml" => Some(Format::Toml),
            "yaml" | "yml" => Some(Format::Yaml),
            _ => None,
        }
    }
}

/// A loaded, validated rules file.
#[derive(Debug, Clone, PartialEq)]
pub struct RulesFile {
    pub source_name: String,
    /// Shared with the rule tasks that run them: a thousand rules are kept once, not once per
    /// holder (BENCHMARKS.md, finding 20).
    pub rules: Vec<Arc<Rule>>,
}

/// The file's top level, with rules kept as raw values so each rule is read (and its errors
/// reported) on its own.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopLevel {
    #[serde(default)]
    defaults: Option<Value>,
    #[serde(default)]
    rules: Vec<Value>,
}

/// Reads a rules file from disk. A missing file is an error here, not an empty config
/// (figment alone would treat it as empty).
pub fn load_file(path: &Path) -> Result<RulesFile, ConfigError> {
    let name = path.display().to_string();
    let format = Format::from_path(path).ok_or_else(|| {
        ConfigError::file_level(
            &name,
            "unknown file extension; rules files end in .toml, .yaml or .yml",
        )
    })?;
    let bytes = std::fs::read(path)
        .map_err(|e| ConfigError::file_level(&name, format!("cannot read the file: {e}")))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| ConfigError::file_level(&name, "the file is not UTF-8 text"))?;
    parse(&name, &text, format)
}

/// Parses rules from text (a file's contents or a ConfigMap key), applying `QSCALE_`
/// environment overrides: `QSCALE_DEFAULTS__COOLDOWN=2m` for the defaults,
/// `QSCALE_RULE_<NAME>__MAX_REPLICAS=20` for one rule (NAME upper-cased, other characters as
/// `_`), nested keys joined with `__`.
pub fn parse(source_name: &str, text: &str, format: Format) -> Result<RulesFile, ConfigError> {
    let file = match format {
        Format::Toml => Figment::from(Toml::string(text)),
        Format::Yaml => Figment::from(serde_saphyr::figment::Yaml::string(text)),
    };
    let figment = file.merge(
        Env::prefixed("QSCALE_")
            .filter(|key| key.as_str().to_ascii_lowercase().starts_with("defaults__"))
            .split("__"),
    );

    let top: TopLevel = figment.extract().map_err(|e| ConfigError {
        source_name: source_name.to_string(),
        problems: figment_problems(e, None, ""),
    })?;

    let mut problems = Vec::new();
    let defaults = match &top.defaults {
        None => Value::from(figment::value::Dict::new()),
        Some(value) => {
            if let Err(e) = Figment::from(Serialized::defaults(value)).extract::<Defaults>() {
                problems.extend(figment_problems(e, None, "defaults"));
            }
            value.clone()
        }
    };
    if !problems.is_empty() {
        // Every rule inherits from `defaults`: reading rules now would repeat each problem once
        // per rule.
        return Err(ConfigError {
            source_name: source_name.to_string(),
            problems,
        });
    }
    if top.rules.is_empty() {
        return Err(ConfigError::file_level(
            source_name,
            "no rules: the file needs a `rules` list with at least one rule",
        ));
    }

    let mut rules = Vec::new();
    let mut parsed_locators = Vec::new();
    for (index, raw) in top.rules.iter().enumerate() {
        let name = raw
            .find_ref("name")
            .and_then(|v| v.as_str())
            .map(str::to_string);
        let locator = RuleLocator { index, name };
        match read_rule(&defaults, raw, &locator) {
            Ok(rule) => {
                rules.push(rule);
                parsed_locators.push(locator);
            }
            Err(mut rule_problems) => problems.append(&mut rule_problems),
        }
    }
    problems.extend(validate::check_rules(&rules, &parsed_locators));
    problems.extend(validate::check_unique_names(&top.rules));

    // Reading order: file-level problems first, then rule by rule.
    problems.sort_by_key(|p| p.rule.as_ref().map(|r| r.index));
    if problems.is_empty() {
        Ok(RulesFile {
            source_name: source_name.to_string(),
            rules: rules.into_iter().map(Arc::new).collect(),
        })
    } else {
        Err(ConfigError {
            source_name: source_name.to_string(),
            problems,
        })
    }
}

fn read_rule(defaults: &Value, raw: &Value, locator: &RuleLocator) -> Result<Rule, Vec<Problem>> {
    if raw.as_dict().is_none() {
        return Err(vec![Problem {
            rule: Some(locator.clone()),
            field: String::new(),
            message: "a rule must be a table (TOML `[[rules]]`, YAML mapping)".into(),
        }]);
    }
    let mut figment =
        Figment::from(Serialized::defaults(defaults)).merge(Serialized::defaults(raw));
    if let Some(name) = &locator.name {
        figment = figment.merge(Env::prefixed(&rule_env_prefix(name)).split("__"));
    }
    figment
        .extract::<Rule>()
        .map_err(|e| figment_problems(e, Some(locator), ""))
}

/// The environment prefix that overrides fields of the rule called `name`.
pub fn rule_env_prefix(name: &str) -> String {
    let upper: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("QSCALE_RULE_{upper}__")
}

/// Turns figment's error chain into problems, each with the dotted path of its field.
fn figment_problems(error: figment::Error, rule: Option<&RuleLocator>, root: &str) -> Vec<Problem> {
    error
        .into_iter()
        .map(|e| {
            let mut path: Vec<String> = Vec::new();
            if !root.is_empty() {
                path.push(root.to_string());
            }
            path.extend(e.path.iter().cloned());
            let message = match &e.kind {
                figment::error::Kind::MissingField(field) => {
                    path.push(field.to_string());
                    "missing field".to_string()
                }
                figment::error::Kind::UnknownField(field, expected) => {
                    if path.last() != Some(field) {
                        path.push(field.clone());
                    }
                    format!("unknown field; expected one of: {}", expected.join(", "))
                }
                other => other.to_string(),
            };
            Problem {
                rule: rule.cloned(),
                field: render_path(&path),
                message,
            }
        })
        .collect()
}

/// `["triggers", "0", "queue"]` becomes `triggers[0].queue`.
fn render_path(path: &[String]) -> String {
    let mut out = String::new();
    for segment in path {
        if segment.parse::<usize>().is_ok() {
            out.push_str(&format!("[{segment}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(segment);
        }
    }
    out
}

/// One line for `qscale check`: the file, and each rule with its target and triggers.
pub fn summary(file: &RulesFile) -> String {
    let rules: Vec<String> = file
        .rules
        .iter()
        .map(|rule| {
            let triggers: Vec<&str> = rule.triggers.iter().map(|t| t.source.type_name()).collect();
            format!(
                "{} ({} {}..{}, {})",
                rule.name,
                rule.target.display(),
                rule.min_replicas,
                rule.max_replicas,
                triggers.join("+")
            )
        })
        .collect();
    let count = file.rules.len();
    format!(
        "{}: ok, {count} rule{}: {}",
        file.source_name,
        if count == 1 { "" } else { "s" },
        rules.join("; ")
    )
}
