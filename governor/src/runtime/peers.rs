//! Asking the other members for their own status, in parallel, with a short deadline. Used
//! only while the cluster has no leader, so the candidate ranking compares fresh positions:
//! each member is asked for its live positions (`/status?live=true`, read from PostgreSQL at
//! that moment), and one that answers otherwise than 200 counts as not answering.

use crate::ha::PeerView;
use spilo_model::{MemberName, MemberStatus, NodeStatus};
use std::collections::BTreeMap;
use std::time::Duration;

/// Fetches `GET <api_url>/status?live=true` from every member except `me`.
pub async fn fetch(
    http: &reqwest::Client,
    me: &MemberName,
    members: &BTreeMap<MemberName, MemberStatus>,
    timeout: Duration,
) -> Vec<PeerView> {
    let asks = members
        .iter()
        .filter(|(name, _)| *name != me)
        .map(|(name, m)| {
            let url = format!("{}/status?live=true", m.api_url.trim_end_matches('/'));
            let name = name.clone();
            async move {
                let answer = async {
                    let resp = http.get(&url).timeout(timeout).send().await.ok()?;
                    if !resp.status().is_success() {
                        return None;
                    }
                    resp.json::<NodeStatus>().await.ok()
                }
                .await;
                PeerView {
                    name,
                    status: answer.map(|n| n.member),
                }
            }
        });
    futures::future::join_all(asks).await
}
