//! Where rules come from, and how edits arrive: a mounted file (the directory is watched, since
//! a ConfigMap mount swaps a `..data` symlink), or a ConfigMap read straight through the API
//! (a watch, so an edit lands in seconds instead of after the kubelet's sync delay).

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::config::{self, ConfigError, Format, RulesFile};

/// Edits to a file often come as several events; this lets them settle.
const DEBOUNCE: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    File(PathBuf),
    /// `--config-map NAME[/KEY]`; with no key, the ConfigMap must hold exactly one.
    ConfigMap {
        name: String,
        key: Option<String>,
    },
}

impl ConfigSource {
    /// Parses `NAME[/KEY]`.
    pub fn config_map(spec: &str) -> Self {
        match spec.split_once('/') {
            Some((name, key)) => ConfigSource::ConfigMap {
                name: name.to_string(),
                key: Some(key.to_string()),
            },
            None => ConfigSource::ConfigMap {
                name: spec.to_string(),
                key: None,
            },
        }
    }
}

pub type Loaded = Result<RulesFile, ConfigError>;

/// Watches a rules file; sends a freshly parsed result whenever its content changes.
pub fn watch_file(
    path: PathBuf,
    tx: mpsc::Sender<Loaded>,
) -> notify::Result<notify::RecommendedWatcher> {
    let (events_tx, mut events_rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reading the file ourselves raises access events (open, close-after-read); counting
        // them as edits would re-read the file every DEBOUNCE, forever.
        if let Ok(event) = event {
            if !matches!(event.kind, notify::EventKind::Access(_)) {
                let _ = events_tx.send(());
            }
        }
    })?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    tokio::spawn(async move {
        let mut last = std::fs::read(&path).ok();
        while events_rx.recv().await.is_some() {
            tokio::time::sleep(DEBOUNCE).await;
            while events_rx.try_recv().is_ok() {}
            let current = std::fs::read(&path).ok();
            if current.is_none() || current == last {
                // Gone for a moment (a symlink swap) or unchanged: nothing to reload.
                continue;
            }
            last = current;
            if tx.send(load_file(&path)).await.is_err() {
                break;
            }
        }
    });
    Ok(watcher)
}

/// Watches a ConfigMap; sends a parsed result for every change of its rules key.
pub fn watch_config_map(
    client: Client,
    namespace: &str,
    name: String,
    key: Option<String>,
    tx: mpsc::Sender<Loaded>,
) {
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    tokio::spawn(async move {
        let stream = watcher(api, config).default_backoff().applied_objects();
        futures::pin_mut!(stream);
        let mut last: Option<String> = None;
        while let Some(item) = stream.next().await {
            let configmap = match item {
                Ok(configmap) => configmap,
                Err(error) => {
                    tracing::warn!(configmap = %name, %error, "rules ConfigMap watch error; retrying");
                    continue;
                }
            };
            let loaded = parse_config_map(&name, key.as_deref(), &configmap);
            let text = loaded.as_ref().ok().map(|(text, _)| text.clone());
            if text.is_some() && text == last {
                continue;
            }
            last = text;
            if tx.send(loaded.map(|(_, rules)| rules)).await.is_err() {
                break;
            }
        }
    });
}

fn parse_config_map(
    name: &str,
    key: Option<&str>,
    configmap: &ConfigMap,
) -> Result<(String, RulesFile), ConfigError> {
    let data = configmap.data.clone().unwrap_or_default();
    let (key, text) = match key {
        Some(key) => match data.get(key) {
            Some(text) => (key.to_string(), text.clone()),
            None => {
                return Err(ConfigError::file_level(
                    format!("configmap {name}"),
                    format!("has no key {key:?}"),
                ))
            }
        },
        None => {
            let mut entries = data.into_iter();
            match (entries.next(), entries.next()) {
                (Some(entry), None) => entry,
                _ => {
                    return Err(ConfigError::file_level(
                        format!("configmap {name}"),
                        "holds more or less than one key; name it as --config-map NAME/KEY",
                    ))
                }
            }
        }
    };
    let source = format!("configmap {name}/{key}");
    let format = Format::from_path(Path::new(&key)).unwrap_or(Format::Yaml);
    let rules = config::parse(&source, &text, format)?;
    crate::triggers::preflight(&rules)?;
    Ok((text, rules))
}

/// A rules file as the agent accepts it: valid as a file, and every trigger buildable.
pub fn load_file(path: &Path) -> Result<RulesFile, ConfigError> {
    let rules = config::load_file(path)?;
    crate::triggers::preflight(&rules)?;
    Ok(rules)
}
