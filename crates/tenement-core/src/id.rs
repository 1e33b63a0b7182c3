//! Validated identifiers. An invalid name cannot exist as a value of these types, so every
//! `ServiceName`/`InstanceId` is safe to use as a path component, socket name or cgroup name.

use std::fmt;
use std::str::FromStr;

/// Why a string is not a valid service name or instance id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {reason}")]
pub struct IdError {
    pub what: &'static str,
    pub value: String,
    pub reason: &'static str,
}

/// Checks the lowercase DNS label rule: `[a-z0-9-]`, 1–63 chars, no leading/trailing `-`.
fn check_label(what: &'static str, s: &str) -> Result<(), IdError> {
    let fail = |reason| {
        Err(IdError {
            what,
            value: s.chars().take(80).collect(),
            reason,
        })
    };
    if s.is_empty() {
        return fail("must not be empty");
    }
    if s.len() > 63 {
        return fail("must be at most 63 characters");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return fail("only lowercase letters a-z, digits 0-9 and '-' are allowed");
    }
    if s.starts_with('-') || s.ends_with('-') {
        return fail("must not start or end with '-'");
    }
    Ok(())
}

macro_rules! label_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                check_label($what, s)?;
                Ok(Self(s.to_owned()))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

label_type!(
    /// The name of a `[service.NAME]` section.
    ServiceName,
    "service name"
);
label_type!(
    /// The id of one instance of a service (`prod` in `api:prod`).
    InstanceId,
    "instance id"
);

/// One instance: `service:id`, e.g. `api:prod`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceKey {
    pub service: ServiceName,
    pub id: InstanceId,
}

impl InstanceKey {
    pub fn new(service: ServiceName, id: InstanceId) -> Self {
        Self { service, id }
    }
}

impl FromStr for InstanceKey {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let Some((service, id)) = s.split_once(':') else {
            return Err(IdError {
                what: "instance",
                value: s.chars().take(80).collect(),
                reason: "expected SERVICE:ID, e.g. api:prod",
            });
        };
        Ok(Self {
            service: service.parse()?,
            id: id.parse()?,
        })
    }
}

impl fmt::Display for InstanceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.service, self.id)
    }
}

impl serde::Serialize for InstanceKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for InstanceKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        let long = "a".repeat(63);
        let too_long = "a".repeat(64);
        let table: &[(&str, bool)] = &[
            ("prod", true),
            ("a", true),
            ("a-b-1", true),
            ("0", true),
            (&long, true),
            (&too_long, false),
            ("", false),
            ("..", false),
            ("a/b", false),
            ("A", false),
            ("-a", false),
            ("a-", false),
            ("a_b", false),
            ("a.b", false),
            ("é", false),
            ("a b", false),
        ];
        for (input, ok) in table {
            assert_eq!(input.parse::<InstanceId>().is_ok(), *ok, "{input:?}");
            assert_eq!(input.parse::<ServiceName>().is_ok(), *ok, "{input:?}");
        }
    }

    #[test]
    fn keys() {
        let k: InstanceKey = "api:prod".parse().unwrap();
        assert_eq!(k.service.as_str(), "api");
        assert_eq!(k.id.as_str(), "prod");
        assert_eq!(k.to_string(), "api:prod");
        for bad in ["api", "api:", ":prod", "api:..", "api:prod:x", "API:prod"] {
            assert!(bad.parse::<InstanceKey>().is_err(), "{bad}");
        }
        let err = "api:a/b".parse::<InstanceKey>().unwrap_err();
        assert_eq!(err.what, "instance id");
    }
}
