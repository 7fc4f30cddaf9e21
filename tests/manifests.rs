//! The shipped manifests (`manifests/`) and the Dockerfile, checked against what qscale does.
//!
//! The manifests are rendered with `kubectl kustomize` (kubectl from `$KUBECTL` or `PATH`); on a
//! machine without kubectl the base's YAML files are read directly instead, and the checks that
//! need a render of the example overlay say so and pass.
//!
//! - The Role grants exactly the allow-list below: nothing cluster-wide, no `*`, no write to a
//!   whole workload, names wherever Kubernetes can restrict by name.
//! - The Deployment is locked down (non-root, read-only root filesystem, no capabilities,
//!   seccomp) and passes only flags that `qscale run --help` lists.
//! - The rules in the ConfigMaps pass `qscale check`.
//! - The Role is also enough: the real `qscale run`, with the Deployment's args and env, scales
//!   a Deployment from an SQS queue (moto) against the fake API server enforcing the Role.

use std::collections::{BTreeMap, BTreeSet};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::{json, Value};

#[path = "support/mod.rs"]
mod support;

use support::fake_kube::FakeKube;
use support::moto::Moto;
use support::rbac::RoleCheck;

const QSCALE: &str = env!("CARGO_BIN_EXE_qscale");

/// The names the agent is configured with (and the Role grants by name).
const RULES_CONFIG_MAP: &str = "qscale-rules";
const RULES_KEY: &str = "rules.yaml";
const STATE_CONFIG_MAP: &str = "qscale-state";
const LEASE: &str = "qscale";
const NONROOT_UID: i64 = 65532;

/// Everything qscale may do, as (API group, resource, verbs, resource names); no names means
/// any name. Nothing else may be granted, and all of it must be.
const ALLOWED: &[(&str, &str, &[&str], &[&str])] = &[
    // Targets: read the workloads, write replicas through /scale only.
    ("apps", "deployments", &["get", "list", "watch"], &[]),
    ("apps", "statefulsets", &["get", "list", "watch"], &[]),
    ("apps", "deployments/scale", &["get", "patch"], &[]),
    ("apps", "statefulsets/scale", &["get", "patch"], &[]),
    // The HPA guard.
    (
        "autoscaling",
        "horizontalpodautoscalers",
        &["get", "list", "watch"],
        &[],
    ),
    // Events (events.k8s.io only: that is the API qscale uses).
    ("events.k8s.io", "events", &["create", "patch"], &[]),
    // Rules (read, watched) and state (read, written), by name; create cannot be restricted by
    // name in Kubernetes, and the agent creates the state ConfigMap when it is missing.
    (
        "",
        "configmaps",
        &["get", "list", "watch"],
        &[RULES_CONFIG_MAP],
    ),
    ("", "configmaps", &["get", "patch"], &[STATE_CONFIG_MAP]),
    ("", "configmaps", &["create"], &[]),
    // Leader election: its Lease by name, created by the first replica.
    ("coordination.k8s.io", "leases", &["get", "patch"], &[LEASE]),
    ("coordination.k8s.io", "leases", &["create"], &[]),
];

/// One permission: a verb on a resource of a group, for one name or (None) for any.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Grant {
    group: String,
    resource: String,
    verb: String,
    name: Option<String>,
}

impl std::fmt::Display for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        let name = self.name.as_deref().unwrap_or("*any*");
        write!(f, "{} {group}/{} name={name}", self.verb, self.resource)
    }
}

fn allowed_grants() -> BTreeSet<Grant> {
    let mut grants = BTreeSet::new();
    for (group, resource, verbs, names) in ALLOWED {
        let names: Vec<Option<String>> = if names.is_empty() {
            vec![None]
        } else {
            names.iter().map(|n| Some(n.to_string())).collect()
        };
        for verb in *verbs {
            for name in &names {
                grants.insert(Grant {
                    group: group.to_string(),
                    resource: resource.to_string(),
                    verb: verb.to_string(),
                    name: name.clone(),
                });
            }
        }
    }
    grants
}

// ---------------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------------

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn kubectl() -> String {
    std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".to_string())
}

/// `kubectl kustomize DIR` as YAML, or None when kubectl is not installed. A kustomization that
/// does not render is a test failure, not a skip.
fn kustomize(dir: &Path) -> Option<String> {
    let output = match Command::new(kubectl()).arg("kustomize").arg(dir).output() {
        Ok(output) => output,
        Err(e) if e.kind() == ErrorKind::NotFound => return None,
        Err(e) => panic!("cannot run {}: {e}", kubectl()),
    };
    assert!(
        output.status.success(),
        "kubectl kustomize {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    Some(String::from_utf8(output.stdout).expect("kustomize output is UTF-8"))
}

fn parse_documents(yaml: &str, origin: &str) -> Vec<Value> {
    let documents: Vec<Value> = serde_saphyr::from_multiple(yaml)
        .unwrap_or_else(|e| panic!("{origin} is not valid YAML: {e}"));
    documents.into_iter().filter(|doc| !doc.is_null()).collect()
}

/// The base, as it is applied.
struct Manifests {
    objects: Vec<Value>,
    /// The rules the qscale-rules ConfigMap carries.
    rules_yaml: String,
}

fn base() -> &'static Manifests {
    static BASE: OnceLock<Manifests> = OnceLock::new();
    BASE.get_or_init(|| {
        let dir = repo().join("manifests");
        match kustomize(&dir) {
            Some(yaml) => {
                let objects = parse_documents(&yaml, "kubectl kustomize manifests/");
                let config_map = find(&objects, "ConfigMap", RULES_CONFIG_MAP);
                let rules_yaml = config_map["data"][RULES_KEY]
                    .as_str()
                    .unwrap_or_else(|| panic!("ConfigMap {RULES_CONFIG_MAP} has no {RULES_KEY}"))
                    .to_string();
                Manifests {
                    objects,
                    rules_yaml,
                }
            }
            None => {
                eprintln!(
                    "note: {} not found; reading manifests/base/*.yaml without kustomize",
                    kubectl()
                );
                read_base_files()
            }
        }
    })
}

/// The base's resources straight from their files (the ConfigMap is generated by kustomize, so
/// its rules file is read as is).
fn read_base_files() -> Manifests {
    let dir = repo().join("manifests/base");
    let kustomization = read(&dir.join("kustomization.yaml"));
    let kustomization: Value = serde_saphyr::from_str(&kustomization).expect("kustomization.yaml");
    let mut objects = Vec::new();
    for resource in kustomization["resources"].as_array().expect("resources") {
        let file = resource.as_str().expect("a resource path");
        let path = dir.join(file);
        objects.extend(parse_documents(&read(&path), &path.display().to_string()));
    }
    Manifests {
        objects,
        rules_yaml: read(&dir.join(RULES_KEY)),
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn kind_of(object: &Value) -> &str {
    object["kind"].as_str().unwrap_or_default()
}

fn name_of(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let mut matching = objects
        .iter()
        .filter(|o| kind_of(o) == kind && name_of(o) == name);
    let found = matching
        .next()
        .unwrap_or_else(|| panic!("no {kind} named {name} in the manifests"));
    assert!(matching.next().is_none(), "two {kind}s named {name}");
    found
}

/// `object` at a JSON pointer (`/spec/template/spec`), or Null.
fn at<'a>(object: &'a Value, pointer: &str) -> &'a Value {
    static NULL: Value = Value::Null;
    object.pointer(pointer).unwrap_or(&NULL)
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|item| item.as_str().expect("a string").to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn string_map(value: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(value.clone()).unwrap_or_default()
}

fn deployment(objects: &[Value]) -> &Value {
    find(objects, "Deployment", "qscale")
}

fn container(deployment: &Value) -> &Value {
    let containers = at(deployment, "/spec/template/spec/containers");
    let containers = containers.as_array().expect("containers");
    assert_eq!(containers.len(), 1, "one container");
    &containers[0]
}

/// The container's args as (flag, value) pairs after the `run` subcommand, in order.
fn run_flags(container: &Value) -> Vec<(String, Option<String>)> {
    let args = strings(&container["args"]);
    assert_eq!(
        args.first().map(String::as_str),
        Some("run"),
        "args start with the run subcommand: {args:?}"
    );
    let mut flags: Vec<(String, Option<String>)> = Vec::new();
    for arg in &args[1..] {
        if arg.starts_with("--") {
            match arg.split_once('=') {
                Some((flag, value)) => flags.push((flag.to_string(), Some(value.to_string()))),
                None => flags.push((arg.clone(), None)),
            }
        } else {
            let last = flags.last_mut().expect("a value follows a flag");
            assert!(last.1.is_none(), "two values for {}: {args:?}", last.0);
            last.1 = Some(arg.clone());
        }
    }
    flags
}

fn flag_value<'a>(flags: &'a [(String, Option<String>)], flag: &str) -> Option<&'a str> {
    flags
        .iter()
        .find(|(f, _)| f == flag)
        .and_then(|(_, v)| v.as_deref())
}

// ---------------------------------------------------------------------------------------------
// RBAC
// ---------------------------------------------------------------------------------------------

const RULE_FIELDS: &[&str] = &["apiGroups", "resources", "verbs", "resourceNames"];

#[test]
fn role_grants_exactly_the_allow_list_and_nothing_cluster_wide() {
    let objects = &base().objects;
    for object in objects {
        let kind = kind_of(object);
        assert!(
            kind != "ClusterRole" && kind != "ClusterRoleBinding",
            "nothing cluster-wide: found {kind} {}",
            name_of(object)
        );
    }
    let roles: Vec<&Value> = objects.iter().filter(|o| kind_of(o) == "Role").collect();
    assert_eq!(roles.len(), 1, "exactly one Role");
    let rules = roles[0]["rules"].as_array().expect("Role rules");

    let mut granted = BTreeSet::new();
    for (index, rule) in rules.iter().enumerate() {
        let context = format!("Role rule {index}: {rule}");
        for field in rule.as_object().expect("a rule is a map").keys() {
            assert!(
                RULE_FIELDS.contains(&field.as_str()),
                "{context}: unexpected field {field} (nonResourceURLs are cluster-scoped)"
            );
        }
        let groups = strings(&rule["apiGroups"]);
        let resources = strings(&rule["resources"]);
        let verbs = strings(&rule["verbs"]);
        let names = strings(&rule["resourceNames"]);
        assert!(!groups.is_empty(), "{context}: no apiGroups");
        assert!(!resources.is_empty(), "{context}: no resources");
        assert!(!verbs.is_empty(), "{context}: no verbs");
        for item in groups.iter().chain(&resources).chain(&verbs).chain(&names) {
            assert!(!item.contains('*'), "{context}: wildcard {item:?}");
        }
        let names: Vec<Option<String>> = if names.is_empty() {
            vec![None]
        } else {
            names.into_iter().map(Some).collect()
        };
        for group in &groups {
            for resource in &resources {
                for verb in &verbs {
                    for name in &names {
                        granted.insert(Grant {
                            group: group.clone(),
                            resource: resource.clone(),
                            verb: verb.clone(),
                            name: name.clone(),
                        });
                    }
                }
            }
        }
    }

    for grant in &granted {
        let workload = matches!(grant.resource.as_str(), "deployments" | "statefulsets");
        let writes = matches!(
            grant.verb.as_str(),
            "update" | "patch" | "delete" | "create" | "deletecollection"
        );
        assert!(
            !(workload && writes),
            "the workloads themselves are read-only (replicas go through /scale): {grant}"
        );
    }
    let allowed = allowed_grants();
    let extra: Vec<String> = granted.difference(&allowed).map(Grant::to_string).collect();
    let missing: Vec<String> = allowed.difference(&granted).map(Grant::to_string).collect();
    assert!(
        extra.is_empty(),
        "the Role grants more than qscale uses:\n  {}",
        extra.join("\n  ")
    );
    assert!(
        missing.is_empty(),
        "the Role lacks what qscale uses:\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn role_binding_is_namespaced_and_binds_the_role_to_the_service_account() {
    let objects = &base().objects;
    find(objects, "ServiceAccount", "qscale");
    let binding = find(objects, "RoleBinding", "qscale");
    assert_eq!(binding["roleRef"]["kind"], "Role");
    assert_eq!(binding["roleRef"]["name"], "qscale");
    assert_eq!(binding["roleRef"]["apiGroup"], "rbac.authorization.k8s.io");
    let subjects = binding["subjects"].as_array().expect("subjects");
    assert_eq!(subjects.len(), 1, "{subjects:?}");
    assert_eq!(subjects[0]["kind"], "ServiceAccount");
    assert_eq!(subjects[0]["name"], "qscale");

    let deployment = deployment(objects);
    assert_eq!(
        at(deployment, "/spec/template/spec/serviceAccountName"),
        "qscale"
    );
    // The base leaves the namespace to the overlay (or `kubectl apply -n`).
    for object in objects {
        assert!(
            object["metadata"].get("namespace").is_none(),
            "{} {} pins a namespace in the base",
            kind_of(object),
            name_of(object)
        );
    }
}

#[test]
fn the_names_granted_are_the_names_the_agent_uses() {
    let flags = run_flags(container(deployment(&base().objects)));
    let config_map = flag_value(&flags, "--config-map").expect("--config-map");
    assert_eq!(config_map, format!("{RULES_CONFIG_MAP}/{RULES_KEY}"));
    assert_eq!(
        flag_value(&flags, "--state-config-map"),
        Some(STATE_CONFIG_MAP)
    );
    assert_eq!(flag_value(&flags, "--lease-name"), Some(LEASE));
    assert!(
        flags.iter().any(|(f, _)| f == "--leader-elect"),
        "{flags:?}"
    );
    find(&base().objects, "ConfigMap", RULES_CONFIG_MAP);
}

// ---------------------------------------------------------------------------------------------
// The Deployment
// ---------------------------------------------------------------------------------------------

#[test]
fn deployment_runs_locked_down() {
    let deployment = deployment(&base().objects);
    assert_eq!(
        deployment["spec"]["replicas"], 2,
        "two replicas, one leader"
    );
    let pod = at(deployment, "/spec/template/spec");
    let pod_security = &pod["securityContext"];
    assert_eq!(pod_security["runAsNonRoot"], true);
    assert_eq!(pod_security["seccompProfile"]["type"], "RuntimeDefault");
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        assert!(pod.get(host).is_none(), "{host}");
    }

    let container = container(deployment);
    let security = &container["securityContext"];
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["runAsUser"], NONROOT_UID);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_ne!(security["privileged"], true);
    assert_eq!(strings(&security["capabilities"]["drop"]), vec!["ALL"]);
    assert!(security["capabilities"].get("add").is_none());
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");

    assert_eq!(at(container, "/livenessProbe/httpGet/path"), "/healthz");
    assert_eq!(at(container, "/readinessProbe/httpGet/path"), "/readyz");
    let ports = container["ports"].as_array().expect("ports");
    assert!(
        ports
            .iter()
            .any(|p| p["name"] == "metrics" && p["containerPort"] == 9090),
        "{ports:?}"
    );
    let flags = run_flags(container);
    assert_eq!(
        flag_value(&flags, "--metrics-addr"),
        Some("0.0.0.0:9090"),
        "the probes and the Service reach the metrics port"
    );

    let requests = at(container, "/resources/requests");
    let limits = at(container, "/resources/limits");
    assert!(requests.get("cpu").is_some() && requests.get("memory").is_some());
    assert!(limits.get("memory").is_some(), "a memory limit");
    assert!(
        limits.get("cpu").is_none(),
        "no CPU limit (throttling delays polls and lease renewals)"
    );

    let env = container["env"].as_array().expect("env");
    let pod_name = env.iter().find(|e| e["name"] == "POD_NAME");
    assert_eq!(
        pod_name.map(|e| at(e, "/valueFrom/fieldRef/fieldPath")),
        Some(&Value::from("metadata.name")),
        "leader-election identity from the downward API"
    );
}

/// `qscale run --help`, once.
fn run_help() -> &'static str {
    static HELP: OnceLock<String> = OnceLock::new();
    HELP.get_or_init(|| {
        let output = Command::new(QSCALE)
            .args(["run", "--help"])
            .output()
            .expect("run qscale");
        assert!(output.status.success(), "qscale run --help failed");
        String::from_utf8(output.stdout).expect("help is UTF-8")
    })
}

/// Whether the help text lists `flag` as a whole word (`--lease-name`, not `--lease-name-x`).
fn help_lists(help: &str, flag: &str) -> bool {
    help.match_indices(flag).any(|(at, _)| {
        let next = help[at + flag.len()..].chars().next();
        let before = help[..at].chars().next_back();
        !matches!(next, Some(c) if c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && !matches!(before, Some(c) if c.is_ascii_alphanumeric() || c == '-' || c == '_')
    })
}

#[test]
fn deployment_args_and_env_are_ones_qscale_run_accepts() {
    let help = run_help();
    let container = container(deployment(&base().objects));
    let unknown: Vec<String> = run_flags(container)
        .into_iter()
        .map(|(flag, _)| flag)
        .filter(|flag| !help_lists(help, flag))
        .collect();
    assert!(
        unknown.is_empty(),
        "manifests/base/deployment.yaml passes flags `qscale run --help` does not list: \
         {unknown:?}\n--- qscale run --help ---\n{help}"
    );
    for env in container["env"].as_array().into_iter().flatten() {
        let name = env["name"].as_str().unwrap_or_default();
        if name.starts_with("QSCALE_") {
            assert!(
                help_lists(help, name),
                "{name} is not an environment variable of qscale run\n{help}"
            );
        }
    }
}

#[test]
fn dockerfile_runs_qscale_as_the_same_non_root_user_with_accepted_flags() {
    let dockerfile = read(&repo().join("Dockerfile"));
    let instruction = |name: &str| -> Vec<String> {
        dockerfile
            .lines()
            .filter_map(|line| line.strip_prefix(name))
            .filter_map(|rest| rest.strip_prefix(' '))
            .map(|rest| rest.trim().to_string())
            .collect()
    };
    let users = instruction("USER");
    assert_eq!(
        users.last().map(String::as_str),
        Some(format!("{NONROOT_UID}:{NONROOT_UID}").as_str())
    );
    assert_eq!(instruction("ENTRYPOINT"), vec![r#"["qscale"]"#.to_string()]);
    let cmd = instruction("CMD");
    assert_eq!(cmd.len(), 1, "one CMD: {cmd:?}");
    let cmd: Vec<String> = serde_json::from_str(&cmd[0]).expect("CMD in exec (JSON) form");
    assert_eq!(cmd.first().map(String::as_str), Some("run"));
    let help = run_help();
    for arg in cmd.iter().filter(|a| a.starts_with("--")) {
        let flag = arg.split_once('=').map_or(arg.as_str(), |(f, _)| f);
        assert!(
            help_lists(help, flag),
            "the Dockerfile's CMD passes {flag}, which `qscale run --help` does not list\n{help}"
        );
    }
    let stages = instruction("FROM");
    let last = stages.last().expect("FROM");
    assert!(
        last.contains("distroless") && last.ends_with(":nonroot"),
        "{last}"
    );
}

// ---------------------------------------------------------------------------------------------
// Rules, Service, PodDisruptionBudget, PodMonitor
// ---------------------------------------------------------------------------------------------

fn qscale_check(rules_yaml: &str, origin: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(RULES_KEY);
    std::fs::write(&path, rules_yaml).expect("write rules");
    let output = Command::new(QSCALE)
        .arg("check")
        .arg(&path)
        .output()
        .expect("run qscale check");
    assert!(
        output.status.success(),
        "the rules of {origin} fail qscale check:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn rules_config_maps_pass_qscale_check() {
    qscale_check(&base().rules_yaml, "the base's qscale-rules ConfigMap");
    let overlay = repo().join("manifests/overlays/example");
    qscale_check(
        &read(&overlay.join(RULES_KEY)),
        "manifests/overlays/example",
    );
}

/// Whether a (non-empty) label selector selects these labels.
fn selects(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    let selector = string_map(selector);
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn service_pdb_and_pod_monitor_select_the_agent_pods() {
    let objects = &base().objects;
    let deployment = deployment(objects);
    let pod_labels = string_map(at(deployment, "/spec/template/metadata/labels"));
    assert!(selects(
        at(deployment, "/spec/selector/matchLabels"),
        &pod_labels
    ));

    let service = find(objects, "Service", "qscale-metrics");
    let annotations = &service["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "9090");
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    assert!(selects(at(service, "/spec/selector"), &pod_labels));
    assert_eq!(at(service, "/spec/ports/0/targetPort"), "metrics");

    let pdb = find(objects, "PodDisruptionBudget", "qscale");
    assert!(selects(at(pdb, "/spec/selector/matchLabels"), &pod_labels));
    assert!(
        pdb["spec"].get("minAvailable").is_none(),
        "maxUnavailable, so a single replica never blocks a drain"
    );

    let path = repo().join("manifests/components/podmonitor/podmonitor.yaml");
    let monitor = parse_documents(&read(&path), "podmonitor.yaml");
    let monitor = find(&monitor, "PodMonitor", "qscale");
    assert!(selects(
        at(monitor, "/spec/selector/matchLabels"),
        &pod_labels
    ));
    assert_eq!(
        at(monitor, "/spec/podMetricsEndpoints/0/port"),
        "metrics",
        "the container port's name"
    );
}

#[test]
fn example_overlay_sets_namespace_image_and_irsa_without_widening_the_role() {
    let dir = repo().join("manifests/overlays/example");
    let Some(yaml) = kustomize(&dir) else {
        eprintln!("note: kubectl not found; the example overlay is not rendered");
        return;
    };
    let objects = parse_documents(&yaml, "kubectl kustomize manifests/overlays/example");
    for object in &objects {
        assert_eq!(
            object["metadata"]["namespace"],
            "orders",
            "{} {}",
            kind_of(object),
            name_of(object)
        );
    }
    let image = container(deployment(&objects))["image"]
        .as_str()
        .unwrap_or_default();
    assert!(
        !image.contains(".invalid"),
        "the overlay sets the image: {image}"
    );
    let account = find(&objects, "ServiceAccount", "qscale");
    let role_arn = &account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"];
    assert!(
        role_arn
            .as_str()
            .is_some_and(|arn| arn.starts_with("arn:aws:iam::")),
        "{account}"
    );
    let binding = find(&objects, "RoleBinding", "qscale");
    assert_eq!(at(binding, "/subjects/0/namespace"), "orders");
    assert_eq!(
        find(&objects, "Role", "qscale")["rules"],
        find(&base().objects, "Role", "qscale")["rules"],
        "the example overlay keeps the base's Role"
    );
    let rules = at(
        find(&objects, "ConfigMap", RULES_CONFIG_MAP),
        &format!("/data/{RULES_KEY}"),
    );
    assert_eq!(
        rules.as_str(),
        Some(read(&dir.join(RULES_KEY)).as_str()),
        "the overlay's rules replace the base's"
    );
}

// ---------------------------------------------------------------------------------------------
// The Role is enough
// ---------------------------------------------------------------------------------------------

/// The Deployment's env for a pod named `pod` in `namespace` (the downward API's values).
fn pod_env(container: &Value, pod: &str, namespace: &str) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for entry in container["env"].as_array().into_iter().flatten() {
        let name = entry["name"].as_str().expect("env name").to_string();
        let value = match (
            entry["value"].as_str(),
            at(entry, "/valueFrom/fieldRef/fieldPath").as_str(),
        ) {
            (Some(value), _) => value.to_string(),
            (None, Some("metadata.name")) => pod.to_string(),
            (None, Some("metadata.namespace")) => namespace.to_string(),
            other => panic!("env {name}: a source this test does not emulate: {other:?}"),
        };
        env.push((name, value));
    }
    env
}

/// The fake's RBAC refusals, each once: `patch apps/deployments/scale orders-worker`.
fn forbidden(kube: &FakeKube) -> BTreeSet<String> {
    kube.rbac_violations()
        .into_iter()
        .map(|v| {
            let name = v.name.unwrap_or_else(|| "(any)".to_string());
            format!("{} {}/{} {name}", v.verb, v.api_group, v.resource)
        })
        .collect()
}

struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_role_is_enough_for_qscale_run_with_the_deployments_args() {
    const NS: &str = "team";
    const POD: &str = "qscale-7d9f8-abcde";
    let objects = &base().objects;
    let role = find(objects, "Role", "qscale");
    let container = container(deployment(objects));

    let moto = Moto::start();
    let kube = FakeKube::start().await;
    let rules = serde_json::from_value(role["rules"].clone()).expect("Role rules");
    let role_check = RoleCheck::enforce_rules(&kube, rules);
    kube.create_deployment(NS, "orders-worker", 0);
    let queue = moto.create_queue("orders").await;
    let rules_yaml = format!(
        "rules:\n  - name: orders-worker\n    target: {{ kind: Deployment, name: orders-worker }}\n\
         \x20   max_replicas: 10\n    poll_interval: 1s\n    cooldown: 3s\n    initial_cooldown: 0s\n\
         \x20   triggers:\n      - type: sqs\n        queue: {queue}\n        endpoint: {}\n\
         \x20       target_per_replica: 10\n        timeout: 2s\n",
        moto.endpoint()
    );
    kube.put_configmap(NS, RULES_CONFIG_MAP, [(RULES_KEY, rules_yaml)]);

    // The Deployment's args, with the admin server on a free port of 127.0.0.1.
    let admin_port = support::moto::free_port();
    let args: Vec<String> = strings(&container["args"])
        .into_iter()
        .map(|arg| match arg.split_once('=') {
            Some(("--metrics-addr", _)) => format!("--metrics-addr=127.0.0.1:{admin_port}"),
            _ => arg,
        })
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = kube.write_kubeconfig(dir.path(), NS);
    let log_path = dir.path().join("qscale.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut command = Command::new(QSCALE);
    command
        .args(&args)
        .envs(pod_env(container, POD, NS))
        .env("KUBECONFIG", &kubeconfig)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", support::moto::REGION)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ROLE_ARN")
        .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
        .env_remove("QSCALE_CONFIG")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log);
    let mut agent = Running(command.spawn().expect("spawn qscale"));
    let logs = || std::fs::read_to_string(&log_path).unwrap_or_default();

    moto.send(&queue, 25).await;
    let scaled = support::eventually(std::time::Duration::from_secs(30), || {
        kube.replicas("Deployment", NS, "orders-worker") == Some(3)
    })
    .await;
    assert!(
        scaled.is_some(),
        "25 messages / 10 per replica -> 3, under the Role\nforbidden: {:?}\n{}",
        forbidden(&kube),
        logs()
    );
    let lease = kube.get_object("Lease", NS, LEASE);
    assert_eq!(
        lease.as_ref().map(|l| l["spec"]["holderIdentity"].clone()),
        Some(json!(POD)),
        "the leader holds the Lease named by --lease-name\n{}",
        logs()
    );
    let state = support::eventually(std::time::Duration::from_secs(10), || {
        kube.configmap(NS, STATE_CONFIG_MAP).is_some()
    })
    .await;
    assert!(
        state.is_some(),
        "the agent creates its state ConfigMap\n{}",
        logs()
    );

    // Stop as Kubernetes does (SIGTERM): releasing the Lease is under the Role too.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(agent.0.id().to_string())
        .status();
    let stopped = support::eventually(std::time::Duration::from_secs(5), || {
        matches!(agent.0.try_wait(), Ok(Some(_)))
    })
    .await;
    assert!(stopped.is_some(), "qscale stops on SIGTERM\n{}", logs());

    // Refusals, and list/watch requests wider than the names the Role allows them for.
    let violations = role_check.violations(&kube, NS);
    assert!(
        violations.is_empty(),
        "requests the Role does not allow: {violations:#?}\n{}",
        logs()
    );
}
