//! Finding the API resource behind a rule's `kind` and `api_version`: built in for apps/v1,
//! discovered (once, then cached) for anything else.

use std::collections::HashMap;
use std::sync::Arc;

use kube::api::ApiResource;
use kube::core::GroupVersionKind;
use kube::Client;
use tokio::sync::Mutex;

use super::TargetError;
use crate::config::TargetRef;

#[derive(Clone)]
pub struct Resolver {
    client: Client,
    cache: Arc<Mutex<HashMap<(String, String), ApiResource>>>,
}

impl Resolver {
    pub fn new(client: Client) -> Self {
        Resolver {
            client,
            cache: Arc::default(),
        }
    }

    pub async fn resolve(&self, target: &TargetRef) -> Result<ApiResource, TargetError> {
        let api_version = target
            .api_version()
            .ok_or_else(|| TargetError::UnknownKind(target.kind.clone()))?
            .to_string();
        let key = (api_version.clone(), target.kind.clone());
        let mut cache = self.cache.lock().await;
        if let Some(resource) = cache.get(&key) {
            return Ok(resource.clone());
        }
        let resource = match (api_version.as_str(), target.kind.as_str()) {
            ("apps/v1", "Deployment") => {
                ApiResource::erase::<k8s_openapi::api::apps::v1::Deployment>(&())
            }
            ("apps/v1", "StatefulSet") => {
                ApiResource::erase::<k8s_openapi::api::apps::v1::StatefulSet>(&())
            }
            _ => self.discover(&api_version, &target.kind).await?,
        };
        cache.insert(key, resource.clone());
        Ok(resource)
    }

    async fn discover(&self, api_version: &str, kind: &str) -> Result<ApiResource, TargetError> {
        let (group, version) = match api_version.split_once('/') {
            Some((group, version)) => (group, version),
            None => ("", api_version),
        };
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let what = format!("{api_version} {kind}");
        let call = kube::discovery::pinned_kind(&self.client, &gvk);
        let (resource, capabilities) = tokio::time::timeout(super::API_TIMEOUT, call)
            .await
            .map_err(|_| TargetError::Timeout(super::API_TIMEOUT))?
            .map_err(|e| match e {
                kube::Error::Discovery(_) => TargetError::UnknownKind(what.clone()),
                other => TargetError::from_kube(other, &what),
            })?;
        if !capabilities
            .subresources
            .iter()
            .any(|(sub, _)| sub.plural == "scale")
        {
            return Err(TargetError::NoScaleSubresource(what));
        }
        Ok(resource)
    }
}
