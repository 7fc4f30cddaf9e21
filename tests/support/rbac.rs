//! qscale's shipped Role (`manifests/base/role.yaml`), enforced by the fake API server, and the
//! check that every request the agent made stayed inside it. The reliability suite and the
//! end-to-end suite (against the fake) both run under it.

use std::path::Path;

use k8s_openapi::api::rbac::v1::PolicyRule;
use serde_json::Value;

use super::fake_kube::FakeKube;

/// The rules of the Role in `manifests/base/role.yaml`, as shipped.
pub fn shipped_role_rules() -> Vec<PolicyRule> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/base/role.yaml");
    let text = std::fs::read_to_string(&path).expect("manifests/base/role.yaml");
    let role: Value = serde_saphyr::from_str(&text).expect("role.yaml is YAML");
    assert_eq!(role["kind"], "Role", "{} holds a Role", path.display());
    serde_json::from_value(role["rules"].clone()).expect("Role rules")
}

/// The grants the example overlay documents for a custom kind with a scale subresource (see
/// `manifests/overlays/example/kustomization.yaml`): read the objects, get/patch their /scale.
pub fn custom_kind_rules(group: &str, plural: &str) -> Vec<PolicyRule> {
    let rule = |resources: Vec<String>, verbs: &[&str]| PolicyRule {
        api_groups: Some(vec![group.to_string()]),
        resources: Some(resources),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..PolicyRule::default()
    };
    vec![
        rule(vec![plural.to_string()], &["get", "list", "watch"]),
        rule(vec![format!("{plural}/scale")], &["get", "patch"]),
    ]
}

/// A list or watch the Role allows only for one name (the fake does not read field
/// selectors, so such rules are widened for it, and the requests are checked afterwards).
#[derive(Clone, Debug)]
struct NamedList {
    resource: String,
    name: String,
}

/// The Role as the fake enforces it, kept to check the requests afterwards.
pub struct RoleCheck {
    named_lists: Vec<NamedList>,
}

impl RoleCheck {
    /// Makes `fake` answer 403 to what the shipped Role (plus `extra`) does not allow.
    pub fn enforce(fake: &FakeKube, extra: Vec<PolicyRule>) -> RoleCheck {
        let mut rules = shipped_role_rules();
        rules.extend(extra);
        Self::enforce_rules(fake, rules)
    }

    /// [`RoleCheck::enforce`] for any Role's rules (a rendered overlay's, say). The real API
    /// server authorizes a list or watch that selects `metadata.name=NAME` as a request for
    /// NAME; the fake does not read field selectors, so such rules are widened for it to any
    /// name, and [`RoleCheck::violations`] checks the requests selected one.
    pub fn enforce_rules(fake: &FakeKube, rules: Vec<PolicyRule>) -> RoleCheck {
        let mut enforced = rules.clone();
        let mut named_lists = Vec::new();
        for rule in &rules {
            let names = rule.resource_names.clone().unwrap_or_default();
            let verbs: Vec<String> = rule
                .verbs
                .iter()
                .filter(|v| matches!(v.as_str(), "list" | "watch"))
                .cloned()
                .collect();
            if names.is_empty() || verbs.is_empty() {
                continue;
            }
            for resource in rule.resources.iter().flatten() {
                for name in &names {
                    named_lists.push(NamedList {
                        resource: resource.clone(),
                        name: name.clone(),
                    });
                }
            }
            enforced.push(PolicyRule {
                resource_names: None,
                verbs,
                ..rule.clone()
            });
        }
        fake.set_rbac(enforced);
        RoleCheck { named_lists }
    }

    /// What `fake` saw outside the Role in `namespace`: requests it refused, and lists or
    /// watches the Role allows only by name that did not select that name.
    pub fn violations(&self, fake: &FakeKube, namespace: &str) -> Vec<String> {
        let mut found: Vec<String> = fake
            .rbac_violations()
            .into_iter()
            .map(|v| {
                format!(
                    "{} {}/{} {}",
                    v.verb,
                    v.api_group,
                    v.resource,
                    v.name.unwrap_or_else(|| "(any)".into())
                )
            })
            .collect();
        for request in fake.requests() {
            // The fake's rules know no namespaces; a Role grants nothing outside its own.
            if let Some(scope) = outside(&request.path, namespace) {
                found.push(format!("{} {} ({scope})", request.method, request.path));
            }
            let query = request.query.replace("%3D", "=").replace("%2F", "/");
            for named in &self.named_lists {
                let collection = format!("/namespaces/{namespace}/{}", named.resource);
                let selector = format!("fieldSelector=metadata.name={}", named.name);
                let selected = query
                    .split('&')
                    .any(|pair| pair == selector || pair.starts_with(&format!("{selector},")));
                if request.method == "GET" && request.path.ends_with(&collection) && !selected {
                    found.push(format!(
                        "a list/watch of {} that the Role only allows for {}: {}?{}",
                        named.resource, named.name, request.path, request.query
                    ));
                }
            }
        }
        found
    }
}

/// Why a request for `path` is outside a Role of `namespace`: cluster-wide, or another
/// namespace. Discovery (`/api`, `/apis/GROUP/VERSION`, `/version`) needs no grant.
fn outside(path: &str, namespace: &str) -> Option<&'static str> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match segments.as_slice() {
        ["api", _version, rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        _ => return None,
    };
    match rest {
        [] => None,
        ["namespaces", ns, _resource, ..] if *ns == namespace => None,
        ["namespaces", _, _resource, ..] => Some("another namespace"),
        _ => Some("cluster-wide"),
    }
}

#[cfg(test)]
mod tests {
    use super::outside;

    #[test]
    fn requests_outside_the_namespace_are_told_apart_from_discovery() {
        assert_eq!(
            outside("/apis/apps/v1/namespaces/work/deployments", "work"),
            None
        );
        assert_eq!(
            outside("/api/v1/namespaces/work/configmaps/x", "work"),
            None
        );
        assert_eq!(outside("/apis/apps/v1", "work"), None);
        assert_eq!(outside("/apis", "work"), None);
        assert_eq!(outside("/version", "work"), None);
        assert_eq!(
            outside("/apis/apps/v1/deployments", "work"),
            Some("cluster-wide")
        );
        assert_eq!(
            outside("/api/v1/namespaces/work", "work"),
            Some("cluster-wide")
        );
        assert_eq!(
            outside("/api/v1/namespaces/other/configmaps", "work"),
            Some("another namespace")
        );
    }
}
