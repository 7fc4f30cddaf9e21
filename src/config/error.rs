//! Errors in a rules file, phrased for the person who has to fix them.

use std::fmt;

/// Every problem found in one rules file; loading never stops at the first.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct ConfigError {
    /// The file (or ConfigMap key) the rules came from.
    pub source_name: String,
    pub problems: Vec<Problem>,
}

/// One thing wrong, located by rule and field.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// `None` for file-level problems (unreadable file, top-level keys, `defaults`).
    pub rule: Option<RuleLocator>,
    /// Dotted path to the field, e.g. `scale_down.policies.0.period`; empty when the problem
    /// is about the whole rule or file.
    pub field: String,
    pub message: String,
}

/// Which rule a problem is in: by name where it has one, always by position.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleLocator {
    pub index: usize,
    pub name: Option<String>,
}

impl fmt::Display for RuleLocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(name) => write!(f, "rule {name:?} (rules[{}])", self.index),
            None => write!(f, "rules[{}]", self.index),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut wrote = false;
        if let Some(rule) = &self.rule {
            write!(f, "{rule}")?;
            wrote = true;
        }
        if !self.field.is_empty() {
            if wrote {
                f.write_str(": ")?;
            }
            write!(f, "field `{}`", self.field)?;
            wrote = true;
        }
        if wrote {
            f.write_str(": ")?;
        }
        f.write_str(&self.message)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.problems.len();
        write!(
            f,
            "{}: {count} problem{}",
            self.source_name,
            if count == 1 { "" } else { "s" }
        )?;
        for problem in &self.problems {
            write!(f, "\n  {}: {problem}", self.source_name)?;
        }
        Ok(())
    }
}

impl ConfigError {
    pub fn file_level(source_name: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            source_name: source_name.into(),
            problems: vec![Problem {
                rule: None,
                field: String::new(),
                message: message.into(),
            }],
        }
    }
}
