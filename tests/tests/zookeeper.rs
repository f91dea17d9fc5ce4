//! End-to-end tests of the governor on ZooKeeper (`zookeeper:` in its configuration) with real
//! PostgreSQL 15 and Debian's ZooKeeper 3.8: the scenarios `governor.rs` plays on etcd
//! (`scenarios`), a switchover through the REST API, and the loss of the ensemble's leader.

use spilo_e2e::cluster::{API_TOKEN, Cluster, ClusterOptions};
use spilo_e2e::probe::{self, Prober};
use spilo_e2e::wait;
use std::time::{Duration, Instant};

mod scenarios;

const BOOT: Duration = Duration::from_secs(60);

fn on_zookeeper(scope: &str, servers: usize, ha: &str) -> ClusterOptions {
    ClusterOptions {
        scope: scope.into(),
        zookeeper: servers,
        ha: ha.into(),
        ..Default::default()
    }
}

/// The `leader` znode's value: `{"name": ..., "lease": <session id>}`.
async fn leader_znode(c: &Cluster) -> anyhow::Result<serde_json::Value> {
    let value = c
        .store_get(&c.keys().leader())
        .await?
        .ok_or_else(|| anyhow::anyhow!("no leader znode"))?;
    Ok(serde_json::from_str(&value)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_zookeeper_kill_9_of_the_primary_fails_over_and_the_old_primary_rejoins()
-> anyhow::Result<()> {
    let mut c = Cluster::new(on_zookeeper("zkkill", 1, "{}")).await?;
    let result = async {
        scenarios::kill_9_failover(&mut c).await?;
        // The leader znode names the new primary and its session.
        let primary = c.wait_primary(BOOT).await?;
        let leader = leader_znode(&c).await?;
        assert_eq!(leader["name"], primary.as_str(), "{leader}");
        assert!(leader["lease"].as_i64().is_some_and(|l| l != 0), "{leader}");
        Ok(())
    }
    .await;
    c.finish(result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_zookeeper_a_graceful_stop_of_the_primary_hands_over_without_waiting_for_the_ttl()
-> anyhow::Result<()> {
    // A 30 s session: a handover within 10 s proves the key was released.
    let mut c = Cluster::new(on_zookeeper("zkgraceful", 1, "{ttl: 30, retry_timeout: 5}")).await?;
    let result = scenarios::graceful_handover(&mut c).await;
    c.finish(result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_zookeeper_a_primary_cut_off_stops_within_the_session_timeout_and_is_replaced()
-> anyhow::Result<()> {
    let mut c = Cluster::new(on_zookeeper("zkcut", 1, "{}")).await?;
    let ttl = Duration::from_secs(spilo_model::spec::DEFAULT_TTL);
    let result = scenarios::cut_off_primary(&mut c, ttl).await;
    c.finish(result)
}

/// A switchover asked through the REST API (which writes the request into ZooKeeper): the
/// candidate leads, no acknowledged write is lost, the old primary follows without a rewind,
/// and the request znode is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_zookeeper_a_switchover_loses_no_write() -> anyhow::Result<()> {
    let mut c = Cluster::new(on_zookeeper("zkswitch", 1, "{}")).await?;
    let result = switchover_body(&mut c).await;
    c.finish(result)
}

async fn switchover_body(c: &mut Cluster) -> anyhow::Result<()> {
    let (old, replicas) = c.start_streaming(BOOT).await?;
    let target = replicas[1].clone();
    c.sql(&old).await?.batch_execute(probe::TABLE_DDL).await?;
    let prober = Prober::start(
        vec![("rw".into(), c.read_write_dsn())],
        Duration::from_millis(20),
    );
    wait::until("writes before the switchover", BOOT, || async {
        (prober.acks().len() >= 20).then_some(())
    })
    .await?;
    let resp = c
        .http()
        .post(format!("{}/switchover", c.api_url(&old)))
        .bearer_auth(API_TOKEN)
        .json(&serde_json::json!({ "leader": old, "candidate": target }))
        .send()
        .await?;
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    assert!(status == 200 || status == 202, "{status}: {text}");
    assert_eq!(
        wait::until("the candidate to lead", BOOT, || async {
            let p = c.primaries().await;
            (p.len() == 1 && p[0] != old).then(|| p[0].clone())
        })
        .await?,
        target
    );
    let after = Instant::now();
    wait::until("writes on the new primary", BOOT, || async {
        (prober.acks().iter().filter(|a| a.acked > after).count() >= 10).then_some(())
    })
    .await?;
    let (acks, _) = prober.stop().await;
    let present = probe::ids_on(&c.sql(&target).await?).await?;
    assert_eq!(probe::lost(&acks, &present), Vec::<i64>::new());
    c.wait_streaming(&old, BOOT).await?;
    let log = c.log(&old);
    assert!(log.contains(&format!("follow {target}")), "{log}");
    assert!(!log.contains("rewind against"), "{log}");
    assert!(c.store_get(&c.keys().switchover()).await?.is_none());
    Ok(())
}

/// Losing the leader of a three-server ensemble changes nothing: the members' sessions move
/// to the other servers, the primary keeps its leader znode (the same session) and keeps
/// accepting writes; no failover. As on etcd (`faults.rs`), with a ttl of 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_zookeeper_losing_the_ensemble_leader_changes_nothing() -> anyhow::Result<()> {
    let mut c = Cluster::new(on_zookeeper("zk3", 3, "{ttl: 10}")).await?;
    let result = ensemble_leader_loss_body(&mut c).await;
    c.finish(result)
}

async fn ensemble_leader_loss_body(c: &mut Cluster) -> anyhow::Result<()> {
    let (primary, _) = c.start_streaming(BOOT).await?;
    c.sql(&primary)
        .await?
        .batch_execute(probe::TABLE_DDL)
        .await?;
    let prober = c.per_member_prober(Duration::from_millis(20));
    let before = leader_znode(c).await?;
    assert_eq!(before["name"], primary.as_str(), "{before}");
    let leading = spilo_e2e::zookeeper::leader_of(&c.zookeeper).await;
    drop(c.zookeeper.remove(leading));
    let killed_at = Instant::now();
    wait::until(
        "twelve seconds after the ZooKeeper leader died",
        Duration::from_secs(30),
        || async { (killed_at.elapsed() >= Duration::from_secs(12)).then_some(()) },
    )
    .await?;
    assert_eq!(c.primaries().await, vec![primary.clone()]);
    assert_eq!(leader_znode(c).await?, before, "the leader znode changed");
    // And the session it names is still alive (the znode alone would outlive it).
    let lease = before["lease"]
        .as_i64()
        .ok_or_else(|| anyhow::anyhow!("no lease in {before}"))?;
    assert!(
        c.store_get(&c.keys().lease_marker(lease)).await?.is_some(),
        "the leader's session ended"
    );
    let (acks, _) = prober.stop().await;
    probe::check_single_writer(&acks).map_err(anyhow::Error::msg)?;
    assert!(
        acks.iter()
            .any(|a| a.member == primary && a.sent > killed_at + Duration::from_secs(10)),
        "the primary stopped accepting writes"
    );
    assert!(acks.iter().all(|a| a.member == primary));
    Ok(())
}

/// A member whose governor is killed and started again at once, while its earlier run's
/// session (ttl 30 s) still holds its member key, starts: the earlier session cannot be
/// revoked from another connection, so it is left to end and the key moves to the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_zookeeper_a_member_restarted_within_its_session_timeout_starts() -> anyhow::Result<()> {
    let mut c = Cluster::new(on_zookeeper("zkrestart", 1, "{ttl: 30, retry_timeout: 5}")).await?;
    let result = async {
        let (_, replicas) = c.start_streaming(BOOT).await?;
        let r = replicas[0].clone();
        // Started at once, its PostgreSQL may find the killed postmaster not yet reaped
        // ("lock file postmaster.pid already exists") and is started again.
        c.expect_errors(&["PostgreSQL exited unexpectedly"]);
        c.kill9(&r).await?;
        let restarted = Instant::now();
        c.start(&r)?;
        c.wait_streaming(&r, BOOT).await?;
        assert!(
            restarted.elapsed() < Duration::from_secs(30),
            "the earlier session may have ended first"
        );
        let log = c.log(&r);
        assert!(
            log.contains("the earlier run's ZooKeeper session ends with its timeout"),
            "{log}"
        );
        Ok(())
    }
    .await;
    c.finish(result)
}

/// `spilo`'s own reads of a cluster on ZooKeeper agree with the governor's layout: a leader
/// znode counts only while its session's marker exists, an empty `sync` is absent, and
/// `config` is written by compare-and-swap on its revision (0: created while absent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spilo_reads_the_governors_layout_on_zookeeper() -> anyhow::Result<()> {
    use zookeeper_client as zk;
    let server = spilo_e2e::zookeeper::start().await;
    let client = spilo::zookeeper::connect(std::slice::from_ref(&server.host)).await?;
    let keys = spilo_model::Keyspace::new(&spilo_model::ClusterName::new("zr")?);
    let dir = keys.prefix().trim_end_matches('/').to_string();
    let create = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    client.mkdir(&dir, &create).await?;
    client.mkdir(&keys.lease_marker_dir(), &create).await?;
    let leader = serde_json::to_vec(&spilo_model::keys::ZooKeeperLeader {
        name: "m1".into(),
        lease: 77,
    })?;
    client.create(&keys.leader(), &leader, &create).await?;
    client.create(&keys.sync(), b"", &create).await?;
    let read = |kvs: Vec<(String, Vec<u8>, i64)>| -> Vec<String> {
        kvs.into_iter().map(|(k, _, _)| k).collect()
    };
    let before = read(spilo::zookeeper::read_cluster(&client, &keys).await?);
    assert!(!before.contains(&keys.leader()), "{before:?}");
    assert!(!before.contains(&keys.sync()), "{before:?}");
    client.create(&keys.lease_marker(77), b"", &create).await?;
    let after = spilo::zookeeper::read_cluster(&client, &keys).await?;
    let named = after.iter().find(|(k, _, _)| *k == keys.leader());
    assert_eq!(named.map(|(_, v, _)| v.as_slice()), Some(b"m1".as_slice()));

    let config = keys.config();
    assert!(spilo::zookeeper::put_if_revision(&client, &config, b"{}", 0).await?);
    assert!(!spilo::zookeeper::put_if_revision(&client, &config, b"{}", 0).await?);
    let (_, revision) = spilo::zookeeper::get(&client, &config)
        .await?
        .ok_or_else(|| anyhow::anyhow!("config was created"))?;
    assert!(
        !spilo::zookeeper::put_if_revision(&client, &config, b"{\"pause\":true}", revision + 1)
            .await?
    );
    assert!(
        spilo::zookeeper::put_if_revision(&client, &config, b"{\"pause\":true}", revision).await?
    );
    assert!(!spilo::zookeeper::put_if_revision(&client, &config, b"{}", revision).await?);
    Ok(())
}
