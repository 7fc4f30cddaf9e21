//! AWS configuration and credentials shared by every trigger: the default chain is loaded once,
//! and each (role, external id, region) gets one credentials provider, whose credentials are
//! cached and refreshed before they expire.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_config::identity::IdentityCache;
use aws_config::sts::AssumeRoleProvider;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use tokio::sync::OnceCell;

use super::error::error_chain;
use super::TriggerError;

/// Refresh cached credentials this long before they expire.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// Who to be, in which region.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AwsIdentity {
    pub region: Option<String>,
    pub role_arn: Option<String>,
    pub external_id: Option<String>,
}

/// Process-wide AWS state. Cheap to clone.
#[derive(Clone, Default)]
pub struct AwsContext {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    base: OnceCell<SdkConfig>,
    configs: tokio::sync::Mutex<HashMap<AwsIdentity, SdkConfig>>,
    /// Behind an `Arc`: `Credentials` carries a property map that a clone copies entry by
    /// entry, and a poll asks for credentials every time.
    cached: Mutex<HashMap<AwsIdentity, Arc<Credentials>>>,
}

impl AwsContext {
    pub fn new() -> Self {
        Self::default()
    }

    /// The SDK configuration for an identity: the default chain (env keys, web identity/IRSA,
    /// EKS Pod Identity, profile), the region override, and an assumed role if one is named.
    /// Built once per identity, with one identity cache shared by the clients built from it.
    pub async fn sdk_config(&self, identity: &AwsIdentity) -> SdkConfig {
        let mut configs = self.inner.configs.lock().await;
        if let Some(config) = configs.get(identity) {
            return config.clone();
        }
        let base = self
            .inner
            .base
            .get_or_init(|| async {
                aws_config::defaults(BehaviorVersion::latest())
                    .identity_cache(IdentityCache::lazy().build())
                    .load()
                    .await
            })
            .await;
        let mut regional = base.to_builder();
        if let Some(region) = &identity.region {
            regional = regional.region(Region::new(region.clone()));
        }
        let regional = regional.build();
        let config = match &identity.role_arn {
            None => regional,
            Some(role_arn) => {
                let mut assume = AssumeRoleProvider::builder(role_arn.clone())
                    .session_name("qscale")
                    .configure(&regional);
                if let Some(external_id) = &identity.external_id {
                    assume = assume.external_id(external_id.clone());
                }
                let provider = SharedCredentialsProvider::new(assume.build().await);
                regional
                    .into_builder()
                    .credentials_provider(provider)
                    .build()
            }
        };
        configs.insert(identity.clone(), config.clone());
        config
    }

    /// Credentials for signing requests by hand (SigV4 for Amazon Managed Prometheus); cached
    /// until shortly before they expire, so a poll does not call STS or IMDS.
    pub async fn credentials(
        &self,
        identity: &AwsIdentity,
    ) -> Result<Arc<Credentials>, TriggerError> {
        if let Some(credentials) = self.cached(identity) {
            return Ok(credentials);
        }
        // Boxed: loading the SDK configuration and calling STS or IMDS is a future of many KiB,
        // and held inline it would be part of, and copied with, every poll's future, though
        // it runs about once an hour (BENCHMARKS.md, finding 15).
        Box::pin(self.fetch_credentials(identity)).await
    }

    async fn fetch_credentials(
        &self,
        identity: &AwsIdentity,
    ) -> Result<Arc<Credentials>, TriggerError> {
        let config = self.sdk_config(identity).await;
        let provider = config.credentials_provider().ok_or_else(|| {
            TriggerError::Credentials("no AWS credentials provider is configured".into())
        })?;
        let credentials = Arc::new(
            provider
                .provide_credentials()
                .await
                .map_err(|e| TriggerError::Credentials(error_chain(&e)))?,
        );
        if let Ok(mut cached) = self.inner.cached.lock() {
            cached.insert(identity.clone(), credentials.clone());
        }
        Ok(credentials)
    }

    fn cached(&self, identity: &AwsIdentity) -> Option<Arc<Credentials>> {
        let cached = self.inner.cached.lock().ok()?;
        let credentials = cached.get(identity)?;
        match credentials.expiry() {
            Some(expiry) if expiry <= SystemTime::now() + REFRESH_MARGIN => None,
            _ => Some(credentials.clone()),
        }
    }
}
