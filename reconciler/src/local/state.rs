//! The state directory of local clusters and the `state.json` that `spilo up` keeps in each
//! cluster's directory, so that `spilo status` and `spilo down` can find its processes.
//!
//! `state.json` is a documented contract (see README): add fields, never rename them.

use super::ports::Ports;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One cluster as `spilo up` runs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    /// The cluster.
    pub cluster: String,
    /// The cluster file it was started from.
    pub file: String,
    /// The `spilo up` process supervising it.
    pub supervisor_pid: u32,
    /// Its ports.
    pub ports: Ports,
    /// etcd endpoints the governors use.
    pub etcd_endpoints: Vec<String>,
    /// etcd's pid, when `spilo up` runs it.
    pub etcd_pid: Option<u32>,
    /// The store is ZooKeeper (`spec.dcs.zookeeper`): `etcd_endpoints` and `etcd_pid` are
    /// its servers and, when `spilo up` runs it, its pid.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub zookeeper: bool,
    /// HAProxy's pid.
    pub haproxy_pid: Option<u32>,
    /// The members.
    pub members: Vec<MemberState>,
    /// The cluster's TLS files, when it runs its own etcd (everything then speaks TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<super::tls::LocalTls>,
    /// The cluster file as the cluster runs it (an edit `spilo up` holds back, such as the
    /// rest of a file that asks for a major upgrade, is not in it): what `spilo plan --local`
    /// plans against. Read leniently: one this spilo cannot read (written by another version
    /// of it) is `None`, never a `state.json` that cannot be read.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_file"
    )]
    pub running: Option<spilo_model::spec::ClusterFile>,
}

fn lenient_file<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<spilo_model::spec::ClusterFile>, D::Error> {
    let value = Option::<serde_json::Value>::deserialize(d)?;
    Ok(value.and_then(|v| serde_json::from_value(v).ok()))
}

/// One member as `spilo up` runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberState {
    /// The member name (`<cluster>-<i>`).
    pub name: String,
    /// Its governor's pid.
    pub governor_pid: Option<u32>,
    /// PostgreSQL port.
    pub pg_port: u16,
    /// REST port.
    pub api_port: u16,
}

/// Paths inside the state directory.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The state directory.
    pub root: PathBuf,
}

impl Layout {
    /// The directory of one cluster.
    pub fn cluster(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// `state.json` of a cluster.
    pub fn state_file(&self, name: &str) -> PathBuf {
        self.cluster(name).join("state.json")
    }

    /// The marker `spilo down` leaves for a running `spilo up`.
    pub fn down_marker(&self, name: &str) -> PathBuf {
        self.cluster(name).join("down-requested")
    }

    /// Every cluster that has a directory with a `state.json`.
    pub fn clusters(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(&self.root)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.path().join("state.json").exists())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Reads a cluster's state.
    pub fn read(&self, name: &str) -> anyhow::Result<ClusterState> {
        let path = self.state_file(name);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            anyhow::anyhow!("no local cluster {name} in {} ({e})", self.root.display())
        })?;
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// Writes a cluster's state atomically.
    pub fn write(&self, state: &ClusterState) -> anyhow::Result<()> {
        let path = self.state_file(&state.cluster);
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_string_pretty(state)?)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }
}

/// The default state directory: `.spilo/` beside the directory holding the cluster files.
pub fn default_root(cluster_paths: &[PathBuf]) -> PathBuf {
    let first = cluster_paths
        .first()
        .cloned()
        .unwrap_or_else(|| PathBuf::from("clusters"));
    let first = std::fs::canonicalize(&first).unwrap_or(first);
    let dir = if first.is_dir() {
        first
    } else {
        first.parent().map(Path::to_path_buf).unwrap_or_default()
    };
    dir.parent()
        .map_or_else(|| PathBuf::from(".spilo"), |p| p.join(".spilo"))
}

/// Whether a process exists (zombies count as gone).
pub fn alive(pid: u32) -> bool {
    let Ok(p) = i32::try_from(pid) else {
        return false;
    };
    if nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_err() {
        return false;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z") | Some("X") | None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_file_survives_state_json() {
        // The quick start's file, with an archive of its own.
        let text = format!(
            "{}  backup: {{bucket: wal, prefix: custom/}}\n",
            include_str!("../../../clusters/demo.yaml")
        );
        let file: spilo_model::spec::ClusterFile = serde_yaml::from_str(&text).expect("valid");
        let state = ClusterState {
            cluster: "alpha".into(),
            file: "clusters/alpha.yaml".into(),
            supervisor_pid: 1,
            ports: super::super::up::ports_of(&file),
            etcd_endpoints: vec!["https://127.0.0.1:6002".into()],
            etcd_pid: None,
            zookeeper: false,
            haproxy_pid: None,
            members: Vec::new(),
            tls: None,
            running: Some(file),
        };
        let text = serde_json::to_string_pretty(&state).expect("json");
        let back: ClusterState = serde_json::from_str(&text).expect("read back");
        assert_eq!(back, state);
        // A file another spilo wrote (a field this one does not know): the state still reads.
        let mut other: serde_json::Value = serde_json::from_str(&text).expect("json");
        other["running"]["spec"]["newField"] = serde_json::json!(1);
        let back: ClusterState = serde_json::from_value(other).expect("read back");
        assert_eq!(back.running, None);
        assert_eq!(back.cluster, "alpha");
    }
}
