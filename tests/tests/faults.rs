//! Fault injection on real processes: each test injects one fault into a running cluster under
//! a write load and asserts its stated outcome (who is primary, that no two members accepted
//! writes at the same time, which acknowledged writes survive).

use spilo_e2e::cluster::{self, Cluster, ClusterOptions};
use spilo_e2e::probe::{self, Prober};
use spilo_e2e::wait;
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(60);

/// One prober per member, each writing straight to that member every 20 ms.
fn per_member_prober(c: &Cluster) -> Prober {
    let targets = c
        .members
        .iter()
        .map(|m| {
            (
                m.name.clone(),
                format!(
                    "host=127.0.0.1 port={} user=postgres password={} dbname=postgres connect_timeout=1",
                    m.pg_port,
                    cluster::SUPERUSER_PASSWORD
                ),
            )
        })
        .collect();
    Prober::start(targets, Duration::from_millis(20))
}

/// Expected: the frozen primary's PostgreSQL is stopped by the governor's watchdog process
/// before its lease can end (its own fence task is frozen with it), a replica takes over after
/// the TTL, no two members ever accept writes at the same time, and once thawed the old
/// primary rejoins as a replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_governor_does_not_leave_a_writable_stale_primary() -> anyhow::Result<()> {
    let mut c = Cluster::new(ClusterOptions {
        scope: "frozen".into(),
        ..Default::default()
    })
    .await?;
    let result = frozen_body(&mut c).await;
    c.finish(result)
}

async fn frozen_body(c: &mut Cluster) -> anyhow::Result<()> {
    let (old, _) = c.start_streaming(BOOT).await?;
    c.sql(&old).await?.batch_execute(probe::TABLE_DDL).await?;
    let prober = per_member_prober(c);
    wait::until("the primary to acknowledge probe writes", BOOT, || async {
        prober.acks().iter().any(|a| a.member == old).then_some(())
    })
    .await?;

    let pid = c
        .members
        .iter_mut()
        .find(|m| m.name == old)
        .and_then(|m| m.governor_pid())
        .ok_or_else(|| anyhow::anyhow!("{old} has no governor"))?;
    let governor = nix::unistd::Pid::from_raw(i32::try_from(pid)?);
    nix::sys::signal::kill(governor, nix::sys::signal::Signal::SIGSTOP)?;
    let frozen_at = Instant::now();
    let new = wait::until("a replica to take over", BOOT, || async {
        let p = c.primaries().await;
        (p.len() == 1 && p[0] != old).then(|| p[0].clone())
    })
    .await;
    let thawed = nix::sys::signal::kill(governor, nix::sys::signal::Signal::SIGCONT);
    let new = new?;
    thawed?;
    wait::until("the new primary to acknowledge writes", BOOT, || async {
        prober
            .acks()
            .iter()
            .any(|a| a.member == new && a.sent > frozen_at)
            .then_some(())
    })
    .await?;
    c.wait_streaming(&old, BOOT).await?;
    let (acks, _) = prober.stop().await;
    probe::check_single_writer(&acks).map_err(anyhow::Error::msg)?;
    let old_last = acks
        .iter()
        .filter(|a| a.member == old)
        .map(|a| a.acked)
        .max()
        .expect("the old primary acknowledged writes");
    let new_first = acks
        .iter()
        .filter(|a| a.member == new)
        .map(|a| a.sent)
        .min()
        .expect("the new primary acknowledged writes");
    assert!(
        old_last < new_first,
        "the stale primary wrote after the new one began"
    );
    let log = std::fs::read_to_string(c.member(&old).log_path())?;
    assert!(
        log.contains("watchdog: the governor did not confirm its lease in time"),
        "{log}"
    );
    Ok(())
}
