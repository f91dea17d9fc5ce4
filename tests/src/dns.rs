//! A DNS server on loopback (dnsmasq from Debian) serving the SRV records of etcd discovery,
//! or a name for a load balancer stand-in.

use crate::etcd::which;
use crate::ports;
use crate::proc::Spawned;
use std::path::Path;
use std::process::Command;

/// A running dnsmasq.
pub struct Dns {
    /// `127.0.0.1:<port>`.
    pub addr: String,
    _process: Spawned,
}

impl Dns {
    /// Serves the A record `name -> ip`.
    pub fn start_host(dir: &Path, name: &str, ip: &str) -> anyhow::Result<Self> {
        Self::start_with(dir, &format!("--host-record={name},{ip}"))
    }

    /// Serves `_etcd-server._tcp.<domain>` (`_etcd-server-ssl._tcp` with `ssl`) pointing at
    /// `localhost:<peer_port>`.
    pub fn start_etcd_srv(
        dir: &Path,
        domain: &str,
        peer_port: u16,
        ssl: bool,
    ) -> anyhow::Result<Self> {
        let ssl = if ssl { "-ssl" } else { "" };
        Self::start_with(
            dir,
            &format!("--srv-host=_etcd-server{ssl}._tcp.{domain},localhost,{peer_port}"),
        )
    }

    fn start_with(dir: &Path, record: &str) -> anyhow::Result<Self> {
        let port = ports::free();
        let mut cmd = Command::new(which("dnsmasq")?);
        cmd.arg("--keep-in-foreground")
            .arg("--no-daemon")
            .arg("--no-resolv")
            .arg("--no-hosts")
            .arg("--bind-interfaces")
            .arg("--listen-address=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
            .arg(record);
        if nix::unistd::Uid::effective().is_root() {
            cmd.arg("--user=root");
        }
        let process = Spawned::start(cmd, &dir.join("dnsmasq.log"))?;
        Ok(Self {
            addr: format!("127.0.0.1:{port}"),
            _process: process,
        })
    }
}
