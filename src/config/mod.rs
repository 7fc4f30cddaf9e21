//! The rules file: its schema, loading (TOML or YAML, `QSCALE_` environment overrides) and
//! validation. Everything downstream takes these types as already checked.

mod duration;
mod error;
mod load;
mod rule;
mod schema;
mod trigger;
mod validate;

pub use duration::Dur;
pub use error::{ConfigError, Problem, RuleLocator};
pub use load::{load_file, parse, rule_env_prefix, summary, Format, RulesFile};
pub use rule::{
    Behavior, Defaults, Fallback, FallbackMode, RatePolicy, Rule, SelectPolicy, TargetRef,
    DEFAULT_COOLDOWN, DEFAULT_POLL_INTERVAL, DEFAULT_TOLERANCE, KNOWN_KINDS,
};
pub use schema::json_schema;
pub use trigger::{
    BasicAuth, OnEmpty, PrometheusAuth, PrometheusTrigger, SigV4, SqsTrigger, TlsSettings, Trigger,
    TriggerSource, TriggerSpec, TriggerType, DEFAULT_TRIGGER_TIMEOUT,
};
