//! Validated names: a cluster name (the etcd scope, later also a stack suffix and a DNS label)
//! and a member name. Both are DNS labels so that they can be used unchanged in hostnames, etcd
//! keys, replication slot names (after mapping `-` to `_`) and file names.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name was empty.
    #[error("must not be empty")]
    Empty,
    /// The name was longer than a DNS label may be.
    #[error("must be at most 63 characters, got {0}")]
    TooLong(usize),
    /// The name held a character outside `a-z`, `0-9` and `-`.
    #[error("may only contain lowercase letters, digits and '-', found {0:?}")]
    BadChar(char),
    /// The name started or ended with `-`.
    #[error("must start and end with a letter or digit")]
    BadEdge,
}

/// A refused name together with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a valid name: it {reason}")]
pub struct InvalidName {
    /// The refused value.
    pub value: String,
    /// Why it was refused.
    pub reason: NameError,
}

fn check_dns_label(s: &str) -> Result<(), NameError> {
    if s.is_empty() {
        return Err(NameError::Empty);
    }
    if s.len() > 63 {
        return Err(NameError::TooLong(s.len()));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(NameError::BadChar(c));
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err(NameError::BadEdge);
    }
    Ok(())
}

macro_rules! dns_label_name {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Checks `s` and wraps it.
            pub fn new(s: impl Into<String>) -> Result<Self, InvalidName> {
                let s = s.into();
                match check_dns_label(&s) {
                    Ok(()) => Ok(Self(s)),
                    Err(reason) => Err(InvalidName { value: s, reason }),
                }
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = InvalidName;
            fn from_str(s: &str) -> Result<Self, InvalidName> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidName;
            fn try_from(s: String) -> Result<Self, InvalidName> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

dns_label_name!(
    /// The name of a PostgreSQL cluster: the etcd scope under `/service/`.
    ClusterName
);

impl schemars::JsonSchema for ClusterName {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ClusterName".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A DNS label: lowercase letters, digits and '-', at most 63 characters.",
            "pattern": "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
        })
    }
}
dns_label_name!(
    /// The name of one member (one governor + one PostgreSQL instance) of a cluster.
    MemberName
);

impl MemberName {
    /// The physical replication slot the primary keeps for this member. Slot names may only
    /// contain lowercase letters, digits and underscores.
    pub fn slot_name(&self) -> String {
        self.0.replace('-', "_")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_labels() {
        assert_eq!(
            ClusterName::new("orders-db1").map(|n| n.to_string()),
            Ok("orders-db1".into())
        );
    }

    #[test]
    fn refuses_what_is_not_a_dns_label() {
        let reason = |r: Result<ClusterName, InvalidName>| r.map_err(|e| e.reason);
        assert_eq!(reason(ClusterName::new("")), Err(NameError::Empty));
        assert_eq!(
            reason(ClusterName::new("Orders")),
            Err(NameError::BadChar('O'))
        );
        assert_eq!(
            reason(ClusterName::new("a_b")),
            Err(NameError::BadChar('_'))
        );
        assert_eq!(reason(ClusterName::new("-a")), Err(NameError::BadEdge));
        assert_eq!(
            reason(ClusterName::new("a".repeat(64))),
            Err(NameError::TooLong(64))
        );
        assert_eq!(
            ClusterName::new("Orders").map_err(|e| e.to_string()),
            Err("\"Orders\" is not a valid name: it may only contain lowercase letters, digits and '-', found 'O'".to_string())
        );
    }

    #[test]
    fn slot_names_replace_dashes() {
        let m = MemberName::new("demo-0").expect("valid name");
        assert_eq!(m.slot_name(), "demo_0");
    }

    #[test]
    fn names_deserialize_with_validation() {
        let ok: Result<MemberName, _> = serde_json::from_str("\"m1\"");
        assert!(ok.is_ok());
        let bad: Result<MemberName, _> = serde_json::from_str("\"M 1\"");
        assert!(bad.is_err());
    }
}
