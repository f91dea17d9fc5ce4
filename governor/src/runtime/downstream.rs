//! Asking this cluster's standby clusters (`downstream` in `config`) whether one of them runs
//! as primary (their members' REST APIs, or a read-write session through endpoints that
//! reach a primary only, such as an AWS cluster's load balancer): then it was promoted over this cluster (`spilo promote-standby
//! --source-unreachable`, while this cluster's etcd could not be reached), and this cluster
//! must not run a primary of its own. It follows that cluster instead, and its leader records
//! so in `config` (`standby_cluster`), so the fence holds even when that cluster cannot be
//! asked later.

use super::Governor;
use crate::ha::{ClusterView, Snapshot};
use spilo_model::{ClusterConfig, MemberRole, MemberState, NodeStatus, StandbySource};
use std::time::Duration;

/// The longest a pass waits for a standby cluster's member to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// How this cluster follows the first standby cluster of `config` one of whose members
/// answers `/status` as a running primary; `None` when none does (or none answers), when the
/// cluster is itself a standby, or when it has no standby cluster.
pub async fn promoted_over_us(
    http: &reqwest::Client,
    config: Option<&ClusterConfig>,
    timeout: Duration,
) -> Option<StandbySource> {
    let config = config?;
    if config.standby_cluster.is_some() || config.downstream.is_empty() {
        return None;
    }
    let timeout = timeout.min(ASK_TIMEOUT);
    let asks = config.downstream.iter().flat_map(|d| {
        d.api.iter().map(move |base| async move {
            let url = format!("{}/status", base.trim_end_matches('/'));
            let resp = http.get(&url).timeout(timeout).send().await.ok()?;
            if !resp.status().is_success() {
                return None;
            }
            let s = resp.json::<NodeStatus>().await.ok()?;
            (s.member.role == MemberRole::Primary && s.member.state == MemberState::Running)
                .then_some(d)
        })
    });
    first_promoted(futures::future::join_all(asks).await)
}

/// Like [`promoted_over_us`], for the standby clusters of `config` listed with `primary`
/// endpoints (their load balancers, which route to a primary only): the first through which
/// a read-write session opens (as the superuser, within [`ASK_TIMEOUT`]) runs as primary.
pub async fn primary_answers(
    pg: &crate::postgres::Instance,
    config: Option<&ClusterConfig>,
) -> Option<StandbySource> {
    let config = config?;
    if config.standby_cluster.is_some() {
        return None;
    }
    let asks = config
        .downstream
        .iter()
        .filter(|d| !d.primary.is_empty())
        .map(|d| async move {
            let through = StandbySource {
                cluster: Some(d.cluster.clone()),
                hosts: d.primary.clone(),
                archive: None,
            };
            let upstream = crate::postgres::Upstream::source(&through).ok()?;
            let mut session = pg.remote_session(&upstream);
            let answered = tokio::time::timeout(ASK_TIMEOUT, session.execute("SELECT 1")).await;
            session.reset();
            matches!(answered, Ok(Ok(()))).then_some(d)
        });
    first_promoted(futures::future::join_all(asks).await)
}

/// How this cluster follows the first standby cluster found running as primary.
fn first_promoted(answers: Vec<Option<&spilo_model::Downstream>>) -> Option<StandbySource> {
    let d = answers.into_iter().flatten().next()?;
    let mut follow = d.follow.clone();
    follow.cluster.get_or_insert_with(|| d.cluster.clone());
    Some(follow)
}

impl Governor {
    /// As the leader-key holder of a cluster a standby cluster was promoted over: writes that
    /// cluster into `config` as this cluster's source (compare-and-swap on the revision read).
    pub(super) async fn record_fence(&self, snapshot: &Snapshot) {
        let crate::ha::DcsView::Known(view) = &snapshot.dcs else {
            return;
        };
        let Some(source) = fence_to_record(view, &snapshot.me) else {
            return;
        };
        let written = async {
            let (value, revision) = self.dcs.read_config().await?;
            let Some(mut config) =
                value.and_then(|v| serde_json::from_value::<ClusterConfig>(v).ok())
            else {
                return Ok::<bool, crate::dcs::DcsError>(false);
            };
            if config.standby_cluster.is_some() {
                return Ok(false);
            }
            config.standby_cluster = Some(source.clone());
            self.dcs.write_config(&config, revision).await
        }
        .await;
        match written {
            Ok(true) => tracing::warn!(
                source = %source.describe(),
                "a standby cluster of this one runs as primary (it was promoted over this \
                 cluster): recorded it as this cluster's source in config"
            ),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "cannot record the fence in config yet"),
        }
    }
}

/// The source to record: when `me` holds the leader key, a standby cluster was found
/// promoted, and `config` does not name a source yet.
fn fence_to_record<'a>(
    view: &'a ClusterView,
    me: &spilo_model::MemberName,
) -> Option<&'a StandbySource> {
    let source = view.fenced_by.as_ref()?;
    let leads = view.leader.as_ref().is_some_and(|l| &l.name == me);
    let unrecorded = view
        .config
        .as_ref()
        .is_some_and(|c| c.standby_cluster.is_none());
    (leads && unrecorded).then_some(source)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::LeaderKey;
    use spilo_model::{Downstream, MemberName};

    fn source() -> StandbySource {
        StandbySource {
            cluster: Some("dr".into()),
            hosts: vec!["127.0.0.1:6000".into()],
            archive: None,
        }
    }

    #[test]
    fn only_the_leader_records_a_fence_and_only_once() {
        let me = MemberName::new("src-0").expect("name");
        let other = MemberName::new("src-1").expect("name");
        let mut view = ClusterView {
            config: Some(ClusterConfig::default()),
            fenced_by: Some(source()),
            ..ClusterView::default()
        };
        assert_eq!(fence_to_record(&view, &me), None, "nobody leads");
        view.leader = Some(LeaderKey {
            name: other.clone(),
            lease: 1,
        });
        assert_eq!(fence_to_record(&view, &me), None, "another member leads");
        view.leader = Some(LeaderKey {
            name: me.clone(),
            lease: 1,
        });
        assert_eq!(fence_to_record(&view, &me), Some(&source()));
        view.config = Some(ClusterConfig {
            standby_cluster: Some(source()),
            ..ClusterConfig::default()
        });
        assert_eq!(fence_to_record(&view, &me), None, "already recorded");
        view.config = Some(ClusterConfig::default());
        view.fenced_by = None;
        assert_eq!(fence_to_record(&view, &me), None, "no fence");
    }

    /// A REST API that answers `/status` with `role`.
    async fn member_answering(role: MemberRole) -> String {
        let status = serde_json::json!({
            "name": "dr-0", "scope": "dr", "role": role, "state": "running",
            "api_url": "http://x", "conn_url": "postgres://y", "is_leader": true,
            "governor_pid": 1,
        });
        let app = axum::Router::new().route(
            "/status",
            axum::routing::get(move || {
                let s = status.clone();
                async move { axum::Json(s) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn a_standby_cluster_running_as_primary_fences_this_cluster() {
        let http = reqwest::Client::new();
        let replica = member_answering(MemberRole::Replica).await;
        let primary = member_answering(MemberRole::Primary).await;
        let mut config = ClusterConfig {
            downstream: vec![Downstream {
                cluster: "dr".into(),
                // One member cannot be reached at all, one runs as a standby.
                api: vec!["http://127.0.0.1:1".into(), replica],
                primary: Vec::new(),
                follow: StandbySource {
                    cluster: None,
                    ..source()
                },
            }],
            ..ClusterConfig::default()
        };
        let t = Duration::from_secs(2);
        assert_eq!(promoted_over_us(&http, Some(&config), t).await, None);
        config.downstream[0].api.push(primary);
        assert_eq!(
            promoted_over_us(&http, Some(&config), t).await,
            Some(source()),
            "named after the downstream cluster"
        );
        config.standby_cluster = Some(source());
        assert_eq!(
            promoted_over_us(&http, Some(&config), t).await,
            None,
            "a standby cluster does not ask"
        );
    }
}
