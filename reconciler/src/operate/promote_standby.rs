//! `spilo promote-standby NAME --source-unreachable`: promotes a standby cluster whose source
//! cannot be reached (its etcd does not answer), the explicit action for a disaster.
//!
//! While the source's etcd answers, this command refuses: removing `standby` from the
//! cluster file promotes with a fence written into the source's `config` first (see
//! `local::standby`). When it does not answer, nothing can be written there, so the fence is
//! the other way round: the source's `config` lists its standby clusters (`downstream`,
//! written from the files by `spilo up`, or on AWS by `spilo apply`), and its governors ask
//! them before running a primary. This command waits one TTL of the source's (a primary cut off from its etcd
//! stops accepting writes within it; refused when the source runs failsafe mode, whose
//! primary stays writable without etcd), aborting if the source's etcd answers meanwhile,
//! then removes `standby_cluster` from the standby's `config` and waits until its leader
//! runs as primary. When the source's members run again, they find it running as primary
//! and follow it; the one that takes their leader key records it as their source.

use super::{Target, read_state};
use anyhow::{Context, bail};
use spilo_model::spec::ClusterFile;
use spilo_model::{ClusterName, MemberRole, MemberState};
use std::time::{Duration, Instant};

/// `spilo promote-standby`.
#[derive(clap::Args, Debug)]
pub struct PromoteStandbyArgs {
    /// The standby cluster to promote.
    #[command(flatten)]
    pub target: Target,
    /// Confirms that the source cannot be reached and may have acknowledged writes this
    /// cluster did not receive (required).
    #[arg(long)]
    pub source_unreachable: bool,
    /// The source cluster's etcd endpoints, comma separated (default: found in the state
    /// directory when `spilo up` runs it).
    #[arg(long, value_delimiter = ',')]
    pub source_etcd: Option<Vec<String>>,
    /// The source's leader TTL (default: from its cluster file when `spilo up` runs it).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub source_ttl: Option<Duration>,
    /// How long to wait for the promoted leader.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// How long one attempt to read the source's etcd may take.
const ASK: Duration = Duration::from_secs(3);

/// Runs `spilo promote-standby`.
pub async fn promote_standby(a: PromoteStandbyArgs) -> anyhow::Result<()> {
    let me = a.target.cluster.clone();
    let state = read_state(&a.target).await?;
    let config = state.cluster_config();
    let Some(source) = config.standby_cluster.clone() else {
        bail!("cluster {me} is not a standby cluster (its config names no standby_cluster)");
    };
    let Some(src) = source.cluster.clone() else {
        bail!(
            "cluster {me}'s source is given by hosts ({}), not a cluster spilo runs: its etcd \
             cannot be checked and it cannot be fenced; `spilo edit-config {me} --set \
             standby_cluster=null` promotes {me} by hand",
            source.hosts.join(", ")
        );
    };
    let src_target = Target {
        cluster: ClusterName::new(src.clone())
            .with_context(|| format!("cluster {me}'s source name {src:?}"))?,
        etcd: a.source_etcd.clone(),
        ..a.target.clone()
    };
    if let Some(answer) = answers(&src_target).await {
        bail!(
            "cluster {src}'s etcd answers ({answer}): promote {me} by removing `standby` from \
             its file (cluster {src} is then fenced through its etcd first), or switch over by \
             also making {src} a standby of {me} in the same edit"
        );
    }
    if !a.source_unreachable {
        bail!(
            "cluster {src}, the source of {me}, does not answer: promoting {me} loses what {src} \
             acknowledged and {me} did not receive; repeat with --source-unreachable to promote \
             (cluster {src} follows {me} when its members run again)"
        );
    }
    let (ttl, failsafe) = source_settings(&src_target, a.source_ttl)?;
    if failsafe {
        bail!(
            "cluster {src} runs failsafe mode: its primary stays writable without etcd while its \
             members confirm it, so waiting cannot fence it; stop its members, then `spilo \
             edit-config {me} --set standby_cluster=null`"
        );
    }
    println!(
        "cluster {src}'s etcd does not answer; waiting {}s (its TTL): a primary of {src} cut off \
         from its etcd stops accepting writes within it",
        ttl.as_secs()
    );
    let until = Instant::now() + ttl + Duration::from_secs(1);
    while Instant::now() < until {
        if let Some(answer) = answers(&src_target).await {
            bail!(
                "cluster {src}'s etcd answers again ({answer}): not promoting {me}; remove \
                 `standby` from its file instead"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let received = state
        .leader
        .as_ref()
        .and_then(|l| state.members.get(l))
        .and_then(|m| m.wal.best());
    crate::list::update_config(&a.target, |c| c.standby_cluster = None).await?;
    let deadline = Instant::now() + a.timeout;
    let leader = loop {
        if let Ok(s) = read_state(&a.target).await
            && let Some(l) = s.leader.clone()
            && s.members
                .get(&l)
                .is_some_and(|m| m.role == MemberRole::Primary && m.state == MemberState::Running)
        {
            break l;
        }
        if Instant::now() >= deadline {
            bail!(
                "cluster {me}'s config no longer names a source, but its leader did not run as \
                 primary within {}s",
                a.timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "~ cluster {me}: promoted ({leader} runs as primary; it had received {src}'s WAL up to \
         {}); cluster {src} is fenced: when its members run again they find {me} running as \
         primary and follow it (write `standby: {{from: {me}}}` into {src}'s file and remove \
         `standby` from {me}'s)",
        received.map_or_else(|| "an unknown position".to_string(), |l| l.to_string())
    );
    Ok(())
}

/// How the source's etcd answered, when it did within [`ASK`].
async fn answers(t: &Target) -> Option<String> {
    match tokio::time::timeout(ASK, read_state(t)).await {
        Ok(Ok(s)) => Some(match s.leader {
            Some(l) => format!("its leader is {l}"),
            None => "it has no leader".into(),
        }),
        _ => None,
    }
}

/// The source's TTL and failsafe mode: `--source-ttl`, else its cluster file where `spilo up`
/// runs it.
fn source_settings(t: &Target, ttl: Option<Duration>) -> anyhow::Result<(Duration, bool)> {
    let file = t.local().and_then(|st| {
        let text = std::fs::read_to_string(&st.file).ok()?;
        serde_yaml::from_str::<ClusterFile>(&text).ok()
    });
    match (ttl, file) {
        (Some(ttl), f) => Ok((ttl, f.is_some_and(|f| f.spec.ha.failsafe_mode))),
        (None, Some(f)) => Ok((Duration::from_secs(f.spec.ha.ttl), f.spec.ha.failsafe_mode)),
        (None, None) => bail!(
            "cluster {}'s file is not where `spilo up` runs it: give its TTL with --source-ttl",
            t.cluster
        ),
    }
}
