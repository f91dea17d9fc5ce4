//! The unit tests of the upgrade steps' pure parts: blockers, standby settings, the old
//! system identifier, the roll back, the lock.

use super::*;

/// The paths of a member whose data directory is `<dir>/data`.
fn paths_in(dir: &Path) -> Paths {
    let data = dir.join("data");
    Paths {
        old_bin: "/old".into(),
        new_bin: "/new".into(),
        upgraded: beside(&data, ".upgrade"),
        previous: beside(&data, ".pre-upgrade"),
        scratch: beside(&data, ".upgrade-check"),
        lock: beside(&data, ".upgrade.lock"),
        run_dir: dir.join("run"),
        data,
    }
}

#[test]
fn one_upgrade_step_at_a_time_per_member() {
    let dir = tempfile::tempdir().expect("test setup");
    let paths = paths_in(dir.path());
    let lock = paths.lock.clone();
    let held = take_turn(&paths).expect("the first step takes the lock");
    let other = std::fs::File::open(&lock).expect("open");
    let busy = nix::fcntl::Flock::lock(other, nix::fcntl::FlockArg::LockExclusiveNonblock);
    assert!(busy.is_err(), "a second step must wait");
    drop(busy);
    drop(held);
    let other = std::fs::File::open(&lock).expect("open");
    assert!(
        nix::fcntl::Flock::lock(other, nix::fcntl::FlockArg::LockExclusiveNonblock).is_ok(),
        "free once the first is done"
    );
}

#[test]
fn the_blockers_are_the_fatal_lines_and_the_reports_contents() {
    let dir = tempfile::tempdir().expect("test setup");
    let report = dir
        .path()
        .join("pg_upgrade_output.d/20261207T050000.000/loadable_libraries.txt");
    std::fs::create_dir_all(report.parent().expect("test setup")).expect("test setup");
    std::fs::write(
        &report,
        "could not load library \"$libdir/pgcrypto\": ERROR:  could not access file\nIn database: app\n",
    )
    .expect("test setup");
    let output = "Performing Consistency Checks on Old Live Server\n\
                  Checking for presence of required libraries                   fatal\n\
                  \n\
                  Your installation references loadable libraries that are missing from the\n\
                  new installation.\n\
                  Failure, exiting\n";
    let found = output::blockers(output, dir.path());
    assert_eq!(
        found,
        vec![
            "Checking for presence of required libraries                   fatal",
            "Your installation references loadable libraries that are missing from the",
            "loadable_libraries.txt: could not load library \"$libdir/pgcrypto\": ERROR:  could not access file",
            "loadable_libraries.txt: In database: app",
        ]
    );
}

#[test]
fn both_servers_start_with_the_old_clusters_standby_settings() {
    let old = controldata::ControlData::parse(
        "max_connections setting:              40\n\
         max_worker_processes setting:         8\n\
         wal_level setting:                    replica\n",
    );
    assert_eq!(
        standby_options(&old),
        "-c max_connections=40 -c max_worker_processes=8 -c wal_level=replica"
    );
}

#[test]
fn the_old_system_identifier_is_read_from_the_renamed_control_file() {
    let dir = tempfile::tempdir().expect("test setup");
    std::fs::create_dir_all(dir.path().join("global")).expect("test setup");
    let mut control = 7_311_111_111_111_111_111u64.to_ne_bytes().to_vec();
    control.extend([0u8; 100]);
    std::fs::write(dir.path().join("global/pg_control.old"), control).expect("test setup");
    assert_eq!(
        old_system_identifier(dir.path()).as_deref(),
        Some("7311111111111111111")
    );
    assert_eq!(old_system_identifier(&dir.path().join("absent")), None);
}

#[test]
fn a_roll_back_puts_the_control_file_back_and_removes_the_new_cluster() {
    let dir = tempfile::tempdir().expect("test setup");
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("global")).expect("test setup");
    std::fs::write(data.join("global/pg_control.old"), "x").expect("test setup");
    let paths = paths_in(dir.path());
    std::fs::create_dir_all(&paths.upgraded).expect("test setup");
    assert!(roll_back(&paths).expect("test setup"));
    assert!(data.join("global/pg_control").exists());
    assert!(!data.join("global/pg_control.old").exists());
    assert!(!paths.upgraded.exists());
    assert!(
        !roll_back(&paths).expect("test setup"),
        "a second roll back finds nothing to do"
    );
}
