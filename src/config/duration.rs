//! Durations as people write them in rules files: `"30s"`, `"5m"`, `"1h 30m"`.

use std::fmt;
use std::time::Duration;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// A duration read from a rules file.
///
/// A newtype rather than a bare [`Duration`] so that the rules file can say `"5m"` (humantime
/// syntax) or a plain number of seconds, and so that the JSON schema says "string".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Dur(pub Duration);

impl Dur {
    pub const ZERO: Dur = Dur(Duration::ZERO);

    pub const fn from_secs(secs: u64) -> Self {
        Dur(Duration::from_secs(secs))
    }

    pub fn as_millis(&self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }

    pub fn get(&self) -> Duration {
        self.0
    }
}

impl From<Duration> for Dur {
    fn from(d: Duration) -> Self {
        Dur(d)
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl std::str::FromStr for Dur {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let trimmed = s.trim();
        if trimmed.is_empty() {
            return Err("empty duration; write it like \"30s\" or \"5m\"".into());
        }
        if let Ok(secs) = trimmed.parse::<u64>() {
            return Ok(Dur::from_secs(secs));
        }
        humantime::parse_duration(trimmed)
            .map(Dur)
            .map_err(|e| format!("invalid duration {s:?} ({e}); write it like \"30s\" or \"5m\""))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Dur;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"30s\" or \"5m\", or a whole number of seconds")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                v.parse().map_err(E::custom)
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
                Ok(Dur::from_secs(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                u64::try_from(v)
                    .map(Dur::from_secs)
                    .map_err(|_| E::custom(format!("negative duration {v}")))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl schemars::JsonSchema for Dur {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A duration such as \"30s\", \"5m\" or \"1h 30m\", or a whole number of seconds",
            "anyOf": [
                { "type": "string", "pattern": "^\\s*[0-9]+(\\.[0-9]+)?\\s*[a-zµ]+(\\s*[0-9]+(\\.[0-9]+)?\\s*[a-zµ]+)*\\s*$|^\\s*[0-9]+\\s*$" },
                { "type": "integer", "minimum": 0 }
            ]
        })
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_human_and_numeric_forms() {
        assert_eq!("30s".parse::<Dur>().unwrap(), Dur::from_secs(30));
        assert_eq!("5m".parse::<Dur>().unwrap(), Dur::from_secs(300));
        assert_eq!("1h 30m".parse::<Dur>().unwrap(), Dur::from_secs(5400));
        assert_eq!("45".parse::<Dur>().unwrap(), Dur::from_secs(45));
        assert!("5x".parse::<Dur>().is_err());
        assert!("".parse::<Dur>().is_err());
        assert!("-5s".parse::<Dur>().is_err());
    }

    #[test]
    fn displays_in_the_syntax_it_parses() {
        let d = Dur::from_secs(330);
        assert_eq!(d.to_string(), "5m 30s");
        assert_eq!(d.to_string().parse::<Dur>().unwrap(), d);
    }
}
