//! `governor etcd-member`: the keeper beside one etcd member of an `EtcdCluster` stack. Every
//! round (`interval` seconds) it gathers what its instance sees (the auto-scaling group, the
//! Route53 records, the etcd membership, its data directory), asks the pure [`decide`] what to
//! do, and does it: start etcd, join as a learner, remove a departed member. While its etcd
//! runs and leads, it does the leader's upkeep: promote learners, remove members whose
//! instance left the group (one at a time, never below quorum), and keep the SRV and A
//! records equal to the voting members that run. Its certificate is issued from the cluster
//! CA at start and renewed when due (etcd reads its certificate files at every handshake).

pub mod aws;
pub mod decide;
pub mod server;

use decide::{Observation, Seen, Step};
use server::Me;
use spilo_model::governor::EtcdMemberConfig;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};
use tokio_util::sync::CancellationToken;

/// Why the keeper cannot run.
#[derive(Debug, thiserror::Error)]
pub enum KeeperError {
    /// The configuration could not be read or is invalid.
    #[error("{path}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The CA key could not be read.
    #[error(transparent)]
    Secret(#[from] crate::config::ConfigError),
    /// The member certificate could not be issued.
    #[error(transparent)]
    Cert(#[from] crate::certs::CertError),
    /// etcd could not be started.
    #[error("cannot start {bin}: {source}")]
    Spawn {
        /// The etcd binary.
        bin: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Reads the configuration at `path`.
pub fn read_config(path: &Path) -> Result<EtcdMemberConfig, KeeperError> {
    let text = std::fs::read_to_string(path).map_err(|e| KeeperError::Config {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    EtcdMemberConfig::parse(&text).map_err(|e| KeeperError::Config {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Runs the keeper of instance `name` at address `ip` until `cancel`; etcd stops with it.
pub async fn run(
    path: &Path,
    name: &str,
    ip: &str,
    cancel: CancellationToken,
) -> Result<(), KeeperError> {
    let config = read_config(path)?;
    let ca_key =
        crate::config::resolve_secret(&config.tls.ca_key, "tls.ca_key", &config.region, path)
            .await?;
    let dir = config.tls_dir();
    std::fs::create_dir_all(&dir).map_err(|source| crate::certs::CertError::Io {
        path: dir.clone(),
        source,
    })?;
    let cert = crate::certs::MemberCert::from_parts(
        &config.tls.ca_file,
        &ca_key,
        &dir,
        [
            ip.to_string(),
            spilo_model::spec::member_host(name, &config.domain),
        ]
        .into_iter()
        .chain(config.tls.names.iter().cloned())
        .collect(),
        Duration::from_secs(config.tls.lifetime),
    );
    cert.ensure(SystemTime::now())?;
    let me = Me::new(&config, name, ip);
    let aws = aws::Aws::new(
        &config.region,
        &config.hosted_zone_id,
        &config.domain,
        config.client_port,
        config.peer_port,
    )
    .await;
    let log = PathBuf::from(format!("{}.log", config.data_dir.display()));
    let mut etcd: Option<tokio::process::Child> = None;
    let mut last = String::new();
    let interval = Duration::from_secs(config.interval);
    let mut unstarted = UnstartedSince::new(Duration::from_secs(config.learner_start_grace));
    loop {
        if let Some(child) = &mut etcd
            && let Ok(Some(status)) = child.try_wait()
        {
            tracing::warn!(%status, log = %log.display(), "etcd exited");
            etcd = None;
        }
        if let Err(e) = cert.ensure(SystemTime::now()) {
            tracing::warn!(error = %e, "the member certificate could not be renewed");
        }
        let said = match &etcd {
            None => match next(&me, &aws).await {
                Step::Start {
                    state,
                    initial_cluster,
                    claim,
                } => {
                    let claimed = if claim {
                        aws.claim(&me.name, &me.ip).await
                    } else {
                        Ok(true)
                    };
                    match claimed {
                        Ok(true) => {
                            let args = me.args(&state, &initial_cluster);
                            tracing::info!(?state, ?initial_cluster, "starting etcd");
                            etcd = Some(server::spawn(&config.etcd_bin, &args, &log).map_err(
                                |source| KeeperError::Spawn {
                                    bin: config.etcd_bin.clone(),
                                    source,
                                },
                            )?);
                            String::new()
                        }
                        Ok(false) => {
                            "another instance claimed the records of a new cluster first".into()
                        }
                        Err(e) => format!("could not claim the records of a new cluster: {e}"),
                    }
                }
                Step::AddSelf => join(&me, &aws).await,
                Step::Remove { id, reason } => remove(&me, &aws, id, &reason).await,
                Step::Discard(why) => discard(&me, &why),
                Step::Wait(why) => why,
            },
            Some(_) => upkeep(&me, &aws, &mut unstarted).await,
        };
        if said != last && !said.is_empty() {
            tracing::info!("{said}");
        }
        last = said;
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
    }
    if let Some(mut child) = etcd {
        if let Some(pid) = child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX)),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    }
    Ok(())
}

/// Client URLs of the live instances the client SRV record names, other than this one.
fn live_targets(
    me: &Me,
    group: &Seen<Vec<decide::GroupInstance>>,
    records: &aws::Records,
) -> Vec<String> {
    let Seen::Known(group) = group else {
        return Vec::new();
    };
    records
        .set
        .client
        .iter()
        .filter(|t| **t != me.name && group.iter().any(|i| i.live && i.id == **t))
        .filter_map(|t| records.set.addresses.get(t))
        .map(|ip| server::url(ip, me.ports.0))
        .collect()
}

/// Gathers and decides.
async fn next(me: &Me, aws: &aws::Aws) -> Step {
    let group = aws.group(&me.name).await;
    let records = aws.records().await;
    let (records_seen, members) = match &records {
        Seen::Unknown(why) => (Seen::Unknown(why.clone()), Seen::Unknown(why.clone())),
        Seen::Known(r) => {
            let urls = live_targets(me, &group, r);
            let members = if urls.is_empty() {
                Seen::Unknown("no record names a live instance".into())
            } else {
                match me.client(&urls).await {
                    Ok(mut c) => match server::members(&mut c).await {
                        Ok(m) => Seen::Known(m),
                        Err(e) => Seen::Unknown(e),
                    },
                    Err(e) => Seen::Unknown(e),
                }
            };
            (Seen::Known(r.set.client.clone()), members)
        }
    };
    decide::next_step(&Observation {
        me: me.name.clone(),
        my_peer_url: me.peer_url(),
        has_data: me.has_data(),
        group,
        records: records_seen,
        members,
    })
}

/// Moves the data directory of a removed member aside (kept, never deleted).
fn discard(me: &Me, why: &str) -> String {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let mut aside = me.data_dir.clone().into_os_string();
    aside.push(format!(".removed-{stamp}"));
    match std::fs::rename(&me.data_dir, &aside) {
        Ok(()) => format!("{why}; moved to {}", PathBuf::from(aside).display()),
        Err(e) => format!("{why}; but it cannot be moved aside: {e}"),
    }
}

/// The client of the cluster the records lead to.
async fn cluster_client(me: &Me, aws: &aws::Aws) -> Result<etcd_client::Client, String> {
    let group = aws.group(&me.name).await;
    let Seen::Known(records) = aws.records().await else {
        return Err("the records are unknown".into());
    };
    let urls = live_targets(me, &group, &records);
    me.client(&urls).await
}

async fn join(me: &Me, aws: &aws::Aws) -> String {
    let result = match cluster_client(me, aws).await {
        Ok(mut c) => server::add_learner(&mut c, &me.peer_url()).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(id) => format!("{} joined as learner {id:x}", me.name),
        Err(e) => format!("could not join: {e}"),
    }
}

async fn remove(me: &Me, aws: &aws::Aws, id: u64, reason: &str) -> String {
    let result = match cluster_client(me, aws).await {
        Ok(mut c) => server::remove(&mut c, id).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => format!("removed member {id:x}: {reason}"),
        Err(e) => format!("could not remove member {id:x} ({reason}): {e}"),
    }
}

/// When this keeper first saw each learner that has not started.
struct UnstartedSince {
    first_seen: std::collections::BTreeMap<u64, Instant>,
    grace: Duration,
}

impl UnstartedSince {
    fn new(grace: Duration) -> Self {
        Self {
            first_seen: Default::default(),
            grace,
        }
    }

    /// Forgets the learners that started or went, notes the new ones; how long each has waited.
    fn update(&mut self, members: &[decide::Member], now: Instant) -> decide::Unstarted {
        let waiting: std::collections::BTreeSet<u64> = members
            .iter()
            .filter(|m| m.is_learner && !m.started())
            .map(|m| m.id)
            .collect();
        self.first_seen.retain(|id, _| waiting.contains(id));
        for id in waiting {
            self.first_seen.entry(id).or_insert(now);
        }
        decide::Unstarted {
            seen: self
                .first_seen
                .iter()
                .map(|(id, at)| (*id, now.saturating_duration_since(*at)))
                .collect(),
            grace: self.grace,
        }
    }
}

/// The leader's round; nothing on the others.
async fn upkeep(me: &Me, aws: &aws::Aws, unstarted: &mut UnstartedSince) -> String {
    let mut client = match me.client(&[me.client_url()]).await {
        Ok(c) => c,
        Err(e) => return format!("own etcd does not answer: {e}"),
    };
    match server::leads(&mut client).await {
        Ok(true) => {}
        Ok(false) => return String::new(),
        Err(e) => return format!("own etcd does not answer: {e}"),
    }
    let (Seen::Known(group), Seen::Known(records), Ok(members)) = (
        aws.group(&me.name).await,
        aws.records().await,
        server::members(&mut client).await,
    ) else {
        return "upkeep skipped: the group, the records or the members are unknown".into();
    };
    let plan = decide::upkeep(
        &me.name,
        &group,
        &members,
        &records.set,
        &unstarted.update(&members, Instant::now()),
    );
    let mut said = Vec::new();
    for id in &plan.promote {
        match server::promote(&mut client, *id).await {
            Ok(()) => said.push(format!("promoted learner {id:x}")),
            Err(e) => said.push(format!("learner {id:x} not promoted yet: {e}")),
        }
    }
    if let Some((id, reason)) = &plan.remove {
        match server::remove(&mut client, *id).await {
            Ok(()) => said.push(format!("removed member {id:x}: {reason}")),
            Err(e) => said.push(format!("could not remove member {id:x}: {e}")),
        }
    }
    if let Some(wanted) = &plan.records {
        match aws.write_records(wanted, &records).await {
            Ok(()) => said.push(format!(
                "records now name {}",
                wanted.keys().cloned().collect::<Vec<_>>().join(", ")
            )),
            Err(e) => said.push(format!("could not write the records: {e}")),
        }
    }
    said.join("; ")
}
