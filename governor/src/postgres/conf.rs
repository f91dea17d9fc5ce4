//! Rendering of the files the governor owns for its PostgreSQL: `postgresql.conf`,
//! `pg_hba.conf`, the password file, and libpq connection strings. Pure functions from settings
//! to text; writing them is [`super::Instance`]'s job.
//!
//! These files live in the run directory, outside PGDATA, and PostgreSQL is started with
//! `-c config_file=...`: pg_basebackup and pg_rewind copy PGDATA from another member, and a copied
//! `port` or `listen_addresses` would otherwise come back wrong after every rewind.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// PostgreSQL's TLS files: the member's certificate and key, and the cluster CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ssl {
    /// `ssl_cert_file`.
    pub cert: PathBuf,
    /// `ssl_key_file`.
    pub key: PathBuf,
    /// `ssl_ca_file`, and what replicas check their upstream against.
    pub ca: PathBuf,
}

/// Settings the governor always sets itself, after every other source.
pub struct Forced<'a> {
    /// Listen address and port.
    pub listen: SocketAddr,
    /// The run directory: socket, hba and ident files.
    pub run_dir: &'a Path,
    /// This member's name (`cluster_name`, `application_name`).
    pub member: &'a str,
    /// `primary_conninfo` and `primary_slot_name` (none when the upstream keeps no slot for
    /// this member: a standby cluster's source) for a replica with an upstream.
    pub upstream: Option<(String, Option<String>)>,
    /// `synchronous_standby_names`, which the governor owns (empty: asynchronous).
    pub synchronous_standby_names: &'a str,
    /// `archive_command` and `restore_command` (with `archive_mode = on`) when archiving.
    pub archive: Option<(&'a str, &'a str)>,
    /// A standby cluster's leader: `restore_command` reading the source's archive.
    pub standby_restore: Option<&'a str>,
    /// While a clone recovers: its `restore_command` and `recovery_target_time`, with
    /// `recovery_target_action = promote`.
    pub recovery: Option<(&'a str, Option<&'a str>)>,
    /// TLS: `ssl = on` with these files.
    pub ssl: Option<&'a Ssl>,
}

/// Defaults a cluster may override.
pub fn defaults() -> BTreeMap<String, String> {
    [
        ("max_connections", "100"),
        ("wal_level", "replica"),
        ("max_wal_senders", "10"),
        ("max_replication_slots", "10"),
        ("wal_keep_size", "128MB"),
        ("hot_standby_feedback", "on"),
        ("wal_retrieve_retry_interval", "1s"),
        ("wal_receiver_status_interval", "1s"),
        ("password_encryption", "scram-sha-256"),
        ("log_line_prefix", "%m [%p] %q%u@%d "),
        ("log_connections", "off"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Merges parameter layers (later wins) and the forced settings into `postgresql.conf` text.
pub fn postgresql_conf(layers: &[&BTreeMap<String, String>], forced: &Forced<'_>) -> String {
    let mut params = BTreeMap::new();
    for layer in layers {
        for (k, v) in layer.iter() {
            params.insert(k.clone(), v.clone());
        }
    }
    let run = forced.run_dir.display().to_string();
    let mut set = |k: &str, v: String| {
        params.insert(k.to_string(), v);
    };
    set("listen_addresses", forced.listen.ip().to_string());
    set("port", forced.listen.port().to_string());
    set("unix_socket_directories", run.clone());
    set("hba_file", format!("{run}/pg_hba.conf"));
    set("ident_file", format!("{run}/pg_ident.conf"));
    set("cluster_name", forced.member.to_string());
    set("hot_standby", "on".into());
    set("wal_log_hints", "on".into());
    set("logging_collector", "off".into());
    set("recovery_target_timeline", "latest".into());
    set(
        "synchronous_standby_names",
        forced.synchronous_standby_names.to_string(),
    );
    if let Some((archive, restore)) = forced.archive {
        set("archive_mode", "on".into());
        set("archive_command", archive.to_string());
        set("restore_command", restore.to_string());
    }
    if let Some(restore) = forced.standby_restore {
        set("restore_command", restore.to_string());
    }
    if let Some((restore, target)) = forced.recovery {
        set("restore_command", restore.to_string());
        set("recovery_target_action", "promote".into());
        if let Some(t) = target {
            set("recovery_target_time", t.to_string());
        }
    }
    match &forced.upstream {
        Some((conninfo, slot)) => {
            set("primary_conninfo", conninfo.clone());
            match slot {
                Some(slot) => set("primary_slot_name", slot.clone()),
                None => {
                    params.remove("primary_slot_name");
                }
            }
        }
        None => {
            params.remove("primary_conninfo");
            params.remove("primary_slot_name");
        }
    }
    match forced.ssl {
        Some(ssl) => {
            params.insert("ssl".into(), "on".into());
            params.insert("ssl_cert_file".into(), ssl.cert.display().to_string());
            params.insert("ssl_key_file".into(), ssl.key.display().to_string());
            params.insert("ssl_ca_file".into(), ssl.ca.display().to_string());
            params.insert("ssl_min_protocol_version".into(), "TLSv1.2".into());
        }
        None => {
            params.remove("ssl");
        }
    }
    let mut out = String::from(
        "# Written by the spilo governor at every start and re-point; edits are overwritten.\n\
         # Set parameters in the governor configuration or the cluster's config instead.\n",
    );
    for (k, v) in &params {
        let _ = writeln!(out, "{k} = '{}'", v.replace('\'', "''"));
    }
    out
}

/// `pg_hba.conf`: local socket connections are trusted (the socket directory is private to the
/// governor's OS user; `backup-push` streams its base backup over it), then `extra` lines, or
/// password authentication from `networks` (anywhere when empty): over TLS only (`hostssl`)
/// when `ssl`, so a plaintext connection from the network matches no line and is refused.
pub fn pg_hba(
    replication_user: &str,
    extra: Option<&[String]>,
    ssl: bool,
    networks: &[String],
) -> String {
    let host = if ssl { "hostssl" } else { "host" };
    let anywhere = ["0.0.0.0/0".to_string(), "::/0".to_string()];
    let networks = if networks.is_empty() {
        &anywhere[..]
    } else {
        networks
    };
    let mut out = String::from(
        "# Written by the spilo governor.\n\
         local all all trust\n\
         local replication all trust\n",
    );
    match extra {
        Some(lines) => {
            for l in lines {
                out.push_str(l);
                out.push('\n');
            }
        }
        None => {
            for net in networks {
                let _ = writeln!(
                    out,
                    "{host} replication {replication_user} {net} scram-sha-256"
                );
                let _ = writeln!(out, "{host} all all {net} scram-sha-256");
            }
        }
    }
    out
}

/// A `.pgpass` file with the superuser's and the replication user's passwords.
pub fn pgpass(users: &[(&str, &str)]) -> String {
    let esc = |s: &str| s.replace('\\', "\\\\").replace(':', "\\:");
    users
        .iter()
        .map(|(u, p)| format!("*:*:*:{}:{}\n", esc(u), esc(p)))
        .collect()
}

/// A libpq key/value connection string with every value quoted.
pub fn conninfo(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}='{}'", v.replace('\\', "\\\\").replace('\'', "\\'")))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forced(upstream: Option<(String, Option<String>)>) -> Forced<'static> {
        Forced {
            listen: "127.0.0.1:5433".parse().expect("addr"),
            run_dir: Path::new("/run/m1"),
            member: "m1",
            upstream,
            synchronous_standby_names: "",
            archive: None,
            recovery: None,
            standby_restore: None,
            ssl: None,
        }
    }

    #[test]
    fn later_layers_win_and_forced_settings_win_over_all() {
        let mut cluster = BTreeMap::new();
        cluster.insert("max_connections".to_string(), "200".to_string());
        cluster.insert("port".to_string(), "1".to_string());
        let mut local = BTreeMap::new();
        local.insert("max_connections".to_string(), "300".to_string());
        let text = postgresql_conf(&[&defaults(), &cluster, &local], &forced(None));
        assert!(text.contains("max_connections = '300'\n"), "{text}");
        assert!(text.contains("port = '5433'\n"), "{text}");
        assert!(
            text.contains("hba_file = '/run/m1/pg_hba.conf'\n"),
            "{text}"
        );
        assert!(!text.contains("primary_conninfo"), "{text}");
    }

    #[test]
    fn replicas_get_their_upstream() {
        let ci = conninfo(&[("host", "10.0.0.1"), ("port", "5432")]);
        let text = postgresql_conf(
            &[&defaults()],
            &forced(Some((ci.clone(), Some("m1".into())))),
        );
        assert!(
            text.contains("primary_conninfo = 'host=''10.0.0.1'' port=''5432'''\n"),
            "{text}"
        );
        assert!(text.contains("primary_slot_name = 'm1'\n"), "{text}");
        // A standby cluster's source keeps no slot for this member, even if a parameter says.
        let mut cluster = BTreeMap::new();
        cluster.insert("primary_slot_name".to_string(), "stale".to_string());
        let text = postgresql_conf(&[&defaults(), &cluster], &forced(Some((ci, None))));
        assert!(text.contains("primary_conninfo = "), "{text}");
        assert!(!text.contains("primary_slot_name"), "{text}");
    }

    #[test]
    fn conninfo_quotes_values() {
        assert_eq!(
            conninfo(&[("passfile", "/a b/it's")]),
            r"passfile='/a b/it\'s'"
        );
    }

    #[test]
    fn pgpass_escapes_separators() {
        assert_eq!(pgpass(&[("u", "a:b\\c")]), "*:*:*:u:a\\:b\\\\c\n");
    }

    #[test]
    fn hba_defaults_to_passwords_everywhere() {
        let hba = pg_hba("replicator", None, false, &[]);
        assert!(hba.starts_with("# Written by the spilo governor.\nlocal all all trust\n"));
        assert!(hba.contains("host replication replicator 0.0.0.0/0 scram-sha-256\n"));
        let custom = pg_hba(
            "r",
            Some(&["host all all 10.0.0.0/8 md5".to_string()]),
            false,
            &[],
        );
        assert!(custom.ends_with(
            "local all all trust\nlocal replication all trust\nhost all all 10.0.0.0/8 md5\n"
        ));
    }

    #[test]
    fn with_tls_the_network_needs_tls_and_postgresql_serves_it() {
        let hba = pg_hba("replicator", None, true, &[]);
        assert!(hba.contains("hostssl replication replicator 0.0.0.0/0 scram-sha-256\n"));
        assert!(hba.contains("hostssl all all ::/0 scram-sha-256\n"));
        assert!(!hba.lines().any(|l| l.starts_with("host ")));
        let vpc = pg_hba("replicator", None, true, &["10.1.0.0/16".to_string()]);
        assert!(vpc.contains("hostssl all all 10.1.0.0/16 scram-sha-256\n"));
        assert!(!vpc.contains("0.0.0.0/0"), "{vpc}");
        let ssl = Ssl {
            cert: "/t/member.crt".into(),
            key: "/t/member.key".into(),
            ca: "/t/ca.crt".into(),
        };
        let mut f = forced(None);
        f.ssl = Some(&ssl);
        let text = postgresql_conf(&[&defaults()], &f);
        assert!(text.contains("ssl = 'on'\n"));
        assert!(text.contains("ssl_cert_file = '/t/member.crt'\n"));
        assert!(text.contains("ssl_ca_file = '/t/ca.crt'\n"));
        let mut off = BTreeMap::new();
        off.insert("ssl".to_string(), "on".to_string());
        assert!(!postgresql_conf(&[&off], &forced(None)).contains("ssl ="));
    }
}
