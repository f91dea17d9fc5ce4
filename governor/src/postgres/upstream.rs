//! Where a replica streams from: a member of its cluster, or a standby cluster's source (a
//! list of endpoints, the one that runs as primary chosen by libpq, no slot, and the
//! source's archive for when streaming fails).

use spilo_model::MemberName;

/// Where a replica streams from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// The member (for a standby cluster's source: the source's name, for messages).
    pub name: MemberName,
    /// Its PostgreSQL host (a source: a comma-separated list, tried in order).
    pub host: String,
    /// Its PostgreSQL port (a source: one per host).
    pub port: String,
    /// A standby cluster's source: connect only to the endpoint that runs as primary, and use
    /// no replication slot (the source keeps none for this member).
    pub source: bool,
    /// A source's WAL archive, replayed while streaming from it fails.
    pub archive: Option<spilo_model::governor::ArchiveConfig>,
}

impl Upstream {
    /// A member of this cluster.
    pub fn member(name: MemberName, host: String, port: u16) -> Self {
        Upstream {
            name,
            host,
            port: port.to_string(),
            source: false,
            archive: None,
        }
    }

    /// A standby cluster's source; an error names the endpoint that is not `host:port`.
    pub fn source(source: &spilo_model::StandbySource) -> Result<Self, String> {
        let (host, port) = source
            .libpq_hosts()
            .map_err(|e| format!("standby_cluster.hosts: {e}"))?;
        let name = source
            .cluster
            .as_deref()
            .and_then(|c| MemberName::new(c).ok())
            .or_else(|| MemberName::new("source").ok())
            .ok_or("no name for the source")?;
        Ok(Upstream {
            name,
            host,
            port,
            source: true,
            archive: source.archive.clone(),
        })
    }
}
