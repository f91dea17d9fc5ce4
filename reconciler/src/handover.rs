//! The switchover between two clusters, target-neutral: cluster X (a primary cluster) becomes
//! a standby of Y while Y (X's standby) is promoted, in the order that loses no acknowledged
//! commit. X's primary steps down (its governor checkpoints and stops it cleanly, so its WAL
//! ends at a shutdown checkpoint its standbys receive) and restarts as X's standby leader;
//! the end of its WAL is the **demotion token**; Y is promoted only once its leader has
//! received that position. When X does not step down, or Y does not catch up, within the
//! step timeout, X is made a primary again and Y stays a standby: nothing was promoted. Before
//! anything changes, X's leader must run as primary; the token is taken from the member that
//! stepped down only (one that took X's key since has no say).
//!
//! The targets differ only in how a cluster is changed and watched ([`Side`]): the local
//! target writes `config` in the cluster's own etcd and asks its governors' REST APIs; AWS
//! writes the planned `config` and reads the members' keys in etcd (its instances' APIs are
//! not reachable from where `spilo apply` runs).

use spilo_model::{Lsn, MemberRole, MemberStatus};
use std::time::{Duration, Instant};

/// A cluster as the sequence watches it.
#[allow(async_fn_in_trait)]
pub trait Watch {
    /// The cluster's name.
    fn name(&self) -> &str;
    /// The leader-key holder's name and what it publishes now; `None` without a leader or an
    /// answer.
    async fn leader(&self) -> Option<(String, MemberStatus)>;
}

/// One cluster of a switchover, as the sequence drives it.
#[allow(async_fn_in_trait)]
pub trait Side: Watch {
    /// X: makes it a standby of Y (its primary steps down).
    async fn step_down(&mut self) -> anyhow::Result<()>;
    /// X, when the switchover is abandoned: a primary cluster again.
    async fn step_up_again(&mut self) -> anyhow::Result<()>;
    /// Y: no longer a standby (its leader is promoted).
    async fn take_over(&mut self) -> anyhow::Result<()>;
}

/// How a switchover went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switched {
    /// The end of X's WAL when it stepped down, which Y received before its promotion.
    pub token: Lsn,
    /// From X's step-down to Y's leader running as primary: the time no cluster took writes.
    pub no_writes: Duration,
}

impl Switched {
    /// The line that reports it.
    pub fn describe(&self, x: &str, y: &str) -> String {
        format!(
            "~ switchover from cluster {x} to cluster {y}: {x} stepped down at {}, {y} received it and was promoted; no writes for {:.1}s",
            self.token,
            self.no_writes.as_secs_f64()
        )
    }
}

/// Runs the switchover from `x` to `y`; each wait is bounded by `step`.
pub async fn switch_between(
    x: &mut impl Side,
    y: &mut impl Side,
    step: Duration,
) -> anyhow::Result<Switched> {
    let (xn, yn) = (x.name().to_string(), y.name().to_string());
    // Before anything changes: x's leader runs as primary. (y is not asked: a y that cannot
    // answer or catch up costs the step timeout, then x takes writes again.)
    let Some((primary, _)) = x
        .leader()
        .await
        .filter(|(_, m)| m.running_as(MemberRole::Primary))
    else {
        anyhow::bail!("cluster {xn} has no leader running as primary; nothing was changed");
    };
    let started = Instant::now();
    x.step_down().await?;
    let caught_up = async {
        // The end of the WAL of the primary that stepped down: a member that took the key
        // since (after a crash) has no say in it.
        let token = wait_leader(
            &*x,
            &format!("cluster {xn}'s primary did not step down"),
            step,
            |name, m| {
                (name == primary && m.running_as(MemberRole::Replica))
                    .then_some(m.wal.replay)
                    .flatten()
            },
        )
        .await?;
        wait_leader(
            &*y,
            &format!("cluster {yn} did not receive {xn}'s last position {token}"),
            step,
            |_, m| m.wal.best().filter(|l| *l >= token),
        )
        .await?;
        anyhow::Ok(token)
    }
    .await;
    let token = match caught_up {
        Ok(t) => t,
        Err(e) => {
            // Nothing was promoted: x takes writes again.
            if let Err(back) = x.step_up_again().await {
                anyhow::bail!(
                    "{e:#}; and cluster {xn} could not be made a primary again: {back:#}"
                );
            }
            anyhow::bail!("{e:#}; cluster {xn} is a primary again, cluster {yn} stays its standby");
        }
    };
    if let Err(e) = y.take_over().await {
        // y was not promoted: x takes writes again.
        return Err(match x.step_up_again().await {
            Ok(()) => anyhow::anyhow!(
                "cluster {yn} could not be promoted ({e:#}); cluster {xn} is a primary again, \
                 cluster {yn} stays its standby"
            ),
            Err(back) => anyhow::anyhow!(
                "cluster {yn} could not be promoted ({e:#}), and cluster {xn} could not be made \
                 a primary again: {back:#}"
            ),
        });
    }
    wait_leader(
        &*y,
        &format!("cluster {yn}'s leader was not promoted"),
        step,
        |_, m| m.running_as(MemberRole::Primary).then_some(()),
    )
    .await?;
    Ok(Switched {
        token,
        no_writes: started.elapsed(),
    })
}

/// Polls `side`'s leader (its name and status) until `done` says yes (returning what it returned) or `timeout`
/// passes.
pub async fn wait_leader<T>(
    side: &impl Watch,
    what: &str,
    timeout: Duration,
    done: impl Fn(&str, &MemberStatus) -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some((name, m)) = side.leader().await
            && let Some(v) = done(&name, &m)
        {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            anyhow::bail!("{what} within {}s", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spilo_model::{MemberState, WalPositions};
    use std::sync::{Arc, Mutex};

    /// A cluster played by hand: its leader's status, and what was asked of it.
    struct Fake {
        name: &'static str,
        leader: Arc<Mutex<MemberStatus>>,
        asked: Arc<Mutex<Vec<&'static str>>>,
        /// What the leader looks like after each request.
        on_step_down: Option<MemberStatus>,
        on_take_over: Option<MemberStatus>,
        /// Its `config` cannot be written when it is to take over.
        refuses_take_over: bool,
    }

    fn member(role: MemberRole, write: Option<u64>, replay: Option<u64>) -> MemberStatus {
        MemberStatus {
            conn_url: String::new(),
            api_url: String::new(),
            role,
            state: MemberState::Running,
            timeline: None,
            wal: WalPositions {
                write: write.map(Lsn),
                receive: None,
                replay: replay.map(Lsn),
            },
            tags: Default::default(),
            pending_restart: false,
            error: None,
            postgres_version: None,
        }
    }

    impl Watch for Fake {
        fn name(&self) -> &str {
            self.name
        }
        async fn leader(&self) -> Option<(String, MemberStatus)> {
            let m = self.leader.lock().ok()?.clone();
            Some((format!("{}-0", self.name), m))
        }
    }

    impl Side for Fake {
        async fn step_down(&mut self) -> anyhow::Result<()> {
            self.asked.lock().expect("lock").push("x steps down");
            if let Some(m) = self.on_step_down.clone() {
                *self.leader.lock().expect("lock") = m;
            }
            Ok(())
        }
        async fn step_up_again(&mut self) -> anyhow::Result<()> {
            self.asked.lock().expect("lock").push("x primary again");
            Ok(())
        }
        async fn take_over(&mut self) -> anyhow::Result<()> {
            self.asked.lock().expect("lock").push("y takes over");
            if self.refuses_take_over {
                anyhow::bail!("its config changed since the plan");
            }
            if let Some(m) = self.on_take_over.clone() {
                *self.leader.lock().expect("lock") = m;
            }
            Ok(())
        }
    }

    fn pair(y_received: u64) -> (Fake, Fake, Arc<Mutex<Vec<&'static str>>>) {
        let asked = Arc::new(Mutex::new(Vec::new()));
        let x = Fake {
            name: "x",
            leader: Arc::new(Mutex::new(member(MemberRole::Primary, Some(900), None))),
            asked: asked.clone(),
            on_step_down: Some(member(MemberRole::Replica, None, Some(1000))),
            on_take_over: None,
            refuses_take_over: false,
        };
        let y = Fake {
            name: "y",
            leader: Arc::new(Mutex::new(member(
                MemberRole::Replica,
                None,
                Some(y_received),
            ))),
            asked: asked.clone(),
            on_step_down: None,
            on_take_over: Some(member(MemberRole::Primary, Some(1000), None)),
            refuses_take_over: false,
        };
        (x, y, asked)
    }

    #[tokio::test]
    async fn y_is_promoted_only_after_receiving_the_end_of_xs_wal() {
        let (mut x, mut y, asked) = pair(1000);
        let done = switch_between(&mut x, &mut y, Duration::from_secs(2))
            .await
            .expect("switched");
        assert_eq!(done.token, Lsn(1000));
        assert_eq!(
            *asked.lock().expect("lock"),
            ["x steps down", "y takes over"]
        );
        assert!(
            done.describe("x", "y").contains("x stepped down at 0/3E8"),
            "{}",
            done.describe("x", "y")
        );
    }

    #[tokio::test]
    async fn a_standby_behind_the_token_is_not_promoted_and_x_writes_again() {
        // y has 999 of x's 1000: promoting it would lose the last commit.
        let (mut x, mut y, asked) = pair(999);
        let err = switch_between(&mut x, &mut y, Duration::from_millis(300))
            .await
            .expect_err("refused");
        let err = format!("{err:#}");
        assert!(
            err.contains("cluster y did not receive x's last position 0/3E8")
                && err.contains("cluster x is a primary again, cluster y stays its standby"),
            "{err}"
        );
        assert_eq!(
            *asked.lock().expect("lock"),
            ["x steps down", "x primary again"]
        );
    }

    #[tokio::test]
    async fn a_primary_that_does_not_step_down_is_made_writable_again() {
        let (mut x, mut y, asked) = pair(1000);
        x.on_step_down = None;
        let err = switch_between(&mut x, &mut y, Duration::from_millis(300))
            .await
            .expect_err("refused");
        assert!(
            format!("{err:#}").contains("cluster x's primary did not step down"),
            "{err:#}"
        );
        assert_eq!(
            *asked.lock().expect("lock"),
            ["x steps down", "x primary again"]
        );
    }

    #[tokio::test]
    async fn a_standby_that_cannot_be_promoted_leaves_x_writable() {
        let (mut x, mut y, asked) = pair(1000);
        y.refuses_take_over = true;
        let err = switch_between(&mut x, &mut y, Duration::from_secs(2))
            .await
            .expect_err("refused");
        assert!(
            format!("{err:#}")
                .contains("cluster x is a primary again, cluster y stays its standby"),
            "{err:#}"
        );
        assert_eq!(
            *asked.lock().expect("lock"),
            ["x steps down", "y takes over", "x primary again"]
        );
    }

    #[tokio::test]
    async fn nothing_changes_unless_x_leads_as_primary() {
        let (mut x, mut y, asked) = pair(1000);
        *x.leader.lock().expect("lock") = member(MemberRole::Replica, None, Some(5));
        let err = switch_between(&mut x, &mut y, Duration::from_secs(2))
            .await
            .expect_err("refused");
        assert!(format!("{err:#}").contains("cluster x has no leader running as primary"));
        assert!(asked.lock().expect("lock").is_empty(), "nothing asked");
    }
}
