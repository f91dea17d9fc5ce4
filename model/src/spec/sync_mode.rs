//! `ha.synchronousMode` in a cluster file: `false` (asynchronous), `true` (the primary names
//! exact synchronous standbys, `FIRST k (...)`) or `quorum` (`ANY k (...)`: a commit waits for
//! any `k` of the listed standbys).

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How commits wait for standbys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SynchronousMode {
    /// Commits do not wait for any standby.
    #[default]
    Off,
    /// `FIRST k`: the primary names `k` standbys and every commit waits for all of them.
    On,
    /// `ANY k`: every eligible streaming standby is a voter and a commit waits for any `k`.
    Quorum,
}

impl SynchronousMode {
    /// Commits wait for standbys (either way).
    pub fn is_on(self) -> bool {
        self != SynchronousMode::Off
    }

    /// Quorum commit.
    pub fn is_quorum(self) -> bool {
        self == SynchronousMode::Quorum
    }
}

impl Serialize for SynchronousMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            SynchronousMode::Off => s.serialize_bool(false),
            SynchronousMode::On => s.serialize_bool(true),
            SynchronousMode::Quorum => s.serialize_str("quorum"),
        }
    }
}

impl<'de> Deserialize<'de> for SynchronousMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = SynchronousMode;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("true, false or quorum")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<SynchronousMode, E> {
                Ok(if v {
                    SynchronousMode::On
                } else {
                    SynchronousMode::Off
                })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SynchronousMode, E> {
                match v {
                    "quorum" => Ok(SynchronousMode::Quorum),
                    other => Err(E::invalid_value(
                        serde::de::Unexpected::Str(other),
                        &"true, false or quorum",
                    )),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for SynchronousMode {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SynchronousMode".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "false: commits do not wait for standbys; true: every commit waits for the synchronousNodeCount standbys the primary names (FIRST k); quorum: every eligible streaming standby votes and a commit waits for any synchronousNodeCount of them (ANY k).",
            "anyOf": [{"type": "boolean"}, {"const": "quorum"}]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_booleans_and_quorum_and_names_what_else_it_accepts() {
        let read = |t: &str| serde_yaml::from_str::<SynchronousMode>(t);
        assert_eq!(read("true").ok(), Some(SynchronousMode::On));
        assert_eq!(read("false").ok(), Some(SynchronousMode::Off));
        assert_eq!(read("quorum").ok(), Some(SynchronousMode::Quorum));
        let e = read("any").expect_err("not a mode").to_string();
        assert!(e.contains("true, false or quorum"), "{e}");
        assert_eq!(
            serde_yaml::to_string(&SynchronousMode::Quorum)
                .ok()
                .as_deref(),
            Some("quorum\n")
        );
    }
}
