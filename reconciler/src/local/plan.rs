//! The local target's plan: desired clusters (valid files selecting `target: local`) against
//! the clusters `spilo up` runs, as data that the supervisor applies and the terminal prints.

use std::collections::BTreeMap;
use std::fmt;

/// What happens to one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Start a cluster that does not run.
    Create {
        /// The cluster.
        cluster: String,
        /// Its instances.
        instances: u32,
    },
    /// Add or remove members.
    Resize {
        /// The cluster.
        cluster: String,
        /// Members now.
        from: u32,
        /// Members wanted.
        to: u32,
    },
    /// Stop a cluster whose file is gone (its data stays until `spilo down --purge`).
    Stop {
        /// The cluster.
        cluster: String,
    },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Create { cluster, instances } => {
                write!(f, "+ cluster {cluster} ({instances} instances)")
            }
            Change::Resize { cluster, from, to } => {
                write!(f, "~ cluster {cluster} (instances {from} -> {to})")
            }
            Change::Stop { cluster } => {
                write!(f, "- cluster {cluster} (its file is gone; data is kept)")
            }
        }
    }
}

/// Compares desired instance counts with running ones.
pub fn plan(desired: &BTreeMap<String, u32>, running: &BTreeMap<String, u32>) -> Vec<Change> {
    let mut out = Vec::new();
    for (name, want) in desired {
        match running.get(name) {
            None => out.push(Change::Create {
                cluster: name.clone(),
                instances: *want,
            }),
            Some(have) if have != want => out.push(Change::Resize {
                cluster: name.clone(),
                from: *have,
                to: *want,
            }),
            Some(_) => {}
        }
    }
    for name in running.keys() {
        if !desired.contains_key(name) {
            out.push(Change::Stop {
                cluster: name.clone(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn new_changed_gone_and_unchanged_clusters() {
        let changes = plan(
            &m(&[("a", 3), ("b", 4), ("c", 3)]),
            &m(&[("b", 3), ("c", 3), ("d", 3)]),
        );
        let shown: Vec<String> = changes.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            vec![
                "+ cluster a (3 instances)",
                "~ cluster b (instances 3 -> 4)",
                "- cluster d (its file is gone; data is kept)"
            ]
        );
    }

    #[test]
    fn nothing_to_do_is_an_empty_plan() {
        assert!(plan(&m(&[("a", 3)]), &m(&[("a", 3)])).is_empty());
    }
}
