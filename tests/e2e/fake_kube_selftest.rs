//! Self-tests of the fake API server, driven by the real `kube` client.

use std::fmt::Debug;
use std::time::{Duration, Instant};

use axum::http::Request;
use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::rbac::v1::PolicyRule;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
    WatchEvent, WatchParams,
};
use kube::config::Kubeconfig;
use kube::core::{GroupVersionKind, Status};
use kube::discovery::{self, Discovery};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, reflector, ObjectRef};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::support::cluster::skip_on_real_cluster;
use crate::support::fake_kube::{on, rule, FakeKube, FakeKubeOptions, RbacViolation};

const NS: &str = "selftest";
/// These tests check the fake itself: nothing to learn from them on a real cluster.
const SELFTEST: &str = "a selftest of the fake API server";
const WAIT: Duration = Duration::from_secs(10);

async fn setup() -> (FakeKube, Client) {
    let fake = FakeKube::start().await;
    let client = fake.client(NS).await;
    (fake, client)
}

fn api_error<T: Debug>(result: kube::Result<T>) -> Box<Status> {
    match result {
        Err(kube::Error::Api(status)) => status,
        other => panic!("expected an API error, got {other:?}"),
    }
}

async fn next<S: Stream + Unpin>(stream: &mut S) -> S::Item {
    let item = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("stream item in time");
    item.expect("stream ended")
}

/// The status code of a raw request that is expected to fail.
async fn raw_status(
    client: &Client,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> u16 {
    let request = Request::builder().method(method).uri(path);
    let request = request
        .header("content-type", content_type)
        .body(body.as_bytes().to_vec());
    api_error(client.request::<Value>(request.unwrap()).await).code
}

fn merge(value: Value) -> Patch<Value> {
    Patch::Merge(value)
}

/// get, patch and replace the scale of `name` (created with 2 replicas), through any `Api`.
async fn scale_roundtrip<K>(fake: &FakeKube, api: &Api<K>, kind: &str, name: &str)
where
    K: Clone + DeserializeOwned + Debug,
{
    let scale = api.get_scale(name).await.unwrap();
    assert_eq!(scale.spec.as_ref().unwrap().replicas, Some(2));
    assert_eq!(
        scale.status.as_ref().unwrap().selector.as_deref(),
        Some(format!("app={name}").as_str())
    );

    let pp = PatchParams::default();
    let patched = api
        .patch_scale(name, &pp, &merge(json!({ "spec": { "replicas": 5 } })))
        .await
        .unwrap();
    assert_eq!(patched.spec.as_ref().unwrap().replicas, Some(5));
    assert_eq!(patched.status.as_ref().unwrap().replicas, 5);
    assert_eq!(fake.replicas(kind, NS, name), Some(5));

    let mut desired = patched.clone();
    desired.spec.as_mut().unwrap().replicas = Some(3);
    let replaced = api
        .replace_scale(name, &PostParams::default(), &desired)
        .await
        .unwrap();
    assert_eq!(replaced.spec.unwrap().replicas, Some(3));
    assert_ne!(
        replaced.metadata.resource_version,
        patched.metadata.resource_version
    );

    // `desired` still carries the resourceVersion from before the replace.
    let stale = api_error(
        api.replace_scale(name, &PostParams::default(), &desired)
            .await,
    );
    assert_eq!((stale.code, stale.reason.as_str()), (409, "Conflict"));
    let stale_patch = json!({
        "metadata": { "resourceVersion": patched.metadata.resource_version },
        "spec": { "replicas": 9 },
    });
    assert_eq!(
        api_error(api.patch_scale(name, &pp, &merge(stale_patch)).await).code,
        409
    );
    assert_eq!(fake.replicas(kind, NS, name), Some(3));
}

#[tokio::test]
async fn fake_kube_scales_deployments_and_statefulsets() {
    if skip_on_real_cluster(SELFTEST) {
        return;
    }
    let (fake, client) = setup().await;
    fake.create_deployment(NS, "web", 2);
    fake.create_statefulset(NS, "db", 2);

    scale_roundtrip(
        &fake,
        &Api::<Deployment>::namespaced(client.clone(), NS),
        "Deployment",
        "web",
    )
    .await;
    scale_roundtrip(
        &fake,
        &Api::<StatefulSet>::namespaced(client.clone(), NS),
        "StatefulSet",
        "db",
    )
    .await;

    let deployment = Api::<Deployment>::namespaced(client, NS)
        .get("web")
        .await
        .unwrap();
    assert_eq!(deployment.spec.replicas, Some(3));
    assert_eq!(deployment.status.unwrap().replicas, Some(3));
    assert_eq!(
        deployment.metadata.generation,
        Some(3),
        "created, patched, replaced"
    );
    // 2 kinds x (patch, replace, stale replace, stale patch)
    assert_eq!(fake.scale_patches().len(), 8);
}

#[tokio::test]
async fn fake_kube_scales_custom_resources_through_dynamic_api() {
    if skip_on_real_cluster(SELFTEST) {
        return;
    }
    let (fake, client) = setup().await;
    fake.create_worker(NS, "crunch", 2);
    let gvk = GroupVersionKind::gvk("example.com", "v1", "Worker");
    let (resource, caps) = discovery::pinned_kind(&client, &gvk).await.unwrap();
    assert_eq!(resource.plural, "workers");
    assert!(caps
        .subresources
        .iter()
        .any(|(sub, _)| sub.plural == "scale"));

    let workers = Api::<DynamicObject>::namespaced_with(client.clone(), NS, &resource);
    scale_roundtrip(&fake, &workers, "Worker", "crunch").await;
    let worker = workers.get("crunch").await.unwrap();
    assert_eq!(worker.data["spec"]["replicas"], 3);

    // A kind without a scale subresource.
    fake.create_object(
        "Gadget",
        NS,
        json!({ "metadata": { "name": "gizmo" }, "spec": {} }),
    );
    let gadget = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("example.com", "v1", "Gadget"),
        "gadgets",
    );
    let gadgets = Api::<DynamicObject>::namespaced_with(client, NS, &gadget);
    assert!(gadgets.get("gizmo").await.is_ok());
    assert_eq!(api_error(gadgets.get_scale("gizmo").await).code, 404);
}

#[tokio::test]
async fn fake_kube_answers_errors_as_status_objects() {
    if skip_on_real_cluster(SELFTEST) {
        return;
    }
    let (fake, client) = setup().await;
    let api = Api::<Deployment>::namespaced(client.clone(), NS);
    let missing = api_error(api.get("nope").await);
    assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));
    assert_eq!(api_error(api.get_scale("nope").await).code, 404);

    let created = api
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": "web" },
                "spec": {
                    "selector": { "matchLabels": { "app": "web" } },
                    "template": { "metadata": { "labels": { "app": "web" } } },
                },
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(created.spec.replicas, Some(1), "defaulted");
    let duplicate = api_error(api.create(&PostParams::default(), &created).await);
    assert_eq!(
        (duplicate.code, duplicate.reason.as_str()),
        (409, "AlreadyExists")
    );

    fake.set_annotation("Deployment", NS, "web", "touched", Some("yes"));
    let stale = api_error(api.replace("web", &PostParams::default(), &created).await);
    assert!(stale.is_conflict());
    let listed = api
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap();
    assert!(listed.items.is_empty(), "label selectors are honoured");

    // Raw requests: unsupported patch types and verbs; dry runs.
    let path = format!("/apis/apps/v1/namespaces/{NS}/deployments/web");
    let json_patch = r#"[{"op":"replace","path":"/spec/replicas","value":4}]"#;
    assert_eq!(
        raw_status(&client, "PATCH", &path, "application/yaml", "{}").await,
        415
    );
    let content_type = "application/json-patch+json";
    assert_eq!(
        raw_status(&client, "PATCH", &path, content_type, json_patch).await,
        415
    );
    assert_eq!(
        raw_status(&client, "POST", &path, "application/json", "{}").await,
        405
    );
    let dry_run = PatchParams::default().dry_run();
    let four = merge(json!({ "spec": { "replicas": 4 } }));
    let patched = api.patch("web", &dry_run, &four).await.unwrap();
    assert_eq!(patched.spec.replicas, Some(4));
    assert_eq!(
        fake.replicas("Deployment", NS, "web"),
        Some(1),
        "dry run changes nothing"
    );

    let deleted = api.delete("web", &DeleteParams::default()).await.unwrap();
    assert!(deleted.is_right(), "DELETE answers with a Status");
    assert!(fake.get_object("Deployment", NS, "web").is_none());
}

#[tokio::test]
async fn fake_kube_serves_discovery() {
    if skip_on_real_cluster(SELFTEST) {
        return;
    }
    let (fake, client) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = Kubeconfig::read_from(fake.write_kubeconfig(dir.path(), NS)).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await;
    let from_file = Client::try_from(config.unwrap()).unwrap();
    assert_eq!(from_file.default_namespace(), NS);
    assert!(from_file.apiserver_version().await.is_ok());

    let worker = GroupVersionKind::gvk("example.com", "v1", "Worker");
    for discovery in [
        Discovery::new(client.clone()).run().await.unwrap(),
        Discovery::new(client.clone())
            .run_aggregated()
            .await
            .unwrap(),
    ] {
        let (resource, caps) = discovery.resolve_gvk(&worker).expect("Worker discovered");
        assert_eq!(resource.plural, "workers");
        let scale = caps
            .subresources
            .iter()
            .find(|(sub, _)| sub.plural == "scale")
            .expect("scale subresource");
        assert!(scale.1.supports_operation("patch"));
        let deployment = GroupVersionKind::gvk("apps", "v1", "Deployment");
        assert!(discovery.resolve_gvk(&deployment).is_some());
        let gadget = discovery
            .resolve_gvk(&GroupVersionKind::gvk("example.com", "v1", "Gadget"))
            .unwrap();
        assert!(gadget.1.subresources.is_empty());
        assert!(discovery.has_group("") && discovery.has_group("events.k8s.io"));
    }
    assert!(client.apiserver_version().await.is_ok());
}

#[tokio::test]
async fn fake_kube_watcher_sees_scale_changes() {
    if skip_on_real_cluster(SELFTEST) {
        return;
    }
    let (fake, client) = setup().await;
    fake.create_deployment(NS, "web", 2);
    let api = Api::<Deployment>::namespaced(client, NS);
    let (reader, writer) = reflector::store();
    let watch = watcher(api.clone(), watcher::Config::default());
    let mut objects = reflector(writer, watch).applied_objects().boxed();
    let first = next(&mut objects).await.unwrap();
    assert_eq!(first.spec.replicas, Some(2));

    api.patch_scale(
        "web",
        &PatchParams::default(),
        &merge(json!({ "spec": { "replicas": 7 } })),
    )
    .await
    .unwrap();
    let updated = next(&mut objects).await.unwrap();
    assert_eq!(updated.spec.replicas, Some(7));
    assert_eq!(updated.status.unwrap().replicas, Some(7));

    fake.set_replicas("Deployment", NS, "web", 1);
    assert_eq!(next(&mut objects).await.unwrap().spec.replicas, Some(1));
    let cached = reader.get(&ObjectRef::new("web").within(NS)).unwrap();
    assert_eq!(cached.spec.replicas, Some(1));
}

#[tokio::test]
async fn fake_kube_watcher_relists_after_expired_history() {
    if skip_on_real_cluster(SELFTEST) {
        return;
    }
    let (fake, client) = setup().await;
    fake.create_deployment(NS, "web", 2);
    let api = Api::<Deployment>::namespaced(client, NS);
    let mut events = watcher(api, watcher::Config::default()).boxed();
    while !matches!(next(&mut events).await, Ok(watcher::Event::InitDone)) {}
    let lists = |fake: &FakeKube| {
        fake.count(|r| r.method == "GET" && !r.is_watch && r.path.ends_with("/deployments"))
    };
    assert_eq!(lists(&fake), 1);

    fake.compact_history();
    fake.drop_watches();
    match next(&mut events).await {
        Err(watcher::Error::WatchError(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (410, "Expired"))
        }
        other => panic!("expected 410 Expired, got {other:?}"),
    }
    assert!(matches!(next(&mut events).await, Ok(watcher::Event::Init)));
    assert!(matches!(
        next(&mut events).await,
        Ok(watcher::Event::InitApply(_))
    ));
    assert!(matches!(
        next(&mut events).await,
        Ok(watcher::Event::InitDone)
    ));
    assert_eq!(lists(&fake), 2, "re-listed");

    fake.set_replicas("Deployment", NS, "web", 6);
    match next(&mut events).await {
        Ok(watcher::Event::Apply(d)) => assert_eq!(d.spec.replicas, Some(6)),
        other => panic!("expected an update, got {other:?}"),
    }
}

#[tokio::test]
async fn fake_kube_watch_protocol_details() {
    if skip_on_real_cluster(SELFTEST) {
        return;
    }
    let options = FakeKubeOptions {
        bookmark_interval: Duration::from_millis(200),
        ..Default::default()
    };
    let fake = FakeKube::start_with(options).await;
    let api = Api::<Deployment>::namespaced(fake.client(NS).await, NS);
    fake.create_deployment(NS, "web", 2);

    // rv "0": synthetic ADDED, then bookmarks, then the stream ends after timeoutSeconds.
    let started = Instant::now();
    let events: Vec<_> = api
        .watch(&WatchParams::default().timeout(1), "0")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert!(matches!(events.first(), Some(WatchEvent::Added(_))));
    assert!(events.iter().any(|e| matches!(e, WatchEvent::Bookmark(_))));
    assert!(
        started.elapsed() >= Duration::from_secs(1) && started.elapsed() < Duration::from_secs(5)
    );

    // Resuming from a list's resourceVersion replays only later changes.
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    fake.set_replicas("Deployment", NS, "web", 3);
    let mut resumed = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match next(&mut resumed).await.unwrap() {
        WatchEvent::Modified(d) => assert_eq!(d.spec.replicas, Some(3)),
        other => panic!("expected MODIFIED, got {other:?}"),
    }

    // Streaming lists end the initial events with an annotated bookmark.
    let mut streaming = watcher(api.clone(), watcher::Config::default().streaming_lists()).boxed();
    assert!(matches!(
        next(&mut streaming).await,
        Ok(watcher::Event::Init)
    ));
    assert!(matches!(
        next(&mut streaming).await,
        Ok(watcher::Event::InitApply(_))
    ));
    assert!(matches!(
        next(&mut streaming).await,
        Ok(watcher::Event::InitDone)
    ));

    fake.compact_history();
    let mut expired = api
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    match next(&mut expired).await.unwrap() {
        WatchEvent::Error(status) => assert_eq!(status.code, 410),
        other => panic!("expected an ERROR event, got {other:?}"),
    }
}

#[tokio::test]
async fn fake_kube_injects_faults() {
    if skip_on_real_cluster(SELFTEST) {
        return;
    }
    let (fake, client) = setup().await;
    fake.create_deployment(NS, "web", 2);
    let api = Api::<Deployment>::namespaced(client, NS);

    fake.fail_next(on("GET", "/deployments/web"), 1, 500);
    assert_eq!(api_error(api.get("web").await).code, 500);
    assert!(api.get("web").await.is_ok());

    // kube's client retries a 429 by itself, honouring Retry-After.
    fake.fail_next(on("PATCH", "/scale"), 1, 429);
    api.patch_scale(
        "web",
        &PatchParams::default(),
        &merge(json!({ "spec": { "replicas": 4 } })),
    )
    .await
    .unwrap();
    let statuses: Vec<u16> = fake.scale_patches().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [429, 200]);
    assert_eq!(
        fake.scale_patches()[1].body_json().unwrap()["spec"]["replicas"],
        4
    );

    fake.fail_every_other(on("GET", "/deployments/web"), 409);
    let codes: Vec<Option<u16>> = futures::stream::iter(0..4)
        .then(|_| api.get("web"))
        .map(|r| r.err().map(|e| api_error::<()>(Err(e)).code))
        .collect()
        .await;
    assert_eq!(codes, [Some(409), None, Some(409), None]);
    fake.clear_faults();

    fake.set_delay(on("*", "/deployments/web"), Duration::from_millis(300));
    let started = Instant::now();
    api.get("web").await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    fake.clear_faults();

    fake.set_down(true);
    let started = Instant::now();
    assert!(api.get("web").await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a down server fails fast"
    );
    fake.set_down(false);
    assert!(api.get("web").await.is_ok());
}

#[tokio::test]
async fn fake_kube_enforces_rbac_rules() {
    if skip_on_real_cluster(SELFTEST) {
        return;
    }
    let (fake, client) = setup().await;
    fake.create_deployment(NS, "web", 2);
    fake.create_deployment(NS, "other", 2);
    let api = Api::<Deployment>::namespaced(client.clone(), NS);
    fake.set_rbac(vec![
        rule(&["apps"], &["deployments"], &["get", "list", "watch"]),
        rule(&["apps"], &["deployments/scale"], &["get", "patch"]),
    ]);

    let scale = api.get_scale("web").await.unwrap();
    api.patch_scale(
        "web",
        &PatchParams::default(),
        &merge(json!({ "spec": { "replicas": 3 } })),
    )
    .await
    .unwrap();
    let denied = api_error(
        api.replace_scale("web", &PostParams::default(), &scale)
            .await,
    );
    assert_eq!((denied.code, denied.reason.as_str()), (403, "Forbidden"));
    assert!(api_error(
        Api::<ConfigMap>::namespaced(client.clone(), NS)
            .list(&ListParams::default())
            .await
    )
    .is_forbidden());
    assert!(
        client.apiserver_version().await.is_ok(),
        "discovery needs no rules"
    );

    let violation = |verb: &str, group: &str, resource: &str, name: Option<&str>| RbacViolation {
        verb: verb.into(),
        api_group: group.into(),
        resource: resource.into(),
        namespace: Some(NS.into()),
        name: name.map(Into::into),
    };
    let expected = [
        violation("update", "apps", "deployments/scale", Some("web")),
        violation("list", "", "configmaps", None),
    ];
    assert_eq!(fake.rbac_violations(), expected);

    let only_web = PolicyRule {
        resource_names: Some(vec!["web".into()]),
        ..rule(&["*"], &["*/scale"], &["*"])
    };
    fake.set_rbac(vec![only_web]);
    assert!(api.get_scale("web").await.is_ok());
    assert!(api_error(api.get_scale("other").await).is_forbidden());
    assert!(api_error(api.get("web").await).is_forbidden());
    fake.clear_rbac();
    assert!(api.get("other").await.is_ok());
}

#[tokio::test]
async fn fake_kube_serves_configmaps_events_and_leases() {
    if skip_on_real_cluster(SELFTEST) {
        return;
    }
    let (fake, client) = setup().await;
    fake.create_deployment(NS, "web", 2);

    let configmaps = Api::<ConfigMap>::namespaced(client.clone(), NS);
    fake.put_configmap(NS, "settings", [("mode", "fast")]);
    let cm = configmaps.get("settings").await.unwrap();
    assert_eq!(cm.data.unwrap()["mode"], "fast");
    let patch = merge(json!({ "data": { "mode": "slow", "extra": "1" } }));
    configmaps
        .patch("settings", &PatchParams::default(), &patch)
        .await
        .unwrap();
    let data = fake.configmap(NS, "settings").unwrap();
    assert_eq!(
        (data["mode"].as_str(), data["extra"].as_str()),
        ("slow", "1")
    );

    let deployment = Api::<Deployment>::namespaced(client.clone(), NS)
        .get("web")
        .await
        .unwrap();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "qscale".into(),
            instance: None,
        },
    );
    let event = KubeEvent {
        type_: EventType::Normal,
        reason: "Scaled".into(),
        note: Some("2 -> 3".into()),
        action: "Scale".into(),
        secondary: None,
    };
    recorder
        .publish(&event, &deployment.object_ref(&()))
        .await
        .unwrap();
    let hpa = fake.create_hpa(NS, "web", "Deployment", "web");
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    let hpas = Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), NS);
    let target = hpas.get("web").await.unwrap().spec.scale_target_ref;
    assert_eq!(
        (target.kind.as_str(), target.name.as_str()),
        ("Deployment", "web")
    );
    let by_name = ListParams::default().fields("metadata.name=settings");
    assert_eq!(configmaps.list(&by_name).await.unwrap().items.len(), 1);

    let events = fake.events(NS);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["reason"], "Scaled");

    let leases = Api::<Lease>::namespaced(client, NS);
    let lease: Lease = serde_json::from_value(json!({
        "metadata": { "name": "qscale-leader" },
        "spec": { "holderIdentity": "a", "leaseDurationSeconds": 15 },
    }))
    .unwrap();
    let created = leases.create(&PostParams::default(), &lease).await.unwrap();
    let mut taken = created.clone();
    taken.spec.as_mut().unwrap().holder_identity = Some("b".into());
    leases
        .replace("qscale-leader", &PostParams::default(), &taken)
        .await
        .unwrap();
    assert!(api_error(
        leases
            .replace("qscale-leader", &PostParams::default(), &created)
            .await
    )
    .is_conflict());
    let apply = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "spec": { "holderIdentity": "c" },
    });
    let applied = leases
        .patch(
            "qscale-leader",
            &PatchParams::apply("qscale"),
            &Patch::Apply(apply),
        )
        .await
        .unwrap();
    assert_eq!(applied.spec.unwrap().holder_identity.as_deref(), Some("c"));
}
