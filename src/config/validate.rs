//! Checks that need more than one field at a time, or more than one rule.

use std::collections::HashMap;

use figment::value::Value;

use super::error::{Problem, RuleLocator};
use super::rule::{Behavior, Rule, KNOWN_KINDS};
use super::trigger::{Trigger, TriggerSource};

/// Problems within each parsed rule, and between rules (two rules on one target).
pub fn check_rules(rules: &[Rule], locators: &[RuleLocator]) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (rule, locator) in rules.iter().zip(locators) {
        let mut report = |field: &str, message: String| {
            problems.push(Problem {
                rule: Some(locator.clone()),
                field: field.to_string(),
                message,
            })
        };
        check_rule(rule, &mut report);
    }

    let mut by_target: HashMap<(Option<&str>, &str, &str), &RuleLocator> = HashMap::new();
    for (rule, locator) in rules.iter().zip(locators) {
        let key = (
            rule.target.api_version(),
            rule.target.kind.as_str(),
            rule.target.name.as_str(),
        );
        if let Some(first) = by_target.get(&key) {
            problems.push(Problem {
                rule: Some(locator.clone()),
                field: "target".into(),
                message: format!(
                    "{} is already the target of {first}; two rules on one target would fight",
                    rule.target.display()
                ),
            });
        } else {
            by_target.insert(key, locator);
        }
    }
    problems
}

/// Duplicate names, checked on the raw rules so that a rule with other errors still counts.
pub fn check_unique_names(raw_rules: &[Value]) -> Vec<Problem> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut problems = Vec::new();
    for (index, raw) in raw_rules.iter().enumerate() {
        let Some(name) = raw.find_ref("name").and_then(|v| v.as_str()) else {
            continue;
        };
        if let Some(first) = seen.get(name) {
            problems.push(Problem {
                rule: Some(RuleLocator {
                    index,
                    name: Some(name.to_string()),
                }),
                field: "name".into(),
                message: format!("duplicate rule name; rules[{first}] has the same name"),
            });
        } else {
            seen.insert(name, index);
        }
    }
    problems
}

fn check_rule(rule: &Rule, report: &mut impl FnMut(&str, String)) {
    if !is_valid_name(&rule.name) {
        report(
            "name",
            "must be 1 to 63 characters of letters, digits, `-`, `_` or `.` (it is used in \
             metric labels and ConfigMap keys)"
                .into(),
        );
    }
    if rule.target.name.is_empty() {
        report("target.name", "must not be empty".into());
    }
    match (
        &rule.target.api_version,
        KNOWN_KINDS.contains(&rule.target.kind.as_str()),
    ) {
        (None, false) => report(
            "target.api_version",
            format!(
                "kind {:?} is not one of {}; give its `api_version` (e.g. \"example.com/v1\") \
                 so qscale can find its scale subresource",
                rule.target.kind,
                KNOWN_KINDS.join(", ")
            ),
        ),
        (Some(v), true) if v != "apps/v1" => report(
            "target.api_version",
            format!("{} is served by apps/v1, not {v:?}", rule.target.kind),
        ),
        _ => {}
    }
    if rule.max_replicas == 0 {
        report("max_replicas", "must be at least 1".into());
    }
    if rule.min_replicas > rule.max_replicas {
        report(
            "min_replicas",
            format!(
                "min_replicas ({}) is greater than max_replicas ({})",
                rule.min_replicas, rule.max_replicas
            ),
        );
    }
    if rule.poll_interval.get().is_zero() {
        report("poll_interval", "must be longer than zero".into());
    }
    if !(rule.tolerance.is_finite() && (0.0..1.0).contains(&rule.tolerance)) {
        report(
            "tolerance",
            format!("must be at least 0 and below 1, got {}", rule.tolerance),
        );
    }
    check_behavior("scale_up", &rule.scale_up, report);
    check_behavior("scale_down", &rule.scale_down, report);
    if let Some(fallback) = &rule.fallback {
        if fallback.after_failures == 0 {
            report("fallback.after_failures", "must be at least 1".into());
        }
        if fallback.replicas > rule.max_replicas || fallback.replicas < rule.min_replicas {
            report(
                "fallback.replicas",
                format!(
                    "{} is outside [min_replicas, max_replicas] = [{}, {}]",
                    fallback.replicas, rule.min_replicas, rule.max_replicas
                ),
            );
        }
    }
    if rule.triggers.is_empty() {
        report("triggers", "a rule needs at least one trigger".into());
    }
    let mut labels: HashMap<String, usize> = HashMap::new();
    for (index, trigger) in rule.triggers.iter().enumerate() {
        let at = |field: &str| format!("triggers[{index}].{field}");
        check_trigger(trigger, &at, report);
        let label = trigger.label(index);
        if let Some(first) = labels.insert(label.clone(), index) {
            report(
                &at("name"),
                format!("trigger name {label:?} is also used by triggers[{first}]"),
            );
        }
    }
}

fn check_trigger(
    trigger: &Trigger,
    at: &dyn Fn(&str) -> String,
    report: &mut impl FnMut(&str, String),
) {
    if !(trigger.target_per_replica.is_finite() && trigger.target_per_replica > 0.0) {
        report(
            &at("target_per_replica"),
            format!(
                "must be a number above zero, got {}",
                trigger.target_per_replica
            ),
        );
    }
    if !(trigger.activation.is_finite() && trigger.activation >= 0.0) {
        report(
            &at("activation"),
            format!("must be zero or more, got {}", trigger.activation),
        );
    }
    match &trigger.source {
        TriggerSource::Sqs(sqs) => {
            if sqs.queue.trim().is_empty() {
                report(&at("queue"), "must be a queue URL or a queue name".into());
            }
            if let Some(endpoint) = &sqs.endpoint {
                check_url(&at("endpoint"), endpoint, report);
            }
            if sqs.external_id.is_some() && sqs.role_arn.is_none() {
                report(
                    &at("external_id"),
                    "only means something with `role_arn`".into(),
                );
            }
            if sqs.timeout.get().is_zero() {
                report(&at("timeout"), "must be longer than zero".into());
            }
        }
        TriggerSource::Prometheus(prom) => {
            check_url(&at("server"), &prom.server, report);
            if prom.query.trim().is_empty() {
                report(&at("query"), "must not be empty".into());
            }
            if prom.timeout.get().is_zero() {
                report(&at("timeout"), "must be longer than zero".into());
            }
            if let Some(basic) = &prom.auth.basic_auth {
                if basic.password_file.is_some() == basic.password_env.is_some() {
                    report(
                        &at("basic_auth"),
                        "give exactly one of `password_file` or `password_env`".into(),
                    );
                }
            }
            let schemes = [
                prom.auth.bearer_token_file.is_some(),
                prom.auth.basic_auth.is_some(),
                prom.auth.aws_sigv4.is_some(),
            ];
            if schemes.iter().filter(|set| **set).count() > 1 {
                report(
                    &at("bearer_token_file"),
                    "use one of `bearer_token_file`, `basic_auth`, `aws_sigv4`".into(),
                );
            }
            if prom.tls.cert_file.is_some() != prom.tls.key_file.is_some() {
                report(&at("tls"), "`cert_file` and `key_file` go together".into());
            }
        }
    }
}

fn check_behavior(direction: &str, behavior: &Behavior, report: &mut impl FnMut(&str, String)) {
    for (index, policy) in behavior.policies.iter().enumerate() {
        let field = format!("{direction}.policies[{index}]");
        if policy.max_pods.is_none() && policy.max_percent.is_none() {
            report(&field, "needs `max_pods` or `max_percent` (or both)".into());
        }
        if policy.max_pods == Some(0) || policy.max_percent == Some(0) {
            report(
                &field,
                format!(
                    "a limit of 0 blocks every change; use `{direction}.select = \"disabled\"`"
                ),
            );
        }
        if policy.period.get().is_zero() {
            report(
                &format!("{field}.period"),
                "must be longer than zero".into(),
            );
        }
    }
}

fn check_url(field: &str, url: &str, report: &mut impl FnMut(&str, String)) {
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 10 {
        report(field, format!("{url:?} is not an http:// or https:// URL"));
    }
}

fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}
