//! The checks of a rules file that belong to the trigger adapters: what would make a trigger
//! unbuildable (a header that is not a valid HTTP header, a reserved header, `query` in
//! `query_parameters`, credentials in a server URL, two auth schemes). `qscale check` reports
//! them, and the agent rejects a rules edit with them whole, like any other invalid rule,
//! instead of starting a rule whose trigger can never be read.

use super::prometheus::PrometheusPoller;
use crate::config::{ConfigError, Problem, RuleLocator, RulesFile, TriggerSource};

/// `Ok` if every trigger could be built; otherwise every problem, by rule and trigger.
pub fn preflight(file: &RulesFile) -> Result<(), ConfigError> {
    let mut problems = Vec::new();
    for (index, rule) in file.rules.iter().enumerate() {
        for (position, trigger) in rule.triggers.iter().enumerate() {
            let TriggerSource::Prometheus(spec) = &trigger.source else {
                continue;
            };
            if let Err(error) = PrometheusPoller::check(spec) {
                problems.push(Problem {
                    rule: Some(RuleLocator {
                        index,
                        name: Some(rule.name.clone()),
                    }),
                    field: format!("triggers.{position}"),
                    message: error.to_string(),
                });
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ConfigError {
            source_name: file.source_name.clone(),
            problems,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, Format};

    const RULES: &str = r#"
[[rules]]
name = "ok"
target = { kind = "Deployment", name = "a" }
max_replicas = 3
[[rules.triggers]]
type = "prometheus"
server = "http://127.0.0.1:9090"
query = "sum(up)"
target_per_replica = 1
tls = { ca_file = "/nowhere/ca.pem" }

[[rules]]
name = "bad"
target = { kind = "Deployment", name = "b" }
max_replicas = 3
[[rules.triggers]]
type = "sqs"
queue = "q"
target_per_replica = 1
[[rules.triggers]]
type = "prometheus"
server = "http://127.0.0.1:9090"
query = "sum(up)"
target_per_replica = 1
custom_headers = { "Bad Header" = "x" }
"#;

    #[test]
    fn an_unbuildable_trigger_is_named_by_rule_and_trigger() {
        let file = parse("rules.toml", RULES, Format::Toml).unwrap_or_else(|e| panic!("{e}"));
        let error = preflight(&file).err().map(|e| e.to_string());
        let text = error.unwrap_or_default();
        assert!(text.starts_with("rules.toml: 1 problem"), "{text}");
        assert!(
            text.contains(
                "rule \"bad\" (rules[1]): field `triggers.1`: configuration: custom_headers"
            ),
            "{text}"
        );
        // A TLS file that is only there where the agent runs is not a problem here.
        assert!(!text.contains("ca.pem"), "{text}");
    }
}
