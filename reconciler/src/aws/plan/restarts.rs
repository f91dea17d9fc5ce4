//! Which changed PostgreSQL parameters of a plan take effect only after every member
//! restarted (PostgreSQL 15's `postmaster` context), so the plan can say so: the running
//! governors reload the rest on their own.

use super::ConfigChange;

/// PostgreSQL 15's parameters of `pg_settings.context = 'postmaster'`.
const POSTMASTER: &[&str] = &[
    "archive_mode",
    "autovacuum_freeze_max_age",
    "autovacuum_max_workers",
    "autovacuum_multixact_freeze_max_age",
    "bonjour",
    "cluster_name",
    "data_directory",
    "dynamic_shared_memory_type",
    "hba_file",
    "hot_standby",
    "huge_page_size",
    "huge_pages",
    "ident_file",
    "ignore_invalid_pages",
    "jit_provider",
    "listen_addresses",
    "logging_collector",
    "max_connections",
    "max_files_per_process",
    "max_locks_per_transaction",
    "max_logical_replication_workers",
    "max_pred_locks_per_transaction",
    "max_prepared_transactions",
    "max_replication_slots",
    "max_wal_senders",
    "max_worker_processes",
    "min_dynamic_shared_memory",
    "old_snapshot_threshold",
    "port",
    "shared_buffers",
    "shared_memory_type",
    "shared_preload_libraries",
    "superuser_reserved_connections",
    "track_activity_query_size",
    "track_commit_timestamp",
    "unix_socket_directories",
    "unix_socket_group",
    "unix_socket_permissions",
    "wal_buffers",
    "wal_decode_buffer_size",
    "wal_level",
    "wal_log_hints",
];

/// The parameters `c` changes that need a restart of every member, sorted; none when the
/// `config` key is created (the members start with it).
pub fn restarts(c: &ConfigChange) -> Vec<String> {
    let Some(before) = &c.before else {
        return Vec::new();
    };
    let (old, new) = (
        &before.postgresql_parameters,
        &c.after.postgresql_parameters,
    );
    let mut keys: Vec<String> = old
        .keys()
        .chain(new.keys())
        .filter(|k| old.get(*k) != new.get(*k) && POSTMASTER.contains(&k.as_str()))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use spilo_model::ClusterConfig;

    fn config(params: &[(&str, &str)]) -> ClusterConfig {
        ClusterConfig {
            postgresql_parameters: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn only_changed_postmaster_parameters_need_a_restart() {
        let c = ConfigChange {
            before: Some(config(&[
                ("max_connections", "100"),
                ("work_mem", "4MB"),
                ("wal_level", "replica"),
            ])),
            after: config(&[
                ("max_connections", "200"),
                ("work_mem", "8MB"),
                ("wal_level", "replica"),
                ("shared_buffers", "1GB"),
            ]),
            expected_revision: 3,
            synchronous: None,
            catalog: Vec::new(),
        };
        assert_eq!(restarts(&c), ["max_connections", "shared_buffers"]);
        let created = ConfigChange { before: None, ..c };
        assert!(restarts(&created).is_empty());
    }
}
