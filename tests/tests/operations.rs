//! End-to-end tests of the operations on a running cluster: maintenance mode (`spilo pause`
//! and `resume`), against real etcd, PostgreSQL 15 and governors.

use spilo_e2e::cluster::{Cluster, ClusterOptions};
use spilo_e2e::wait;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_cluster_does_not_fail_over_until_it_is_resumed() -> anyhow::Result<()> {
    let mut c = Cluster::new(ClusterOptions {
        scope: "paused".into(),
        ..Default::default()
    })
    .await?;
    let result = a_paused_cluster_does_not_fail_over_until_it_is_resumed_body(&mut c).await;
    c.finish(result)
}

async fn a_paused_cluster_does_not_fail_over_until_it_is_resumed_body(
    c: &mut Cluster,
) -> anyhow::Result<()> {
    let (old, replicas) = c.start_streaming(BOOT).await?;
    let etcd = c.etcd.client_addr.clone();
    let (code, out, err) = c.spilo(&["pause", "paused", "--etcd", &etcd])?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("maintenance mode on"), "{out}");
    let (_, table, _) = c.spilo(&["list", "paused", "--etcd", &etcd])?;
    assert!(table.contains("Maintenance mode: on"), "{table}");

    c.kill9(&old).await?;
    // The best replica sees the leader gone and says it would take over, but does not.
    let logs: Vec<std::path::PathBuf> = replicas.iter().map(|r| c.member(r).log_path()).collect();
    wait::until(
        "the failover candidate to hold back in maintenance mode",
        BOOT,
        || async {
            logs.iter()
                .any(|l| {
                    std::fs::read_to_string(l).is_ok_and(|t| {
                        t.contains("paused (maintenance mode); would acquire leader key")
                    })
                })
                .then_some(())
        },
    )
    .await?;
    assert_eq!(
        c.primaries().await,
        Vec::<String>::new(),
        "no failover while paused"
    );
    assert!(
        c.etcd.get("/service/paused/leader").await?.is_none(),
        "the dead leader's key expired and nobody took it"
    );

    let (code, out, err) = c.spilo(&["resume", "paused", "--etcd", &etcd])?;
    assert_eq!(code, 0, "{out}{err}");
    let new = c.wait_primary(BOOT).await?;
    assert!(replicas.contains(&new), "{new} took over after resume");
    Ok(())
}
