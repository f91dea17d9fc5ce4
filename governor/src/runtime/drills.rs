//! Scheduled restore drills (`archive.verify`). Every member runs the timer; at each time of
//! the schedule the designated member runs the drill ([`crate::drill`]) and writes the result
//! to etcd `drill`. Designated: the first running replica by name (the drill reads the archive
//! and uses disk and CPU, better not on the primary), else the leader (a cluster of one).

use super::backups::next_after;
use crate::dcs::Dcs;
use crate::drill::{Drill, Report};
use crate::shared::Shared;
use chrono::Utc;
use spilo_model::{DrillRecord, DrillRun, MemberName, MemberRole, MemberStatus};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Runs until `cancel` fires.
pub async fn run(
    drill: Drill,
    schedule: String,
    shared: Arc<Shared>,
    dcs: Dcs,
    me: MemberName,
    cancel: CancellationToken,
) {
    let cron = match crate::archive::cron(&schedule) {
        Ok(c) => c,
        Err(e) => {
            // The configuration was checked at load; this cannot happen with a valid file.
            tracing::error!(error = e, "no scheduled restore drills");
            return;
        }
    };
    // The drills' clock starts with the first member whose schedule starts.
    let now = u64::try_from(Utc::now().timestamp()).unwrap_or(0);
    if let Err(e) = dcs
        .create_drill_if_absent(&DrillRecord::scheduled(now))
        .await
    {
        tracing::warn!(error = %e, "cannot record when restore drills began");
    }
    loop {
        let Some(next) = next_after(&cron, Utc::now()) else {
            return;
        };
        let wait = (next - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        let chosen = {
            let view = shared.view.read().await;
            view.as_ref().is_some_and(|v| {
                designated(&v.members, v.leader.as_ref().map(|l| &l.name)) == Some(&me)
            })
        };
        if !chosen {
            continue;
        }
        tracing::info!("scheduled restore drill starting");
        let outcome = tokio::select! {
            () = cancel.cancelled() => return,
            r = crate::drill::run(&drill) => r,
        };
        let run = to_run(&me, outcome, Utc::now().timestamp());
        if run.ok {
            tracing::info!(backup = ?run.backup, rpo_ms = ?run.rpo_ms, rto_ms = ?run.rto_ms, "restore drill passed");
        } else {
            tracing::warn!(backup = ?run.backup, failed = ?run.failed, "restore drill failed");
        }
        let previous = dcs.read_drill().await.ok().flatten();
        let record = DrillRecord::after(previous.as_ref(), run);
        if let Err(e) = dcs.put_drill(&record).await {
            tracing::warn!(error = %e, "cannot record the restore drill in etcd");
        }
    }
}

/// The member that runs drills: the first running replica by name, else the leader.
pub fn designated<'a>(
    members: &'a BTreeMap<MemberName, MemberStatus>,
    leader: Option<&'a MemberName>,
) -> Option<&'a MemberName> {
    members
        .iter()
        .find(|(name, m)| Some(*name) != leader && m.running_as(MemberRole::Replica))
        .map(|(name, _)| name)
        .or(leader)
}

/// The record of one drill's outcome.
fn to_run(
    me: &MemberName,
    outcome: Result<Report, crate::drill::DrillError>,
    unix: i64,
) -> DrillRun {
    let unix = u64::try_from(unix).unwrap_or(0);
    let ms = |s: Option<f64>| s.map(|s| (s.max(0.0) * 1000.0) as u64);
    match outcome {
        Ok(r) => DrillRun {
            unix,
            member: me.to_string(),
            backup: r.backup.clone(),
            ok: r.ok(),
            failed: r
                .checks
                .iter()
                .filter(|c| !c.ok)
                .map(|c| format!("{}: {}", c.name, c.detail))
                .collect(),
            rpo_ms: ms(r.rpo_seconds),
            rto_ms: ms(r.rto_seconds),
        },
        Err(e) => DrillRun {
            unix,
            member: me.to_string(),
            backup: None,
            ok: false,
            failed: vec![format!("error: {e}")],
            rpo_ms: None,
            rto_ms: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spilo_model::MemberState;

    fn member(role: MemberRole, state: MemberState) -> MemberStatus {
        MemberStatus {
            conn_url: "postgres://x".into(),
            api_url: "http://x".into(),
            role,
            state,
            timeline: None,
            wal: Default::default(),
            tags: Default::default(),
            pending_restart: false,
            error: None,
        }
    }

    fn name(n: &str) -> MemberName {
        MemberName::new(n).expect("name")
    }

    #[test]
    fn the_first_running_replica_drills_else_the_leader() {
        let mut members = BTreeMap::new();
        members.insert(
            name("a-0"),
            member(MemberRole::Primary, MemberState::Running),
        );
        let leader = name("a-0");
        assert_eq!(designated(&members, Some(&leader)), Some(&leader));
        members.insert(
            name("a-2"),
            member(MemberRole::Replica, MemberState::Running),
        );
        members.insert(
            name("a-1"),
            member(MemberRole::Replica, MemberState::Stopped),
        );
        assert_eq!(designated(&members, Some(&leader)), Some(&name("a-2")));
        members.insert(
            name("a-1"),
            member(MemberRole::Replica, MemberState::Running),
        );
        assert_eq!(designated(&members, Some(&leader)), Some(&name("a-1")));
        assert_eq!(designated(&BTreeMap::new(), None), None);
    }
}
