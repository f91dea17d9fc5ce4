//! The hand-built world the `decide` tests start from: a member `m1` with a valid lease in a
//! cluster without a leader, and builders for the view, the peers and the local PostgreSQL.

use super::*;
use spilo_model::{MemberState, MemberStatus, MemberTags, WalPositions};

pub(super) const LEASE: i64 = 7;

pub(super) fn name(s: &str) -> MemberName {
    MemberName::new(s).expect("valid name")
}

pub(super) fn cfg() -> HaConfig {
    HaConfig {
        maximum_lag_on_failover: 1000,
        primary_start_timeout: Duration::from_secs(30),
        max_primary_crashes: 3,
        fence_margin: Duration::from_secs(1),
        rewind_check_after: Duration::from_secs(15),
        archive_recovery_after: None,
        standby: None,
    }
}

pub(super) fn member(role: MemberRole, state: MemberState, tl: u32, lsn: u64) -> MemberStatus {
    MemberStatus {
        conn_url: "postgres://127.0.0.1:5432/postgres".into(),
        api_url: "http://127.0.0.1:8008".into(),
        role,
        state,
        timeline: Some(TimelineId(tl)),
        wal: if role == MemberRole::Primary {
            WalPositions {
                write: Some(Lsn(lsn)),
                ..Default::default()
            }
        } else {
            WalPositions {
                receive: Some(Lsn(lsn)),
                replay: Some(Lsn(lsn)),
                ..Default::default()
            }
        },
        tags: MemberTags::default(),
        pending_restart: false,
        postgres_version: None,
        error: None,
    }
}

pub(super) fn replica(tl: u32, lsn: u64) -> MemberStatus {
    member(MemberRole::Replica, MemberState::Running, tl, lsn)
}

pub(super) fn primary(tl: u32, lsn: u64) -> MemberStatus {
    member(MemberRole::Primary, MemberState::Running, tl, lsn)
}

pub(super) struct World {
    pub(super) now: Instant,
    pub(super) snap: Snapshot,
}

impl World {
    /// m1, an initialized replica with a valid lease, in a cluster whose sysid matches and
    /// that has no leader.
    pub(super) fn new() -> Self {
        let now = Instant::now();
        let snap = Snapshot {
            me: name("m1"),
            tags: MemberTags::default(),
            dcs: DcsView::Known(ClusterView {
                initialize: Some("7000".into()),
                ..Default::default()
            }),
            lease: LeaseView {
                id: Some(LEASE),
                valid_until: Some(now + Duration::from_secs(4)),
            },
            local: LocalState {
                data: DataDir::Initialized {
                    sysid: "7000".into(),
                    was_primary: false,
                    timeline: TimelineId(1),
                    clean_checkpoint: None,
                },
                postgres: PgState::Running(RunningPg {
                    in_recovery: true,
                    timeline: Some(TimelineId(1)),
                    wal: WalPositions {
                        receive: Some(Lsn(500)),
                        replay: Some(Lsn(500)),
                        write: None,
                    },
                    upstream: None,
                    streaming: false,
                    not_streaming_since: None,
                    pending_restart: false,
                }),
                recent_crashes: 0,
                primary_down_since: None,
                bootstrap_blocked: None,
                data_seen_at: now,
            },
            peers: vec![],
            failsafe: FailsafeView::default(),
            unix_now: 1_000_000,
        };
        World { now, snap }
    }

    pub(super) fn view(&mut self) -> &mut ClusterView {
        match &mut self.snap.dcs {
            DcsView::Known(v) => v,
            DcsView::Unreachable { .. } => panic!("test world has no view"),
        }
    }

    pub(super) fn leader(&mut self, who: &str, lease: i64) -> &mut Self {
        self.view().leader = Some(LeaderKey {
            name: name(who),
            lease,
        });
        self
    }

    pub(super) fn member(&mut self, who: &str, st: MemberStatus) -> &mut Self {
        self.view().members.insert(name(who), st);
        self
    }

    pub(super) fn peer(&mut self, who: &str, st: Option<MemberStatus>) -> &mut Self {
        self.snap.peers.push(PeerView {
            name: name(who),
            status: st,
        });
        self
    }

    pub(super) fn pg(&mut self, pg: PgState) -> &mut Self {
        self.snap.local.postgres = pg;
        self
    }

    pub(super) fn running_primary(&mut self) -> &mut Self {
        self.pg(PgState::Running(RunningPg {
            in_recovery: false,
            timeline: Some(TimelineId(1)),
            wal: WalPositions {
                write: Some(Lsn(900)),
                ..Default::default()
            },
            upstream: None,
            streaming: false,
            not_streaming_since: None,
            pending_restart: false,
        }))
    }

    pub(super) fn data(&mut self, data: DataDir) -> &mut Self {
        self.snap.local.data = data;
        self
    }

    pub(super) fn stopped_data(&mut self, was_primary: bool, tl: u32) -> &mut Self {
        self.data(DataDir::Initialized {
            sysid: "7000".into(),
            was_primary,
            timeline: TimelineId(tl),
            clean_checkpoint: None,
        })
        .pg(PgState::Stopped)
    }

    pub(super) fn decide(&self) -> Decision {
        decide(&self.snap, &cfg(), self.now)
    }
}

pub(super) fn kind(d: &Decision) -> &'static str {
    d.kind()
}

/// Asserts that `d` waits, for a reason that contains `because`.
#[track_caller]
pub(super) fn assert_waits(d: &Decision, because: &str) {
    match d {
        Decision::Wait { why } => {
            assert!(
                why.contains(because),
                "waits because {why:?}, not {because:?}"
            )
        }
        other => panic!("expected a wait because {because:?}, got: {other}"),
    }
}
