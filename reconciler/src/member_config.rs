//! The governor configuration of one member, rendered from the cluster file: the part every
//! target shares (scope, PostgreSQL parameters, pg_hba, HA timing). Each target supplies the
//! placement: member name, addresses, data directory, etcd and password references. The
//! local target writes it to a file; on AWS it travels in the instances' user data.

use spilo_model::spec::ClusterFile;
use std::fmt::Write;

/// Where and as whom one member runs, already spelled as YAML values.
#[derive(Debug, Clone)]
pub struct Placement {
    /// A comment line at the top.
    pub header: &'static str,
    /// The member name (a YAML scalar; may be a shell variable on AWS).
    pub name: String,
    /// The `etcd:` mapping.
    pub etcd: String,
    /// The data directory.
    pub data_dir: String,
    /// PostgreSQL's `host:port`.
    pub postgres_listen: String,
    /// The REST API's `host:port`.
    pub api_listen: String,
    /// The superuser's password reference (`{file: ...}` or `{env: ...}`).
    pub superuser: String,
    /// The replication user's password reference.
    pub replication: String,
    /// The REST API token reference; `None` leaves the mutating endpoints disabled.
    pub api_token: Option<String>,
    /// The store of the WAL archive as a YAML mapping entry (`directory: ...` or
    /// `s3: {...}`), used when the file has a `backup` section.
    pub archive_store: String,
    /// The store of the clone source's archive (`bootstrap.clone.from`) as a YAML mapping
    /// entry, when the file clones.
    pub clone_store: Option<String>,
    /// Whether the cluster's PostgreSQL parameters go into the file. On AWS they live only in
    /// etcd `config` (which the governors merge in), so changing one never changes the
    /// launch template.
    pub parameters_in_file: bool,
}

/// The configuration file text.
pub fn render(file: &ClusterFile, at: &Placement) -> String {
    let spec = &file.spec;
    let mut params = String::new();
    for (k, v) in spec
        .postgresql
        .parameters
        .iter()
        .filter(|_| at.parameters_in_file)
    {
        let _ = write!(params, "{k}: '{}', ", v.to_string().replace('\'', "''"));
    }
    let ha = &spec.ha;
    let mut out = format!(
        "{header}\n\
         scope: {scope}\n\
         name: {name}\n\
         etcd: {etcd}\n\
         postgresql:\n  \
           bin_dir: /usr/lib/postgresql/{version}/bin\n  \
           data_dir: {data}\n  \
           listen: {pg}\n  \
           parameters: {{{params}}}\n  \
           authentication:\n    \
             superuser: {{username: postgres, password: {su}}}\n    \
             replication: {{username: replicator, password: {repl}}}\n",
        header = at.header,
        scope = file.metadata.name,
        name = at.name,
        etcd = at.etcd,
        version = spec.postgresql.version,
        data = at.data_dir,
        pg = at.postgres_listen,
        params = params.trim_end_matches(", "),
        su = at.superuser,
        repl = at.replication,
    );
    if !spec.postgresql.pg_hba.is_empty() {
        out.push_str("  pg_hba:\n");
        for line in &spec.postgresql.pg_hba {
            let _ = writeln!(out, "    - \"{}\"", line.replace('"', "\\\""));
        }
    }
    if let Some(b) = &spec.backup {
        let prefix = file.wal_prefix();
        let compression = match b.compression {
            spilo_model::spec::Compression::Lz4 => "lz4",
            spilo_model::spec::Compression::Zstd => "zstd",
        };
        // The leader takes the scheduled backups (five-field cron, UTC) and keeps `retention`.
        let _ = writeln!(
            out,
            "archive: {{prefix: \"{prefix}\", compression: {compression}, {store}, \
             backups: {{schedule: \"{schedule}\", retain: {retain}}}, \
             replicas_from_backup: {from_backup}}}",
            store = at.archive_store,
            schedule = b.schedule,
            retain = b.retention,
            from_backup = b.replicas_from_backup,
        );
    }
    if let (Some(c), Some(store)) = (&spec.bootstrap.clone, &at.clone_store) {
        // The source's archive under its default prefix (`spilo/<from>/wal/<major>/`).
        let _ = writeln!(
            out,
            "bootstrap: {{clone: {{archive: {{prefix: \"spilo/{from}/wal/{major}/\", {store}}}{target}}}}}",
            from = c.from,
            major = spec.postgresql.version,
            store = store,
            // Validated files parse; the canonical form (UTC, microseconds) is what the
            // governor reads back. Anything else is passed on for the governor to refuse.
            target = c
                .target_time
                .as_ref()
                .map(|t| {
                    let t = spilo_model::TargetTime::parse(t)
                        .map_or_else(|_| t.clone(), |t| t.to_string());
                    format!(", target_time: \"{t}\"")
                })
                .unwrap_or_default(),
        );
    }
    let auth = at
        .api_token
        .as_ref()
        .map(|t| format!(", auth: {{token: {t}}}"))
        .unwrap_or_default();
    let _ = write!(
        out,
        "restapi: {{listen: {api}{auth}}}\n\
         ha: {{ttl: {ttl}, loop_wait: {lw}, retry_timeout: {rt}, maximum_lag_on_failover: {lag}, primary_start_timeout: {pst}{sync}{failsafe}}}\n",
        api = at.api_listen,
        ttl = ha.ttl,
        lw = ha.loop_wait,
        rt = ha.retry_timeout,
        lag = ha.maximum_lag_on_failover,
        pst = ha.primary_start_timeout,
        sync = if ha.synchronous_mode {
            format!(
                ", synchronous_mode: true, synchronous_mode_strict: {}, synchronous_node_count: {}",
                ha.synchronous_mode_strict, ha.synchronous_node_count
            )
        } else {
            String::new()
        },
        failsafe = if ha.failsafe_mode {
            ", failsafe_mode: true"
        } else {
            ""
        },
    );
    out
}
