//! The box's VPC resolver: dnsmasq on port 53 of the host's bridge address, serving the
//! hosted zone's A and SRV records as moto's Route53 holds them, and a CNAME to a load
//! balancer the box stands in for as that stand-in's address. A thread reads the zone every
//! second and starts dnsmasq again with the new records when they changed (the etcd members'
//! keepers write them at any time).

use crate::etcd::which;
use crate::proc::Spawned;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Where the records come from: `moto_box.py zone REGION ZONE_ID` with the admin's keys.
pub struct Source {
    /// The virtualenv's python.
    pub python: PathBuf,
    /// `fixtures/moto_box.py`.
    pub script: PathBuf,
    /// MOTO_ENDPOINT, MOTO_KEY, MOTO_SECRET.
    pub env: Vec<(String, String)>,
    /// The region.
    pub region: String,
    /// The hosted zone's id.
    pub zone_id: String,
    /// A JSON file mapping the DNS names of balanced load balancers to their stand-in's
    /// address, read every round (absent: none).
    pub balancers: PathBuf,
}

impl Source {
    /// dnsmasq's record arguments for the zone now.
    fn records(&self) -> Option<Vec<String>> {
        let out = Command::new(&self.python)
            .arg(&self.script)
            .args(["zone", &self.region, &self.zone_id])
            .arg(std::fs::read_to_string(&self.balancers).unwrap_or_else(|_| "{}".into()))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }
}

/// The running resolver; stops with its thread and dnsmasq on drop.
pub struct ZoneDns {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ZoneDns {
    /// Starts serving on `host:53`.
    pub fn start(dir: &Path, host: &str, source: Source) -> anyhow::Result<Self> {
        let dnsmasq = which("dnsmasq")?;
        let stop = Arc::new(AtomicBool::new(false));
        let (dir, host, flag) = (dir.to_path_buf(), host.to_string(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut served: Option<Vec<String>> = None;
            let mut process: Option<Spawned> = None;
            while !flag.load(Ordering::Relaxed) {
                if let Some(records) = source.records()
                    && served.as_ref() != Some(&records)
                {
                    drop(process.take());
                    let mut cmd = Command::new(&dnsmasq);
                    cmd.args([
                        "--keep-in-foreground",
                        "--no-daemon",
                        "--no-resolv",
                        "--no-hosts",
                        "--bind-interfaces",
                        "--port=53",
                        "--local-ttl=1",
                    ])
                    .arg(format!("--listen-address={host}"))
                    .arg(format!("--pid-file={}", dir.join("zone-dns.pid").display()))
                    .args(&records);
                    if nix::unistd::Uid::effective().is_root() {
                        cmd.arg("--user=root");
                    }
                    process = Spawned::start(cmd, &dir.join("zone-dns.log")).ok();
                    // Started again next round when it could not start now.
                    served = process.as_ref().map(|_| records);
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for ZoneDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
