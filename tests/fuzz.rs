//! Fuzz targets on stable Rust (cargo-fuzz needs nightly): the rules-file loader
//! (`qscale::config::parse`, TOML and YAML) and the Prometheus response parser
//! (`qscale::triggers::prometheus::parse_response`).
//!
//! Each target first replays its committed corpus (`tests/fuzz-corpus/<target>/`), then, for a
//! time budget, feeds it inputs made from the corpus (bit and byte flips, insertions, deletions,
//! repeats, splices of two entries, dictionary tokens, interesting numbers) and inputs generated
//! from scratch (random rules files and random query responses, well-formed and not). Any panic
//! fails the test, and so does a broken invariant: an accepted rules file that violates what
//! validation promises or makes `policy::decide` leave `[min, max]`; a parsed value that is not
//! finite, or one that `on_empty` changes when it should not. An input that takes over 10 s is a
//! hang and fails too. (`fuzz_prometheus_error_messages_are_bounded` also requires error
//! messages to stay bounded.)
//!
//! - `QSCALE_FUZZ_SECONDS`: budget per target (default 3; CI runs 60).
//! - `QSCALE_FUZZ_SEED`: the random seed (default: the clock; printed either way).
//! - A failing input is saved under `target/tmp/fuzz-failures/`, and
//!   `QSCALE_FUZZ_REPLAY=<file> cargo test --test fuzz` runs just that input.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};

use qscale::config::{Format, OnEmpty, RulesFile};
use qscale::policy::{self, Memory, Sample, TargetState, Timestamp};
use qscale::triggers::prometheus::parse_response;

/// Longest error message a hostile response may cause (server text is quoted up to 300 bytes).
const MAX_ERROR_LEN: usize = 4096;
/// An input running longer than this is a hang.
const HANG: Duration = Duration::from_secs(10);

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-corpus")
        .join(target)
}

fn budget() -> Duration {
    let seconds = std::env::var("QSCALE_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(3.0);
    Duration::from_secs_f64(seconds.max(0.0))
}

fn seed() -> u64 {
    std::env::var("QSCALE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

/// The corpus of one target, as (file name, bytes), in name order.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut entries: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .filter(|e| e.path().is_file())
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let bytes = std::fs::read(e.path()).expect("read corpus entry");
            (name, bytes)
        })
        .collect();
    entries.sort();
    assert!(!entries.is_empty(), "empty corpus in {}", dir.display());
    entries
}

fn save_failure(target: &str, input: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
    let _ = std::fs::create_dir_all(&dir);
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    input.hash(&mut hasher);
    let path = dir.join(format!("{target}-{:016x}", hasher.finish()));
    let _ = std::fs::write(&path, input);
    path
}

/// Runs `check` on one input, turning a panic into an error.
fn run_one(check: &dyn Fn(&[u8]) -> Result<(), String>, input: &[u8]) -> Result<(), String> {
    match catch_unwind(AssertUnwindSafe(|| check(input))) {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".into());
            Err(format!("panicked: {message}"))
        }
    }
}

/// Fails on the first input that panics, breaks an invariant or hangs.
fn fuzz(
    target: &'static str,
    check: fn(&[u8]) -> Result<(), String>,
    generate: fn(&mut StdRng) -> Vec<u8>,
    dictionary: &[&[u8]],
) {
    let check: &dyn Fn(&[u8]) -> Result<(), String> = &check;
    if let Ok(path) = std::env::var("QSCALE_FUZZ_REPLAY") {
        let input = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        if let Err(error) = run_one(check, &input) {
            panic!("{target}: {path}: {error}");
        }
        return;
    }

    // A watchdog: an input that runs too long is saved and fails the whole run.
    let current: Arc<Mutex<Vec<u8>>> = Arc::default();
    let started_at = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let (current, started_at, done) = (current.clone(), started_at.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(500));
                let began = Duration::from_millis(started_at.load(Ordering::SeqCst));
                if epoch.elapsed().saturating_sub(began) > HANG && !done.load(Ordering::SeqCst) {
                    let input = current.lock().map(|i| i.clone()).unwrap_or_default();
                    let path = save_failure(target, &input);
                    eprintln!(
                        "{target}: an input ran for over {HANG:?} (a hang); saved to {}",
                        path.display()
                    );
                    std::process::exit(101);
                }
            }
        });
    }
    let attempt = |input: &[u8], origin: &str| {
        if let Ok(mut slot) = current.lock() {
            slot.clear();
            slot.extend_from_slice(input);
        }
        started_at.store(epoch.elapsed().as_millis() as u64, Ordering::SeqCst);
        if let Err(error) = run_one(check, input) {
            done.store(true, Ordering::SeqCst);
            let path = save_failure(target, input);
            panic!(
                "{target}: {origin}: {error}\n  input saved to {} (replay: QSCALE_FUZZ_REPLAY={} \
                 cargo test --test fuzz {target})\n  input: {:?}",
                path.display(),
                path.display(),
                String::from_utf8_lossy(&input[..input.len().min(2000)])
            );
        }
    };

    let corpus = corpus(target);
    // Slow entries (the YAML bomb) are mutated less often, so the budget goes to many inputs.
    let mut weights = Vec::with_capacity(corpus.len());
    for (name, bytes) in &corpus {
        let started = Instant::now();
        attempt(bytes, &format!("corpus entry {name}"));
        weights.push(if started.elapsed() > Duration::from_millis(50) {
            1
        } else {
            20
        });
    }

    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let inputs: Vec<Vec<u8>> = corpus.into_iter().map(|(_, b)| b).collect();
    let deadline = Instant::now() + budget();
    let mut runs = 0u64;
    let mut distinct = HashSet::new();
    while Instant::now() < deadline {
        let input = match rng.random_range(0..10) {
            0..=1 => generate(&mut rng),
            _ => mutate(&mut rng, &inputs, &weights, dictionary),
        };
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        input.hash(&mut hasher);
        distinct.insert(hasher.finish());
        attempt(&input, &format!("seed {seed}, run {runs}"));
        runs += 1;
    }
    done.store(true, Ordering::SeqCst);
    eprintln!(
        "{target}: {runs} inputs ({} distinct) in {:?}, seed {seed}: no panic",
        distinct.len(),
        budget()
    );
}

// ---------------------------------------------------------------------------------------------
// Mutations
// ---------------------------------------------------------------------------------------------

const INTERESTING: &[&str] = &[
    "0",
    "-0",
    "1",
    "-1",
    "255",
    "65535",
    "2147483647",
    "-2147483648",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "1e308",
    "1e309",
    "-1e309",
    "5e-324",
    "0.1",
    "NaN",
    "nan",
    ".nan",
    "inf",
    "-inf",
    "+Inf",
    ".inf",
    "0x7fffffff",
    "1_000",
    "\"\"",
];

/// A corpus entry, chosen in proportion to `weights`.
fn choose<'a>(rng: &mut StdRng, corpus: &'a [Vec<u8>], weights: &[u32]) -> &'a Vec<u8> {
    let total: u32 = weights.iter().sum();
    let mut ticket = rng.random_range(0..total.max(1));
    for (entry, weight) in corpus.iter().zip(weights) {
        if ticket < *weight {
            return entry;
        }
        ticket -= weight;
    }
    &corpus[0]
}

fn mutate(rng: &mut StdRng, corpus: &[Vec<u8>], weights: &[u32], dictionary: &[&[u8]]) -> Vec<u8> {
    let mut data = choose(rng, corpus, weights).clone();
    let rounds = 1 + rng.random_range(0..8);
    for _ in 0..rounds {
        let len = data.len();
        match rng.random_range(0..11) {
            0 if len > 0 => {
                let at = rng.random_range(0..len);
                data[at] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let at = rng.random_range(0..len);
                data[at] = rng.random();
            }
            2 => {
                let at = rng.random_range(0..=len);
                let count = rng.random_range(1..16);
                let bytes: Vec<u8> = (0..count).map(|_| rng.random()).collect();
                data.splice(at..at, bytes);
            }
            3 if len > 0 => {
                let from = rng.random_range(0..len);
                let to = (from + rng.random_range(1..64)).min(len);
                data.drain(from..to);
            }
            4 if len > 0 => {
                // Repeat a slice (long lines, deep nesting, many rules).
                let from = rng.random_range(0..len);
                let to = (from + rng.random_range(1..256)).min(len);
                let piece = data[from..to].to_vec();
                let times = rng.random_range(1..8);
                let at = rng.random_range(0..=data.len());
                for _ in 0..times {
                    data.splice(at..at, piece.iter().copied());
                }
            }
            5 => {
                // Splice: the head of this entry and the tail of another.
                let other = choose(rng, corpus, weights);
                let cut = rng.random_range(0..=data.len());
                let other_cut = rng.random_range(0..=other.len());
                data.truncate(cut);
                data.extend_from_slice(&other[other_cut..]);
            }
            6 | 7 => {
                let token = dictionary[rng.random_range(0..dictionary.len())];
                let at = rng.random_range(0..=len);
                data.splice(at..at, token.iter().copied());
            }
            8 => {
                // Replace a run of digits by an interesting number.
                let digits: Vec<usize> = (0..len).filter(|i| data[*i].is_ascii_digit()).collect();
                if let Some(&start) = digits.get(rng.random_range(0..digits.len().max(1))) {
                    let mut end = start;
                    while end < len && (data[end].is_ascii_digit() || data[end] == b'.') {
                        end += 1;
                    }
                    let number = INTERESTING[rng.random_range(0..INTERESTING.len())];
                    data.splice(start..end, number.bytes());
                }
            }
            9 if len > 0 => {
                data.truncate(rng.random_range(0..len));
            }
            _ => {
                // Swap two lines.
                let text = String::from_utf8_lossy(&data).into_owned();
                let mut lines: Vec<&str> = text.split('\n').collect();
                if lines.len() > 1 {
                    let a = rng.random_range(0..lines.len());
                    let b = rng.random_range(0..lines.len());
                    lines.swap(a, b);
                    data = lines.join("\n").into_bytes();
                }
            }
        }
        if data.len() > 256 * 1024 {
            data.truncate(256 * 1024);
        }
    }
    data
}

// ---------------------------------------------------------------------------------------------
// Random documents
// ---------------------------------------------------------------------------------------------

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

fn random_string(rng: &mut StdRng) -> String {
    let choices = [
        "",
        "a",
        "orders-worker",
        "Deployment",
        "StatefulSet",
        "apps/v1",
        "example.com/v1",
        "30s",
        "5m",
        "1h 30m",
        "-5s",
        "1.5h",
        "0",
        "18446744073709551615s",
        "99999999999999999999999h",
        "µs",
        "10 parsecs",
        "http://127.0.0.1:9090",
        "https://sqs.us-east-1.amazonaws.com/1/q",
        "ftp://x",
        "http://user:pass@host",
        "sum(rate(x[5m]))",
        "sqs",
        "prometheus",
        "static",
        "keep",
        "at_least",
        "max",
        "min",
        "disabled",
        "error",
        "zero",
        "é",
        "\u{0}",
        "\u{202e}",
        "a\nb",
        "name with spaces",
    ];
    if rng.random_bool(0.1) {
        "x".repeat(rng.random_range(60..80))
    } else {
        pick(rng, &choices).to_string()
    }
}

fn random_scalar(rng: &mut StdRng) -> Value {
    match rng.random_range(0..7) {
        0 => json!(rng.random_range(0..20)),
        1 => json!(*pick(
            rng,
            &[0i64, -1, 1, i64::MAX, i64::MIN, 4294967295, 4294967296]
        )),
        2 => json!(*pick(rng, &[0.0f64, 0.5, -0.5, 1e300, -1e300, 1e-300, 0.1])),
        3 => json!(rng.random_bool(0.5)),
        4 => Value::Null,
        _ => json!(random_string(rng)),
    }
}

fn random_value(rng: &mut StdRng, depth: u32) -> Value {
    if depth > 4 || rng.random_bool(0.6) {
        return random_scalar(rng);
    }
    if rng.random_bool(0.5) {
        Value::Array(
            (0..rng.random_range(0..4))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        )
    } else {
        let mut map = Map::new();
        for _ in 0..rng.random_range(0..4) {
            map.insert(random_string(rng), random_value(rng, depth + 1));
        }
        Value::Object(map)
    }
}

/// A value for `field`, usually of a plausible type and sometimes anything at all.
fn field_value(rng: &mut StdRng, field: &str) -> Value {
    if rng.random_bool(0.15) {
        return random_value(rng, 2);
    }
    match field {
        "min_replicas" | "max_replicas" | "after_failures" | "replicas" | "max_pods"
        | "max_percent" => json!(*pick(rng, &[0i64, 1, 2, 3, 10, 100, 4294967295, -1])),
        "tolerance" | "target_per_replica" | "activation" => {
            json!(*pick(
                rng,
                &[0.0f64, 0.1, 0.99, 1.0, 5.0, 1e-9, 1e300, -1.0]
            ))
        }
        "poll_interval"
        | "cooldown"
        | "initial_cooldown"
        | "stabilization_window"
        | "period"
        | "timeout" => match rng.random_range(0..3) {
            0 => json!(*pick(rng, &[0i64, 1, 15, 300, i64::MAX])),
            _ => json!(*pick(
                rng,
                &[
                    "1s",
                    "15s",
                    "5m",
                    "1h 30m",
                    "0s",
                    "500ms",
                    "-1s",
                    "300000000years",
                    "x"
                ]
            )),
        },
        "paused" | "include_in_flight" | "include_delayed" | "insecure_skip_verify" => {
            json!(rng.random_bool(0.5))
        }
        "select" => json!(*pick(rng, &["max", "min", "disabled", "avg"])),
        "mode" => json!(*pick(rng, &["static", "keep", "at_least", "other"])),
        "on_empty" => json!(*pick(rng, &["error", "zero", "one"])),
        "type" => json!(*pick(rng, &["sqs", "prometheus", "kafka"])),
        "kind" => json!(*pick(rng, &["Deployment", "StatefulSet", "Worker", ""])),
        "api_version" => json!(*pick(rng, &["apps/v1", "example.com/v1", "v1", ""])),
        "server" | "endpoint" => json!(*pick(
            rng,
            &[
                "http://127.0.0.1:9090",
                "https://prom",
                "ftp://x",
                "http://u:p@h",
                "nope"
            ]
        )),
        _ => json!(random_string(rng)),
    }
}

fn random_behavior(rng: &mut StdRng) -> Value {
    let mut behavior = Map::new();
    for field in ["stabilization_window", "select"] {
        if rng.random_bool(0.5) {
            behavior.insert(field.into(), field_value(rng, field));
        }
    }
    if rng.random_bool(0.6) {
        let policies: Vec<Value> = (0..rng.random_range(0..3))
            .map(|_| {
                let mut policy = Map::new();
                for field in ["max_pods", "max_percent", "period"] {
                    if rng.random_bool(0.7) {
                        policy.insert(field.into(), field_value(rng, field));
                    }
                }
                Value::Object(policy)
            })
            .collect();
        behavior.insert("policies".into(), Value::Array(policies));
    }
    Value::Object(behavior)
}

fn random_trigger(rng: &mut StdRng) -> Value {
    let sqs = rng.random_bool(0.5);
    let mut trigger = Map::new();
    trigger.insert("type".into(), json!(if sqs { "sqs" } else { "prometheus" }));
    let common = ["name", "target_per_replica", "activation", "timeout"];
    let own: &[&str] = if sqs {
        &[
            "queue",
            "region",
            "include_in_flight",
            "include_delayed",
            "role_arn",
            "external_id",
            "endpoint",
        ]
    } else {
        &[
            "server",
            "query",
            "on_empty",
            "namespace",
            "bearer_token_file",
        ]
    };
    for field in common.iter().chain(own) {
        let required = matches!(*field, "target_per_replica" | "queue" | "server" | "query");
        if required || rng.random_bool(0.4) {
            trigger.insert(field.to_string(), field_value(rng, field));
        }
    }
    if !sqs && rng.random_bool(0.2) {
        trigger.insert(
            "basic_auth".into(),
            json!({ "username": random_string(rng), "password_env": "P" }),
        );
    }
    if rng.random_bool(0.1) {
        // A field of the other type, or an unknown one.
        trigger.insert(
            pick(rng, &["queue", "server", "bogus"]).to_string(),
            random_scalar(rng),
        );
    }
    Value::Object(trigger)
}

fn random_rule(rng: &mut StdRng, index: usize) -> Value {
    let mut rule = Map::new();
    rule.insert(
        "name".into(),
        if rng.random_bool(0.85) {
            json!(format!("rule-{index}"))
        } else {
            json!(random_string(rng))
        },
    );
    let kind = field_value(rng, "kind");
    let mut target = Map::new();
    target.insert("kind".into(), kind);
    target.insert("name".into(), json!(format!("target-{index}")));
    if rng.random_bool(0.3) {
        target.insert("api_version".into(), field_value(rng, "api_version"));
    }
    rule.insert("target".into(), Value::Object(target));
    for field in [
        "min_replicas",
        "max_replicas",
        "poll_interval",
        "cooldown",
        "initial_cooldown",
        "tolerance",
        "paused",
    ] {
        if field == "max_replicas" || rng.random_bool(0.4) {
            rule.insert(field.into(), field_value(rng, field));
        }
    }
    for direction in ["scale_up", "scale_down"] {
        if rng.random_bool(0.3) {
            rule.insert(direction.into(), random_behavior(rng));
        }
    }
    if rng.random_bool(0.3) {
        let mut fallback = Map::new();
        for field in ["after_failures", "replicas", "mode"] {
            if rng.random_bool(0.8) {
                fallback.insert(field.into(), field_value(rng, field));
            }
        }
        rule.insert("fallback".into(), Value::Object(fallback));
    }
    let triggers: Vec<Value> = (0..rng.random_range(0..4))
        .map(|_| random_trigger(rng))
        .collect();
    rule.insert("triggers".into(), Value::Array(triggers));
    Value::Object(rule)
}

/// YAML in block style; strings double-quoted (JSON escapes are YAML escapes).
fn to_yaml(value: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, item) in map {
                out.push_str(&format!("{pad}{}:", Value::String(key.clone())));
                match item {
                    Value::Object(m) if !m.is_empty() => {
                        out.push('\n');
                        to_yaml(item, indent + 2, out);
                    }
                    Value::Array(a) if !a.is_empty() => {
                        out.push('\n');
                        to_yaml(item, indent + 2, out);
                    }
                    _ => {
                        out.push(' ');
                        out.push_str(&item.to_string());
                        out.push('\n');
                    }
                }
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for item in items {
                out.push_str(&format!("{pad}-"));
                match item {
                    Value::Object(m) if !m.is_empty() => {
                        out.push('\n');
                        to_yaml(item, indent + 2, out);
                    }
                    Value::Array(a) if !a.is_empty() => {
                        out.push('\n');
                        to_yaml(item, indent + 2, out);
                    }
                    _ => {
                        out.push(' ');
                        out.push_str(&item.to_string());
                        out.push('\n');
                    }
                }
            }
        }
        other => {
            out.push_str(&pad);
            out.push_str(&other.to_string());
            out.push('\n');
        }
    }
}

/// Drops JSON nulls, which TOML cannot say.
fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .filter(|v| !v.is_null())
                .map(without_nulls)
                .collect(),
        ),
        other => other.clone(),
    }
}

fn generate_rules(rng: &mut StdRng) -> Vec<u8> {
    let mut document = Map::new();
    if rng.random_bool(0.3) {
        let mut defaults = Map::new();
        for field in ["min_replicas", "max_replicas", "cooldown", "poll_interval"] {
            if rng.random_bool(0.5) {
                defaults.insert(field.into(), field_value(rng, field));
            }
        }
        if rng.random_bool(0.3) {
            defaults.insert("scale_down".into(), random_behavior(rng));
        }
        document.insert("defaults".into(), Value::Object(defaults));
    }
    let rules: Vec<Value> = (0..rng.random_range(0..5))
        .map(|i| random_rule(rng, i))
        .collect();
    document.insert("rules".into(), Value::Array(rules));
    if rng.random_bool(0.05) {
        document.insert(random_string(rng), random_value(rng, 1));
    }
    let document = Value::Object(document);
    let text = match rng.random_range(0..3) {
        0 => toml::to_string(&without_nulls(&document)).unwrap_or_else(|_| document.to_string()),
        1 => {
            let mut yaml = String::new();
            to_yaml(&document, 0, &mut yaml);
            yaml
        }
        // JSON is YAML too.
        _ => document.to_string(),
    };
    text.into_bytes()
}

fn random_sample_value(rng: &mut StdRng) -> Value {
    json!(*pick(
        rng,
        &[
            "0", "1", "42", "-3", "1.5e3", "NaN", "+Inf", "-Inf", "Inf", "1e309", " 7 ", "",
            "0x10", "seven", "1_000", "-0", "4.9e-324",
        ]
    ))
}

fn generate_response(rng: &mut StdRng) -> Vec<u8> {
    let sample = |rng: &mut StdRng| -> Value {
        let mut sample = Map::new();
        if rng.random_bool(0.9) {
            let mut metric = Map::new();
            for _ in 0..rng.random_range(0..3) {
                metric.insert(random_string(rng), random_scalar(rng));
            }
            sample.insert("metric".into(), Value::Object(metric));
        }
        match rng.random_range(0..6) {
            0 => {
                sample.insert("histogram".into(), json!([1, { "count": "3" }]));
            }
            1 => {
                sample.insert("value".into(), random_value(rng, 2));
            }
            2 => {}
            _ => {
                sample.insert(
                    "value".into(),
                    json!([random_scalar(rng), random_sample_value(rng)]),
                );
            }
        }
        Value::Object(sample)
    };
    let result_type = pick(rng, &["vector", "scalar", "matrix", "string", "weird", ""]).to_string();
    let result = match result_type.as_str() {
        "vector" => Value::Array(
            (0..*pick(rng, &[0usize, 1, 1, 1, 2, 5]))
                .map(|_| sample(rng))
                .collect(),
        ),
        "scalar" | "string" => json!([random_scalar(rng), random_sample_value(rng)]),
        _ => random_value(rng, 1),
    };
    let mut envelope = Map::new();
    envelope.insert(
        "status".into(),
        json!(*pick(
            rng,
            &["success", "success", "success", "error", "", "SUCCESS"]
        )),
    );
    if rng.random_bool(0.9) {
        envelope.insert(
            "data".into(),
            json!({ "resultType": result_type, "result": result }),
        );
    }
    if rng.random_bool(0.2) {
        envelope.insert("errorType".into(), random_scalar(rng));
        envelope.insert("error".into(), json!("x".repeat(rng.random_range(0..2000))));
    }
    if rng.random_bool(0.1) {
        envelope.insert("warnings".into(), random_value(rng, 1));
    }
    let text = Value::Object(envelope).to_string();
    if rng.random_bool(0.2) {
        let cut = rng.random_range(0..=text.len());
        text.as_bytes()[..cut].to_vec()
    } else {
        text.into_bytes()
    }
}

// ---------------------------------------------------------------------------------------------
// Targets and their invariants
// ---------------------------------------------------------------------------------------------

fn check_accepted(file: &RulesFile) -> Result<(), String> {
    if file.rules.is_empty() {
        return Err("accepted a file without rules".into());
    }
    let mut names = HashSet::new();
    for rule in &file.rules {
        let name = &rule.name;
        let ok_name = !name.is_empty()
            && name.len() <= 63
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok_name || !names.insert(name.clone()) {
            return Err(format!(
                "accepted rule name {name:?} (invalid or duplicate)"
            ));
        }
        if rule.max_replicas == 0 || rule.min_replicas > rule.max_replicas {
            return Err(format!(
                "{name}: accepted bounds [{}, {}]",
                rule.min_replicas, rule.max_replicas
            ));
        }
        if rule.poll_interval.get().is_zero() {
            return Err(format!("{name}: accepted a zero poll_interval"));
        }
        if !(rule.tolerance.is_finite() && (0.0..1.0).contains(&rule.tolerance)) {
            return Err(format!("{name}: accepted tolerance {}", rule.tolerance));
        }
        if rule.triggers.is_empty() {
            return Err(format!("{name}: accepted a rule without triggers"));
        }
        for trigger in &rule.triggers {
            if !(trigger.target_per_replica.is_finite() && trigger.target_per_replica > 0.0) {
                return Err(format!(
                    "{name}: accepted target_per_replica {}",
                    trigger.target_per_replica
                ));
            }
            if !(trigger.activation.is_finite() && trigger.activation >= 0.0) {
                return Err(format!(
                    "{name}: accepted activation {}",
                    trigger.activation
                ));
            }
        }
        if let Some(fallback) = &rule.fallback {
            if fallback.after_failures == 0
                || fallback.replicas < rule.min_replicas
                || fallback.replicas > rule.max_replicas
            {
                return Err(format!("{name}: accepted fallback {fallback:?}"));
            }
        }
        check_decisions(rule)?;
    }
    let _ = qscale::config::summary(file);
    Ok(())
}

/// An accepted rule never makes `decide` leave `[min, max]` (unless the target is paused,
/// where `qscale.io/paused-replicas` holds whatever it says), whatever the samples and the
/// current count.
fn check_decisions(rule: &qscale::config::Rule) -> Result<(), String> {
    let values = [0.0, 0.4, 1.0, 7.5, 1e6, 1e300, f64::MAX];
    let currents = [0, 1, rule.min_replicas, rule.max_replicas, u32::MAX];
    let start = Timestamp::from_secs(1_700_000_000);
    for (round, value) in values.iter().enumerate() {
        for current in currents {
            let mut memory = Memory::default();
            let mut current = current;
            for step in 0..4u64 {
                let samples: Vec<Sample> = rule
                    .triggers
                    .iter()
                    .enumerate()
                    .map(|(i, _)| {
                        if (round + i + step as usize) % 5 == 4 {
                            Sample::Failed
                        } else {
                            Sample::Value(*value)
                        }
                    })
                    .collect();
                let state = TargetState {
                    current_replicas: current,
                    paused: false,
                    paused_replicas: None,
                    ready_replicas: None,
                };
                let now = start.plus(Duration::from_secs(step * 3600));
                let decision = policy::decide(rule, &samples, &state, &memory, now);
                let desired = decision.desired_replicas;
                if !rule.paused && (desired < rule.min_replicas || desired > rule.max_replicas) {
                    return Err(format!(
                        "{}: decide gave {desired} outside [{}, {}] (value {value}, current \
                         {current})",
                        rule.name, rule.min_replicas, rule.max_replicas
                    ));
                }
                memory = decision.memory;
                current = desired;
            }
        }
    }
    Ok(())
}

fn rules_target(input: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(input);
    for format in [Format::Toml, Format::Yaml] {
        match qscale::config::parse("fuzz", &text, format) {
            Ok(file) => check_accepted(&file).map_err(|e| format!("{format:?}: {e}"))?,
            Err(error) => {
                if error.problems.is_empty() {
                    return Err(format!("{format:?}: an error without a problem"));
                }
                let _ = error.to_string();
            }
        }
    }
    Ok(())
}

fn prometheus_target(input: &[u8]) -> Result<(), String> {
    let strict = parse_response(input, OnEmpty::Error);
    let lenient = parse_response(input, OnEmpty::Zero);
    for result in [&strict, &lenient] {
        match result {
            Ok(value) if !value.is_finite() => {
                return Err(format!("parsed a non-finite value {value}"));
            }
            Err(error) => {
                let _ = error.to_string();
            }
            _ => {}
        }
    }
    match (&strict, &lenient) {
        (Ok(a), Ok(b)) if a != b => Err(format!("on_empty changed a value: {a} vs {b}")),
        (Ok(_), Err(e)) => Err(format!("on_empty = zero rejected what error accepts: {e}")),
        (Err(qscale::triggers::TriggerError::Empty(_)), Ok(zero)) if *zero != 0.0 => Err(format!(
            "an empty result read as {zero} with on_empty = zero"
        )),
        (Err(qscale::triggers::TriggerError::Empty(_)), Err(e)) => Err(format!(
            "on_empty = zero did not read an empty result as 0: {e}"
        )),
        _ => Ok(()),
    }
}

/// [`prometheus_target`], and every error message is bounded, whatever the server sent.
fn prometheus_bounded_target(input: &[u8]) -> Result<(), String> {
    prometheus_target(input)?;
    for on_empty in [OnEmpty::Error, OnEmpty::Zero] {
        if let Err(error) = parse_response(input, on_empty) {
            let length = error.to_string().len();
            if length > MAX_ERROR_LEN {
                return Err(format!(
                    "a {length}-byte error message: server text is not bounded"
                ));
            }
        }
    }
    Ok(())
}

const RULES_DICTIONARY: &[&[u8]] = &[
    b"[[rules]]\n",
    b"[[rules.triggers]]\n",
    b"[defaults]\n",
    b"rules:\n  - ",
    b"triggers:\n      - ",
    b"name = ",
    b"name: ",
    b"target = { kind = \"Deployment\", name = \"x\" }\n",
    b"max_replicas = ",
    b"min_replicas = ",
    b"poll_interval = ",
    b"cooldown = \"",
    b"initial_cooldown: ",
    b"tolerance = ",
    b"scale_down = { policies = [{ max_pods = 1, period = \"1m\" }] }\n",
    b"select = \"disabled\"",
    b"fallback = { after_failures = 1, replicas = 2, mode = \"at_least\" }\n",
    b"type = \"sqs\"\nqueue = \"q\"\n",
    b"type: prometheus\n",
    b"target_per_replica = ",
    b"activation: ",
    b"timeout = ",
    b"on_empty = \"zero\"",
    b"basic_auth = { username = \"u\", password_file = \"/p\" }",
    b"&a ",
    b"*a",
    b"<<: ",
    b"!!binary ",
    b"---\n",
    b"...\n",
    b"\"\\u0000\"",
    b"'",
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b"=",
    b":",
    b"\n",
    b"\t",
    b"#",
    b"\xff\xfe",
];

const PROMETHEUS_DICTIONARY: &[&[u8]] = &[
    b"{\"status\":\"success\",\"data\":{\"resultType\":\"vector\",\"result\":[",
    b"{\"metric\":{},\"value\":[1,\"",
    b"\"]}",
    b"\"histogram\":[1,{}]",
    b"\"resultType\":\"scalar\"",
    b"\"resultType\":\"matrix\"",
    b"\"status\":\"error\"",
    b"\"errorType\":\"bad_data\"",
    b"\"NaN\"",
    b"\"+Inf\"",
    b"\"-Inf\"",
    b"null",
    b"true",
    b"[]",
    b"{}",
    b"\\u0000",
    b"\\ud800",
    b"\"",
    b",",
    b":",
    b"[",
    b"]",
    b"{",
    b"}",
    b"1e999",
    b"-0",
];

#[test]
fn fuzz_rules_loader() {
    fuzz("rules", rules_target, generate_rules, RULES_DICTIONARY);
}

#[test]
fn fuzz_prometheus_response_parser() {
    fuzz(
        "prometheus",
        prometheus_target,
        generate_response,
        PROMETHEUS_DICTIONARY,
    );
}

/// The same target, also requiring bounded error messages (response.rs promises that "a huge
/// or hostile body cannot flood the logs"). The corpus holds two reproducers
/// (`regression-huge-*.json`), so this fails at once while the bug is there.
#[test]
fn fuzz_prometheus_error_messages_are_bounded() {
    fuzz(
        "prometheus",
        prometheus_bounded_target,
        generate_response,
        PROMETHEUS_DICTIONARY,
    );
}
