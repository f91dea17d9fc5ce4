//! What `spilo up` tells its user while the clusters run: that a cluster added or recovering
//! became ready (with its connection strings), and, once per new message, what keeps a member
//! from running (a failed bootstrap, with PostgreSQL's own error line), so nobody has to dig
//! through member logs to learn why a clone never starts.

use super::cluster::{LocalCluster, postgres_answers};
use super::state::Layout;
use super::status::report;
use std::collections::BTreeMap;

/// What was already said about one cluster.
#[derive(Debug, Default)]
pub struct Progress {
    ready: bool,
    errors: BTreeMap<String, String>,
}

impl Progress {
    /// A cluster whose readiness `spilo up` printed already.
    pub fn ready() -> Self {
        Self {
            ready: true,
            errors: BTreeMap::new(),
        }
    }

    /// Looks at the cluster's members; returns the lines to print (nothing already said).
    pub async fn check(&mut self, c: &LocalCluster, layout: &Layout) -> Vec<String> {
        let Ok(state) = layout.read(&c.name) else {
            return Vec::new();
        };
        let r = report(&state).await;
        let mut lines = Vec::new();
        for m in &r.members {
            match &m.error {
                Some(e) if self.errors.get(&m.name) != Some(e) => {
                    lines.push(format!("cluster {}: member {}: {e}", c.name, m.name));
                    self.errors.insert(m.name.clone(), e.clone());
                }
                Some(_) => {}
                None => {
                    self.errors.remove(&m.name);
                }
            }
        }
        let primary = r
            .members
            .iter()
            .any(|m| m.role == "primary" && m.state == "running");
        if !self.ready && primary && postgres_answers(c.ports().primary).await {
            self.ready = true;
            lines.push(c.connection_info().trim_end().to_string());
        }
        lines
    }
}
