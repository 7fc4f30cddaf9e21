//! The HPA guard: qscale never writes a target that a HorizontalPodAutoscaler also scales.

use super::store::ScaleTargetRef;
use crate::config::TargetRef;

/// Whether an HPA's `scaleTargetRef` is `target`.
pub fn scales(reference: &ScaleTargetRef, target: &TargetRef) -> bool {
    let target_group = group_of(target.api_version().unwrap_or_default());
    // An HPA's apiVersion may name another version of the same group.
    let group = reference.api_version.as_deref().map(group_of);
    reference.kind == target.kind
        && reference.name == target.name
        && group.is_none_or(|g| g == target_group)
}

fn group_of(api_version: &str) -> &str {
    api_version.split_once('/').map_or("", |(group, _)| group)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::store::Cached;
    use kube::api::DynamicObject;

    fn competing_hpa(target: &TargetRef, hpas: &[DynamicObject]) -> Option<String> {
        hpas.iter()
            .find(|hpa| {
                let cached = Cached::from_object(hpa);
                cached.scale_target.is_some_and(|r| scales(&r, target))
            })
            .and_then(|hpa| hpa.metadata.name.clone())
    }

    fn hpa(name: &str, api_version: &str, kind: &str, target: &str) -> DynamicObject {
        let mut obj = DynamicObject::new(name, &crate::target::WatchCache::hpa_resource());
        obj.data = serde_json::json!({
            "spec": { "scaleTargetRef": { "apiVersion": api_version, "kind": kind, "name": target } }
        });
        obj
    }

    fn deployment(name: &str) -> TargetRef {
        TargetRef {
            kind: "Deployment".into(),
            name: name.into(),
            api_version: None,
        }
    }

    #[test]
    fn finds_an_hpa_on_the_same_object_only() {
        let hpas = [
            hpa("other", "apps/v1", "Deployment", "other"),
            hpa("sts", "apps/v1", "StatefulSet", "orders"),
            hpa("mine", "apps/v1beta2", "Deployment", "orders"),
        ];
        assert_eq!(
            competing_hpa(&deployment("orders"), &hpas),
            Some("mine".into())
        );
        assert_eq!(competing_hpa(&deployment("billing"), &hpas), None);
        let foreign_group = [hpa("x", "example.com/v1", "Deployment", "orders")];
        assert_eq!(competing_hpa(&deployment("orders"), &foreign_group), None);
    }
}
