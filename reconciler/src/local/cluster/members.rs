//! What a local cluster's members say of themselves, through their REST APIs: who leads,
//! each member's own status, the URLs other clusters' governors reach them at.

use super::LocalCluster;
use spilo_model::NodeStatus;
use std::time::Duration;

impl LocalCluster {
    pub(super) async fn leader(&self) -> Option<usize> {
        self.leader_status().await.map(|(i, _)| i)
    }

    /// Each member's REST API base URL, as another cluster's governors reach it.
    pub fn api_urls(&self) -> Vec<String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        (0..self.file.spec.instances)
            .filter_map(|i| u16::try_from(i).ok())
            .map(|i| format!("{scheme}://127.0.0.1:{}", self.ports.api.saturating_add(i)))
            .collect()
    }

    /// The member holding the leader key and its own status (live WAL positions); the
    /// members after it are not asked.
    pub async fn leader_status(&self) -> Option<(usize, NodeStatus)> {
        let api = self.status_client()?;
        for i in 0..self.members.len() {
            if let Some(s) = self.status_of(&api, i).await
                && s.is_leader
            {
                return Some((i, s));
            }
        }
        None
    }

    /// Each member's own account, `None` where its REST API does not answer.
    pub(super) async fn statuses(&self) -> Vec<Option<NodeStatus>> {
        let Some(api) = self.status_client() else {
            return vec![None; self.members.len()];
        };
        let mut out = Vec::new();
        for i in 0..self.members.len() {
            out.push(self.status_of(&api, i).await);
        }
        out
    }

    /// The HTTP client for the members' REST APIs (2 s per request) and its scheme.
    pub(super) fn status_client(&self) -> Option<(reqwest::Client, &'static str)> {
        crate::local::tls::api_client(self.tls.as_ref(), Duration::from_secs(2)).ok()
    }

    /// Member `i`'s `GET /status?live=true`.
    pub(super) async fn status_of(
        &self,
        (http, scheme): &(reqwest::Client, &'static str),
        i: usize,
    ) -> Option<NodeStatus> {
        let port = self.ports.api.checked_add(u16::try_from(i).ok()?)?;
        let resp = http
            .get(format!("{scheme}://127.0.0.1:{port}/status?live=true"))
            .send()
            .await
            .ok()?;
        resp.json::<NodeStatus>().await.ok()
    }
}
