//! An in-process fake Kubernetes API server for qscale's end-to-end tests.
//!
//! It speaks enough of the real API (JSON over plain HTTP on 127.0.0.1) for the unmodified `kube`
//! client to work against it: typed and dynamic `Api`s, the `/scale` and `/status` subresources,
//! watches (history, bookmarks, streaming lists, `410 Expired`), legacy and aggregated discovery.
//! On top of that the [`FakeKube`] handle offers what a real cluster cannot: seeding and
//! inspecting objects without HTTP, a request log, fault injection and an optional RBAC check.
//!
//! Simplifications: strategic-merge and server-side-apply patches are applied as JSON merge
//! patches, JSON patches are refused (415), set-based label selectors match everything, there
//! is no garbage collection, no defaulting beyond `spec.replicas`, no deletecollection, and
//! namespaces need not exist.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use k8s_openapi::api::rbac::v1::PolicyRule;
use serde_json::{json, Map, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc};

const INITIAL_EVENTS_END: &str = "k8s.io/initial-events-end";
const AGGREGATED: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// A resource type served by the fake (see [`FakeKube::register_kind`]).
#[derive(Clone, Debug)]
pub struct KindSpec {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub namespaced: bool,
    /// Serve `/scale`: an `autoscaling/v1` `Scale` mapped onto `spec.replicas`.
    pub scale: bool,
    /// Serve `/status`; writes to the main resource then keep the stored status.
    pub status: bool,
}

impl KindSpec {
    /// A namespaced kind without subresources, e.g. `KindSpec::new("example.com/v1", "Gadget",
    /// "gadgets")`.
    pub fn new(api_version: &str, kind: &str, plural: &str) -> Self {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        KindSpec {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
            plural: plural.into(),
            namespaced: true,
            scale: false,
            status: false,
        }
    }

    fn api_version(&self) -> String {
        group_version(&self.group, &self.version)
    }

    /// `deployments.apps`, as the API server names a resource in its messages.
    fn qualified(&self) -> String {
        match self.group.as_str() {
            "" => self.plural.clone(),
            group => format!("{}.{group}", self.plural),
        }
    }
}

fn builtin_kinds() -> Vec<KindSpec> {
    let kind = |api_version, kind, plural, extras: &str| KindSpec {
        namespaced: !extras.contains("cluster"),
        scale: extras.contains("scale"),
        status: extras.contains("status"),
        ..KindSpec::new(api_version, kind, plural)
    };
    vec![
        kind("v1", "ConfigMap", "configmaps", ""),
        kind("v1", "Event", "events", ""),
        kind("v1", "Namespace", "namespaces", "cluster status"),
        kind("apps/v1", "Deployment", "deployments", "scale status"),
        kind("apps/v1", "StatefulSet", "statefulsets", "scale status"),
        kind(
            "autoscaling/v2",
            "HorizontalPodAutoscaler",
            "horizontalpodautoscalers",
            "status",
        ),
        kind("coordination.k8s.io/v1", "Lease", "leases", ""),
        kind("events.k8s.io/v1", "Event", "events", ""),
        kind("example.com/v1", "Worker", "workers", "scale status"),
        kind("example.com/v1", "Gadget", "gadgets", ""),
    ]
}

/// Tunables; [`FakeKube::start`] uses the defaults.
#[derive(Clone, Debug)]
pub struct FakeKubeOptions {
    /// Watch events retained per resource type; resuming from before them gets `410 Expired`.
    pub history_limit: usize,
    /// How often watches with `allowWatchBookmarks=true` get a BOOKMARK.
    pub bookmark_interval: Duration,
    /// `status.replicas` (and the ready/available/updated counts) follow `spec.replicas`.
    pub status_follows_spec: bool,
    /// How long a watch lasts when the client sends no `timeoutSeconds`.
    pub default_watch_timeout: Duration,
}

impl Default for FakeKubeOptions {
    fn default() -> Self {
        FakeKubeOptions {
            history_limit: 1000,
            bookmark_interval: Duration::from_secs(1),
            status_follows_spec: true,
            default_watch_timeout: Duration::from_secs(1800),
        }
    }
}

/// One request as the fake saw it. Fault matchers see it before it is answered (`status == 0`).
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: Option<String>,
    /// The body of anything but a GET, if not empty.
    pub body: Option<String>,
    pub status: u16,
    pub is_watch: bool,
    pub at: Instant,
}

impl RecordedRequest {
    fn new(method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Self {
        let query = uri.query().unwrap_or_default();
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let body = String::from_utf8_lossy(body);
        RecordedRequest {
            method: method.to_string(),
            path: uri.path().to_string(),
            query: query.to_string(),
            content_type: content_type.map(str::to_string),
            body: (method != Method::GET && !body.is_empty()).then(|| body.into_owned()),
            status: 0,
            is_watch: query
                .split('&')
                .any(|p| p == "watch=true" || p == "watch=1"),
            at: Instant::now(),
        }
    }

    pub fn body_json(&self) -> Option<Value> {
        serde_json::from_str(self.body.as_deref()?).ok()
    }

    /// A PATCH or PUT of any `/scale` subresource.
    pub fn is_scale_write(&self) -> bool {
        matches!(self.method.as_str(), "PATCH" | "PUT") && self.path.ends_with("/scale")
    }
}

/// Selects requests for fault injection.
pub trait RequestMatcher: Fn(&RecordedRequest) -> bool + Send + Sync + 'static {}
impl<F: Fn(&RecordedRequest) -> bool + Send + Sync + 'static> RequestMatcher for F {}

/// Matches by method (`"*"` for any) and path suffix, e.g. `on("PATCH", "/scale")`.
pub fn on(method: &'static str, path_suffix: &'static str) -> impl RequestMatcher {
    move |r| (method == "*" || r.method == method) && r.path.ends_with(path_suffix)
}

/// A Role rule, e.g. `rule(&["apps"], &["deployments/scale"], &["get", "patch"])`.
pub fn rule(api_groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    PolicyRule {
        api_groups: Some(owned(api_groups)),
        resources: Some(owned(resources)),
        verbs: owned(verbs),
        ..Default::default()
    }
}

/// A request the rules given to [`FakeKube::set_rbac`] did not allow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RbacViolation {
    pub verb: String,
    pub api_group: String,
    /// `deployments`, or `deployments/scale` for a subresource.
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// The handle
// ---------------------------------------------------------------------------------------------

struct Fault {
    matcher: Box<dyn RequestMatcher>,
    action: FaultAction,
}

enum FaultAction {
    /// Fail the next `.0` matching requests with status `.1`.
    FailNext(usize, u16),
    /// Fail every other matching request (this one when `.0` is set) with status `.1`.
    FailEveryOther(bool, u16),
    Delay(Duration),
}

#[derive(Default)]
struct Rbac {
    rules: Option<Vec<PolicyRule>>,
    violations: Vec<RbacViolation>,
}

struct Shared {
    addr: SocketAddr,
    store: Mutex<Store>,
    log: Mutex<Vec<RecordedRequest>>,
    faults: Mutex<Vec<Fault>>,
    rbac: Mutex<Rbac>,
    down: Arc<AtomicBool>,
}

/// Stops the server (and its watches) when the last [`FakeKube`] clone goes away.
struct ServerTask(tokio::task::JoinHandle<()>, broadcast::Sender<Bus>);

impl Drop for ServerTask {
    fn drop(&mut self) {
        let _ = self.1.send(Bus::DropWatches);
        self.0.abort();
    }
}

/// A running fake API server.
#[derive(Clone)]
pub struct FakeKube {
    shared: Arc<Shared>,
    _server: Arc<ServerTask>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl FakeKube {
    pub async fn start() -> FakeKube {
        Self::start_with(FakeKubeOptions::default()).await
    }

    pub async fn start_with(opts: FakeKubeOptions) -> FakeKube {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("fake kube address");
        let store = Store::new(opts);
        let bus = store.bus.clone();
        let down = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            addr,
            store: Mutex::new(store),
            log: Mutex::default(),
            faults: Mutex::default(),
            rbac: Mutex::default(),
            down: down.clone(),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let listener = DownableListener(listener, down);
        let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap_or(()) });
        let _server = Arc::new(ServerTask(task, bus));
        let fake = FakeKube { shared, _server };
        for ns in ["default", "kube-system"] {
            fake.put_object("Namespace", "", json!({ "metadata": { "name": ns } }));
        }
        fake
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// A kubeconfig for this server whose context has `namespace` as its namespace.
    pub fn kubeconfig_yaml(&self, namespace: &str) -> String {
        let url = self.url();
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
             clusters:\n- name: fake\n  cluster:\n    server: {url}\n\
             users:\n- name: fake\n  user:\n    token: fake-token\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
             \x20   namespace: {namespace}\n"
        )
    }

    /// Writes [`FakeKube::kubeconfig_yaml`] to `dir/kubeconfig`.
    pub fn write_kubeconfig(&self, dir: &Path, namespace: &str) -> PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(&path, self.kubeconfig_yaml(namespace)).expect("write kubeconfig");
        path
    }

    /// A real `kube::Client` built from this server's kubeconfig.
    pub async fn client(&self, namespace: &str) -> kube::Client {
        let yaml = self.kubeconfig_yaml(namespace);
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&yaml).expect("kubeconfig");
        let options = kube::config::KubeConfigOptions::default();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options).await;
        kube::Client::try_from(config.expect("kube config")).expect("kube client")
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.shared.store)
    }

    /// Serves another resource type.
    pub fn register_kind(&self, spec: KindSpec) {
        let mut store = self.store();
        store.kinds.push(spec);
        store.history.push(History::default());
    }

    // --- seeding and inspection: `kind` is a Kind (`Deployment`) or a plural (`deployments`).

    /// Creates an object as the API would; panics if it exists.
    pub fn create_object(&self, kind: &str, ns: &str, obj: Value) -> Value {
        let mut store = self.store();
        let k = store.kind_named(kind);
        let created = store.create(k, ns, obj, false);
        created.unwrap_or_else(|e| panic!("fake kube: {}", e.message))
    }

    /// Creates or replaces an object (keeping its uid and creation time).
    pub fn put_object(&self, kind: &str, ns: &str, obj: Value) -> Value {
        let mut store = self.store();
        let k = store.kind_named(kind);
        let name = meta_str(&obj, "name").expect("metadata.name").to_string();
        store.write(k, ns, &name, obj, false)
    }

    pub fn get_object(&self, kind: &str, ns: &str, name: &str) -> Option<Value> {
        let store = self.store();
        store.get(store.kind_named(kind), ns, name).cloned()
    }

    /// Deletes an object (a DELETED watch event); false if it did not exist.
    pub fn delete_object(&self, kind: &str, ns: &str, name: &str) -> bool {
        let mut store = self.store();
        let k = store.kind_named(kind);
        store.remove(k, ns, name, false).is_some()
    }

    /// Changes a stored object in place, as another client would; false if it does not exist.
    pub fn update_object(
        &self,
        kind: &str,
        ns: &str,
        name: &str,
        f: impl FnOnce(&mut Value),
    ) -> bool {
        let mut store = self.store();
        let k = store.kind_named(kind);
        let Some(mut obj) = store.get(k, ns, name).cloned() else {
            return false;
        };
        f(&mut obj);
        store.write(k, ns, name, obj, false);
        true
    }

    pub fn create_deployment(&self, ns: &str, name: &str, replicas: i32) -> Value {
        self.create_object("Deployment", ns, workload(name, replicas))
    }

    pub fn create_statefulset(&self, ns: &str, name: &str, replicas: i32) -> Value {
        let mut obj = workload(name, replicas);
        set_path(&mut obj, &["spec", "serviceName"], json!(name));
        self.create_object("StatefulSet", ns, obj)
    }

    /// Creates an `example.com/v1` `Worker`, a custom resource with a scale subresource.
    pub fn create_worker(&self, ns: &str, name: &str, replicas: i32) -> Value {
        let selector = json!({ "matchLabels": { "app": name } });
        let spec = json!({ "replicas": replicas, "selector": selector });
        self.create_object(
            "Worker",
            ns,
            json!({ "metadata": { "name": name }, "spec": spec }),
        )
    }

    /// Creates an `autoscaling/v2` HPA whose scale target is `target_kind`/`target_name`.
    pub fn create_hpa(&self, ns: &str, name: &str, target_kind: &str, target_name: &str) -> Value {
        let target = {
            let store = self.store();
            let kind = &store.kinds[store.kind_named(target_kind)];
            json!({ "apiVersion": kind.api_version(), "kind": kind.kind, "name": target_name })
        };
        let spec = json!({
            "scaleTargetRef": target, "minReplicas": 1, "maxReplicas": 10,
            "metrics": [{ "type": "Resource", "resource": {
                "name": "cpu", "target": { "type": "Utilization", "averageUtilization": 80 } } }],
        });
        let hpa = json!({ "metadata": { "name": name }, "spec": spec });
        self.create_object("HorizontalPodAutoscaler", ns, hpa)
    }

    /// `spec.replicas` of a stored object.
    pub fn replicas(&self, kind: &str, ns: &str, name: &str) -> Option<i32> {
        let replicas = self
            .get_object(kind, ns, name)?
            .pointer("/spec/replicas")?
            .as_i64()?;
        i32::try_from(replicas).ok()
    }

    /// Sets `spec.replicas` as another actor (`kubectl scale`) would.
    pub fn set_replicas(&self, kind: &str, ns: &str, name: &str, replicas: i32) -> bool {
        let replicas = json!(replicas);
        self.update_object(kind, ns, name, |o| {
            set_path(o, &["spec", "replicas"], replicas)
        })
    }

    /// Sets `status.replicas` (see [`FakeKube::set_status_follows_spec`]).
    pub fn set_status_replicas(&self, kind: &str, ns: &str, name: &str, replicas: i32) -> bool {
        let replicas = json!(replicas);
        self.update_object(kind, ns, name, |o| {
            set_path(o, &["status", "replicas"], replicas)
        })
    }

    /// Sets (`Some`) or removes (`None`) an annotation.
    pub fn set_annotation(
        &self,
        kind: &str,
        ns: &str,
        name: &str,
        key: &str,
        value: Option<&str>,
    ) -> bool {
        let value = value.map_or(Value::Null, |v| json!(v));
        self.update_object(kind, ns, name, |o| {
            set_path(o, &["metadata", "annotations", key], value)
        })
    }

    pub fn configmap(&self, ns: &str, name: &str) -> Option<BTreeMap<String, String>> {
        let obj = self.get_object("ConfigMap", ns, name)?;
        serde_json::from_value(obj.get("data").cloned().unwrap_or(json!({}))).ok()
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
        self.put_object(
            "ConfigMap",
            ns,
            json!({ "metadata": { "name": name }, "data": data }),
        )
    }

    /// Core v1 and events.k8s.io/v1 Events in `ns`, oldest first.
    pub fn events(&self, ns: &str) -> Vec<Value> {
        let store = self.store();
        let is_event = |(k, obj_ns, _): &&ObjKey| store.kinds[*k].kind == "Event" && obj_ns == ns;
        let mut events: Vec<Value> = store
            .objects
            .keys()
            .filter(is_event)
            .map(|key| store.objects[key].clone())
            .collect();
        let rv = |event: &Value| meta_str(event, "resourceVersion")?.parse::<u64>().ok();
        events.sort_by_key(rv);
        events
    }

    /// The current (global) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.store().rv
    }

    // --- request log

    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.log).clone()
    }

    pub fn clear_requests(&self) {
        lock(&self.shared.log).clear();
    }

    pub fn count(&self, pred: impl Fn(&RecordedRequest) -> bool) -> usize {
        lock(&self.shared.log).iter().filter(|r| pred(r)).count()
    }

    /// PATCH and PUT requests of any `/scale` subresource.
    pub fn scale_patches(&self) -> Vec<RecordedRequest> {
        let log = lock(&self.shared.log);
        log.iter().filter(|r| r.is_scale_write()).cloned().collect()
    }

    // --- fault injection

    /// The next `n` matching requests get a `Status` with code `status` (429 comes with
    /// `Retry-After: 1`). NB: kube's client itself retries 429, 503 and 504.
    pub fn fail_next(&self, matcher: impl RequestMatcher, n: usize, status: u16) {
        self.add_fault(matcher, FaultAction::FailNext(n, status));
    }

    /// Matching requests alternately fail (the first one) and succeed, until cleared.
    pub fn fail_every_other(&self, matcher: impl RequestMatcher, status: u16) {
        self.add_fault(matcher, FaultAction::FailEveryOther(true, status));
    }

    /// Matching requests are answered only after `delay`, until cleared.
    pub fn set_delay(&self, matcher: impl RequestMatcher, delay: Duration) {
        self.add_fault(matcher, FaultAction::Delay(delay));
    }

    fn add_fault(&self, matcher: impl RequestMatcher, action: FaultAction) {
        let matcher = Box::new(matcher);
        lock(&self.shared.faults).push(Fault { matcher, action });
    }

    pub fn clear_faults(&self) {
        lock(&self.shared.faults).clear();
    }

    /// Ends every open watch stream now (clients see a clean end of stream).
    pub fn drop_watches(&self) {
        let _ = self.store().bus.send(Bus::DropWatches);
    }

    /// Forgets the watch history: every resourceVersion handed out so far becomes too old, and
    /// resuming a watch from one gets a `410 Expired` ERROR event.
    pub fn compact_history(&self) {
        self.store().compact();
    }

    pub fn set_history_limit(&self, limit: usize) {
        self.store().opts.history_limit = limit;
    }

    pub fn set_status_follows_spec(&self, follow: bool) {
        self.store().opts.status_follows_spec = follow;
    }

    /// While down, new connections are closed at once, requests on open connections get a 503
    /// with `Connection: close`, and watches end.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
        if down {
            self.drop_watches();
        }
    }

    // --- RBAC

    /// From now on only requests allowed by `rules` (a Role's rules) are served; others get a
    /// 403 and are recorded as violations. Discovery is always allowed.
    pub fn set_rbac(&self, rules: Vec<PolicyRule>) {
        lock(&self.shared.rbac).rules = Some(rules);
    }

    pub fn clear_rbac(&self) {
        lock(&self.shared.rbac).rules = None;
    }

    pub fn rbac_violations(&self) -> Vec<RbacViolation> {
        lock(&self.shared.rbac).violations.clone()
    }
}

fn workload(name: &str, replicas: i32) -> Value {
    let labels = json!({ "app": name });
    let container = json!({ "name": "app", "image": "example.invalid/app:1" });
    json!({
        "metadata": { "name": name, "labels": labels },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": labels },
            "template": { "metadata": { "labels": labels }, "spec": { "containers": [container] } },
        },
    })
}

/// A listener that drops new connections while the server is "down".
struct DownableListener(TcpListener, Arc<AtomicBool>);

impl axum::serve::Listener for DownableListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            let (io, addr) = axum::serve::Listener::accept(&mut self.0).await;
            if !self.1.load(Ordering::SeqCst) {
                return (io, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

// ---------------------------------------------------------------------------------------------
// Object store, resourceVersions and watch history
// ---------------------------------------------------------------------------------------------

/// (kind index, namespace or "" when cluster-scoped, name)
type ObjKey = (usize, String, String);

struct Change {
    rv: u64,
    kind: usize,
    ns: String,
    event: &'static str,
    object: Value,
}

#[derive(Clone)]
enum Bus {
    Change(Arc<Change>),
    DropWatches,
}

#[derive(Default)]
struct History {
    events: VecDeque<Arc<Change>>,
    /// Watches may resume from any resourceVersion >= floor.
    floor: u64,
}

struct Store {
    rv: u64,
    kinds: Vec<KindSpec>,
    objects: BTreeMap<ObjKey, Value>,
    /// Server-side-apply field ownership, reduced to top-level `spec` fields: enough for the
    /// conflict that makes lease-based leader election safe.
    owners: BTreeMap<(ObjKey, String), String>,
    history: Vec<History>,
    opts: FakeKubeOptions,
    bus: broadcast::Sender<Bus>,
}

impl Store {
    fn new(opts: FakeKubeOptions) -> Self {
        let kinds = builtin_kinds();
        let history = kinds.iter().map(|_| History::default()).collect();
        let bus = broadcast::channel(4096).0;
        Store {
            rv: 0,
            kinds,
            objects: BTreeMap::new(),
            owners: BTreeMap::new(),
            history,
            opts,
            bus,
        }
    }

    fn kind_named(&self, kind: &str) -> usize {
        let found = self
            .kinds
            .iter()
            .position(|k| k.kind == kind || k.plural == kind);
        found.unwrap_or_else(|| panic!("fake kube: unknown kind {kind}"))
    }

    fn key(&self, k: usize, ns: &str, name: &str) -> ObjKey {
        let ns = if self.kinds[k].namespaced { ns } else { "" };
        (k, ns.to_string(), name.to_string())
    }

    fn get(&self, k: usize, ns: &str, name: &str) -> Option<&Value> {
        self.objects.get(&self.key(k, ns, name))
    }

    fn matching<'a>(&'a self, filter: &'a Filter) -> impl Iterator<Item = &'a Value> + 'a {
        let found = self
            .objects
            .iter()
            .filter(|((k, ns, _), o)| filter.matches(*k, ns, o));
        found.map(|(_, obj)| obj)
    }

    /// Stores the new state of an object as the API server does: identity fields, generation,
    /// status, resourceVersion, no-op detection and a watch event. Returns what was stored.
    fn write(&mut self, k: usize, ns: &str, name: &str, mut obj: Value, dry_run: bool) -> Value {
        let kind = &self.kinds[k];
        let key = self.key(k, ns, name);
        let old = self.objects.get(&key).cloned();
        set_path(&mut obj, &["apiVersion"], json!(kind.api_version()));
        set_path(&mut obj, &["kind"], json!(kind.kind));
        set_meta(&mut obj, "name", json!(name));
        let namespace = if kind.namespaced {
            json!(ns)
        } else {
            Value::Null
        };
        set_meta(&mut obj, "namespace", namespace);
        if kind.group == "apps" && obj.pointer("/spec/replicas").is_none() {
            set_path(&mut obj, &["spec", "replicas"], json!(1));
        }
        let generation = match &old {
            Some(old) => {
                set_meta(&mut obj, "uid", old["metadata"]["uid"].clone());
                set_meta(
                    &mut obj,
                    "creationTimestamp",
                    old["metadata"]["creationTimestamp"].clone(),
                );
                let generation = old.pointer("/metadata/generation").and_then(Value::as_u64);
                generation.map(|g| g + u64::from(old.get("spec") != obj.get("spec")))
            }
            None => {
                set_meta(&mut obj, "uid", json!(new_uid()));
                set_meta(&mut obj, "creationTimestamp", json!(now_rfc3339()));
                obj.get("spec").map(|_| 1)
            }
        };
        set_meta(&mut obj, "generation", json!(generation));
        if kind.scale && self.opts.status_follows_spec {
            sync_status(&mut obj);
        }
        let old_rv = old
            .as_ref()
            .map(|o| o["metadata"]["resourceVersion"].clone());
        set_meta(&mut obj, "resourceVersion", old_rv.unwrap_or_default());
        if dry_run || old.as_ref() == Some(&obj) {
            return obj;
        }
        self.rv += 1;
        set_meta(&mut obj, "resourceVersion", json!(self.rv.to_string()));
        let event = if old.is_some() { "MODIFIED" } else { "ADDED" };
        self.publish(k, &key.1, event, obj.clone());
        self.objects.insert(key, obj.clone());
        obj
    }

    fn remove(&mut self, k: usize, ns: &str, name: &str, dry_run: bool) -> Option<Value> {
        let key = self.key(k, ns, name);
        if dry_run {
            return self.objects.get(&key).cloned();
        }
        let mut obj = self.objects.remove(&key)?;
        self.rv += 1;
        set_meta(&mut obj, "resourceVersion", json!(self.rv.to_string()));
        self.publish(k, &key.1, "DELETED", obj.clone());
        Some(obj)
    }

    fn publish(&mut self, kind: usize, ns: &str, event: &'static str, object: Value) {
        let ns = ns.to_string();
        let change = Arc::new(Change {
            rv: self.rv,
            kind,
            ns,
            event,
            object,
        });
        let history = &mut self.history[kind];
        history.events.push_back(change.clone());
        while history.events.len() > self.opts.history_limit {
            history.floor = history.events.pop_front().map_or(history.floor, |c| c.rv);
        }
        // Sent under the store lock, so the bus carries changes in resourceVersion order.
        let _ = self.bus.send(Bus::Change(change));
    }

    /// Forgets all history, as if other writes had happened and etcd had been compacted.
    fn compact(&mut self) {
        self.rv += 1;
        for history in &mut self.history {
            history.events.clear();
            history.floor = self.rv;
        }
    }
}

/// What `status` says once the controller has caught up with `spec.replicas`.
fn sync_status(obj: &mut Value) {
    let replicas = obj.pointer("/spec/replicas").cloned().unwrap_or(json!(0));
    let generation = obj["metadata"]["generation"].clone();
    for field in [
        "replicas",
        "readyReplicas",
        "availableReplicas",
        "updatedReplicas",
    ] {
        set_path(obj, &["status", field], replicas.clone());
    }
    set_path(obj, &["status", "observedGeneration"], generation);
}

/// The `autoscaling/v1` `Scale` view of an object.
fn scale_of(obj: &Value) -> Value {
    let meta = |field: &str| obj["metadata"][field].clone();
    let int = |pointer: &str| obj.pointer(pointer).and_then(Value::as_i64).unwrap_or(0);
    json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta("name"), "namespace": meta("namespace"), "uid": meta("uid"),
            "resourceVersion": meta("resourceVersion"),
            "creationTimestamp": meta("creationTimestamp"),
        },
        "spec": { "replicas": int("/spec/replicas") },
        "status": { "replicas": int("/status/replicas"), "selector": selector_string(obj) },
    })
}

/// `status.selector` if the object has one (custom resources), else `spec.selector.matchLabels`.
fn selector_string(obj: &Value) -> String {
    if let Some(selector) = obj.pointer("/status/selector").and_then(Value::as_str) {
        return selector.to_string();
    }
    let labels = obj
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object);
    let term = |(k, v): (&String, &Value)| format!("{k}={}", v.as_str().unwrap_or_default());
    labels
        .into_iter()
        .flatten()
        .map(term)
        .collect::<Vec<_>>()
        .join(",")
}

/// Which objects a list or watch is about.
struct Filter {
    kind: usize,
    ns: Option<String>,
    labels: Option<String>,
    fields: Option<String>,
}

impl Filter {
    fn matches(&self, kind: usize, ns: &str, obj: &Value) -> bool {
        let label = |key: &str| obj["metadata"]["labels"][key].as_str().map(str::to_string);
        let field = |path: &str| {
            let value = obj.pointer(&format!("/{}", path.replace('.', "/")))?;
            Some(
                value
                    .as_str()
                    .map_or_else(|| value.to_string(), str::to_string),
            )
        };
        kind == self.kind
            && self.ns.as_deref().is_none_or(|want| want == ns)
            && self
                .labels
                .as_deref()
                .is_none_or(|s| selector_matches(s, label))
            && self
                .fields
                .as_deref()
                .is_none_or(|s| selector_matches(s, field))
    }
}

/// Equality (`a=b`, `a==b`, `a!=b`) and existence (`a`, `!a`) selectors. Set-based ones
/// (`a in (x,y)`) are not implemented and match everything.
fn selector_matches(selector: &str, lookup: impl Fn(&str) -> Option<String>) -> bool {
    let term_matches = |term: &str| {
        if let Some((key, value)) = term.split_once("!=") {
            lookup(key.trim()).as_deref() != Some(value.trim())
        } else if let Some((key, value)) = term.split_once('=') {
            lookup(key.trim()).as_deref() == Some(value.trim_start_matches('=').trim())
        } else if let Some(key) = term.strip_prefix('!') {
            lookup(key.trim()).is_none()
        } else {
            lookup(term).is_some()
        }
    };
    let terms = selector.split(',').map(str::trim).filter(|t| !t.is_empty());
    selector.contains('(') || terms.into_iter().all(term_matches)
}

// ---------------------------------------------------------------------------------------------
// HTTP handling and routing
// ---------------------------------------------------------------------------------------------

/// An API error, answered as a `Status` object.
#[derive(Debug)]
struct ApiError {
    code: u16,
    reason: &'static str,
    message: String,
    details: Value,
}

impl ApiError {
    fn new(code: u16, message: impl Into<String>) -> Self {
        let reason = reason_for(code);
        ApiError {
            code,
            reason,
            message: message.into(),
            details: Value::Null,
        }
    }

    /// An error about one object; `message` follows its qualified name and quoted name.
    fn about(code: u16, kind: &KindSpec, name: &str, message: &str) -> Self {
        let details = json!({ "name": name, "group": kind.group, "kind": kind.plural });
        let message = format!("{} \"{name}\"{message}", kind.qualified());
        ApiError {
            details,
            ..Self::new(code, message)
        }
    }

    fn not_found(kind: &KindSpec, name: &str) -> Self {
        Self::about(404, kind, name, " not found")
    }

    fn conflict(kind: &KindSpec, name: &str) -> Self {
        let message = ": the object has been modified; please apply your changes to the latest \
                       version and try again";
        let error = Self::about(409, kind, name, message);
        ApiError {
            message: format!("Operation cannot be fulfilled on {}", error.message),
            ..error
        }
    }

    fn status(&self) -> Value {
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "details": self.details,
            "code": self.code,
        })
    }

    fn into_response(self) -> Response {
        let mut response = json_response(self.code, &self.status());
        if self.code == 429 {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        410 => "Expired",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    }
}

fn json_response(code: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let content_type = match body["kind"].as_str() {
        Some("APIGroupDiscoveryList") => AGGREGATED,
        _ => "application/json",
    };
    (
        status,
        [(header::CONTENT_TYPE, content_type)],
        body.to_string(),
    )
        .into_response()
}

type ApiResult = Result<Response, ApiError>;

/// A request, as the handlers need it.
struct Incoming {
    record: RecordedRequest,
    method: Method,
    params: HashMap<String, String>,
    accept: String,
    body: Bytes,
}

impl Incoming {
    fn param(&self, key: &str) -> Option<&str> {
        self.params
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.param(key), Some("true" | "1"))
    }

    fn dry_run(&self) -> bool {
        self.params.contains_key("dryRun")
    }

    fn json(&self) -> Result<Value, ApiError> {
        let body = serde_json::from_slice(&self.body);
        body.map_err(|e| ApiError::new(400, format!("invalid JSON body: {e}")))
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut record = RecordedRequest::new(&method, &uri, &headers, &body);
    let response = match Query::try_from_uri(&uri) {
        Ok(Query(params)) => {
            let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
            let accept = accept.unwrap_or_default().to_string();
            let req = Incoming {
                record: record.clone(),
                method,
                params,
                accept,
                body,
            };
            shared
                .respond(&req)
                .await
                .unwrap_or_else(ApiError::into_response)
        }
        Err(e) => ApiError::new(400, e.body_text()).into_response(),
    };
    record.status = response.status().as_u16();
    lock(&shared.log).push(record);
    response
}

/// A request for a resource, after routing.
struct ResourceReq {
    k: usize,
    kind: KindSpec,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
    verb: &'static str,
}

impl ResourceReq {
    fn ns(&self) -> &str {
        self.ns.as_deref().unwrap_or_default()
    }

    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }

    fn filter(&self, req: &Incoming) -> Filter {
        let labels = req.param("labelSelector").map(str::to_string);
        let fields = req.param("fieldSelector").map(str::to_string);
        Filter {
            kind: self.k,
            ns: self.ns.clone(),
            labels,
            fields,
        }
    }
}

enum Route {
    Discovery(Value),
    Resource(ResourceReq),
}

impl Shared {
    async fn respond(&self, req: &Incoming) -> ApiResult {
        if self.down.load(Ordering::SeqCst) {
            let mut response = ApiError::new(503, "the server is down").into_response();
            let close = HeaderValue::from_static("close");
            response.headers_mut().insert(header::CONNECTION, close);
            return Ok(response);
        }
        if let Some(delay) = self.delay_for(&req.record) {
            tokio::time::sleep(delay).await;
        }
        if let Some(code) = self.injected_failure(&req.record) {
            return Err(ApiError::new(code, format!("injected failure ({code})")));
        }
        let route = route(&lock(&self.store), req)?;
        match route {
            Route::Discovery(doc) => Ok(json_response(200, &doc)),
            Route::Resource(rr) => {
                self.authorize(&rr)?;
                lock(&self.store).serve(&rr, req)
            }
        }
    }

    fn delay_for(&self, record: &RecordedRequest) -> Option<Duration> {
        let faults = lock(&self.faults);
        let mut matching = faults.iter().filter(|fault| (fault.matcher)(record));
        matching.find_map(|fault| match fault.action {
            FaultAction::Delay(delay) => Some(delay),
            _ => None,
        })
    }

    /// The status code to fail this request with, if a fault says so.
    fn injected_failure(&self, record: &RecordedRequest) -> Option<u16> {
        let mut faults = lock(&self.faults);
        let mut matching = faults.iter_mut().filter(|fault| (fault.matcher)(record));
        let outcome = matching.find_map(|fault| match &mut fault.action {
            FaultAction::FailNext(0, _) | FaultAction::Delay(_) => None,
            FaultAction::FailNext(remaining, status) => {
                *remaining -= 1;
                Some(Some(*status))
            }
            FaultAction::FailEveryOther(fail_now, status) => {
                *fail_now = !*fail_now;
                Some((!*fail_now).then_some(*status))
            }
        });
        outcome.flatten()
    }

    fn authorize(&self, rr: &ResourceReq) -> Result<(), ApiError> {
        let mut rbac = lock(&self.rbac);
        let resource = match &rr.sub {
            Some(sub) => format!("{}/{sub}", rr.kind.plural),
            None => rr.kind.plural.clone(),
        };
        let allowed = match &rbac.rules {
            Some(rules) => rules.iter().any(|rule| rule_allows(rule, rr, &resource)),
            None => true,
        };
        if allowed {
            return Ok(());
        }
        let (verb, group) = (rr.verb.to_string(), rr.kind.group.clone());
        let message = format!(
            " is forbidden: User \"fake\" cannot {verb} resource \"{resource}\" in API group \
             \"{group}\" in the namespace \"{}\"",
            rr.ns()
        );
        let (namespace, name) = (rr.ns.clone(), rr.name.clone());
        let violation = RbacViolation {
            verb,
            api_group: group,
            resource,
            namespace,
            name,
        };
        rbac.violations.push(violation);
        Err(ApiError::about(403, &rr.kind, rr.name(), &message))
    }
}

/// Whether a Role rule allows a request, with the API server's wildcards (`*`, `*/scale`).
fn rule_allows(rule: &PolicyRule, rr: &ResourceReq, resource: &str) -> bool {
    let listed = |list: &Option<Vec<String>>, item: &str| {
        list.iter().flatten().any(|x| x == "*" || x == item)
    };
    let any_with_sub = rr
        .sub
        .as_ref()
        .map(|sub| format!("*/{sub}"))
        .unwrap_or_default();
    let names = rule.resource_names.as_deref().unwrap_or_default();
    rule.verbs.iter().any(|v| v == "*" || v == rr.verb)
        && listed(&rule.api_groups, &rr.kind.group)
        && (listed(&rule.resources, resource) || listed(&rule.resources, &any_with_sub))
        && (names.is_empty() || names.iter().any(|n| Some(n) == rr.name.as_ref()))
}

fn route(store: &Store, req: &Incoming) -> Result<Route, ApiError> {
    let not_found = || ApiError::new(404, "the server could not find the requested resource");
    let segments: Vec<&str> = req.record.path.trim_matches('/').split('/').collect();
    let aggregated = req.accept.contains("as=APIGroupDiscoveryList");
    let kinds = &store.kinds;
    let doc = match segments.as_slice() {
        ["version"] => Some(version_info()),
        ["api"] if aggregated => Some(aggregated_discovery(kinds, true)),
        ["api"] => Some(core_versions()),
        ["apis"] if aggregated => Some(aggregated_discovery(kinds, false)),
        ["apis"] => Some(group_list(kinds)),
        ["apis", group] => Some(group_doc(kinds, group).ok_or_else(not_found)?),
        ["api", version] => Some(resource_list(kinds, "", version).ok_or_else(not_found)?),
        ["apis", group, version] => {
            Some(resource_list(kinds, group, version).ok_or_else(not_found)?)
        }
        _ => None,
    };
    if let Some(doc) = doc {
        if req.method != Method::GET {
            return Err(ApiError::new(
                405,
                format!("{} is not supported here", req.method),
            ));
        }
        return Ok(Route::Discovery(doc));
    }
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return Err(not_found()),
    };
    let (ns, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let (plural, name, sub) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(name.to_string()), None),
        [plural, name, sub] => (*plural, Some(name.to_string()), Some(sub.to_string())),
        _ => return Err(not_found()),
    };
    let served = |k: &KindSpec| k.group == group && k.version == version && k.plural == plural;
    let k = kinds.iter().position(served).ok_or_else(not_found)?;
    let kind = kinds[k].clone();
    let verb = match (&req.method, name.is_some()) {
        (&Method::GET, false) if req.flag("watch") => "watch",
        (&Method::GET, false) => "list",
        (&Method::GET, true) => "get",
        (&Method::POST, false) => "create",
        (&Method::PUT, true) => "update",
        (&Method::PATCH, true) => "patch",
        (&Method::DELETE, true) => "delete",
        _ => {
            return Err(ApiError::new(
                405,
                format!("{} is not supported here", req.method),
            ))
        }
    };
    let sub_ok = match sub.as_deref() {
        None => true,
        Some("scale") => kind.scale,
        Some("status") => kind.status,
        Some(_) => false,
    };
    let all_namespaces = ns.is_none() && matches!(verb, "list" | "watch");
    if !sub_ok || kind.namespaced != (ns.is_some() || all_namespaces) {
        return Err(not_found());
    }
    Ok(Route::Resource(ResourceReq {
        k,
        kind,
        ns,
        name,
        sub,
        verb,
    }))
}

// ---------------------------------------------------------------------------------------------
// Verbs
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum PatchType {
    Merge,
    Apply,
}

fn patch_type(req: &Incoming) -> Result<PatchType, ApiError> {
    let content_type = req.record.content_type.as_deref().unwrap_or_default();
    match content_type.split(';').next().unwrap_or_default().trim() {
        "application/merge-patch+json" => Ok(PatchType::Merge),
        "application/strategic-merge-patch+json" => Ok(PatchType::Merge),
        "application/apply-patch+yaml" if req.param("fieldManager").is_some() => {
            Ok(PatchType::Apply)
        }
        "application/apply-patch+yaml" => {
            Err(ApiError::new(422, "fieldManager is required for apply"))
        }
        other => Err(ApiError::new(
            415,
            format!("unsupported patch content type {other:?}"),
        )),
    }
}

/// Conflict when `new` names a resourceVersion or uid other than the stored one.
fn check_preconditions(kind: &KindSpec, old: &Value, new: &Value) -> Result<(), ApiError> {
    for field in ["resourceVersion", "uid"] {
        if meta_str(new, field).is_some_and(|value| Some(value) != meta_str(old, field)) {
            return Err(ApiError::conflict(
                kind,
                meta_str(old, "name").unwrap_or_default(),
            ));
        }
    }
    Ok(())
}

/// Main-resource writes keep the stored status; `/status` writes change only the status.
fn restrict_to_subresource(rr: &ResourceReq, old: &Value, new: Value) -> Value {
    if !rr.kind.status {
        return new;
    }
    let (mut base, status) = match rr.sub.as_deref() {
        Some("status") => (old.clone(), new.get("status").cloned()),
        _ => (new, old.get("status").cloned()),
    };
    set_path(&mut base, &["status"], status.unwrap_or_default());
    base
}

impl Store {
    fn serve(&mut self, rr: &ResourceReq, req: &Incoming) -> ApiResult {
        let ok = |obj: Value| json_response(200, &obj);
        match (rr.verb, rr.sub.as_deref()) {
            ("get", Some("scale")) => self.existing(rr).map(|obj| ok(scale_of(&obj))),
            ("get", _) => self.existing(rr).map(ok),
            ("list", None) => Ok(ok(self.list(rr, req))),
            ("watch", None) => self.watch(rr, req),
            ("create", None) => {
                let created = self.create(rr.k, rr.ns(), req.json()?, req.dry_run())?;
                Ok(json_response(201, &created))
            }
            ("update" | "patch", Some("scale")) => self.write_scale(rr, req).map(ok),
            ("update", _) => self.replace(rr, req).map(ok),
            ("patch", _) => self.patch(rr, req),
            ("delete", None) => self.delete(rr, req).map(ok),
            _ => Err(ApiError::new(
                405,
                format!("{} is not supported here", req.method),
            )),
        }
    }

    fn existing(&self, rr: &ResourceReq) -> Result<Value, ApiError> {
        let found = self.get(rr.k, rr.ns(), rr.name()).cloned();
        found.ok_or_else(|| ApiError::not_found(&rr.kind, rr.name()))
    }

    fn list(&self, rr: &ResourceReq, req: &Incoming) -> Value {
        let filter = rr.filter(req);
        let items: Vec<&Value> = self.matching(&filter).collect();
        json!({
            "kind": format!("{}List", rr.kind.kind), "apiVersion": rr.kind.api_version(),
            "metadata": { "resourceVersion": self.rv.to_string() }, "items": items,
        })
    }

    fn create(
        &mut self,
        k: usize,
        ns: &str,
        mut obj: Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let kind = &self.kinds[k];
        let name = match (meta_str(&obj, "name"), meta_str(&obj, "generateName")) {
            (Some(name), _) => name.to_string(),
            (None, Some(prefix)) => format!("{prefix}{}", &new_uid()[..5]),
            (None, None) => return Err(ApiError::new(422, "metadata.name: Required value")),
        };
        if kind.namespaced && meta_str(&obj, "namespace").is_some_and(|n| n != ns) {
            let message = "the namespace of the object does not match the namespace on the request";
            return Err(ApiError::new(400, message));
        }
        if self.get(k, ns, &name).is_some() {
            let error = ApiError::about(409, kind, &name, " already exists");
            return Err(ApiError {
                reason: "AlreadyExists",
                ..error
            });
        }
        if kind.status {
            set_path(&mut obj, &["status"], Value::Null);
        }
        Ok(self.write(k, ns, &name, obj, dry_run))
    }

    fn replace(&mut self, rr: &ResourceReq, req: &Incoming) -> Result<Value, ApiError> {
        let body = req.json()?;
        if meta_str(&body, "name").is_some_and(|name| name != rr.name()) {
            return Err(ApiError::new(
                400,
                "the name of the object does not match the URL",
            ));
        }
        let old = self.existing(rr)?;
        check_preconditions(&rr.kind, &old, &body)?;
        let new = restrict_to_subresource(rr, &old, body);
        Ok(self.write(rr.k, rr.ns(), rr.name(), new, req.dry_run()))
    }

    fn patch(&mut self, rr: &ResourceReq, req: &Incoming) -> ApiResult {
        let patch_type = patch_type(req)?;
        let patch = req.json()?;
        let Some(mut obj) = self.get(rr.k, rr.ns(), rr.name()).cloned() else {
            if patch_type != PatchType::Apply {
                return Err(ApiError::not_found(&rr.kind, rr.name()));
            }
            let mut obj = patch;
            set_meta(&mut obj, "name", json!(rr.name()));
            let created = self.create(rr.k, rr.ns(), obj, req.dry_run())?;
            return Ok(json_response(201, &created));
        };
        let old = obj.clone();
        self.claim_fields(rr, req, patch_type, &old, &patch)?;
        merge_patch(&mut obj, &patch);
        check_preconditions(&rr.kind, &old, &obj)?;
        let new = restrict_to_subresource(rr, &old, obj);
        let stored = self.write(rr.k, rr.ns(), rr.name(), new, req.dry_run());
        Ok(json_response(200, &stored))
    }

    /// Server-side apply without `force` may not change a `spec` field that another field
    /// manager owns (409 Conflict); any patch takes ownership of the fields it sets.
    fn claim_fields(
        &mut self,
        rr: &ResourceReq,
        req: &Incoming,
        patch_type: PatchType,
        old: &Value,
        patch: &Value,
    ) -> Result<(), ApiError> {
        let Some(fields) = patch.get("spec").and_then(Value::as_object) else {
            return Ok(());
        };
        let key = self.key(rr.k, rr.ns(), rr.name());
        let manager = req.param("fieldManager").unwrap_or("unknown").to_string();
        let force = req.param("force") == Some("true");
        if patch_type == PatchType::Apply && !force {
            for (field, value) in fields {
                let current = &old["spec"][field];
                let owner = self.owners.get(&(key.clone(), field.clone()));
                if !current.is_null() && current != value && owner.is_some_and(|o| *o != manager) {
                    let mut error = ApiError::conflict(&rr.kind, rr.name());
                    error.message = format!(
                        "Apply failed with 1 conflict: conflict with \"{}\": .spec.{field}",
                        owner.map(String::as_str).unwrap_or_default()
                    );
                    return Err(error);
                }
            }
        }
        for (field, value) in fields {
            let slot = (key.clone(), field.clone());
            if value.is_null() {
                self.owners.remove(&slot);
            } else {
                self.owners.insert(slot, manager.clone());
            }
        }
        Ok(())
    }

    /// Changes `spec.replicas` through the `Scale` view (PUT or PATCH).
    fn write_scale(&mut self, rr: &ResourceReq, req: &Incoming) -> Result<Value, ApiError> {
        let old = self.existing(rr)?;
        let mut scale = req.json()?;
        if rr.verb == "patch" {
            patch_type(req)?;
            let patch = std::mem::replace(&mut scale, scale_of(&old));
            merge_patch(&mut scale, &patch);
        }
        check_preconditions(&rr.kind, &old, &scale)?;
        let replicas = match scale.pointer("/spec/replicas") {
            None | Some(Value::Null) => Some(0),
            Some(value) => value.as_i64(),
        };
        let replicas =
            replicas.ok_or_else(|| ApiError::new(400, "spec.replicas: not an integer"))?;
        if !(0..=i64::from(i32::MAX)).contains(&replicas) {
            let message = " is invalid: spec.replicas: must be greater than or equal to 0";
            return Err(ApiError::about(422, &rr.kind, rr.name(), message));
        }
        let mut new = old;
        set_path(&mut new, &["spec", "replicas"], json!(replicas));
        Ok(scale_of(&self.write(
            rr.k,
            rr.ns(),
            rr.name(),
            new,
            req.dry_run(),
        )))
    }

    fn delete(&mut self, rr: &ResourceReq, req: &Incoming) -> Result<Value, ApiError> {
        let old = self.existing(rr)?;
        let options = if req.body.is_empty() {
            json!({})
        } else {
            req.json()?
        };
        let preconditions = json!({ "metadata": options["preconditions"] });
        check_preconditions(&rr.kind, &old, &preconditions)?;
        self.remove(rr.k, rr.ns(), rr.name(), req.dry_run());
        let details = json!({
            "name": rr.name(), "group": rr.kind.group, "kind": rr.kind.plural,
            "uid": old["metadata"]["uid"],
        });
        Ok(json!({ "kind": "Status", "apiVersion": "v1", "status": "Success", "details": details }))
    }

    /// Replays history (or the current state) and then streams live changes. Like the API
    /// server, a too old resourceVersion gets an in-stream `ERROR` with a 410 `Expired` status.
    fn watch(&self, rr: &ResourceReq, req: &Incoming) -> ApiResult {
        let start = match req.param("resourceVersion") {
            None | Some("0") => None,
            Some(rv) => Some(
                rv.parse::<u64>()
                    .map_err(|_| ApiError::new(400, "bad resourceVersion"))?,
            ),
        };
        let filter = rr.filter(req);
        let history = &self.history[rr.k];
        let mut initial = Vec::new();
        let mut expired = false;
        match start {
            None => {
                initial.extend(self.matching(&filter).map(|obj| event_line("ADDED", obj)));
                if req.flag("sendInitialEvents") {
                    initial.push(bookmark_line(&rr.kind, self.rv, true));
                }
            }
            Some(rv) if rv < history.floor => {
                let message = format!("too old resource version: {rv} ({})", history.floor);
                initial.push(event_line("ERROR", &ApiError::new(410, message).status()));
                expired = true;
            }
            Some(rv) => {
                let newer = history.events.iter().filter(|c| c.rv > rv);
                let replay = newer.filter(|c| filter.matches(c.kind, &c.ns, &c.object));
                initial.extend(replay.map(|c| event_line(c.event, &c.object)));
            }
        }
        let timeout = req.param("timeoutSeconds").and_then(|s| s.parse().ok());
        let stream = WatchStream {
            bus: self.bus.subscribe(),
            filter,
            kind: rr.kind.clone(),
            last_rv: self.rv,
            bookmarks: req
                .flag("allowWatchBookmarks")
                .then_some(self.opts.bookmark_interval),
            timeout: timeout.map_or(self.opts.default_watch_timeout, Duration::from_secs),
        };
        let (tx, rx) = mpsc::channel::<Bytes>(16);
        tokio::spawn(stream.pump(tx, initial, expired));
        let body = futures::stream::unfold(rx, |mut rx| async move {
            let line = rx.recv().await?;
            Some((Ok::<_, Infallible>(line), rx))
        });
        let content_type = [(header::CONTENT_TYPE, "application/json")];
        Ok((StatusCode::OK, content_type, Body::from_stream(body)).into_response())
    }
}

// ---------------------------------------------------------------------------------------------
// Watch streams
// ---------------------------------------------------------------------------------------------

fn event_line(event: &str, object: &Value) -> Bytes {
    Bytes::from(format!("{}\n", json!({ "type": event, "object": object })))
}

fn bookmark_line(kind: &KindSpec, rv: u64, initial_events_end: bool) -> Bytes {
    let annotations = if initial_events_end {
        json!({ INITIAL_EVENTS_END: "true" })
    } else {
        json!({})
    };
    let metadata = json!({ "resourceVersion": rv.to_string(), "annotations": annotations });
    let bookmark =
        json!({ "kind": kind.kind, "apiVersion": kind.api_version(), "metadata": metadata });
    event_line("BOOKMARK", &bookmark)
}

struct WatchStream {
    bus: broadcast::Receiver<Bus>,
    filter: Filter,
    kind: KindSpec,
    /// The newest resourceVersion this watch has seen go by; bookmarks carry it.
    last_rv: u64,
    bookmarks: Option<Duration>,
    timeout: Duration,
}

impl WatchStream {
    async fn pump(mut self, tx: mpsc::Sender<Bytes>, initial: Vec<Bytes>, expired: bool) {
        for line in initial {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        if expired {
            return;
        }
        let deadline = tokio::time::sleep(self.timeout);
        tokio::pin!(deadline);
        let period = self.bookmarks.unwrap_or(Duration::from_secs(3600));
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            let line = tokio::select! {
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                _ = ticker.tick(), if self.bookmarks.is_some() => {
                    bookmark_line(&self.kind, self.last_rv, false)
                }
                message = self.bus.recv() => match message {
                    Ok(Bus::Change(change)) => {
                        self.last_rv = change.rv;
                        if !self.filter.matches(change.kind, &change.ns, &change.object) {
                            continue;
                        }
                        event_line(change.event, &change.object)
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let error = ApiError::new(410, "watch fell behind");
                        let _ = tx.send(event_line("ERROR", &error.status())).await;
                        return;
                    }
                    Ok(Bus::DropWatches) | Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            if tx.send(line).await.is_err() {
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Discovery documents
// ---------------------------------------------------------------------------------------------

fn group_version(group: &str, version: &str) -> String {
    match group {
        "" => version.to_string(),
        group => format!("{group}/{version}"),
    }
}

fn version_info() -> Value {
    json!({
        "major": "1", "minor": "33", "gitVersion": "v1.33.0-fake", "gitCommit": "fake",
        "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24",
        "compiler": "gc", "platform": "linux/amd64",
    })
}

fn core_versions() -> Value {
    let address = json!({ "clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1" });
    json!({ "kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [address] })
}

fn verbs(subresource: bool) -> Value {
    if subresource {
        json!(["get", "patch", "update"])
    } else {
        json!(["create", "delete", "get", "list", "patch", "update", "watch"])
    }
}

/// Distinct values of `field` over `kinds`, in order.
fn distinct<'a>(
    kinds: impl Iterator<Item = &'a KindSpec>,
    field: fn(&KindSpec) -> &str,
) -> Vec<&'a str> {
    let mut seen: Vec<&str> = Vec::new();
    for kind in kinds {
        if !seen.contains(&field(kind)) {
            seen.push(field(kind));
        }
    }
    seen
}

fn versions<'a>(kinds: &'a [KindSpec], group: &str) -> Vec<&'a str> {
    distinct(kinds.iter().filter(|k| k.group == group), |k| &k.version)
}

fn groups(kinds: &[KindSpec]) -> Vec<&str> {
    distinct(kinds.iter().filter(|k| !k.group.is_empty()), |k| &k.group)
}

fn group_doc(kinds: &[KindSpec], group: &str) -> Option<Value> {
    let version = |v: &str| json!({ "groupVersion": format!("{group}/{v}"), "version": v });
    let versions: Vec<Value> = versions(kinds, group).into_iter().map(version).collect();
    let preferred = versions.first()?.clone();
    Some(json!({
        "kind": "APIGroup", "apiVersion": "v1", "name": group,
        "versions": versions, "preferredVersion": preferred,
    }))
}

fn group_list(kinds: &[KindSpec]) -> Value {
    let groups: Vec<Value> = groups(kinds)
        .into_iter()
        .filter_map(|g| group_doc(kinds, g))
        .collect();
    json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups })
}

/// The legacy `APIResourceList` of one group version, subresources included.
fn resource_list(kinds: &[KindSpec], group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for k in kinds
        .iter()
        .filter(|k| k.group == group && k.version == version)
    {
        let (plural, namespaced, singular) = (&k.plural, k.namespaced, k.kind.to_lowercase());
        resources.push(json!({
            "name": plural, "singularName": singular, "namespaced": namespaced,
            "kind": k.kind, "verbs": verbs(false),
        }));
        if k.status {
            resources.push(json!({
                "name": format!("{plural}/status"), "singularName": "", "namespaced": namespaced,
                "kind": k.kind, "verbs": verbs(true),
            }));
        }
        if k.scale {
            resources.push(json!({
                "name": format!("{plural}/scale"), "singularName": "", "namespaced": namespaced,
                "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": verbs(true),
            }));
        }
    }
    let group_version = group_version(group, version);
    (!resources.is_empty()).then(|| {
        json!({
            "kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": group_version, "resources": resources,
        })
    })
}

/// `apidiscovery.k8s.io/v2` discovery of `/api` (core) or `/apis` (all other groups).
fn aggregated_discovery(kinds: &[KindSpec], core: bool) -> Value {
    let resource = |k: &KindSpec| {
        let own_kind = json!({ "group": k.group, "version": k.version, "kind": k.kind });
        let scale_kind = json!({ "group": "autoscaling", "version": "v1", "kind": "Scale" });
        let status =
            json!({ "subresource": "status", "responseKind": own_kind, "verbs": verbs(true) });
        let scale =
            json!({ "subresource": "scale", "responseKind": scale_kind, "verbs": verbs(true) });
        let subresources = [(k.status, status), (k.scale, scale)];
        let subresources: Vec<Value> = subresources
            .into_iter()
            .filter(|s| s.0)
            .map(|s| s.1)
            .collect();
        json!({
            "resource": k.plural, "responseKind": own_kind,
            "singularResource": k.kind.to_lowercase(),
            "scope": if k.namespaced { "Namespaced" } else { "Cluster" },
            "verbs": verbs(false), "subresources": subresources,
        })
    };
    let version = |group: &str, version: &str| {
        let served = kinds
            .iter()
            .filter(|k| k.group == group && k.version == version);
        let resources: Vec<Value> = served.map(resource).collect();
        json!({ "version": version, "freshness": "Current", "resources": resources })
    };
    let group = |group: &str| {
        let versions: Vec<Value> = versions(kinds, group)
            .into_iter()
            .map(|v| version(group, v))
            .collect();
        json!({ "metadata": { "name": group }, "versions": versions })
    };
    let names = if core { vec![""] } else { groups(kinds) };
    let items: Vec<Value> = names.into_iter().map(group).collect();
    json!({
        "kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {}, "items": items,
    })
}

// ---------------------------------------------------------------------------------------------
// JSON helpers
// ---------------------------------------------------------------------------------------------

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

fn ensure_object(value: &mut Value) -> &mut Map<String, Value> {
    if !value.is_object() {
        *value = Value::Object(Map::new());
    }
    match value {
        Value::Object(map) => map,
        _ => unreachable!("just made an object"),
    }
}

/// Sets a nested field, creating (or replacing non-object) parents; `Null` removes the field.
fn set_path(obj: &mut Value, path: &[&str], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut current = obj;
    for key in parents {
        current = ensure_object(current)
            .entry(key.to_string())
            .or_insert(Value::Null);
    }
    let map = ensure_object(current);
    match value {
        Value::Null => map.remove(*last),
        value => map.insert(last.to_string(), value),
    };
}

fn set_meta(obj: &mut Value, field: &str, value: Value) {
    set_path(obj, &["metadata", field], value);
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    let target = ensure_object(target);
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

fn new_uid() -> String {
    let hex = format!("{:032x}", rand::random::<u128>());
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}
