//! End-to-end tests of the local target: `spilo up` realizes cluster files on this machine
//! (etcd, governors, PostgreSQL 15, HAProxy), keeps them alive, applies edits; `spilo status`
//! and `spilo down` inspect and stop them.

use spilo_e2e::local::LocalRepo;
use spilo_e2e::sql::connect_dsn;
use spilo_e2e::{ports, proc, wait};
use std::time::Duration;

const READY: Duration = Duration::from_secs(120);

fn member<'a>(
    status: &'a serde_json::Value,
    cluster: &str,
    role: &str,
) -> Option<&'a serde_json::Value> {
    status["clusters"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == cluster)?["members"]
        .as_array()?
        .iter()
        .find(|m| m["role"] == role)
}

/// `spilo up` stopped replicas, then the primary, then HAProxy, then etcd.
fn assert_stopped_in_order(log: &str) {
    let order: Vec<usize> = [
        "stopping replicas",
        "stopping the primary",
        "stopping HAProxy",
        "stopping etcd",
    ]
    .iter()
    .map(|s| log.find(s).unwrap_or(usize::MAX))
    .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]) && order[3] != usize::MAX,
        "stop order: {log}"
    );
}

async fn write_through(dsn: &str, sql: &str) -> Option<()> {
    let c = connect_dsn(dsn).await.ok()?;
    c.batch_execute(sql).await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spilo_up_survives_kill_9_of_the_primary_applies_edits_and_spilo_down_leaves_nothing()
-> anyhow::Result<()> {
    let mut repo = LocalRepo::new()?;
    let r = scenario_kill_edit_down(&mut repo).await;
    repo.finish(r)
}

async fn scenario_kill_edit_down(repo: &mut LocalRepo) -> anyhow::Result<()> {
    let base = ports::free_block(30);
    repo.write("alpha.yaml", &LocalRepo::cluster_yaml("alpha", 3, base))?;
    repo.up()?;
    repo.wait_printed("cluster alpha is ready", READY).await?;
    let log = repo.up_log();
    assert!(log.contains("+ cluster alpha (3 instances)"), "{log}");
    assert!(
        log.contains(&format!(
            "primary (through HAProxy):  host=127.0.0.1 port={base} user=postgres dbname=postgres \
             sslmode=verify-full sslrootcert={}",
            repo.state().join("alpha/tls/ca.crt").display()
        )),
        "{log}"
    );
    assert!(log.contains("target_session_attrs=read-write"), "{log}");
    assert!(repo.state().join("alpha/haproxy.cfg").exists());

    let lb = repo.dsn("alpha", base)?;
    write_through(&lb, "CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
        .await
        .ok_or_else(|| anyhow::anyhow!("first write through HAProxy"))?;
    let replicas_lb = repo.dsn("alpha", base + 1)?;
    wait::until("a read through the replica port", READY, || async {
        let c = connect_dsn(&replicas_lb).await.ok()?;
        let row = c
            .query_one("SELECT pg_is_in_recovery(), count(*) FROM t", &[])
            .await
            .ok()?;
        (row.get::<_, bool>(0) && row.get::<_, i64>(1) == 1).then_some(())
    })
    .await?;

    // kill -9 of the primary's governor and all its PostgreSQL processes.
    let (name, governor) = repo.kill_primary("alpha")?;

    wait::until(
        "a write through the same HAProxy port after the kill",
        READY,
        || async { write_through(&lb, "INSERT INTO t VALUES (2)").await },
    )
    .await?;
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
            (m["role"] == "replica"
                && m["state"] == "running"
                && m["governor_pid"].as_u64() != Some(u64::from(governor)))
            .then_some(())
        },
    )
    .await?;
    assert!(
        repo.up_log()
            .contains(&format!("the governor of {name} exited")),
        "{}",
        repo.up_log()
    );

    // A major version in the file (15 -> 18, and 4 instances) is refused here: this cluster
    // runs its own etcd, so everything speaks TLS, and the PostgreSQL 18 installed here has no
    // SSL. The cluster is left as it runs (`hold_major_upgrades`' unit test: its instance
    // count too). The file with the running version again goes through below. The upgrade
    // itself: `major_upgrade.rs`.
    let v18 = LocalRepo::cluster_yaml("alpha", 4, base).replace(
        "postgresql: {parameters:",
        "postgresql: {version: 18, parameters:",
    );
    anyhow::ensure!(v18.contains("version: 18"), "{v18}");
    repo.write("alpha.yaml", &v18)?;
    repo.wait_printed("refused to upgrade cluster alpha to PostgreSQL 18", READY)
        .await?;
    assert!(
        repo.up_log().contains("was built without SSL"),
        "{}",
        repo.up_log()
    );

    // An edit of the file (3 -> 4 instances) is applied on the next pass.
    repo.write("alpha.yaml", &LocalRepo::cluster_yaml("alpha", 4, base))?;
    repo.wait_printed("~ cluster alpha (instances 3 -> 4)", READY)
        .await?;
    wait::until("a fourth member streaming", READY, || async {
        let s = repo.status().ok()?;
        let members = s["clusters"][0]["members"].as_array()?.clone();
        (members.len() == 4
            && members
                .iter()
                .filter(|m| m["role"] == "replica" && m["state"] == "running")
                .count()
                == 3)
            .then_some(())
    })
    .await?;

    // spilo down --purge: no process, no files.
    let (code, out, err) = repo.spilo(&["down", "alpha", "--purge"])?;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        repo.processes(),
        Vec::<u32>::new(),
        "no process of the cluster is left"
    );
    assert!(
        !repo.state().join("alpha").exists(),
        "--purge deletes the state"
    );
    assert_eq!(
        repo.wait_up_exit(Duration::from_secs(30)),
        Some(0),
        "spilo up ends when its last cluster is down"
    );
    assert_stopped_in_order(&repo.up_log());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_spilo_up_resumes_the_data_of_the_first() -> anyhow::Result<()> {
    let mut repo = LocalRepo::new()?;
    let r = scenario_resume(&mut repo).await;
    repo.finish(r)
}

async fn scenario_resume(repo: &mut LocalRepo) -> anyhow::Result<()> {
    let base = ports::free_block(30);
    repo.write("beta.yaml", &LocalRepo::cluster_yaml("beta", 2, base))?;
    repo.up()?;
    repo.wait_printed("cluster beta is ready", READY).await?;
    let lb = repo.dsn("beta", base)?;
    write_through(
        &lb,
        "CREATE TABLE kept (x text); INSERT INTO kept VALUES ('before down')",
    )
    .await
    .ok_or_else(|| anyhow::anyhow!("write"))?;
    // Ctrl-C stops everything spilo up started, in order, and leaves no process behind.
    repo.interrupt_up();
    assert_eq!(repo.wait_up_exit(Duration::from_secs(120)), Some(0));
    assert_eq!(repo.processes(), Vec::<u32>::new());
    assert_stopped_in_order(&repo.up_log());

    repo.up()?;
    repo.wait_printed("cluster beta is ready", READY).await?;
    assert!(
        repo.up_log()
            .contains("+ cluster beta (2 instances) [resuming existing data]"),
        "{}",
        repo.up_log()
    );
    let row = wait::until("the row written before down", READY, || async {
        let c = connect_dsn(&lb).await.ok()?;
        c.query_one("SELECT x FROM kept", &[])
            .await
            .ok()
            .map(|r| r.get::<_, String>(0))
    })
    .await?;
    assert_eq!(row, "before down");
    let mut initdbs = 0;
    for i in 0..2 {
        let log = std::fs::read_to_string(
            repo.state()
                .join(format!("beta/members/beta-{i}/governor.log")),
        )?;
        initdbs += log.matches("running tool=\"initdb\"").count();
    }
    assert_eq!(initdbs, 1, "initdb ran once, in the first run only");
    let (code, _, err) = repo.spilo(&["down", "--purge"])?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(repo.processes(), Vec::<u32>::new());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_run_side_by_side_and_status_shows_both() -> anyhow::Result<()> {
    let mut repo = LocalRepo::new()?;
    let r = scenario_two(&mut repo).await;
    repo.finish(r)
}

async fn scenario_two(repo: &mut LocalRepo) -> anyhow::Result<()> {
    let a = ports::free_block(30);
    let b = ports::free_block(30);
    repo.write("one.yaml", &LocalRepo::cluster_yaml("one", 2, a))?;
    repo.write("two.yaml", &LocalRepo::cluster_yaml("two", 2, b))?;
    repo.up()?;
    repo.wait_printed("cluster one is ready", READY).await?;
    repo.wait_printed("cluster two is ready", READY).await?;
    for (name, port) in [("one", a), ("two", b)] {
        let dsn = repo.dsn(name, port)?;
        write_through(&dsn, &format!("CREATE TABLE {name} (x int)"))
            .await
            .ok_or_else(|| anyhow::anyhow!("write to {name}"))?;
    }
    let status = wait::until("every member of both clusters running", READY, || async {
        let s = repo.status().ok()?;
        let all_running = s["clusters"].as_array()?.iter().all(|c| {
            c["members"]
                .as_array()
                .is_some_and(|ms| ms.iter().all(|m| m["state"] == "running"))
        });
        all_running.then_some(s)
    })
    .await?;
    let clusters = status["clusters"].as_array().cloned().unwrap_or_default();
    assert_eq!(clusters.len(), 2, "{status}");
    for c in &clusters {
        assert_eq!(c["supervised"], true);
        assert_eq!(c["members"].as_array().map(Vec::len), Some(2));
        assert!(c["leader"].is_string(), "{c}");
        for m in c["members"].as_array().into_iter().flatten() {
            for field in [
                "name",
                "role",
                "state",
                "timeline",
                "host",
                "port",
                "api_url",
                "governor_pid",
                "postmaster_pid",
            ] {
                assert!(!m[field].is_null(), "{field} in {m}");
            }
        }
    }
    let (code, text, _) = repo.spilo(&["status", "one"])?;
    assert_eq!(code, 0);
    assert!(
        text.starts_with("Cluster one (supervised by spilo up pid"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "Endpoint: postgresql://postgres@127.0.0.1:{a}/postgres (primary)"
        )),
        "{text}"
    );
    // TLS by default: status names the CA and a verify-full connection string, which works;
    // plaintext over TCP is refused.
    let ca = repo.state().join("one/tls/ca.crt");
    assert!(
        text.contains(&format!("CA:       {}\n", ca.display())),
        "{text}"
    );
    let one = clusters
        .iter()
        .find(|c| c["name"] == "one")
        .ok_or_else(|| anyhow::anyhow!("one in {status}"))?;
    let dsn = one["dsn"].as_str().unwrap_or_default();
    assert!(
        dsn.ends_with(&format!("sslmode=verify-full sslrootcert={}", ca.display())),
        "{one}"
    );
    let pw = std::fs::read_to_string(repo.state().join("one/secrets/superuser"))?;
    write_through(
        &format!("{dsn} password={} connect_timeout=2", pw.trim()),
        "SELECT 1",
    )
    .await
    .ok_or_else(|| anyhow::anyhow!("the printed connection string does not connect"))?;
    let refusal = spilo_e2e::sql::plaintext_refusal("127.0.0.1", a, pw.trim()).await?;
    assert!(
        refusal.contains("no encryption"),
        "through HAProxy: {refusal}"
    );
    let (code, _, err) = repo.spilo(&["down", "--purge"])?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(repo.processes(), Vec::<u32>::new());
    Ok(())
}

#[test]
fn invalid_yaml_starts_nothing_and_names_the_file() -> anyhow::Result<()> {
    let repo = LocalRepo::new()?;
    repo.write("gamma.yaml", "apiVersion: spilo/v1\nkind: PostgresCluster\nmetadata:\n  name: gamma\nspec:\n  instances: two\n")?;
    let (code, _, err) = repo.up_once()?;
    assert_eq!(code, 1);
    assert!(
        err.contains("invalid cluster files; nothing was started or changed"),
        "{err}"
    );
    assert!(
        err.contains("gamma.yaml:6:14: spec.instances: expected an integer"),
        "{err}"
    );
    assert_eq!(repo.processes(), Vec::<u32>::new());
    assert!(!repo.state().join("gamma").exists());
    Ok(())
}

#[test]
fn a_taken_port_starts_nothing_and_names_the_port() -> anyhow::Result<()> {
    let repo = LocalRepo::new()?;
    let base = ports::free_block(30);
    repo.write("delta.yaml", &LocalRepo::cluster_yaml("delta", 3, base))?;
    let _squatter = std::net::TcpListener::bind(("127.0.0.1", base + 11))?;
    let (code, _, err) = repo.up_once()?;
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "port {} (member 1 PostgreSQL of cluster delta,",
            base + 11
        )) && err.contains("is already in use"),
        "{err}"
    );
    assert_eq!(repo.processes(), Vec::<u32>::new());
    Ok(())
}

#[test]
fn clusters_whose_ports_clash_are_refused_before_anything_starts() -> anyhow::Result<()> {
    let repo = LocalRepo::new()?;
    let base = ports::free_block(30);
    repo.write("e1.yaml", &LocalRepo::cluster_yaml("e1", 3, base))?;
    repo.write("e2.yaml", &LocalRepo::cluster_yaml("e2", 3, base + 10))?;
    let (code, _, err) = repo.up_once()?;
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("port {} is used by cluster e1", base + 10))
            || err.contains("is used by cluster e1"),
        "{err}"
    );
    assert!(
        err.contains("set spec.local.ports in one of them; nothing was started"),
        "{err}"
    );
    assert_eq!(repo.processes(), Vec::<u32>::new());
    Ok(())
}

/// The member of `cluster` with `role`: (name, governor pid, postmaster pid).
fn pids(repo: &LocalRepo, cluster: &str, role: &str) -> anyhow::Result<(String, u32, u32)> {
    let status = repo.status()?;
    let m = member(&status, cluster, role)
        .ok_or_else(|| anyhow::anyhow!("no {role} in {cluster}: {status}"))?;
    Ok((
        m["name"].as_str().unwrap_or_default().to_string(),
        m["governor_pid"].as_u64().unwrap_or(0) as u32,
        m["postmaster_pid"].as_u64().unwrap_or(0) as u32,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_reports_a_lost_member_and_spilo_up_replaces_it_only_with_revert()
-> anyhow::Result<()> {
    let mut repo = LocalRepo::new()?;
    let r = scenario_watch_local(&mut repo).await;
    repo.finish(r)
}

async fn scenario_watch_local(repo: &mut LocalRepo) -> anyhow::Result<()> {
    use nix::sys::signal::{Signal, kill};
    let (a, b) = (ports::free_block(30), ports::free_block(30));
    let warned = LocalRepo::cluster_yaml("warned", 2, a)
        .replace("spec:\n", "spec:\n  reconcile: {drift: warn}\n");
    repo.write("warned.yaml", &warned)?;
    // No drift setting: the local default, revert.
    repo.write("healed.yaml", &LocalRepo::cluster_yaml("healed", 2, b))?;
    let receiver = spilo_e2e::webhook::Receiver::start(0).await?;
    std::fs::write(
        repo.path().join("alerts.yaml"),
        format!("webhooks:\n  - url: {}\n", receiver.url),
    )?;
    repo.commit_all("two local clusters")?;
    repo.up()?;
    repo.wait_printed("cluster warned is ready", READY).await?;
    repo.wait_printed("cluster healed is ready", READY).await?;
    for cluster in ["warned", "healed"] {
        wait::until(&format!("{cluster}'s replica streaming"), READY, || async {
            let s = repo.status().ok()?;
            member(&s, cluster, "replica")
                .filter(|m| m["state"] == "running")
                .map(|_| ())
        })
        .await?;
    }
    let http = ports::free();
    let watching = repo.watch_local(http)?;
    let count = |event: &str, cluster: &str| receiver.count(event, cluster, "missing_members");

    // Freeze each cluster's replica governor: its lease ends, its member key goes.
    let (w_name, w_gov, w_pm) = pids(repo, "warned", "replica")?;
    let (h_name, h_gov, h_pm) = pids(repo, "healed", "replica")?;
    for g in [w_gov, h_gov] {
        kill(proc::pid(g), Signal::SIGSTOP)?;
    }
    wait::until(
        "a missing_members alert for both clusters",
        READY,
        || async { (count("drift", "warned") == 1 && count("drift", "healed") == 1).then_some(()) },
    )
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "{e}: {:?}\n{}",
            receiver.bodies(),
            std::fs::read_to_string(&watching.log).unwrap_or_default()
        )
    })?;

    // Now they die.
    for (g, pm) in [(w_gov, w_pm), (h_gov, h_pm)] {
        proc::kill_group(g);
        proc::kill_postgres(pm);
    }
    wait::until(&format!("{h_name} replaced by spilo up"), READY, || async {
        let s = repo.status().ok()?;
        let m = s["clusters"]
            .as_array()?
            .iter()
            .find(|c| c["name"] == "healed")?["members"]
            .as_array()?
            .iter()
            .find(|m| m["name"] == h_name.as_str())?
            .clone();
        (m["state"] == "running" && m["governor_pid"].as_u64() != Some(u64::from(h_gov)))
            .then_some(())
    })
    .await?;
    wait::until("the healed cluster's alert resolved", READY, || async {
        (count("resolved", "healed") == 1).then_some(())
    })
    .await?;
    assert!(
        repo.up_log().contains(&format!(
            "the governor of {w_name} exited (signal: 9 (SIGKILL)); reconcile.drift is warn, so it is not replaced"
        )),
        "{}",
        repo.up_log()
    );
    assert_eq!(count("drift", "warned"), 1, "one alert while it lasts");
    assert_eq!(count("resolved", "warned"), 0, "a warned member stays lost");
    drop(watching);
    Ok(())
}

/// `endpoints.routing: proxy`, the local default: HAProxy's primary port forwards to the
/// governors' primary proxies, which follow the leader key, so a switchover needs no health
/// check to change before clients reach the new primary. Under a write every 20 ms through
/// that port and one directly to whichever member accepts writes, the pause through HAProxy
/// is at most 0.5 s longer than the switchover's own pause seen directly (README), and nothing
/// acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_through_haproxy_reaches_the_new_primary_at_once() -> anyhow::Result<()> {
    let mut repo = LocalRepo::new()?;
    let r = scenario_switchover_through_haproxy(&mut repo).await;
    repo.finish(r)
}

async fn scenario_switchover_through_haproxy(repo: &mut LocalRepo) -> anyhow::Result<()> {
    use spilo_e2e::probe::{self, Prober};
    let base = ports::free_block(30);
    repo.write("swift.yaml", &LocalRepo::cluster_yaml("swift", 3, base))?;
    repo.up()?;
    repo.wait_printed("cluster swift is ready", READY).await?;
    let cfg = std::fs::read_to_string(repo.state().join("swift/haproxy.cfg"))?;
    assert!(
        cfg.contains("uri /proxy") && cfg.contains(&format!("127.0.0.1:{} check", base + 25)),
        "the primary port forwards to the proxies: {cfg}"
    );
    let lb = repo.dsn("swift", base)?;
    wait::until("the probe table through HAProxy", READY, || async {
        write_through(&lb, probe::TABLE_DDL).await
    })
    .await?;
    let streaming = || async {
        let s = repo.status().ok()?;
        let members = s["clusters"][0]["members"].as_array()?.clone();
        let primary = members.iter().find(|m| m["role"] == "primary")?;
        let replicas = members
            .iter()
            .filter(|m| m["role"] == "replica" && m["state"] == "running")
            .count();
        (replicas == 2).then(|| primary["name"].as_str().unwrap_or_default().to_string())
    };
    let old = wait::until("two running replicas", READY, streaming).await?;

    // Every member's PostgreSQL, the one that accepts writes chosen by the client.
    let direct = repo.dsn("swift", base + 10)?.replace(
        &format!("host=127.0.0.1 port={}", base + 10),
        &format!(
            "host=127.0.0.1,127.0.0.1,127.0.0.1 port={},{},{} target_session_attrs=read-write",
            base + 10,
            base + 11,
            base + 12
        ),
    );
    let prober = Prober::start(
        vec![("lb".into(), lb.clone()), ("direct".into(), direct)],
        Duration::from_millis(20),
    );
    prober.wait_write("lb", None, READY).await?;
    prober.wait_write("direct", None, READY).await?;
    let (code, out, err) = repo.spilo(&["switchover", "swift"])?;
    anyhow::ensure!(code == 0, "spilo switchover failed: {out}{err}");
    let switched = std::time::Instant::now();
    prober
        .wait_write("lb", Some(switched), Duration::from_secs(30))
        .await?;
    // A second of writes on the new primary, so the pause is measured to its end.
    wait::until("a second of writes after the switchover", READY, || async {
        prober
            .acks()
            .iter()
            .any(|a| a.sent > switched + Duration::from_secs(1))
            .then_some(())
    })
    .await?;
    let (acks, _) = prober.stop().await;
    let pause_of = |label: &str| {
        probe::longest_pause(acks.iter().filter(|a| a.member == label).map(|a| a.acked))
    };
    let (pause, direct_pause) = (pause_of("lb"), pause_of("direct"));
    let new = wait::until("the new primary in spilo status", READY, || async {
        let s = repo.status().ok()?;
        let p = member(&s, "swift", "primary")?["name"]
            .as_str()?
            .to_string();
        (p != old).then_some(p)
    })
    .await?;
    let c = connect_dsn(&lb).await?;
    let present = probe::ids_on(&c).await?;
    assert_eq!(
        probe::lost(&acks, &present),
        Vec::<i64>::new(),
        "acknowledged writes lost"
    );
    eprintln!(
        "switchover {old} -> {new}: longest write pause through HAProxy and the proxies {} ms, \
         directly {} ms ({} writes)",
        pause.as_millis(),
        direct_pause.as_millis(),
        acks.len()
    );
    assert!(
        pause <= direct_pause + Duration::from_millis(500),
        "writes through HAProxy paused {pause:?}, directly {direct_pause:?} (README: at most \
         0.5 s longer)"
    );
    Ok(())
}

/// A failover (kill -9 of the primary's governor and PostgreSQL) seen through HAProxy's
/// primary port and directly: writes through the endpoint resume within 0.5 s of the first
/// write the promoted member acknowledges when asked directly (README).
#[tokio::test(flavor = "multi_thread")]
async fn a_failover_through_haproxy_reaches_the_new_primary_as_soon_as_it_is_promoted()
-> anyhow::Result<()> {
    let mut repo = LocalRepo::new()?;
    let r = scenario_failover_through_haproxy(&mut repo).await;
    repo.finish(r)
}

async fn scenario_failover_through_haproxy(repo: &mut LocalRepo) -> anyhow::Result<()> {
    use spilo_e2e::probe::{self, Prober};
    let base = ports::free_block(30);
    repo.write("ferry.yaml", &LocalRepo::cluster_yaml("ferry", 3, base))?;
    repo.up()?;
    repo.wait_printed("cluster ferry is ready", READY).await?;
    let lb = repo.dsn("ferry", base)?;
    // Every member's PostgreSQL, the one that accepts writes chosen by the client.
    let direct = repo.dsn("ferry", base + 10)?.replace(
        &format!("host=127.0.0.1 port={}", base + 10),
        &format!(
            "host=127.0.0.1,127.0.0.1,127.0.0.1 port={},{},{} target_session_attrs=read-write",
            base + 10,
            base + 11,
            base + 12
        ),
    );
    wait::until("the probe table through HAProxy", READY, || async {
        write_through(&lb, probe::TABLE_DDL).await
    })
    .await?;
    let primary = || async {
        let s = repo.status().ok()?;
        let members = s["clusters"][0]["members"].as_array()?.clone();
        let primary = members.iter().find(|m| m["role"] == "primary")?.clone();
        let replicas = members
            .iter()
            .filter(|m| m["role"] == "replica" && m["state"] == "running")
            .count();
        (replicas == 2).then_some(primary)
    };
    let old = wait::until("two running replicas", READY, primary).await?;
    let prober = Prober::start(
        vec![("lb".into(), lb.clone()), ("direct".into(), direct)],
        Duration::from_millis(20),
    );
    prober.wait_write("lb", None, READY).await?;
    prober.wait_write("direct", None, READY).await?;

    let governor = old["governor_pid"].as_u64().unwrap_or(0) as u32;
    let postmaster = old["postmaster_pid"].as_u64().unwrap_or(0) as u32;
    anyhow::ensure!(governor > 0 && postmaster > 0, "{old}");
    proc::kill_group(governor);
    proc::kill_postgres(postmaster);
    // After the old primary's processes are gone: a write sent in between could still be
    // acknowledged by them and would count as the promoted member's first.
    let killed = std::time::Instant::now();
    prober
        .wait_write("direct", Some(killed), Duration::from_secs(60))
        .await?;
    prober
        .wait_write("lb", Some(killed), Duration::from_secs(60))
        .await?;
    let (acks, _) = prober.stop().await;
    let first = |label: &str| {
        acks.iter()
            .filter(|a| a.member == label && a.sent > killed)
            .map(|a| a.acked)
            .min()
    };
    let (Some(direct_at), Some(lb_at)) = (first("direct"), first("lb")) else {
        anyhow::bail!("no write acknowledged after the kill");
    };
    let behind = lb_at.saturating_duration_since(direct_at);
    eprintln!(
        "failover of {}: first write directly {} ms after the kill, through HAProxy {} ms ({} ms behind)",
        old["name"],
        (direct_at - killed).as_millis(),
        (lb_at - killed).as_millis(),
        behind.as_millis()
    );
    assert!(
        behind <= Duration::from_millis(500),
        "writes through HAProxy resumed {behind:?} after the promoted member took them \
         directly (README: at most 0.5 s)"
    );
    Ok(())
}
