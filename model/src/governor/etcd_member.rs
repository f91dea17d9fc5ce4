//! The configuration of an etcd member's keeper (`governor etcd-member --config FILE`), the
//! contract between `spilo` (which renders it into the user data of an `EtcdCluster` stack)
//! and the keeper on each instance. Unknown keys are refused; the CA key is a reference.

use super::{Invalid, ParseError, TlsConfig, invalid};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The whole file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdMemberConfig {
    /// The etcd cluster's name (its file's `metadata.name`), also etcd's cluster token.
    pub cluster: String,
    /// The domain of the SRV records (`_etcd-client-ssl._tcp.<domain>`, `_etcd-server-ssl`)
    /// and of the members' names (`<instance id>.<domain>`).
    pub domain: String,
    /// The Route53 hosted zone that holds `domain`'s records.
    pub hosted_zone_id: String,
    /// The region of the instance, its auto-scaling group and the CA's secret.
    pub region: String,
    /// etcd's data directory (on the data volume).
    pub data_dir: PathBuf,
    /// The etcd server binary.
    #[serde(default = "default_etcd_bin")]
    pub etcd_bin: PathBuf,
    /// The client port.
    #[serde(default = "default_client_port")]
    pub client_port: u16,
    /// The peer port.
    #[serde(default = "default_peer_port")]
    pub peer_port: u16,
    /// Seconds between two rounds of the keeper (default 5).
    #[serde(default = "default_interval")]
    pub interval: u64,
    /// Seconds a learner may stay unstarted (added, never running: its instance died between
    /// the two) before the etcd leader's keeper removes it, which unblocks the joins that wait
    /// for it (default 120). A slow learner removed joins again.
    #[serde(default = "default_learner_start_grace")]
    pub learner_start_grace: u64,
    /// The member's certificate: issued from the CA, names its address,
    /// `<instance id>.<domain>` and `tls.names`; used for client and peer TLS, both ways (etcd
    /// checks a peer's certificate against the address its connections come from).
    pub tls: TlsConfig,
}

fn default_etcd_bin() -> PathBuf {
    PathBuf::from("/usr/bin/etcd")
}
fn default_client_port() -> u16 {
    crate::spec::ETCD_CLIENT_PORT
}
fn default_peer_port() -> u16 {
    crate::spec::ETCD_PEER_PORT
}
fn default_interval() -> u64 {
    5
}
fn default_learner_start_grace() -> u64 {
    120
}

impl EtcdMemberConfig {
    /// Parses and checks a file's text.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let config: Self =
            serde_yaml::from_str(text).map_err(|e| ParseError::Shape(e.to_string()))?;
        config.check()?;
        Ok(config)
    }

    /// The file's text, the form [`Self::parse`] reads.
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).unwrap_or_default()
    }

    /// Checks what the types cannot.
    pub fn check(&self) -> Result<(), Invalid> {
        if crate::ClusterName::new(&self.cluster).is_err() {
            return Err(invalid("cluster", "must be a DNS label"));
        }
        if self.domain.trim_end_matches('.').split('.').count() < 2 {
            return Err(invalid("domain", "must be a domain name with a dot"));
        }
        for (field, path) in [
            ("data_dir", &self.data_dir),
            ("etcd_bin", &self.etcd_bin),
            ("tls.ca_file", &self.tls.ca_file),
        ] {
            if !path.is_absolute() {
                return Err(invalid(field, "must be an absolute path"));
            }
        }
        if self.client_port == self.peer_port {
            return Err(invalid("peer_port", "must differ from client_port"));
        }
        if self.interval == 0 {
            return Err(invalid("interval", "must be at least 1 second"));
        }
        if self.tls.lifetime < super::MIN_LIFETIME {
            return Err(invalid(
                "tls.lifetime",
                format!("must be at least {} seconds", super::MIN_LIFETIME),
            ));
        }
        Ok(())
    }

    /// Where the member's certificate and key live (default `<data_dir>.tls`, beside the
    /// data so a wiped data directory keeps them).
    pub fn tls_dir(&self) -> PathBuf {
        self.tls.dir.clone().unwrap_or_else(|| {
            let mut d = self.data_dir.clone().into_os_string();
            d.push(".tls");
            PathBuf::from(d)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "cluster: etcd-main\ndomain: etcd-main.db.example.com\n\
        hosted_zone_id: Z123\nregion: eu-central-1\ndata_dir: /home/etcd/data\n\
        tls:\n  ca_file: /home/etcd/ca.crt\n  ca_key: {secrets_manager: arn:aws:secretsmanager:x}\n";

    #[test]
    fn a_rendered_file_reads_back_with_the_ports_and_interval_defaulted() {
        let c = EtcdMemberConfig::parse(FILE).expect("valid");
        assert_eq!((c.client_port, c.peer_port, c.interval), (2379, 2380, 5));
        assert_eq!(c.tls_dir(), PathBuf::from("/home/etcd/data.tls"));
        assert_eq!(
            EtcdMemberConfig::parse(&c.to_yaml()).expect("round trip"),
            c
        );
    }

    #[test]
    fn unknown_keys_and_relative_paths_are_refused_with_their_field() {
        let e = EtcdMemberConfig::parse(&format!("{FILE}ports: 1\n")).expect_err("unknown key");
        assert!(e.to_string().contains("ports"), "{e}");
        let e = EtcdMemberConfig::parse(&FILE.replace("/home/etcd/data", "data"))
            .expect_err("relative");
        assert!(e.to_string().contains("data_dir"), "{e}");
    }
}
