//! The rules file and `qscale check`: every kind of error, on files in tests/fixtures/.

use std::path::{Path, PathBuf};
use std::process::Command;

use qscale::config::{self, ConfigError, Format, TriggerSource};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn errors_of(name: &str) -> ConfigError {
    match config::load_file(&fixture(name)) {
        Ok(_) => panic!("{name} should not load"),
        Err(e) => e,
    }
}

/// The one problem in a fixture, as `(rule name, field, message)`.
fn only_problem(name: &str) -> (Option<String>, String, String) {
    let error = errors_of(name);
    assert_eq!(error.problems.len(), 1, "{error}");
    let problem = &error.problems[0];
    assert!(error.source_name.ends_with(name), "{}", error.source_name);
    (
        problem.rule.as_ref().and_then(|r| r.name.clone()),
        problem.field.clone(),
        problem.message.clone(),
    )
}

#[test]
fn unknown_field_names_rule_and_field() {
    let (rule, field, message) = only_problem("unknown_field.toml");
    assert_eq!(rule.as_deref(), Some("orders"));
    assert_eq!(field, "max_replica");
    assert!(message.contains("unknown field"), "{message}");
    assert!(
        message.contains("max_replicas"),
        "suggests the real fields: {message}"
    );
}

#[test]
fn wrong_type_names_the_field() {
    let (rule, field, message) = only_problem("wrong_type.toml");
    assert_eq!(
        (rule.as_deref(), field.as_str()),
        (Some("orders"), "max_replicas")
    );
    assert!(message.contains("invalid type"), "{message}");
}

#[test]
fn missing_field_names_the_field() {
    let (rule, field, message) = only_problem("missing_field.toml");
    assert_eq!(
        (rule.as_deref(), field.as_str()),
        (Some("orders"), "max_replicas")
    );
    assert!(message.contains("missing"), "{message}");
}

#[test]
fn min_greater_than_max() {
    let (rule, field, message) = only_problem("min_greater_than_max.toml");
    assert_eq!(
        (rule.as_deref(), field.as_str()),
        (Some("orders"), "min_replicas")
    );
    assert!(
        message.contains("(12) is greater than max_replicas (10)"),
        "{message}"
    );
}

#[test]
fn duplicate_rule_names() {
    let (rule, field, message) = only_problem("duplicate_names.toml");
    assert_eq!((rule.as_deref(), field.as_str()), (Some("orders"), "name"));
    assert!(message.contains("rules[0]"), "{message}");
}

#[test]
fn zero_and_negative_target_per_replica_are_both_reported() {
    let error = errors_of("bad_target_per_replica.toml");
    let fields: Vec<&str> = error.problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "triggers[0].target_per_replica",
            "triggers[1].target_per_replica"
        ]
    );
}

#[test]
fn two_rules_on_one_target() {
    let (rule, field, message) = only_problem("same_target.toml");
    assert_eq!(
        (rule.as_deref(), field.as_str()),
        (Some("orders-too"), "target")
    );
    assert!(message.contains("Deployment/orders"), "{message}");
}

#[test]
fn unparseable_duration() {
    let (rule, field, message) = only_problem("bad_duration.toml");
    assert_eq!(
        (rule.as_deref(), field.as_str()),
        (Some("orders"), "cooldown")
    );
    assert!(message.contains("5 parsecs"), "{message}");
}

#[test]
fn all_errors_in_a_file_are_reported_with_rule_by_index_when_unnamed() {
    let error = errors_of("many_errors.yaml");
    let text = error.to_string();
    assert_eq!(error.problems.len(), 4, "{text}");
    assert!(
        text.contains("rule \"first\" (rules[0]): field `min_replicas`"),
        "{text}"
    );
    assert!(
        text.contains("field `scale_down.policies[0].period`"),
        "{text}"
    );
    assert!(text.contains("rules[2]: field `triggers[0]`"), "{text}");
    assert!(text.contains("needs field `query`"), "{text}");
    assert!(
        text.contains("`query` does not apply to a `sqs` trigger"),
        "{text}"
    );
    assert!(
        text.lines().skip(1).all(|l| l.contains("many_errors.yaml")),
        "{text}"
    );
}

#[test]
fn garbage_gets_an_error_not_a_panic() {
    for name in [
        "binary_noise.toml",
        "empty.toml",
        "yaml_bomb.yaml",
        "deep_nesting.yaml",
        "truncated.toml",
    ] {
        let error = errors_of(name);
        assert!(!error.problems.is_empty(), "{name}");
    }
    let missing = config::load_file(Path::new("/nonexistent/rules.toml")).unwrap_err();
    assert!(missing.to_string().contains("cannot read"), "{missing}");
}

#[test]
fn toml_and_yaml_examples_say_the_same_thing() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let toml = config::load_file(&root.join("config/rules.example.toml")).expect("toml example");
    let yaml = config::load_file(&root.join("config/rules.example.yaml")).expect("yaml example");
    assert_eq!(toml.rules, yaml.rules);
    assert_eq!(toml.rules.len(), 3);
    let TriggerSource::Sqs(sqs) = &toml.rules[0].triggers[0].source else {
        panic!("first trigger is sqs");
    };
    assert!(sqs.include_in_flight && !sqs.include_delayed);
    assert_eq!(toml.rules[0].cooldown, "5m".parse().unwrap());
}

#[test]
fn defaults_apply_and_rules_override_them_field_by_field() {
    let text = r#"
        [defaults]
        cooldown = "2m"
        max_replicas = 7
        scale_down = { stabilization_window = "1m" }
        [[rules]]
        name = "a"
        target = { kind = "Deployment", name = "a" }
        scale_down = { policies = [{ max_pods = 1, period = "30s" }] }
        triggers = [{ type = "sqs", queue = "a", target_per_replica = 1 }]
        [[rules]]
        name = "b"
        target = { kind = "Deployment", name = "b" }
        cooldown = "9m"
        max_replicas = 3
        triggers = [{ type = "sqs", queue = "b", target_per_replica = 1 }]
    "#;
    let file = config::parse("inline.toml", text, Format::Toml).expect("valid");
    let (a, b) = (&file.rules[0], &file.rules[1]);
    assert_eq!(
        (a.max_replicas, a.cooldown.to_string()),
        (7, "2m".to_string())
    );
    assert_eq!(a.scale_down_window().to_string(), "1m");
    assert_eq!(a.scale_down.policies.len(), 1);
    assert_eq!(
        (b.max_replicas, b.cooldown.to_string()),
        (3, "9m".to_string())
    );
}

fn qscale(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_qscale"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("QSCALE_CONFIG")
        .output()
        .expect("run qscale");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_command_accepts_the_examples() {
    let (code, stdout, _) = qscale(&[
        "check",
        "config/rules.example.toml",
        "config/rules.example.yaml",
    ]);
    assert_eq!(code, 0);
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert!(
        stdout.contains("rules.example.toml: ok, 3 rules"),
        "{stdout}"
    );
}

#[test]
fn check_command_reports_every_error_and_exits_1() {
    let (code, stdout, stderr) = qscale(&[
        "check",
        "config/rules.example.toml",
        "tests/fixtures/many_errors.yaml",
    ]);
    assert_eq!(code, 1);
    assert!(stdout.contains("rules.example.toml: ok"), "{stdout}");
    assert!(stderr.contains("many_errors.yaml: 4 problems"), "{stderr}");
}

#[test]
fn version_and_help() {
    let (code, stdout, _) = qscale(&["--version"]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("qscale "), "{stdout}");
    let (code, stdout, _) = qscale(&["--help"]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("check") && stdout.contains("run"),
        "{stdout}"
    );
}

#[test]
fn checked_in_schema_is_current() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let checked_in =
        std::fs::read_to_string(root.join("config/rules.schema.json")).expect("schema");
    assert!(
        checked_in == config::json_schema(),
        "config/rules.schema.json is stale: run `cargo run -- schema > config/rules.schema.json`"
    );
    let (code, stdout, _) = qscale(&["schema"]);
    assert_eq!(code, 0);
    assert_eq!(stdout, checked_in);
    let yaml = std::fs::read_to_string(root.join("config/rules.example.yaml")).expect("yaml");
    assert!(yaml.starts_with("# yaml-language-server: $schema=./rules.schema.json"));
}

/// The schema accepts both examples and rejects a wrong type, checked by an independent
/// validator (Python's `jsonschema`, installed into .venv by .ci/run).
#[test]
fn schema_validates_the_examples_independently() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python3");
    assert!(python.exists(), "run `bash .ci/run` once to create .venv");
    let script = r#"
import json, sys, tomllib, yaml, jsonschema
schema = json.load(open("config/rules.schema.json"))
jsonschema.validate(tomllib.load(open("config/rules.example.toml", "rb")), schema)
jsonschema.validate(yaml.safe_load(open("config/rules.example.yaml")), schema)
bad = {"rules": [{"name": "x", "target": {"kind": "Deployment", "name": "x"},
                  "max_replicas": "ten", "triggers": []}]}
try:
    jsonschema.validate(bad, schema)
except jsonschema.ValidationError:
    print("ok")
"#;
    let out = Command::new(python)
        .args(["-c", script])
        .current_dir(root)
        .output()
        .expect("python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.trim(),
        "ok",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_command_reports_a_trigger_that_cannot_be_built() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rules.toml");
    std::fs::write(
        &path,
        r#"
[[rules]]
name = "orders"
target = { kind = "Deployment", name = "orders" }
max_replicas = 3
[[rules.triggers]]
type = "prometheus"
server = "http://127.0.0.1:9090"
query = "sum(jobs_waiting)"
target_per_replica = 10
query_parameters = { query = "up" }
"#,
    )
    .expect("write rules");
    let path = path.display().to_string();
    let (code, stdout, stderr) = qscale(&["check", &path]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains("rule \"orders\" (rules[0]): field `triggers.0`")
            && stderr.contains("query_parameters must not set `query`"),
        "{stderr}"
    );
}
