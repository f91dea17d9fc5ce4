//! End-to-end test of the local target on ZooKeeper: a cluster file with
//! `spec.dcs.zookeeper: {}` makes `spilo up` run a ZooKeeper server instead of etcd, and the
//! governors use it; its roles and databases are written into its `config` on ZooKeeper and
//! created; `spilo list`, `pause`, `resume` and `switchover` read and write ZooKeeper; the
//! cluster fails over through HAProxy after `kill -9` of its primary; Ctrl-C stops everything.

use spilo_e2e::local::LocalRepo;
use spilo_e2e::sql::connect_dsn;
use spilo_e2e::{ports, wait};
use std::time::Duration;

const READY: Duration = Duration::from_secs(120);

/// The member `spilo status` names primary.
fn primary_name(repo: &LocalRepo) -> anyhow::Result<String> {
    let s = repo.status()?;
    s["clusters"][0]["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["role"] == "primary"))
        .and_then(|m| m["name"].as_str())
        .map(String::from)
        .ok_or_else(|| anyhow::anyhow!("no primary: {s}"))
}

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
    let yaml = LocalRepo::cluster_yaml("zeta", 3, base).replace(
        "  local:\n",
        "  dcs: {zookeeper: {}}\n  roles:\n    reporter: {password: {generated: true}}\n  \
         databases:\n    reports: {owner: reporter}\n  local:\n",
    );
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
    let zk_log = std::fs::read_to_string(repo.state().join("zeta/zookeeper.log"))?;
    assert!(
        zk_log.contains(&format!("binding to port /{zk}")),
        "ZooKeeper logs: {zk_log}"
    );

    let lb = repo.dsn("zeta", base)?;
    write_through(&lb, "CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
        .await
        .ok_or_else(|| anyhow::anyhow!("first write through HAProxy"))?;

    // Both replicas run (copied and streaming) before the primary is killed.
    wait::until("two running replicas", READY, || async {
        (repo.running_replicas("zeta").ok()? == 2).then_some(())
    })
    .await?;

    // The leader created the declared role and database from `config` on ZooKeeper, and
    // `spilo status` read the catalog record there.
    wait::until("the declared role and database", READY, || async {
        let c = connect_dsn(&lb).await.ok()?;
        let row = c
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'reporter') \
                 AND EXISTS (SELECT 1 FROM pg_database WHERE datname = 'reports')",
                &[],
            )
            .await
            .ok()?;
        row.get::<_, bool>(0).then_some(())
    })
    .await?;
    wait::until("the catalog record in spilo status", READY, || async {
        let s = repo.status().ok()?;
        (!s["clusters"][0]["catalog"].is_null()).then_some(())
    })
    .await?;

    // `spilo watch --target local` observes the cluster through its ZooKeeper.
    repo.commit_all("a cluster on ZooKeeper")?;
    let listen = ports::free();
    let watching = repo.watch_local(listen)?;
    let metrics = format!("http://127.0.0.1:{listen}/metrics");
    wait::until("spilo watch to reconcile zeta", READY, || async {
        let text = reqwest::get(&metrics).await.ok()?.text().await.ok()?;
        text.contains("spilo_last_success_timestamp_seconds{cluster=\"zeta\"}")
            .then_some(())
    })
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "{e}: {}",
            std::fs::read_to_string(&watching.log).unwrap_or_default()
        )
    })?;
    drop(watching);

    // The operations find the cluster's ZooKeeper as they find its etcd.
    let (code, out, err) = repo.spilo(&["list", "zeta"])?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("primary") && out.contains("zeta-"), "{out}");
    let (code, out, err) = repo.spilo(&["pause", "zeta"])?;
    assert_eq!(code, 0, "{out}{err}");
    let (_, table, _) = repo.spilo(&["list", "zeta"])?;
    assert!(table.contains("Maintenance mode: on"), "{table}");
    let (code, out, err) = repo.spilo(&["resume", "zeta"])?;
    assert_eq!(code, 0, "{out}{err}");
    let (_, table, _) = repo.spilo(&["list", "zeta"])?;
    assert!(!table.contains("Maintenance mode: on"), "{table}");
    let before = primary_name(repo)?;
    let (code, out, err) = repo.spilo(&["switchover", "zeta"])?;
    assert_eq!(code, 0, "{out}{err}");
    wait::until("a new primary after the switchover", READY, || async {
        let now = primary_name(repo).ok()?;
        (now != before).then_some(())
    })
    .await?;
    wait::until("two running replicas again", READY, || async {
        (repo.running_replicas("zeta").ok()? == 2).then_some(())
    })
    .await?;

    // kill -9 of the primary's governor and all its PostgreSQL processes.
    assert_eq!(repo.status()?["clusters"][0]["zookeeper"], true);
    let (name, _) = repo.kill_primary("zeta")?;
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
    assert!(log.contains("+ role reporter"), "{log}");
    assert_eq!(repo.processes(), Vec::<u32>::new(), "processes left");
    Ok(())
}
