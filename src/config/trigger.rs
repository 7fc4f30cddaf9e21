//! Trigger schema: where a rule reads its load from.
//!
//! A trigger is written flat, with a `type` and that type's fields, and checked into a typed
//! [`TriggerSource`] while it is read: a field of the other type is an error, not silently
//! ignored, and every error keeps the path of the field it is about.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::duration::Dur;

pub const DEFAULT_TRIGGER_TIMEOUT: Dur = Dur::from_secs(5);

/// One source of load for a rule.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "TriggerSpec")]
pub struct Trigger {
    /// Label in metrics and logs; defaults to `<type>-<index>`.
    pub name: Option<String>,
    /// The value one replica can handle; desired replicas are `ceil(value / target_per_replica)`.
    pub target_per_replica: f64,
    /// The rule is active (may leave zero) only while some trigger's value is above this.
    pub activation: f64,
    pub source: TriggerSource,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TriggerSource {
    Sqs(SqsTrigger),
    Prometheus(Box<PrometheusTrigger>),
}

impl TriggerSource {
    pub fn type_name(&self) -> &'static str {
        match self {
            TriggerSource::Sqs(_) => "sqs",
            TriggerSource::Prometheus(_) => "prometheus",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SqsTrigger {
    /// A full queue URL, or a queue name resolved once with `GetQueueUrl`.
    pub queue: String,
    pub region: Option<String>,
    pub include_in_flight: bool,
    pub include_delayed: bool,
    pub role_arn: Option<String>,
    pub external_id: Option<String>,
    pub endpoint: Option<String>,
    pub timeout: Dur,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PrometheusTrigger {
    pub server: String,
    pub query: String,
    pub on_empty: OnEmpty,
    /// Tenant, sent as `X-Scope-OrgID` (Cortex, Mimir, Thanos).
    pub namespace: Option<String>,
    pub custom_headers: BTreeMap<String, String>,
    pub query_parameters: BTreeMap<String, String>,
    pub timeout: Dur,
    pub auth: PrometheusAuth,
    pub tls: TlsSettings,
}

/// How a Prometheus query authenticates. Secrets are only ever named (a file or an env var),
/// never written inline, so a rules file in a ConfigMap holds none.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct PrometheusAuth {
    pub bearer_token_file: Option<PathBuf>,
    pub basic_auth: Option<BasicAuth>,
    pub aws_sigv4: Option<SigV4>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    pub username: String,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub password_env: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SigV4 {
    pub region: String,
    #[serde(default = "default_sigv4_service")]
    pub service: String,
    #[serde(default)]
    pub role_arn: Option<String>,
    #[serde(default)]
    pub external_id: Option<String>,
}

fn default_sigv4_service() -> String {
    "aps".to_string()
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// What an empty result (or NaN/Inf) means. `error` by default, so a broken query never scales
/// a workload to zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnEmpty {
    #[default]
    Error,
    Zero,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TriggerType {
    Sqs,
    Prometheus,
}

/// A trigger as written in the file: `type` and that type's fields (sqs: `queue`, `region`,
/// `include_in_flight`, `include_delayed`, `role_arn`, `external_id`, `endpoint`; prometheus:
/// `server`, `query`, `on_empty`, `namespace`, `custom_headers`, `query_parameters`,
/// `bearer_token_file`, `basic_auth`, `aws_sigv4`, `tls`).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerSpec {
    #[serde(rename = "type")]
    pub kind: TriggerType,
    pub name: Option<String>,
    pub target_per_replica: f64,
    #[serde(default)]
    pub activation: f64,
    pub timeout: Option<Dur>,
    // sqs
    pub queue: Option<String>,
    pub region: Option<String>,
    pub include_in_flight: Option<bool>,
    pub include_delayed: Option<bool>,
    pub role_arn: Option<String>,
    pub external_id: Option<String>,
    pub endpoint: Option<String>,
    // prometheus
    pub server: Option<String>,
    pub query: Option<String>,
    pub on_empty: Option<OnEmpty>,
    pub namespace: Option<String>,
    pub custom_headers: Option<BTreeMap<String, String>>,
    pub query_parameters: Option<BTreeMap<String, String>>,
    pub bearer_token_file: Option<PathBuf>,
    pub basic_auth: Option<BasicAuth>,
    pub aws_sigv4: Option<SigV4>,
    pub tls: Option<TlsSettings>,
}

impl TriggerSpec {
    /// Names of the fields set that belong to the other trigger type.
    fn foreign_fields(&self) -> Vec<&'static str> {
        let sqs = [
            ("queue", self.queue.is_some()),
            ("region", self.region.is_some()),
            ("include_in_flight", self.include_in_flight.is_some()),
            ("include_delayed", self.include_delayed.is_some()),
            ("role_arn", self.role_arn.is_some()),
            ("external_id", self.external_id.is_some()),
            ("endpoint", self.endpoint.is_some()),
        ];
        let prometheus = [
            ("server", self.server.is_some()),
            ("query", self.query.is_some()),
            ("on_empty", self.on_empty.is_some()),
            ("namespace", self.namespace.is_some()),
            ("custom_headers", self.custom_headers.is_some()),
            ("query_parameters", self.query_parameters.is_some()),
            ("bearer_token_file", self.bearer_token_file.is_some()),
            ("basic_auth", self.basic_auth.is_some()),
            ("aws_sigv4", self.aws_sigv4.is_some()),
            ("tls", self.tls.is_some()),
        ];
        let other: &[(&'static str, bool)] = match self.kind {
            TriggerType::Sqs => &prometheus,
            TriggerType::Prometheus => &sqs,
        };
        other
            .iter()
            .filter(|(_, set)| *set)
            .map(|(name, _)| *name)
            .collect()
    }
}

impl TryFrom<TriggerSpec> for Trigger {
    type Error = String;

    fn try_from(spec: TriggerSpec) -> Result<Self, Self::Error> {
        let type_name = match spec.kind {
            TriggerType::Sqs => "sqs",
            TriggerType::Prometheus => "prometheus",
        };
        let foreign = spec.foreign_fields();
        if !foreign.is_empty() {
            return Err(format!(
                "field `{}` does not apply to a `{type_name}` trigger",
                foreign.join("`, `")
            ));
        }
        let missing = |field: &str| format!("a `{type_name}` trigger needs field `{field}`");
        let timeout = spec.timeout.unwrap_or(DEFAULT_TRIGGER_TIMEOUT);
        let source = match spec.kind {
            TriggerType::Sqs => TriggerSource::Sqs(SqsTrigger {
                queue: spec.queue.ok_or_else(|| missing("queue"))?,
                region: spec.region,
                include_in_flight: spec.include_in_flight.unwrap_or(true),
                include_delayed: spec.include_delayed.unwrap_or(false),
                role_arn: spec.role_arn,
                external_id: spec.external_id,
                endpoint: spec.endpoint,
                timeout,
            }),
            TriggerType::Prometheus => TriggerSource::Prometheus(Box::new(PrometheusTrigger {
                server: spec.server.ok_or_else(|| missing("server"))?,
                query: spec.query.ok_or_else(|| missing("query"))?,
                on_empty: spec.on_empty.unwrap_or_default(),
                namespace: spec.namespace,
                custom_headers: spec.custom_headers.unwrap_or_default(),
                query_parameters: spec.query_parameters.unwrap_or_default(),
                timeout,
                auth: PrometheusAuth {
                    bearer_token_file: spec.bearer_token_file,
                    basic_auth: spec.basic_auth,
                    aws_sigv4: spec.aws_sigv4,
                },
                tls: spec.tls.unwrap_or_default(),
            })),
        };
        Ok(Trigger {
            name: spec.name,
            target_per_replica: spec.target_per_replica,
            activation: spec.activation,
            source,
        })
    }
}

/// A trigger is written as a [`TriggerSpec`], so that is its schema.
impl schemars::JsonSchema for Trigger {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        TriggerSpec::schema_name()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        TriggerSpec::json_schema(generator)
    }
}

impl Trigger {
    /// The label this trigger goes by in metrics and logs.
    pub fn label(&self, index: usize) -> String {
        match &self.name {
            Some(name) => name.clone(),
            None => format!("{}-{index}", self.source.type_name()),
        }
    }
}
