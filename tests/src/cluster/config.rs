//! A member's governor configuration, as the test cluster writes it.

use super::{Cluster, Member, pg_bin};

impl Cluster {
    /// The governor configuration text of a member.
    pub fn config_text(&self, m: &Member) -> String {
        let hosts: Vec<String> = m.store_hosts.iter().map(|h| format!("\"{h}\"")).collect();
        let store = if self.options.zookeeper > 0 {
            "zookeeper"
        } else {
            "etcd"
        };
        format!(
            "scope: {scope}\n\
             name: {name}\n\
             {store}: {{hosts: [{hosts}]}}\n\
             postgresql:\n  \
               bin_dir: {bin}\n  \
               data_dir: {data}\n  \
               listen: {host}:{pg}\n  \
               parameters: {{shared_buffers: 16MB, max_connections: '40'}}\n  \
               authentication:\n    \
                 superuser: {{username: postgres, password: {{file: {secrets}/superuser}}}}\n    \
                 replication: {{username: replicator, password: {{file: {secrets}/replication}}}}\n\
             restapi: {{listen: {host}:{api}, auth: {{token: {{file: {secrets}/restapi-token}}}}{tls}}}\n\
             ha: {ha}\n{archive}{member_tls}{extra}",
            scope = self.scope,
            name = m.name,
            hosts = hosts.join(", "),
            data = m.data_dir().display(),
            pg = m.pg_port,
            host = m.host,
            secrets = self.secrets.display(),
            api = m.api_port,
            ha = self.options.ha,
            bin = pg_bin(self.options.version).display(),
            extra = m.extra_yaml,
            archive = if self.options.archive {
                format!(
                    "archive: {{prefix: spilo/{}/wal/{}/, {}{}}}\n",
                    self.scope,
                    self.options.version,
                    self.options
                        .archive_store
                        .clone()
                        .unwrap_or_else(|| format!("directory: {}", self.bucket().display())),
                    self.options.archive_extra
                )
            } else {
                String::new()
            },
            member_tls = match &self.ca {
                Some(ca) => format!(
                    "tls: {{ca_file: {}, ca_key: {{file: {}}}{}}}\n",
                    ca.cert.display(),
                    ca.key.display(),
                    self.options
                        .tls_lifetime
                        .map(|l| format!(", lifetime: {l}"))
                        .unwrap_or_default()
                ),
                None => String::new(),
            },
            tls = if self.options.api_tls {
                format!(
                    ", tls: {{certfile: {s}/api.crt, keyfile: {s}/api.key, cafile: {s}/ca.crt}}",
                    s = self.secrets.display()
                )
            } else {
                String::new()
            },
        )
    }
}
