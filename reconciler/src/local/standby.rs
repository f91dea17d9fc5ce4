//! Standby clusters on the local target: `spec.standby` resolved to the source's members, and
//! changes of it while `spilo up` runs carried into the clusters' `config`.
//!
//! One edit that makes cluster X a standby of Y and removes Y's `standby` (Y was X's standby)
//! is a **switchover between clusters**, done in the order that loses no acknowledged commit:
//! X's primary steps down (CHECKPOINT, clean stop: its WAL ends at a shutdown checkpoint its
//! standbys received) and restarts as X's standby leader; the end of its WAL is the demotion
//! token; Y is promoted only once its leader has received that position; when X does not step
//! down or Y does not catch up in time, X is made a primary again and Y stays a standby.
//!
//! Removing `standby` from X alone promotes X only when its source Y cannot be a second
//! primary: refused while Y's leader runs as primary, and otherwise Y is **fenced** first (its
//! `config` made a standby of X, so its members step down or start as standby leader and
//! rewind against X) and X is promoted only once, for a TTL of Y's without a break, Y's
//! leader runs as a standby or Y has no leader key (a primary stops accepting writes before
//! its lease ends, so by then a primary whose governor cannot be asked has stopped too; the
//! TTL covers a member of Y that decided to take over on the old `config`); when Y's leader
//! runs as a standby, X first receives the end of Y's WAL, as in a switchover. Refused when
//! Y's etcd does not answer, because Y could come back as a primary (`spilo promote-standby X
//! --source-unreachable` is the explicit action then: Y's governors ask their standby
//! clusters, listed by [`sync_downstream`], before running a primary). A refused edit is not
//! tried again until that cluster's file changes.

use super::cluster::LocalCluster;
use super::state::Layout;
use super::up::{Desired, ports_of};
use anyhow::bail;
use spilo_model::spec::ClusterFile;
use spilo_model::{Lsn, MemberRole, MemberState, NodeStatus, StandbySource};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// `spec.standby` of `f` resolved for the local target: `from` names a cluster of `desired`,
/// whose members' PostgreSQL ports become the source's endpoints, and whose WAL archive (when
/// it has `backup`) the standby leader replays while it cannot stream.
pub fn resolve(
    f: &ClusterFile,
    desired: &Desired,
    layout: &Layout,
) -> anyhow::Result<Option<StandbySource>> {
    let Some(sb) = &f.spec.standby else {
        return Ok(None);
    };
    let (hosts, archive) = match &sb.from {
        Some(from) => {
            let Some((_, source)) = desired.get(from.as_str()) else {
                bail!(
                    "cluster {}: spec.standby.from names {from}, which is not among the local clusters given to spilo up",
                    f.metadata.name
                );
            };
            let p = ports_of(source);
            let bucket = layout.cluster(from.as_str()).join("bucket");
            (
                (0..p.instances)
                    .map(|i| format!("127.0.0.1:{}", p.postgres + i))
                    .collect(),
                crate::member_config::archive_of(
                    source,
                    &crate::member_config::Store::Directory(bucket),
                ),
            )
        }
        None => (sb.hosts.clone(), None),
    };
    Ok(Some(StandbySource {
        cluster: sb.from.as_ref().map(|c| c.to_string()),
        hosts,
        archive,
    }))
}

/// Carries changed `spec.standby` sections of running clusters into their `config`; returns
/// the lines to print (errors included). `step`: how long a primary may take to step down,
/// and a standby to receive its last position (`spilo up --cluster-switchover-timeout`).
pub async fn apply_edits(
    desired: &Desired,
    running: &mut BTreeMap<String, LocalCluster>,
    layout: &Layout,
    step: Duration,
) -> Vec<String> {
    let changed: Vec<String> = running
        .iter()
        .filter(|(n, c)| {
            desired
                .get(*n)
                .is_some_and(|(_, f)| f.spec.standby != c.file.spec.standby)
        })
        .map(|(n, _)| n.clone())
        .collect();
    let from = |c: &LocalCluster| {
        c.file
            .spec
            .standby
            .as_ref()
            .and_then(|s| s.from.as_ref())
            .map(|f| f.to_string())
    };
    let mut out = Vec::new();
    let mut done = Vec::new();
    // Pairs: X becomes a standby of Y while Y, a standby of X, stops being one.
    for x in &changed {
        let wanted_from = desired[x]
            .1
            .spec
            .standby
            .as_ref()
            .and_then(|s| s.from.as_ref())
            .map(|f| f.to_string());
        let Some(y) = wanted_from else { continue };
        let pair = changed.contains(&y)
            && desired[&y].1.spec.standby.is_none()
            && running.get(&y).and_then(from).as_deref() == Some(x.as_str());
        if !pair || done.contains(x) || done.contains(&y) {
            continue;
        }
        out.push(
            match switch_between(x, &y, desired, running, layout, step).await {
                Ok(line) => line,
                Err(e) => format!("could not switch from cluster {x} to cluster {y}: {e:#}"),
            },
        );
        done.extend([x.clone(), y.clone()]);
    }
    for name in changed.iter().filter(|n| !done.contains(n)) {
        let (_, f) = &desired[name];
        if running
            .get(name)
            .is_some_and(|c| c.refused_standby.as_ref() == Some(&f.spec.standby))
        {
            continue;
        }
        let old_source = running.get(name).and_then(from);
        if f.spec.standby.is_none()
            && let Some(y) = old_source
        {
            out.push(
                match promote(name, &y, desired, running, layout, step).await {
                    Ok(line) => line,
                    Err(e) => {
                        if let Some(c) = running.get_mut(name) {
                            c.refused_standby = Some(f.spec.standby.clone());
                        }
                        format!("refused to promote cluster {name}: {e:#}")
                    }
                },
            );
            continue;
        }
        let Some(c) = running.get_mut(name) else {
            continue;
        };
        out.push(match set_standby(c, f, desired, layout).await {
            Ok(line) => line,
            Err(e) => format!("could not change cluster {name}'s standby source: {e:#}"),
        });
    }
    out
}

/// Writes into each running cluster's `config` its standby clusters (`downstream`): the
/// clusters of `desired` whose `spec.standby.from` names it, with their members' REST APIs
/// and how it would follow each. Its governors ask them before running a primary, so a
/// standby promoted over it while its etcd could not be reached (`spilo promote-standby
/// --source-unreachable`) fences it. Returns the lines to print (errors).
pub async fn sync_downstream(
    desired: &Desired,
    running: &BTreeMap<String, LocalCluster>,
    layout: &Layout,
) -> Vec<String> {
    let mut out = Vec::new();
    for (a, ca) in running {
        let mut downstream = Vec::new();
        for (b, (_, fb)) in desired {
            let from = fb.spec.standby.as_ref().and_then(|s| s.from.as_ref());
            let (Some(cb), true) = (running.get(b), from.is_some_and(|f| f.as_str() == a)) else {
                continue;
            };
            let mut follower = ca.file.clone();
            follower.spec.standby = Some(spilo_model::spec::StandbySpec {
                from: Some(fb.metadata.name.clone()),
                hosts: Vec::new(),
                archive: None,
            });
            match resolve(&follower, desired, layout) {
                Ok(Some(follow)) => downstream.push(spilo_model::Downstream {
                    cluster: b.clone(),
                    api: cb.api_urls(),
                    primary: Vec::new(),
                    follow,
                }),
                Ok(None) => {}
                Err(e) => out.push(format!("cluster {a}: standby cluster {b}: {e:#}")),
            }
        }
        // A cluster without standby clusters whose `config` is absent or unreachable has
        // nothing to be fenced by: only a list to write is worth an error.
        let quiet = downstream.is_empty();
        if ca.on_zookeeper() {
            if !quiet {
                out.push(format!(
                    "cluster {a}: runs on ZooKeeper, where a standby cluster's source is not \
                     supported yet: its standby clusters do not fence it"
                ));
            }
            continue;
        }
        let target = target(&ca.file.metadata.name, layout);
        let write =
            crate::list::update_config(&target, move |cfg| cfg.downstream = downstream.clone());
        match tokio::time::timeout(Duration::from_secs(10), write).await {
            Ok(Ok(())) => {}
            // Nothing to write, and no `config` to clear it in.
            Ok(Err(e)) if quiet && e.downcast_ref::<crate::list::ConfigAbsent>().is_some() => {}
            Ok(Err(e)) => out.push(format!(
                "cluster {a}: cannot list its standby clusters in config: {e:#}"
            )),
            Err(_) => out.push(format!(
                "cluster {a}: cannot list its standby clusters in config: etcd did not answer within 10s"
            )),
        }
    }
    out
}

/// Promotes `x`, a standby of `y`, after fencing `y` (see the module documentation).
async fn promote(
    x: &str,
    y: &str,
    desired: &Desired,
    running: &mut BTreeMap<String, LocalCluster>,
    layout: &Layout,
    step: Duration,
) -> anyhow::Result<String> {
    let fx = &desired[x].1;
    let fence = match running.get(y) {
        Some(cy) => {
            if let Some((_, s)) = cy.leader_status().await
                && running_as(&s, MemberRole::Primary)
            {
                bail!(
                    "its source, cluster {y}, runs as primary ({}): promoting {x} would make two \
                     primaries; make {y} a standby of {x} in the same edit for a switchover",
                    s.name
                );
            }
            let mut as_standby = desired
                .get(y)
                .map(|(_, f)| f.clone())
                .ok_or_else(|| anyhow::anyhow!("cluster {y} has no file"))?;
            as_standby.spec.standby = Some(spilo_model::spec::StandbySpec {
                from: Some(fx.metadata.name.clone()),
                hosts: Vec::new(),
                archive: None,
            });
            let source = resolve(&as_standby, desired, layout)?;
            write_source(&as_standby.metadata.name, source.clone(), layout)
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cluster {y}, its source, cannot be fenced ({e:#}): it could come back as a \
                         second primary; `spilo promote-standby {x} --source-unreachable` promotes \
                         {x} and fences {y} through its standby clusters"
                    )
                })?;
            if let Some(cy) = running.get_mut(y) {
                cy.set_standby(cy.file.clone(), source);
            }
            let token = stopped_writing(y, &running[y], layout, step).await?;
            if let (Some(token), Some(cx)) = (token, running.get(x)) {
                crate::handover::wait_leader(
                    cx,
                    &format!("cluster {x} did not receive {y}'s last position {token}"),
                    step,
                    |_, m| m.wal.best().filter(|l| *l >= token),
                )
                .await?;
            }
            format!(
                "; cluster {y} fenced: it is now a standby of {x} (write `standby: {{from: {x}}}` into its file)"
            )
        }
        None => String::new(),
    };
    let Some(cx) = running.get_mut(x) else {
        bail!("cluster {x} does not run")
    };
    let line = set_standby(cx, fx, desired, layout).await?;
    Ok(format!("{line}{fence}"))
}

/// Waits until cluster `y` accepts no write, for a TTL of its own without a break: its leader
/// answers as a standby, or it has no leader key (the primary's lease ended, and with it, by
/// the fence, its writes). Returns the end of the standby leader's WAL when it answered, the
/// position the promoted cluster must have.
async fn stopped_writing(
    y: &str,
    cy: &LocalCluster,
    layout: &Layout,
    step: Duration,
) -> anyhow::Result<Option<Lsn>> {
    let target = target(&cy.file.metadata.name, layout);
    let hold = Duration::from_secs(cy.file.spec.ha.ttl);
    let deadline = Instant::now() + step + hold;
    let mut since: Option<Instant> = None;
    loop {
        let standby = match cy.leader_status().await {
            Some((_, s)) if running_as(&s, MemberRole::Replica) => Some(s.member.wal.replay),
            _ => None,
        };
        let quiet = match standby {
            Some(_) => true,
            None => crate::operate::read_state(&target)
                .await
                .is_ok_and(|state| state.leader.is_none()),
        };
        if quiet {
            let start = *since.get_or_insert_with(Instant::now);
            if start.elapsed() >= hold {
                return Ok(standby.flatten());
            }
        } else {
            since = None;
        }
        if Instant::now() >= deadline {
            bail!(
                "cluster {y} was fenced but its primary still holds its leader key after {}s; not promoting",
                step.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Writes `f`'s resolved `spec.standby` into the cluster's `config`: its governors promote
/// (no source), step down (a source) or re-point their leader.
async fn set_standby(
    c: &mut LocalCluster,
    f: &ClusterFile,
    desired: &Desired,
    layout: &Layout,
) -> anyhow::Result<String> {
    let source = resolve(f, desired, layout)?;
    write_source(&f.metadata.name, source.clone(), layout).await?;
    c.set_standby(f.clone(), source.clone());
    Ok(match source {
        Some(s) => format!(
            "~ cluster {}: now a standby of {}",
            f.metadata.name,
            s.describe()
        ),
        None => format!(
            "~ cluster {}: no longer a standby; its leader is promoted",
            f.metadata.name
        ),
    })
}

async fn write_source(
    cluster: &spilo_model::ClusterName,
    source: Option<StandbySource>,
    layout: &Layout,
) -> anyhow::Result<()> {
    crate::list::update_config(&target(cluster, layout), move |cfg| {
        cfg.standby_cluster = source.clone()
    })
    .await
}

/// The cluster's own etcd and TLS, found in the state directory as `spilo status` does.
pub(super) fn target(
    cluster: &spilo_model::ClusterName,
    layout: &Layout,
) -> crate::operate::Target {
    crate::operate::Target {
        etcd: None,
        state_dir: Some(layout.root.clone()),
        ..crate::operate::Target::at(
            cluster.clone(),
            Vec::new(),
            spilo_model::keys::DEFAULT_NAMESPACE,
        )
    }
}

fn running_as(s: &NodeStatus, role: MemberRole) -> bool {
    s.member.role == role && s.member.state == MemberState::Running
}

/// The switchover between clusters `x` (primary, becoming a standby of `y`) and `y`: the
/// sequence of [`crate::handover`], on the clusters `spilo up` runs.
async fn switch_between(
    x: &str,
    y: &str,
    desired: &Desired,
    running: &mut BTreeMap<String, LocalCluster>,
    layout: &Layout,
    step: Duration,
) -> anyhow::Result<String> {
    if !(running.contains_key(x) && running.contains_key(y)) {
        bail!("clusters {x} and {y} must both run")
    }
    let (Some(cx), Some(cy)) = (running.remove(x), running.remove(y)) else {
        bail!("clusters {x} and {y} must both run")
    };
    let mut sx = LocalSide {
        cluster: cx,
        desired,
        layout,
    };
    let mut sy = LocalSide {
        cluster: cy,
        desired,
        layout,
    };
    let done = crate::handover::switch_between(&mut sx, &mut sy, step).await;
    running.insert(x.to_string(), sx.cluster);
    running.insert(y.to_string(), sy.cluster);
    Ok(done?.describe(x, y))
}

impl crate::handover::Watch for LocalCluster {
    fn name(&self) -> &str {
        self.file.metadata.name.as_str()
    }

    async fn leader(&self) -> Option<(String, spilo_model::MemberStatus)> {
        self.leader_status()
            .await
            .map(|(_, s)| (s.name.to_string(), s.member))
    }
}

/// A running local cluster in a switchover: its `config` written as its file (or the file's
/// opposite) says.
struct LocalSide<'a> {
    cluster: LocalCluster,
    desired: &'a Desired,
    layout: &'a Layout,
}

impl LocalSide<'_> {
    async fn become_as(
        &mut self,
        standby: Option<Option<spilo_model::spec::StandbySpec>>,
    ) -> anyhow::Result<String> {
        let name = self.cluster.file.metadata.name.to_string();
        let mut f = self.desired[&name].1.clone();
        if let Some(sb) = standby {
            f.spec.standby = sb;
        }
        set_standby(&mut self.cluster, &f, self.desired, self.layout).await
    }
}

impl crate::handover::Watch for LocalSide<'_> {
    fn name(&self) -> &str {
        self.cluster.file.metadata.name.as_str()
    }

    async fn leader(&self) -> Option<(String, spilo_model::MemberStatus)> {
        crate::handover::Watch::leader(&self.cluster).await
    }
}

impl crate::handover::Side for LocalSide<'_> {
    async fn step_down(&mut self) -> anyhow::Result<()> {
        println!("{}", self.become_as(None).await?);
        Ok(())
    }

    async fn step_up_again(&mut self) -> anyhow::Result<()> {
        self.become_as(Some(None)).await.map(|_| ())
    }

    async fn take_over(&mut self) -> anyhow::Result<()> {
        self.become_as(None).await.map(|_| ())
    }
}
