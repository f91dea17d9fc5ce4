//! The commands that go through the governors' REST API, and `spilo history`.

use super::{Answer, Api, ApiAuth, ClusterState, Target, read_state};
use anyhow::{Context, bail};
use serde_json::json;
use spilo_model::{MemberName, MemberRole};
use std::time::{Duration, Instant};

/// `spilo switchover`.
#[derive(clap::Args, Debug)]
pub struct SwitchoverArgs {
    /// The cluster.
    #[command(flatten)]
    pub target: Target,
    /// The member to promote (default: the healthiest replica).
    #[arg(long)]
    pub to: Option<MemberName>,
    /// When, as RFC 3339 (e.g. 2026-11-26T03:00:00Z or with an offset); default now.
    #[arg(long)]
    pub at: Option<String>,
    /// REST API credentials.
    #[command(flatten)]
    pub auth: ApiAuth,
}

/// `spilo failover`.
#[derive(clap::Args, Debug)]
pub struct FailoverArgs {
    /// The cluster.
    #[command(flatten)]
    pub target: Target,
    /// The member to promote.
    #[arg(long)]
    pub to: MemberName,
    /// REST API credentials.
    #[command(flatten)]
    pub auth: ApiAuth,
}

/// `spilo restart`, `spilo reload`, `spilo reinit`.
#[derive(clap::Args, Debug)]
pub struct MemberArgs {
    /// The cluster.
    #[command(flatten)]
    pub target: Target,
    /// One member (default: every member; `reinit` needs one).
    pub member: Option<MemberName>,
    /// `restart` only: only members whose settings wait for a restart; the primary is
    /// replaced by a switchover instead of restarted in place.
    #[arg(long)]
    pub pending: bool,
    /// REST API credentials.
    #[command(flatten)]
    pub auth: ApiAuth,
}

fn report(who: &str, a: &Answer) -> anyhow::Result<()> {
    if a.ok() {
        println!("{who}: {}", a.message);
        Ok(())
    } else {
        bail!("{who}: {} (HTTP {})", a.message, a.status)
    }
}

/// Normalises `--at` to RFC 3339 UTC.
fn utc(at: &str) -> anyhow::Result<String> {
    use time::format_description::well_known::Rfc3339;
    let t = time::OffsetDateTime::parse(at, &Rfc3339).with_context(|| {
        format!("--at {at:?} is not an RFC 3339 time such as 2026-11-26T03:00:00Z")
    })?;
    Ok(t.to_offset(time::UtcOffset::UTC).format(&Rfc3339)?)
}

/// `spilo switchover`: asks the leader to hand over (and waits for the new primary).
pub async fn switchover(a: SwitchoverArgs) -> anyhow::Result<()> {
    let state = read_state(&a.target).await?;
    let Some(leader) = state.leader.clone() else {
        bail!(
            "{} has no leader; use `spilo failover {} --to MEMBER`",
            a.target.cluster,
            a.target.cluster
        );
    };
    let api = Api::new(&a.auth, &a.target)?;
    let mut body = json!({ "leader": leader });
    if let Some(to) = &a.to {
        state.member(to)?;
        body["candidate"] = json!(to);
    }
    if let Some(at) = &a.at {
        body["scheduled_at"] = json!(utc(at)?);
    }
    let url = &state.member(&leader)?.api_url;
    let answer = api.post(url, "/switchover", &body).await?;
    report(a.target.cluster.as_str(), &answer)
}

/// `spilo failover`: asks the candidate to take over while there is no healthy primary.
pub async fn failover(a: FailoverArgs) -> anyhow::Result<()> {
    let state = read_state(&a.target).await?;
    let api = Api::new(&a.auth, &a.target)?;
    let url = &state.member(&a.to)?.api_url;
    let answer = api
        .post(url, "/failover", &json!({ "candidate": a.to }))
        .await?;
    report(a.target.cluster.as_str(), &answer)
}

/// `spilo backup`.
#[derive(clap::Args, Debug)]
pub struct BackupArgs {
    /// The cluster.
    #[command(flatten)]
    pub target: Target,
    /// How long to wait for the backup to finish.
    #[arg(long, default_value = "6h", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// REST API credentials.
    #[command(flatten)]
    pub auth: ApiAuth,
}

/// `spilo backup`: the leader takes a base backup into the cluster's archive now; returns
/// when it is finished.
pub async fn backup(a: BackupArgs) -> anyhow::Result<()> {
    let state = read_state(&a.target).await?;
    let Some(leader) = state.leader.clone() else {
        bail!(
            "{} has no leader; the primary takes backups",
            a.target.cluster
        );
    };
    let api = Api::with_timeout(&a.auth, &a.target, a.timeout)?;
    let answer = api
        .post(&state.member(&leader)?.api_url, "/backup", &json!({}))
        .await?;
    report(a.target.cluster.as_str(), &answer)
}

/// The members to act on: one, or all with the replicas first and the leader last.
fn members_in_order(
    state: &ClusterState,
    one: Option<&MemberName>,
) -> anyhow::Result<Vec<MemberName>> {
    if let Some(m) = one {
        state.member(m)?;
        return Ok(vec![m.clone()]);
    }
    let mut names: Vec<MemberName> = state
        .members
        .keys()
        .filter(|m| Some(*m) != state.leader.as_ref())
        .cloned()
        .collect();
    names.extend(
        state
            .leader
            .iter()
            .filter(|l| state.members.contains_key(*l))
            .cloned(),
    );
    Ok(names)
}

/// `spilo reload`: every member (or one) rewrites its configuration and reloads.
pub async fn reload(a: MemberArgs) -> anyhow::Result<()> {
    let state = read_state(&a.target).await?;
    let api = Api::new(&a.auth, &a.target)?;
    let mut failed = 0;
    for m in members_in_order(&state, a.member.as_ref())? {
        let answer = api
            .post(&state.member(&m)?.api_url, "/reload", &json!({}))
            .await?;
        if report(m.as_str(), &answer).is_err() {
            eprintln!("{m}: {} (HTTP {})", answer.message, answer.status);
            failed += 1;
        }
    }
    if failed > 0 {
        bail!("{failed} member(s) did not reload");
    }
    Ok(())
}

/// `spilo reinit`: one replica copies the primary again.
pub async fn reinit(a: MemberArgs) -> anyhow::Result<()> {
    let Some(member) = &a.member else {
        bail!("reinit needs a MEMBER");
    };
    let state = read_state(&a.target).await?;
    let api = Api::new(&a.auth, &a.target)?;
    let answer = api
        .post(&state.member(member)?.api_url, "/reinitialize", &json!({}))
        .await?;
    report(member.as_str(), &answer)
}

/// `spilo restart`: replicas first, each back and streaming before the next; then the
/// primary, in place, or with `--pending` by a switchover to a replica already restarted (the
/// old primary then starts as a replica with the new settings).
pub async fn restart(a: MemberArgs) -> anyhow::Result<()> {
    let state = read_state(&a.target).await?;
    let api = Api::new(&a.auth, &a.target)?;
    for m in members_in_order(&state, a.member.as_ref())? {
        let status = state.member(&m)?;
        if a.pending && !status.pending_restart {
            println!("{m}: no restart pending");
            continue;
        }
        let is_leader = state.leader.as_ref() == Some(&m);
        let has_replica = state
            .members
            .iter()
            .any(|(n, s)| *n != m && s.running_as(MemberRole::Replica));
        if is_leader && a.pending && has_replica && status.running_as(MemberRole::Primary) {
            let answer = api
                .post(&status.api_url, "/switchover", &json!({ "leader": m }))
                .await?;
            report(
                &format!("{m} (switchover, then it restarts as a replica)"),
                &answer,
            )?;
            continue;
        }
        let answer = api
            .post(
                &status.api_url,
                "/restart",
                &json!({ "pending": a.pending }),
            )
            .await?;
        report(m.as_str(), &answer)?;
        if !is_leader {
            wait_streaming(&api, &status.api_url, &m).await?;
        }
    }
    Ok(())
}

/// Polls a replica's `/replica` health check until it streams again.
async fn wait_streaming(api: &Api, url: &str, m: &MemberName) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if api.get(url, "/replica").await.is_ok_and(|a| a.ok()) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{m} did not stream again within 120s after its restart");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `spilo history`: one line per promotion.
pub async fn history(t: Target, json: bool) -> anyhow::Result<()> {
    let state = read_state(&t).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&state.history)?);
        return Ok(());
    }
    println!(
        "{:<9} {:<14} {:<21} {:<16} reason",
        "timeline", "switch lsn", "promoted at", "member"
    );
    for h in &state.history {
        println!(
            "{:<9} {:<14} {:<21} {:<16} {}",
            h.timeline.to_string(),
            h.switch_lsn.to_string(),
            h.promoted_at,
            h.member.as_str(),
            h.reason
        );
    }
    if state.history.is_empty() {
        println!("(no promotions since the cluster was bootstrapped)");
    }
    Ok(())
}
