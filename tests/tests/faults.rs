//! Fault injection on real processes: each test injects one fault into a running cluster under
//! a write load and asserts its stated outcome (who is primary, that no two members accepted
//! writes at the same time, which acknowledged writes survive).

use spilo_e2e::cluster::{Cluster, ClusterOptions};
use spilo_e2e::probe;
use spilo_e2e::wait;
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(60);

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
    let result = frozen_body(&mut c, true).await;
    c.finish(result)
}

/// The negative control: without the watchdog (a test-only switch) the frozen governor cannot
/// stop its PostgreSQL, and the writes show two writable members, which the check catches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_watchdog_a_frozen_governor_leaves_two_writers() -> anyhow::Result<()> {
    let mut c = Cluster::new(ClusterOptions {
        scope: "unwatched".into(),
        env: vec![("SPILO_FAULT_NO_WATCHDOG".into(), "1".into())],
        ..Default::default()
    })
    .await?;
    let result = frozen_body(&mut c, false).await;
    c.finish(result)
}

async fn frozen_body(c: &mut Cluster, watchdog: bool) -> anyhow::Result<()> {
    // The frozen primary's lease runs out: the fence (or the watchdog, which the governor
    // then sees as PostgreSQL exiting on its own) stops it.
    c.expect_errors(&[
        "fence: the leader lease is about to end without renewal",
        "PostgreSQL exited unexpectedly status=exit status: 0",
    ]);
    let (old, _) = c.start_streaming(BOOT).await?;
    c.sql(&old).await?.batch_execute(probe::TABLE_DDL).await?;
    let prober = c.per_member_prober(Duration::from_millis(20));
    prober.wait_write(&old, None, BOOT).await?;

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
    if let (false, Ok(new)) = (watchdog, &new) {
        // Without the watchdog nothing stops the frozen primary: both accept writes now.
        prober.wait_write(new, Some(frozen_at), BOOT).await?;
        prober.wait_write(&old, Some(Instant::now()), BOOT).await?;
    }
    let thawed = nix::sys::signal::kill(governor, nix::sys::signal::Signal::SIGCONT);
    let new = new?;
    thawed?;
    prober.wait_write(&new, Some(frozen_at), BOOT).await?;
    c.wait_streaming(&old, BOOT).await?;
    let (acks, _) = prober.stop().await;
    if !watchdog {
        let two = probe::check_single_writer(&acks);
        assert!(
            two.is_err(),
            "without the watchdog the check must see two writers"
        );
        eprintln!("negative control: {}", two.err().unwrap_or_default());
        return Ok(());
    }
    probe::check_single_writer(&acks).map_err(anyhow::Error::msg)?;
    let old_last = probe::last_acked(&acks, &old).expect("the old primary acknowledged writes");
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

/// Expected: with etcd frozen for 8 s and every member healthy, the primary stops accepting
/// writes before its lease can end (it cannot tell an etcd outage from being cut off; failsafe
/// mode, off here, is the next test), nobody accepts writes until etcd answers again, then one
/// primary is back within 30 s; no two members ever accept writes at once and, all members
/// being reachable, the most advanced one leads again: no acknowledged write is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_outage_stops_writes_safely_and_the_cluster_recovers() -> anyhow::Result<()> {
    let mut c = Cluster::new(ClusterOptions {
        scope: "etcdout".into(),
        ..Default::default()
    })
    .await?;
    let result = etcd_outage_body(&mut c).await;
    c.etcd.freeze(false);
    c.finish(result)
}

async fn etcd_outage_body(c: &mut Cluster) -> anyhow::Result<()> {
    // Without etcd the primary's lease runs out and the fence stops it.
    c.expect_errors(&["fence: the leader lease is about to end without renewal"]);
    let (old, _) = c.start_streaming(BOOT).await?;
    c.sql(&old).await?.batch_execute(probe::TABLE_DDL).await?;
    // Failsafe mode is off: no member makes a failsafe promise.
    let replica = c
        .members
        .iter()
        .map(|m| m.name.clone())
        .find(|m| *m != old)
        .ok_or_else(|| anyhow::anyhow!("no replica"))?;
    assert_eq!(post_failsafe(c, &replica, &old, true).await, Some(409));
    let prober = c.per_member_prober(Duration::from_millis(20));
    prober.wait_write(&old, None, BOOT).await?;
    c.etcd.freeze(true);
    let frozen_at = Instant::now();
    // Within the TTL (4 s) the primary has stopped accepting writes.
    let fenced = wait::until("the primary to stop accepting writes", BOOT, || async {
        let last = prober
            .acks()
            .iter()
            .filter(|a| a.member == old)
            .map(|a| a.acked)
            .max()?;
        (Instant::now().saturating_duration_since(last) > Duration::from_millis(500))
            .then_some(last)
    })
    .await?;
    assert!(
        fenced.saturating_duration_since(frozen_at) < Duration::from_secs(4),
        "the primary kept accepting writes for {:?} without etcd",
        fenced.saturating_duration_since(frozen_at)
    );
    wait::until(
        "eight seconds of outage",
        Duration::from_secs(20),
        || async { (frozen_at.elapsed() >= Duration::from_secs(8)).then_some(()) },
    )
    .await?;
    let during: Vec<_> = prober
        .acks()
        .into_iter()
        .filter(|a| a.sent > fenced && a.acked < frozen_at + Duration::from_secs(8))
        .collect();
    assert!(
        during.is_empty(),
        "writes accepted without etcd: {during:?}"
    );
    c.etcd.freeze(false);
    let back = Instant::now();
    let primary = c.wait_primary(Duration::from_secs(30)).await?;
    prober.wait_write(&primary, Some(back), BOOT).await?;
    let (acks, _) = prober.stop().await;
    probe::check_single_writer(&acks).map_err(anyhow::Error::msg)?;
    let present = probe::ids_on(&c.sql(&primary).await?).await?;
    assert_eq!(
        probe::lost(&acks, &present),
        Vec::<i64>::new(),
        "acknowledged writes lost"
    );
    Ok(())
}

/// Expected: losing the leader of a 3-member etcd cluster changes nothing for the PostgreSQL
/// cluster: etcd elects a new leader, the governors reach the other two members, the primary
/// keeps its key and keeps accepting writes; no failover, and no fence. That holds while etcd
/// answers again within the lease's slack (ttl - fence margin - a renewal interval): here
/// ttl 10 (7.75 s of slack). With the default ttl 4 the slack is 2.5 s, and an etcd election
/// slower than that on a loaded machine (seen: about 3 s) fences the primary, safely: writes
/// stop until etcd answers, and the same member takes its key back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_one_of_three_etcd_members_changes_nothing() -> anyhow::Result<()> {
    let mut c = Cluster::new(ClusterOptions {
        scope: "etcd3".into(),
        ha: "{ttl: 10}".into(),
        ..Default::default()
    })
    .await?;
    let ca = c
        .ca()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("TLS is on"))?;
    let mut etcds = spilo_e2e::etcd::Etcd::start_cluster_tls(c.dir(), 3, &ca, c.run_as()).await?;
    let hosts: Vec<String> = etcds.iter().map(|e| e.client_addr.clone()).collect();
    for m in &mut c.members {
        m.store_hosts = hosts.clone();
    }
    let result = etcd_member_loss_body(&mut c, &mut etcds).await;
    c.finish(result)
}

async fn etcd_member_loss_body(
    c: &mut Cluster,
    etcds: &mut [spilo_e2e::etcd::Etcd],
) -> anyhow::Result<()> {
    let (primary, _) = c.start_streaming(BOOT).await?;
    c.sql(&primary)
        .await?
        .batch_execute(probe::TABLE_DDL)
        .await?;
    let prober = c.per_member_prober(Duration::from_millis(20));
    let mut leader = None;
    for (i, e) in etcds.iter().enumerate() {
        if e.is_leader().await? {
            leader = Some(i);
        }
    }
    let leader = leader.ok_or_else(|| anyhow::anyhow!("the etcd cluster has no leader"))?;
    let key_before = etcds[(leader + 1) % 3].get("/service/etcd3/leader").await?;
    etcds[leader].kill();
    let killed_at = Instant::now();
    // Twelve seconds later (past the TTL) the same member leads with the same lease.
    wait::until(
        "twelve seconds after the etcd leader died",
        Duration::from_secs(30),
        || async { (killed_at.elapsed() >= Duration::from_secs(12)).then_some(()) },
    )
    .await?;
    assert_eq!(c.primaries().await, vec![primary.clone()]);
    let key_after = etcds[(leader + 1) % 3].get("/service/etcd3/leader").await?;
    assert_eq!(key_after, key_before, "the leader key changed");
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

/// Expected, in failsafe mode: with etcd frozen for 8 s (twice the TTL) and every member
/// healthy and reachable, the primary keeps accepting writes throughout (every member confirms
/// it over the REST API), `/primary` stays green for the load balancer, no replica takes
/// over, and once etcd answers the same primary takes its leader key back. No two members
/// ever accept writes at once; no acknowledged write is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_failsafe_mode_an_etcd_outage_keeps_the_primary_writable() -> anyhow::Result<()> {
    let mut c = Cluster::new(ClusterOptions {
        scope: "failsafe".into(),
        ha: "{failsafe_mode: true}".into(),
        ..Default::default()
    })
    .await?;
    let result = failsafe_outage_body(&mut c).await;
    c.etcd.freeze(false);
    c.finish(result)
}

async fn failsafe_outage_body(c: &mut Cluster) -> anyhow::Result<()> {
    let (old, _) = c.start_streaming(BOOT).await?;
    c.sql(&old).await?.batch_execute(probe::TABLE_DDL).await?;
    let key = c.keys().failsafe();
    let listed = wait::until("the leader to write the failsafe key", BOOT, || async {
        let (value, _) = c.etcd.get(&key).await.ok()??;
        let members: std::collections::BTreeMap<String, String> =
            serde_json::from_str(&value).ok()?;
        (members.len() == 3).then_some(members)
    })
    .await?;
    assert!(listed.contains_key(&old), "{listed:?}");
    // Confirmations need the API credentials, and nobody confirms itself or a member that is
    // not the leader.
    let replicas: Vec<String> = c
        .members
        .iter()
        .map(|m| m.name.clone())
        .filter(|m| *m != old)
        .collect();
    assert_eq!(post_failsafe(c, &replicas[0], &old, false).await, Some(401));
    assert_eq!(post_failsafe(c, &old, &old, true).await, Some(400));
    assert_eq!(
        post_failsafe(c, &replicas[0], &replicas[1], true).await,
        Some(409)
    );
    assert_eq!(post_failsafe(c, &old, &replicas[0], true).await, Some(409));
    let prober = c.per_member_prober(Duration::from_millis(20));
    prober.wait_write(&old, None, BOOT).await?;

    c.etcd.freeze(true);
    let frozen_at = Instant::now();
    let outage = Duration::from_secs(8);
    // Past the point where the lease alone would have stopped writes (TTL 4 s).
    wait::until("six seconds of outage", Duration::from_secs(20), || async {
        (frozen_at.elapsed() >= Duration::from_secs(6)).then_some(())
    })
    .await?;
    assert_eq!(
        c.http_code(&old, "/primary").await,
        Some(200),
        "the load balancer must still see the primary"
    );
    for m in c
        .members
        .iter()
        .map(|m| m.name.clone())
        .filter(|m| *m != old)
    {
        assert_eq!(c.http_code(&m, "/primary").await, Some(503), "{m}");
    }
    wait::until(
        "the outage to last 8 s",
        Duration::from_secs(20),
        || async { (frozen_at.elapsed() >= outage).then_some(()) },
    )
    .await?;
    c.etcd.freeze(false);
    let back = Instant::now();

    // Writes went on during the whole outage: no gap longer than a second.
    let during: Vec<Instant> = prober
        .acks()
        .iter()
        .filter(|a| a.member == old && a.sent >= frozen_at && a.acked <= frozen_at + outage)
        .map(|a| a.acked)
        .collect();
    let writes = during.len();
    let longest = probe::longest_pause(during.into_iter().chain([frozen_at, frozen_at + outage]));
    assert!(
        longest < Duration::from_secs(1),
        "the primary stopped accepting writes for {longest:?} during the outage ({writes} writes)"
    );

    let leader_key = c.keys().leader();
    wait::until("the primary to hold its leader key again", BOOT, || async {
        let (holder, _) = c.etcd.get(&leader_key).await.ok()??;
        let status = c.status(&old).await?;
        (holder == old && status.is_leader).then_some(())
    })
    .await?;
    prober.wait_write(&old, Some(back), BOOT).await?;
    let (acks, _) = prober.stop().await;
    probe::check_single_writer(&acks).map_err(anyhow::Error::msg)?;
    let others: Vec<_> = acks.iter().filter(|a| a.member != old).collect();
    assert!(
        others.is_empty(),
        "another member accepted writes: {others:?}"
    );
    let present = probe::ids_on(&c.sql(&old).await?).await?;
    assert_eq!(
        probe::lost(&acks, &present),
        Vec::<i64>::new(),
        "acknowledged writes lost"
    );
    let log = c.log(&old);
    assert!(log.contains("every member confirmed this primary"), "{log}");
    for sign in ["decision=\"demote\"", "fence:", "watchdog:"] {
        assert!(
            !log.contains(sign),
            "the primary was stopped during the outage ({sign}): {log}"
        );
    }
    Ok(())
}

/// `POST /failsafe {leader}` to `to` with the cluster's credentials (or none); the status code.
async fn post_failsafe(c: &Cluster, to: &str, leader: &str, authorized: bool) -> Option<u16> {
    let mut req = c
        .http()
        .post(format!("{}/failsafe", c.api_url(to)))
        .json(&serde_json::json!({ "leader": leader }));
    if authorized {
        req = req.bearer_auth(spilo_e2e::cluster::API_TOKEN);
    }
    req.send().await.ok().map(|r| r.status().as_u16())
}

async fn sync_standbys(c: &Cluster) -> Option<(String, Vec<String>)> {
    let s = c.sync_state().await?;
    Some((
        s.leader?.to_string(),
        s.members.iter().map(|m| m.to_string()).collect(),
    ))
}

/// Writes zeros into `path` until the filesystem is full; returns the bytes written.
fn fill(path: &std::path::Path) -> anyhow::Result<u64> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    let chunk = vec![0u8; 1 << 20];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
            Err(e) => return Err(e.into()),
        }
    }
    // Whatever the page cache held back must be refused too.
    match f.sync_all() {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(written)
}

/// Expected, in synchronous mode: when the synchronous standby's disk fills up, it can no
/// longer write the WAL it receives and stops streaming; the primary stays primary (no
/// failover), lists the other replica as synchronous standby instead, so writes pause for
/// less than 15 s; no acknowledged write is lost; the full replica's `/replica` answers 503.
/// Once space is freed it streams again and has every acknowledged write, without a new copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_on_the_synchronous_standby_costs_a_short_write_pause() -> anyhow::Result<()> {
    let mut c = Cluster::new(ClusterOptions {
        scope: "diskfull".into(),
        ha: "{synchronous_mode: true}".into(),
        ..Default::default()
    })
    .await?;
    c.small_data_disks(256)?;
    let result = full_disk_body(&mut c).await;
    c.finish(result)
}

async fn full_disk_body(c: &mut Cluster) -> anyhow::Result<()> {
    let (primary, _) = c.start_streaming(BOOT).await?;
    c.sql(&primary)
        .await?
        .batch_execute(probe::TABLE_DDL)
        .await?;
    let full = wait::until("a synchronous standby", BOOT, || async {
        let (leader, members) = sync_standbys(c).await?;
        (leader == primary)
            .then(|| members.first().cloned())
            .flatten()
    })
    .await?;
    let prober = c.per_member_prober(Duration::from_millis(20));
    wait::until("the primary to acknowledge probe writes", BOOT, || async {
        prober
            .acks()
            .iter()
            .any(|a| a.member == primary)
            .then_some(())
    })
    .await?;

    let filler = c.member(&full).data_dir().join("filler");
    let written = fill(&filler)?;
    let filled_at = Instant::now();
    // The standby writes into the WAL segment it already allocated; a switch makes it
    // allocate the next one on the full disk.
    c.sql(&primary)
        .await?
        .batch_execute("select pg_switch_wal()")
        .await?;
    let other = wait::until("another synchronous standby", BOOT, || async {
        let (leader, members) = sync_standbys(c).await?;
        (leader == primary && !members.is_empty() && !members.contains(&full))
            .then(|| members[0].clone())
    })
    .await?;
    wait::until("writes to resume", BOOT, || async {
        let after = Instant::now() - Duration::from_millis(200);
        prober
            .acks()
            .iter()
            .any(|a| a.member == primary && a.sent > filled_at && a.acked < after)
            .then_some(())
    })
    .await?;
    wait::until(
        "the full replica to be reported not streaming",
        BOOT,
        || async { (c.http_code(&full, "/replica").await == Some(503)).then_some(()) },
    )
    .await?;
    assert_eq!(c.primaries().await, vec![primary.clone()], "no failover");
    let pg_log = std::fs::read_to_string(c.member(&full).pg_log_path())?;
    assert!(
        pg_log.contains("No space left on device"),
        "the disk was not full ({written} bytes filled): {pg_log}"
    );

    std::fs::remove_file(&filler)?;
    let freed_at = Instant::now();
    c.wait_streaming(&full, BOOT).await?;
    prober.wait_write(&primary, Some(freed_at), BOOT).await?;
    let (acks, _) = prober.stop().await;
    probe::check_single_writer(&acks).map_err(anyhow::Error::msg)?;
    let pause = probe::longest_pause(
        acks.iter()
            .filter(|a| a.member == primary && a.sent >= filled_at - Duration::from_secs(1))
            .map(|a| a.acked),
    );
    eprintln!("writes paused for {pause:?} while the synchronous standby's disk was full");
    // The primary names the other standby within a loop (1 s) of the full one stopping.
    assert!(
        pause < Duration::from_secs(3),
        "writes paused for {pause:?} (the other standby is {other})"
    );
    let on_primary = probe::ids_on(&c.sql(&primary).await?).await?;
    assert_eq!(
        probe::lost(&acks, &on_primary),
        Vec::<i64>::new(),
        "acknowledged writes lost"
    );
    let replica = c.sql(&full).await?;
    wait::until(
        "the freed replica to have every acknowledged write",
        BOOT,
        || async {
            let ids = probe::ids_on(&replica).await.ok()?;
            probe::lost(&acks, &ids).is_empty().then_some(())
        },
    )
    .await?;
    let clones = c.log(&full).matches("decision=\"clone\"").count();
    assert_eq!(clones, 1, "the full replica was copied again");
    eprintln!("write pause with the synchronous standby's disk full: {pause:?}");
    Ok(())
}

/// Expected, in synchronous and failsafe mode, with each member in its own network namespace:
/// when the primary's host is cut off from etcd and from the other members (the test still
/// reaches it), its commits stop at once (its synchronous standby is gone), it cannot gather
/// its members' confirmations, so it stops accepting writes within the TTL (4 s); the
/// synchronous standby takes over within 10 s of the cut; no two members ever accept writes at
/// once and no acknowledged write is lost. Once the network heals, the old primary rejoins as
/// a replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_cut_off_in_its_network_namespace_stops_and_is_replaced() -> anyhow::Result<()> {
    let mut c = Cluster::new(ClusterOptions {
        scope: "netpart".into(),
        ha: "{synchronous_mode: true, failsafe_mode: true}".into(),
        netns: true,
        ..Default::default()
    })
    .await?;
    let result = netns_partition_body(&mut c, true).await;
    c.finish(result)
}

/// The same cut with asynchronous replication, where the cut-off primary could go on
/// acknowledging writes by itself: it must stop within the TTL (its fence), before the new
/// primary acknowledges its first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_asynchronous_primary_cut_off_stops_acknowledging_within_the_ttl() -> anyhow::Result<()>
{
    let mut c = Cluster::new(ClusterOptions {
        scope: "netpartasync".into(),
        ha: "{failsafe_mode: true}".into(),
        netns: true,
        ..Default::default()
    })
    .await?;
    let result = netns_partition_body(&mut c, false).await;
    c.finish(result)
}

async fn netns_partition_body(c: &mut Cluster, synchronous: bool) -> anyhow::Result<()> {
    // The cut-off primary's lease runs out and the fence stops it. Once healed, it may reach
    // etcd before the new primary (its first pg_rewind then cannot connect, and the next
    // pass tries again; seen once, in the fresh-clone CI run of 43e1edc).
    c.expect_errors(&[
        "fence: the leader lease is about to end without renewal",
        "decision=\"rewind\" error=PostgreSQL: error connecting to server",
    ]);
    let (old, _) = c.start_streaming(BOOT).await?;
    c.sql(&old).await?.batch_execute(probe::TABLE_DDL).await?;
    if synchronous {
        wait::until("a synchronous standby", BOOT, || async {
            let (leader, members) = sync_standbys(c).await?;
            (leader == old && !members.is_empty()).then_some(())
        })
        .await?;
    }
    let prober = c.per_member_prober(Duration::from_millis(20));
    prober.wait_write(&old, None, BOOT).await?;
    let index = c
        .members
        .iter()
        .position(|m| m.name == old)
        .map(|i| i + 1)
        .ok_or_else(|| anyhow::anyhow!("no member {old}"))?;
    let lab = c
        .lab
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no network lab"))?;
    lab.isolate(index)?;
    let cut_at = Instant::now();
    let new = wait::until("another member to take over", BOOT, || async {
        let p = c.primaries().await;
        p.iter().find(|m| **m != old).cloned()
    })
    .await;
    let took_over = cut_at.elapsed();
    // The old primary, still reachable from here, no longer runs as a writable primary.
    let stopped = wait::until("the old primary to stop", BOOT, || async {
        let s = c.status(&old).await;
        (s.is_none_or(|s| {
            s.member.role != spilo_model::MemberRole::Primary
                || s.member.state != spilo_model::MemberState::Running
        }))
        .then_some(())
    })
    .await;
    let lab = c
        .lab
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no network lab"))?;
    lab.heal(index)?;
    let new = new?;
    stopped?;
    assert!(
        took_over < Duration::from_secs(10),
        "{new} took over {took_over:?} after the cut"
    );
    let healed_at = Instant::now();
    prober.wait_write(&new, Some(healed_at), BOOT).await?;
    c.wait_streaming(&old, BOOT).await?;
    let (acks, _) = prober.stop().await;
    probe::check_single_writer(&acks).map_err(anyhow::Error::msg)?;
    let last_old = probe::last_acked(&acks, &old).expect("the old primary acknowledged writes");
    assert!(
        last_old < cut_at + Duration::from_secs(4),
        "the cut-off primary acknowledged a write {:?} after the cut",
        last_old.saturating_duration_since(cut_at)
    );
    // Synchronous replication loses nothing acknowledged; asynchronous may lose what the
    // cut-off primary acknowledged before the replicas received it (its data is rewound).
    if synchronous {
        let present = probe::ids_on(&c.sql(&new).await?).await?;
        assert_eq!(
            probe::lost(&acks, &present),
            Vec::<i64>::new(),
            "acknowledged writes lost"
        );
    }
    let log = c.log(&old);
    assert!(
        log.contains("failsafe: not every member confirmed this primary"),
        "{log}"
    );
    eprintln!("cut-off primary replaced after {took_over:?}");
    Ok(())
}
