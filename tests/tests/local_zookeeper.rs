//! End-to-end test of the local target on ZooKeeper: a cluster file with
//! `spec.dcs.zookeeper: {}` makes `spilo up` run a ZooKeeper server instead of etcd, and the
//! governors use it; the cluster fails over through HAProxy after `kill -9` of its primary;
//! the `spilo` operations that read etcd say so; `spilo down` stops everything.

use spilo_e2e::local::LocalRepo;
use spilo_e2e::sql::connect_dsn;
use spilo_e2e::{ports, proc, wait};
use std::time::Duration;

const READY: Duration = Duration::from_secs(120);

async fn write_through(dsn: &str, sql: &str) -> Option<()> {
    let c = connect_dsn(dsn).await.ok()?;
    c.batch_execute(sql).await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spilo_up_runs_a_cluster_on_zookeeper_that_fails_over() -> anyhow::Result<()> {
    let mut repo = LocalRepo::new()?;
    let r = scenario(&mut repo).await;
    repo.finish(r)
}

async fn scenario(repo: &mut LocalRepo) -> anyhow::Result<()> {
    let base = ports::free_block(30);
    let yaml = LocalRepo::cluster_yaml("zeta", 3, base)
        .replace("  local:\n", "  dcs: {zookeeper: {}}\n  local:\n");
    anyhow::ensure!(yaml.contains("zookeeper"), "{yaml}");
    repo.write("zeta.yaml", &yaml)?;
    repo.up()?;
    repo.wait_printed("cluster zeta is ready", READY).await?;

    // ZooKeeper on the port etcd would have had, the governors told of it and not of etcd.
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        repo.state().join("zeta/state.json"),
    )?)?;
    assert_eq!(state["zookeeper"], true, "{state}");
    let zk = format!("127.0.0.1:{}", base + 2);
    assert_eq!(state["etcd_endpoints"], serde_json::json!([zk]), "{state}");
    let cfg = std::fs::read_to_string(repo.state().join("zeta/members/zeta-0/governor.yaml"))?;
    assert!(cfg.contains("zookeeper:") && cfg.contains(&zk), "{cfg}");
    assert!(!cfg.contains("etcd:"), "{cfg}");
    assert!(
        cfg.contains("tls:"),
        "PostgreSQL and the API still speak TLS: {cfg}"
    );
    assert!(!repo.state().join("zeta/etcd").exists(), "no etcd ran");

    let lb = repo.dsn("zeta", base)?;
    write_through(&lb, "CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
        .await
        .ok_or_else(|| anyhow::anyhow!("first write through HAProxy"))?;

    // Both replicas run (copied and streaming) before the primary is killed.
    wait::until("two running replicas", READY, || async {
        let s = repo.status().ok()?;
        let replicas = s["clusters"][0]["members"]
            .as_array()?
            .iter()
            .filter(|m| m["role"] == "replica" && m["state"] == "running")
            .count();
        (replicas == 2).then_some(())
    })
    .await?;

    // kill -9 of the primary's governor and all its PostgreSQL processes.
    let status = repo.status()?;
    let primary = status["clusters"][0]["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["role"] == "primary"))
        .ok_or_else(|| anyhow::anyhow!("no primary: {status}"))?
        .clone();
    assert_eq!(status["clusters"][0]["zookeeper"], true, "{status}");
    let name = primary["name"].as_str().unwrap_or_default().to_string();
    let governor = primary["governor_pid"].as_u64().unwrap_or(0) as u32;
    let postmaster = primary["postmaster_pid"].as_u64().unwrap_or(0) as u32;
    assert!(governor > 0 && postmaster > 0, "{primary}");
    proc::kill_group(governor);
    proc::kill_postgres(postmaster);
    wait::until(
        "a write through the same HAProxy port after the kill",
        READY,
        || async { write_through(&lb, "INSERT INTO t VALUES (2)").await },
    )
    .await?;
    let new_primary = repo.status()?["clusters"][0]["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["role"] == "primary"))
        .map(|m| m["name"].clone());
    assert_ne!(new_primary, Some(serde_json::json!(name)), "a new primary");
    wait::until(
        &format!("{name} to come back as a replica on its own"),
        READY,
        || async {
            let s = repo.status().ok()?;
            let m = s["clusters"][0]["members"]
                .as_array()?
                .iter()
                .find(|m| m["name"] == name.as_str())?
                .clone();
            (m["role"] == "replica" && m["state"] == "running").then_some(())
        },
    )
    .await?;

    // Operations that read etcd refuse with the reason, at once.
    let (code, out, err) = repo.spilo(&["list", "zeta"])?;
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("runs on ZooKeeper"), "{out}{err}");

    repo.interrupt_up();
    assert_eq!(repo.wait_up_exit(Duration::from_secs(120)), Some(0));
    let log = repo.up_log();
    let stop: Vec<usize> = [
        "stopping replicas",
        "stopping the primary",
        "stopping HAProxy",
        "stopping ZooKeeper",
    ]
    .iter()
    .map(|s| log.find(s).unwrap_or(usize::MAX))
    .collect();
    assert!(
        stop.windows(2).all(|w| w[0] < w[1]) && stop[3] != usize::MAX,
        "stop order: {log}"
    );
    assert!(!log.contains("cannot write its roles"), "{log}");
    assert!(!log.contains("cannot list its standby clusters"), "{log}");
    assert_eq!(repo.processes(), Vec::<u32>::new(), "processes left");
    Ok(())
}
