//! Editing the cluster's `config` value by hand (`PATCH /config`, `spilo edit-config`): a JSON
//! merge patch (RFC 7396) checked field by field, so a typo is an error rather than a setting
//! that silently does nothing.

use crate::member::ClusterConfig;
use serde_json::Value;

/// The fields of [`ClusterConfig`] as stored in etcd.
pub const FIELDS: &[&str] = &[
    "ttl",
    "loop_wait",
    "retry_timeout",
    "maximum_lag_on_failover",
    "postgresql_parameters",
    "pause",
    "synchronous_mode",
    "synchronous_mode_strict",
    "synchronous_mode_quorum",
    "synchronous_node_count",
    "failsafe_mode",
    "standby_cluster",
    "downstream",
];

impl ClusterConfig {
    /// Applies `patch` (JSON merge patch: `null` removes) to `current` and parses the result.
    /// PostgreSQL parameter values may be given as numbers or booleans; they are stored as
    /// strings, as PostgreSQL reads them.
    pub fn merge_patch(current: &Value, patch: &Value) -> Result<ClusterConfig, String> {
        if !patch.is_object() {
            return Err("the patch must be a JSON object".into());
        }
        let mut merged = current.clone();
        json_patch::merge(&mut merged, patch);
        let obj = merged
            .as_object_mut()
            .ok_or("the config is not a JSON object")?;
        if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(format!(
                "unknown field {unknown:?} (known: {})",
                FIELDS.join(", ")
            ));
        }
        if let Some(Value::Object(params)) = obj.get_mut("postgresql_parameters") {
            for (name, v) in params.iter_mut() {
                *v = match v {
                    Value::String(_) => continue,
                    Value::Number(n) => Value::String(n.to_string()),
                    Value::Bool(b) => Value::String(if *b { "on" } else { "off" }.into()),
                    other => {
                        return Err(format!(
                            "postgresql_parameters.{name}: expected a string, number or boolean, got {other}"
                        ));
                    }
                };
            }
        }
        serde_json::from_value(merged).map_err(|e| format!("invalid config: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_patch_sets_removes_and_converts() {
        let current = json!({"ttl": 4, "postgresql_parameters": {"work_mem": "4MB", "a": "1"}});
        let c = ClusterConfig::merge_patch(
            &current,
            &json!({"ttl": 10, "postgresql_parameters": {"max_connections": 150, "a": null, "hot_standby_feedback": true}}),
        )
        .expect("valid");
        assert_eq!(c.ttl, Some(10));
        let p: Vec<(&str, &str)> = c
            .postgresql_parameters
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            p,
            [
                ("hot_standby_feedback", "on"),
                ("max_connections", "150"),
                ("work_mem", "4MB")
            ]
        );
    }

    #[test]
    fn typos_and_bad_types_are_refused() {
        let e = ClusterConfig::merge_patch(&json!({}), &json!({"tll": 3})).expect_err("typo");
        assert!(e.contains("unknown field \"tll\""), "{e}");
        let e = ClusterConfig::merge_patch(&json!({}), &json!({"ttl": "x"})).expect_err("type");
        assert!(e.contains("invalid config"), "{e}");
        let e =
            ClusterConfig::merge_patch(&json!({}), &json!({"postgresql_parameters": {"a": [1]}}))
                .expect_err("array");
        assert!(e.contains("postgresql_parameters.a"), "{e}");
        assert!(ClusterConfig::merge_patch(&json!({}), &json!([1])).is_err());
    }
}
