//! The seeded simulation of the HA core (see `sim/`): thousands of random fault schedules per
//! run against the real decision code, checking after every step that at most one member
//! accepts writes and that it holds the leader key, that in synchronous mode no member is
//! promoted without every acknowledged commit, and that the cluster converges once the faults
//! stop. Half the seeds run in failsafe mode, where a primary cut off from etcd stays
//! writable on its members' confirmations (seed 704 once caught a primary kept writable by a
//! fresh lease that no longer backed its leader key). Every member's clock drifts within 5 %;
//! a negative control shows that clocks drifting beyond the fence margin are caught.
//!
//! `SIM_SEEDS=N` sets how many seeds (default 2500); `SIM_SEED=S` replays one seed.

mod sim;

use std::time::Instant;

/// Seeds that once failed, replayed on every run.
const PINNED: &[u64] = &[8, 15, 704, 1177];

#[test]
fn random_fault_schedules_keep_the_invariants() {
    if let Ok(seed) = std::env::var("SIM_SEED") {
        let seed: u64 = seed.parse().expect("SIM_SEED is a number");
        let stats = sim::run(seed).unwrap_or_else(|e| panic!("{e}"));
        eprintln!("seed {seed}: {stats:?}");
        return;
    }
    let seeds: u64 = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2500);
    let started = Instant::now();
    let mut total = sim::Stats::default();
    for seed in PINNED.iter().copied().chain(0..seeds) {
        let s = sim::run(seed).unwrap_or_else(|e| {
            panic!("{e}\nreplay: SIM_SEED={seed} cargo test -p governor --test simulation")
        });
        total.failovers += s.failovers;
        total.faults += s.faults;
        total.acked += s.acked;
        total.failsafe_steps += s.failsafe_steps;
        total.bootstrap_kept += s.bootstrap_kept;
        total.bootstrap_wiped += s.bootstrap_wiped;
        total.tagged += s.tagged;
        total.quorum += s.quorum;
        total.quorum_failovers += s.quorum_failovers;
        for (kind, n) in s.actions {
            *total.actions.entry(kind).or_default() += n;
        }
    }
    eprintln!(
        "{seeds} seeds: {} failovers, {} faults, {} acknowledged commits, {} steps kept \
         writable by failsafe mode, {} failed bootstraps that kept their data and {} that \
         wiped it, {} seeds with a nofailover member, {} seeds in quorum mode with {} \
         failovers, in {:.1}s",
        total.failovers,
        total.faults,
        total.acked,
        total.failsafe_steps,
        total.bootstrap_kept,
        total.bootstrap_wiped,
        total.tagged,
        total.quorum,
        total.quorum_failovers,
        started.elapsed().as_secs_f64()
    );
    eprintln!("carried out through runtime::act: {:?}", total.actions);
    assert!(
        seeds < 100 || total.quorum_failovers > 0,
        "no seed failed over in quorum mode: {total:?}"
    );
    assert!(
        total.failovers >= seeds,
        "the schedules hardly fail over: {total:?}"
    );
    assert!(
        seeds < 100 || total.failsafe_steps > 0,
        "failsafe mode never kept a primary writable: {total:?}"
    );
    assert!(
        seeds < 100 || (total.bootstrap_kept > 0 && total.bootstrap_wiped > 0 && total.tagged > 0),
        "the bootstrap faults or the nofailover tags never happened: {total:?}"
    );
}

/// The bootstrap rule is what keeps a cluster from stranding: when a bootstrap that failed
/// after `initialize` held the system identifier wipes its data anyway (as the runtime once
/// did), the only copy is gone and no member can ever start the cluster again.
#[test]
fn wiping_after_initialize_strands_the_cluster() {
    let options = sim::Options {
        wipe_after_initialize: true,
        ..Default::default()
    };
    for seed in 0..20 {
        let e =
            sim::run_with(seed, options).expect_err("a wiped bootstrap must strand the cluster");
        assert!(e.contains("no leader at the end"), "seed {seed}: {e}");
    }
}

/// The quorum rule is what keeps quorum commit free of data loss: when a voter takes over
/// as if every voter had every commit (a `FIRST` list), without seeing `n - k + 1` voters,
/// some schedule promotes one that misses a commit only another voter acknowledged.
#[test]
fn promoting_a_voter_without_the_quorum_check_loses_commits() {
    let options = sim::Options {
        quorum_blind: true,
        ..Default::default()
    };
    let caught = (0..500).find_map(|seed| sim::run_with(seed, options).err().map(|e| (seed, e)));
    let (seed, e) = caught.expect("no lost commit in 500 quorum seeds without the quorum check");
    assert!(e.contains("acknowledged commit"), "seed {seed}: {e}");
    eprintln!(
        "quorum check off caught at seed {seed}: {}",
        e.lines().next().unwrap_or("")
    );
}

/// The fence is what stops a cut-off primary: when arming it does nothing (the runtime's `act`
/// still arms it at every promotion, start and leader pass), some schedule leaves a primary
/// writing without the leader key, and the checker reports it.
#[test]
fn a_primary_whose_fence_is_never_armed_is_caught() {
    let options = sim::Options {
        fence_never_armed: true,
        ..Default::default()
    };
    caught_writing_without_the_key(options, "fence never armed");
}

/// The checker is not vacuous: with every clock 25 to 30 % slow, beyond what the fence margin
/// absorbs, some schedule leaves a cut-off primary writable after etcd handed its key on, and
/// the checker reports it.
#[test]
fn clocks_slower_than_the_margin_allows_are_caught() {
    let options = sim::Options {
        clock_rate_ppm: (700_000, 750_000),
        ..Default::default()
    };
    caught_writing_without_the_key(options, "slow clocks");
}

/// Plays up to 500 seeds in the world of `options`; the checker must report a second writer
/// or a primary writing without the leader key in one of them.
fn caught_writing_without_the_key(options: sim::Options, what: &str) {
    let caught = (0..500).find_map(|seed| sim::run_with(seed, options).err().map(|e| (seed, e)));
    let (seed, e) = caught.unwrap_or_else(|| panic!("no violation in 500 seeds: {what}"));
    assert!(
        e.contains("two writable members") || e.contains("accepts writes but the leader key"),
        "seed {seed}: {e}"
    );
    eprintln!(
        "{what} caught at seed {seed}: {}",
        e.lines().next().unwrap_or("")
    );
}
