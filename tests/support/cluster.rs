//! The Kubernetes API the end-to-end tests run against: the in-process fake (the default), or a
//! real cluster when `QSCALE_E2E_KUBECONFIG` names a kubeconfig (see `tests/e2e/README.md`).
//!
//! [`Cluster`] offers the seeding and inspection helpers of [`FakeKube`] the tests use, with the
//! same signatures. On a real cluster each [`Cluster`] works in a namespace of its own
//! (`qscale-e2e-<random>`), created by [`Cluster::start`] and deleted when it is dropped, and its
//! synchronous helpers block on the API (`block_in_place`): use the multi-thread runtime. What
//! only the fake can do (request log, fault injection, RBAC, custom kinds) is reached through
//! [`Cluster::fake`].

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{json, Value};

use super::agent::NAMESPACE;
use super::fake_kube::FakeKube;
use super::rbac::RoleCheck;

/// Names the kubeconfig of a real cluster to run the end-to-end tests against.
pub const KUBECONFIG_ENV: &str = "QSCALE_E2E_KUBECONFIG";

/// Label on the namespaces the tests create, to clean up after an interrupted run:
/// `kubectl delete namespace -l app.kubernetes.io/created-by=qscale-e2e`.
const CREATED_BY: &str = "qscale-e2e";

/// Field manager of the tests' own writes on a real cluster.
const FIELD_MANAGER: &str = "qscale-e2e";

/// The real cluster's kubeconfig, when `QSCALE_E2E_KUBECONFIG` is set (a leading `~/` is the
/// home directory).
pub fn real_kubeconfig() -> Option<PathBuf> {
    let path = std::env::var(KUBECONFIG_ENV)
        .ok()
        .filter(|p| !p.is_empty())?;
    match (path.strip_prefix("~/"), std::env::var("HOME")) {
        (Some(rest), Ok(home)) => Some(Path::new(&home).join(rest)),
        _ => Some(PathBuf::from(path)),
    }
}

/// For a test that needs the fake: on a real cluster, says why it is skipped and returns true.
pub fn skip_on_real_cluster(why: &str) -> bool {
    let real = real_kubeconfig().is_some();
    if real {
        eprintln!("SKIPPED on a real cluster: {why}");
    }
    real
}

pub struct Cluster {
    namespace: String,
    backend: Backend,
    /// On the fake, qscale's shipped Role, enforced: every test also checks least privilege.
    role: Option<RoleCheck>,
}

enum Backend {
    Fake(FakeKube),
    Real(Box<RealCluster>),
}

impl Cluster {
    /// A fresh fake API server, or a fresh namespace on the real cluster of
    /// `QSCALE_E2E_KUBECONFIG`.
    pub async fn start() -> Cluster {
        match real_kubeconfig() {
            None => {
                let fake = FakeKube::start().await;
                let role = RoleCheck::enforce(&fake, Vec::new());
                Cluster {
                    namespace: NAMESPACE.to_string(),
                    backend: Backend::Fake(fake),
                    role: Some(role),
                }
            }
            Some(path) => {
                let real = RealCluster::start(&path).await.unwrap_or_else(|e| {
                    panic!("{KUBECONFIG_ENV}={}: {e:#}", path.display());
                });
                Cluster {
                    namespace: real.namespace.clone(),
                    backend: Backend::Real(Box::new(real)),
                    role: None,
                }
            }
        }
    }

    /// The namespace of this test: `work` on the fake, `qscale-e2e-<random>` on a real cluster.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The fake API server, for what only it can do; `None` on a real cluster.
    pub fn fake(&self) -> Option<&FakeKube> {
        match &self.backend {
            Backend::Fake(fake) => Some(fake),
            Backend::Real(_) => None,
        }
    }

    /// [`Cluster::fake`] for a check only the fake allows: on a real cluster, says that the
    /// check is skipped and why.
    pub fn fake_for(&self, check: &str) -> Option<&FakeKube> {
        let fake = self.fake();
        if fake.is_none() {
            eprintln!("SKIPPED on a real cluster: {check}");
        }
        fake
    }

    /// A kubeconfig in `dir` whose current context has `namespace` as its namespace.
    pub fn write_kubeconfig(&self, dir: &Path, namespace: &str) -> PathBuf {
        match &self.backend {
            Backend::Fake(fake) => fake.write_kubeconfig(dir, namespace),
            Backend::Real(real) => real.write_kubeconfig(dir, namespace),
        }
    }

    /// A `kube::Client` whose default namespace is `namespace`.
    pub async fn client(&self, namespace: &str) -> kube::Client {
        match &self.backend {
            Backend::Fake(fake) => fake.client(namespace).await,
            Backend::Real(real) => client_for(real.kubeconfig.clone(), namespace)
                .await
                .expect("kube client"),
        }
    }

    pub fn create_deployment(&self, ns: &str, name: &str, replicas: i32) -> Value {
        match &self.backend {
            Backend::Fake(fake) => fake.create_deployment(ns, name, replicas),
            Backend::Real(real) => {
                block_on(real.create("Deployment", ns, workload(name, replicas)))
            }
        }
    }

    pub fn create_statefulset(&self, ns: &str, name: &str, replicas: i32) -> Value {
        match &self.backend {
            Backend::Fake(fake) => fake.create_statefulset(ns, name, replicas),
            Backend::Real(real) => {
                let mut obj = workload(name, replicas);
                obj["spec"]["serviceName"] = json!(name);
                obj["spec"]["podManagementPolicy"] = json!("Parallel");
                block_on(real.create("StatefulSet", ns, obj))
            }
        }
    }

    /// An `autoscaling/v2` HPA on `target_kind`/`target_name` (1 to 10 replicas on CPU).
    pub fn create_hpa(&self, ns: &str, name: &str, target_kind: &str, target_name: &str) -> Value {
        match &self.backend {
            Backend::Fake(fake) => fake.create_hpa(ns, name, target_kind, target_name),
            Backend::Real(real) => {
                let target = resource(target_kind);
                let target = json!({
                    "apiVersion": target.api_version, "kind": target.kind, "name": target_name,
                });
                let spec = json!({
                    "scaleTargetRef": target, "minReplicas": 1, "maxReplicas": 10,
                    "metrics": [{ "type": "Resource", "resource": {
                        "name": "cpu",
                        "target": { "type": "Utilization", "averageUtilization": 80 } } }],
                });
                let hpa = json!({ "metadata": { "name": name }, "spec": spec });
                block_on(real.create("HorizontalPodAutoscaler", ns, hpa))
            }
        }
    }

    /// `spec.replicas` of an object.
    pub fn replicas(&self, kind: &str, ns: &str, name: &str) -> Option<i32> {
        match &self.backend {
            Backend::Fake(fake) => fake.replicas(kind, ns, name),
            Backend::Real(real) => {
                let obj = block_on(real.get(kind, ns, name))?;
                i32::try_from(obj.pointer("/spec/replicas")?.as_i64()?).ok()
            }
        }
    }

    /// Sets (`Some`) or removes (`None`) an annotation; false if the object does not exist.
    pub fn set_annotation(
        &self,
        kind: &str,
        ns: &str,
        name: &str,
        key: &str,
        value: Option<&str>,
    ) -> bool {
        match &self.backend {
            Backend::Fake(fake) => fake.set_annotation(kind, ns, name, key, value),
            Backend::Real(real) => {
                let patch = json!({ "metadata": { "annotations": { key: value } } });
                block_on(real.merge_patch(kind, ns, name, patch))
            }
        }
    }

    pub fn configmap(&self, ns: &str, name: &str) -> Option<BTreeMap<String, String>> {
        match &self.backend {
            Backend::Fake(fake) => fake.configmap(ns, name),
            Backend::Real(real) => {
                let obj = block_on(real.get("ConfigMap", ns, name))?;
                serde_json::from_value(obj.get("data").cloned().unwrap_or(json!({}))).ok()
            }
        }
    }

    /// Creates or replaces a ConfigMap, e.g. `put_configmap(ns, "cfg", [("key", "value")])`.
    pub fn put_configmap<K, V>(
        &self,
        ns: &str,
        name: &str,
        data: impl IntoIterator<Item = (K, V)>,
    ) -> Value
    where
        K: Into<String>,
        V: Into<String>,
    {
        let data: BTreeMap<String, String> = data
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        match &self.backend {
            Backend::Fake(fake) => fake.put_configmap(ns, name, data),
            Backend::Real(real) => {
                let configmap = json!({ "metadata": { "name": name }, "data": data });
                block_on(real.apply("ConfigMap", ns, name, configmap))
            }
        }
    }

    /// Events in `ns`, oldest first. A real cluster lists them as `events.k8s.io/v1` (core v1
    /// Events converted), and also has the controllers' Events: select by `reason`.
    pub fn events(&self, ns: &str) -> Vec<Value> {
        match &self.backend {
            Backend::Fake(fake) => fake.events(ns),
            Backend::Real(real) => block_on(real.events(ns)),
        }
    }
}

/// Runs a future to completion from synchronous code on the multi-thread runtime.
fn block_on<F: Future>(future: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(future))
}

/// A Deployment's or StatefulSet's body. Its pods select no node, so they stay Pending: no
/// image is pulled and nothing runs; qscale only reads and writes `spec.replicas`.
fn workload(name: &str, replicas: i32) -> Value {
    let labels = json!({ "app": name });
    let container = json!({ "name": "app", "image": "registry.k8s.io/pause:3.9" });
    let pod_spec = json!({
        "containers": [container],
        "nodeSelector": { "qscale.io/e2e-no-such-node": "true" },
        "terminationGracePeriodSeconds": 0,
    });
    json!({
        "metadata": { "name": name, "labels": labels },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": labels },
            "template": { "metadata": { "labels": labels }, "spec": pod_spec },
        },
    })
}

/// The resource of a kind the tests use, by Kind or plural.
fn resource(kind: &str) -> ApiResource {
    let (group, version, kind, plural) = match kind {
        "Deployment" | "deployments" => ("apps", "v1", "Deployment", "deployments"),
        "StatefulSet" | "statefulsets" => ("apps", "v1", "StatefulSet", "statefulsets"),
        "ConfigMap" | "configmaps" => ("", "v1", "ConfigMap", "configmaps"),
        "HorizontalPodAutoscaler" | "horizontalpodautoscalers" => (
            "autoscaling",
            "v2",
            "HorizontalPodAutoscaler",
            "horizontalpodautoscalers",
        ),
        other => panic!("the real-cluster Cluster does not know the kind {other}"),
    };
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

async fn client_for(mut kubeconfig: Kubeconfig, namespace: &str) -> anyhow::Result<kube::Client> {
    set_namespace(&mut kubeconfig, namespace)?;
    let options = KubeConfigOptions::default();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?;
    Ok(kube::Client::try_from(config)?)
}

/// Makes `namespace` the namespace of the kubeconfig's current context.
fn set_namespace(kubeconfig: &mut Kubeconfig, namespace: &str) -> anyhow::Result<()> {
    let current = kubeconfig
        .current_context
        .clone()
        .context("the kubeconfig has no current-context")?;
    let context = kubeconfig
        .contexts
        .iter_mut()
        .find(|c| c.name == current)
        .and_then(|c| c.context.as_mut())
        .with_context(|| format!("the kubeconfig has no context {current}"))?;
    context.namespace = Some(namespace.to_string());
    Ok(())
}

/// A namespace of its own on a real cluster, deleted on drop.
struct RealCluster {
    /// The kubeconfig as read (relative file references made absolute).
    kubeconfig: Kubeconfig,
    client: kube::Client,
    namespace: String,
}

impl RealCluster {
    async fn start(path: &Path) -> anyhow::Result<RealCluster> {
        let kubeconfig = Kubeconfig::read_from(path)?;
        let namespace = format!("qscale-e2e-{:08x}", rand::random::<u32>());
        let client = client_for(kubeconfig.clone(), &namespace).await?;
        let body = json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {
                "name": namespace,
                "labels": { "app.kubernetes.io/created-by": CREATED_BY },
            },
        });
        let body: Namespace = serde_json::from_value(body)?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &body)
            .await
            .with_context(|| format!("create namespace {namespace}"))?;
        Ok(RealCluster {
            kubeconfig,
            client,
            namespace,
        })
    }

    fn write_kubeconfig(&self, dir: &Path, namespace: &str) -> PathBuf {
        let mut kubeconfig = self.kubeconfig.clone();
        set_namespace(&mut kubeconfig, namespace).expect("kubeconfig");
        let path = dir.join("kubeconfig");
        // JSON is YAML: kube and kubectl read it as a kubeconfig.
        let text = serde_json::to_string_pretty(&kubeconfig).expect("kubeconfig as JSON");
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    fn api(&self, kind: &str, ns: &str) -> (Api<DynamicObject>, ApiResource) {
        let resource = resource(kind);
        let api = Api::namespaced_with(self.client.clone(), ns, &resource);
        (api, resource)
    }

    async fn create(&self, kind: &str, ns: &str, mut obj: Value) -> Value {
        let (api, resource) = self.api(kind, ns);
        obj["apiVersion"] = json!(resource.api_version);
        obj["kind"] = json!(resource.kind);
        let obj: DynamicObject = serde_json::from_value(obj).expect("object");
        let name = obj.metadata.name.clone().unwrap_or_default();
        let created = api.create(&PostParams::default(), &obj).await;
        let created = created.unwrap_or_else(|e| panic!("create {kind} {ns}/{name}: {e}"));
        serde_json::to_value(created).expect("object as JSON")
    }

    async fn get(&self, kind: &str, ns: &str, name: &str) -> Option<Value> {
        let (api, _) = self.api(kind, ns);
        let obj = api.get_opt(name).await;
        let obj = obj.unwrap_or_else(|e| panic!("get {kind} {ns}/{name}: {e}"))?;
        Some(serde_json::to_value(obj).expect("object as JSON"))
    }

    /// A JSON merge patch; false if the object does not exist.
    async fn merge_patch(&self, kind: &str, ns: &str, name: &str, patch: Value) -> bool {
        let (api, _) = self.api(kind, ns);
        let params = PatchParams::default();
        match api.patch(name, &params, &Patch::Merge(&patch)).await {
            Ok(_) => true,
            Err(kube::Error::Api(status)) if status.code == 404 => false,
            Err(e) => panic!("patch {kind} {ns}/{name}: {e}"),
        }
    }

    /// Server-side apply, forced: creates or replaces the fields the tests own.
    async fn apply(&self, kind: &str, ns: &str, name: &str, mut obj: Value) -> Value {
        let (api, resource) = self.api(kind, ns);
        obj["apiVersion"] = json!(resource.api_version);
        obj["kind"] = json!(resource.kind);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let applied = api.patch(name, &params, &Patch::Apply(&obj)).await;
        let applied = applied.unwrap_or_else(|e| panic!("apply {kind} {ns}/{name}: {e}"));
        serde_json::to_value(applied).expect("object as JSON")
    }

    /// `events.k8s.io/v1` Events, read as plain JSON (core v1 Events come converted).
    async fn events(&self, ns: &str) -> Vec<Value> {
        let gvk = GroupVersionKind::gvk("events.k8s.io", "v1", "Event");
        let resource = ApiResource::from_gvk_with_plural(&gvk, "events");
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), ns, &resource);
        let list = api.list(&ListParams::default()).await;
        let mut events = list
            .unwrap_or_else(|e| panic!("list events in {ns}: {e}"))
            .items;
        let rv = |e: &DynamicObject| e.metadata.resource_version.as_ref()?.parse::<u64>().ok();
        events.sort_by_key(rv);
        events
            .into_iter()
            .map(|e| serde_json::to_value(e).expect("event as JSON"))
            .collect()
    }
}

impl Drop for Cluster {
    /// A test that passed also passed under the shipped Role: no request of the agent's was
    /// refused or wider than the Role allows (on the fake; a real cluster's kubeconfig is an
    /// admin's).
    fn drop(&mut self) {
        if let (Backend::Fake(fake), Some(role)) = (&self.backend, &self.role) {
            let violations = role.violations(fake, &self.namespace);
            if !violations.is_empty() && !std::thread::panicking() {
                panic!(
                    "requests outside qscale's Role (manifests/base/role.yaml): {violations:#?}"
                );
            }
        }
    }
}

impl Drop for RealCluster {
    /// Deletes the namespace (and so everything in it), on a thread with a runtime and a client
    /// of its own: a drop may happen anywhere, also while a failed test unwinds.
    fn drop(&mut self) {
        let (kubeconfig, namespace) = (self.kubeconfig.clone(), self.namespace.clone());
        let deleted = std::thread::spawn(move || -> anyhow::Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let client = client_for(kubeconfig, &namespace).await?;
                let api = Api::<Namespace>::all(client);
                api.delete(&namespace, &DeleteParams::background()).await?;
                Ok(())
            })
        })
        .join();
        let error = match deleted {
            Ok(Ok(())) => return,
            Ok(Err(e)) => format!("{e:#}"),
            Err(_) => "the deleting thread panicked".to_string(),
        };
        eprintln!(
            "could not delete namespace {0}: {error}; delete it with `kubectl delete namespace {0}`",
            self.namespace
        );
    }
}
