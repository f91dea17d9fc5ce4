//! `spilo up`: validates the cluster files, plans, starts every local cluster, prints the
//! connection strings, then stays in the foreground reconciling: dead processes are started
//! again, edits of the files are applied on the next pass, `spilo down` requests are honoured,
//! and Ctrl-C stops everything in order.

use super::cluster::LocalCluster;
use super::major::{hold_major_upgrades, major_upgrade, standby_blockers};
use super::plan::{Change, plan};
use super::ports::{self, Ports};
use super::progress::Progress;
use super::state::{self, Layout};
use super::user::RunAs;
use crate::spec::{Severity, read_files, render_text, validate_files};
use anyhow::{Context, bail};
use spilo_model::spec::{ClusterFile, Target};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Arguments of `spilo up`.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Cluster files or directories (default: clusters/).
    pub paths: Vec<PathBuf>,
    /// Where data, logs and generated files go (default: .spilo/ beside clusters/).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// The governor binary (default: the one next to this spilo binary).
    #[arg(long)]
    pub governor: Option<PathBuf>,
    /// Start, print the connection strings and exit, leaving the cluster running unsupervised.
    #[arg(long, hide = true)]
    pub detach: bool,
    /// How long, in a switchover between clusters, the source's primary may take to step
    /// down and the standby to receive its last position; past it the source takes writes
    /// again.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub cluster_switchover_timeout: Duration,
}

/// Desired local clusters, by name: (source file, text, parsed file).
pub(super) type Desired = BTreeMap<String, (String, ClusterFile)>;

/// How many instances each desired cluster's file asks for: what [`plan`] compares.
pub(super) fn instance_counts(desired: &Desired) -> BTreeMap<String, u32> {
    desired
        .iter()
        .map(|(n, (_, f))| (n.clone(), f.spec.instances))
        .collect()
}

/// Reads and validates the files; only valid files selecting the local target are returned.
pub(super) fn load(paths: &[PathBuf]) -> anyhow::Result<(Desired, String)> {
    let files = read_files(paths)?;
    let text: String = files.iter().map(|(n, t)| format!("{n}\n{t}\n")).collect();
    let checked = validate_files(&files);
    let warnings: Vec<_> = checked
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Warning)
        .cloned()
        .collect();
    if checked.has_errors() {
        bail!(
            "invalid cluster files; nothing was started or changed:\n{}",
            render_text(&checked.diagnostics).trim_end()
        );
    }
    eprint!("{}", render_text(&warnings));
    let desired = checked
        .files
        .into_iter()
        .filter(|(_, f)| f.spec.target == Target::Local)
        .map(|(src, f)| (f.metadata.name.to_string(), (src, f)))
        .collect();
    Ok((desired, text))
}

/// The clusters in the order they are prepared: sources before their standbys.
fn sources_first(desired: &Desired) -> Vec<&String> {
    let mut names: Vec<&String> = desired.keys().collect();
    names.sort_by_key(|n| {
        desired[*n]
            .1
            .spec
            .standby
            .as_ref()
            .is_some_and(|s| s.from.is_some())
    });
    names
}

pub(super) fn ports_of(f: &ClusterFile) -> Ports {
    let own = spilo_model::spec::DcsSpec::runs_own(f.spec.dcs.as_ref());
    let mut ports = Ports::of(f, own.is_some());
    if own == Some(true) {
        ports.zookeeper = ports.etcd.take();
    }
    ports
}

/// Fails, naming the port, when any port of `clusters` is taken.
fn check_free(clusters: &[(String, String, Ports)]) -> anyhow::Result<()> {
    for (name, source, p) in clusters {
        for (port, what) in p.all() {
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
                bail!(
                    "port {port} ({what} of cluster {name}, {source}) is already in use; free it or set spec.local.ports in {source}; nothing was started"
                );
            }
        }
    }
    Ok(())
}

/// Fails, naming the version and where it looked, when `f`'s PostgreSQL is not installed.
pub(super) fn check_postgres(name: &str, source: &str, f: &ClusterFile) -> anyhow::Result<()> {
    let pg = &f.spec.postgresql;
    let dir = crate::installed::postgres_bin_dir(pg);
    if dir.join("postgres").is_file() {
        // A cluster running its own store speaks TLS everywhere, PostgreSQL included (to
        // ZooKeeper in plaintext).
        let tls = spilo_model::spec::DcsSpec::runs_own(f.spec.dcs.as_ref()).is_some();
        if tls && crate::installed::builds_without_ssl(&dir) {
            bail!(
                "cluster {name} ({source}): the PostgreSQL {} in {} was built without SSL, and a \
                 local cluster that runs its own store speaks TLS on every connection; install a \
                 build with OpenSSL (apt.postgresql.org's postgresql-{0} puts one in \
                 /usr/lib/postgresql/{0}/bin, which is looked at first) or set \
                 spec.postgresql.binDir to one; nothing was started",
                pg.version,
                dir.display()
            );
        }
        return Ok(());
    }
    match &pg.bin_dir {
        Some(d) => bail!(
            "cluster {name} ({source}): spec.postgresql.binDir {d} has no postgres; nothing was started"
        ),
        None => bail!(
            "cluster {name} ({source}): PostgreSQL {v} is not installed (no postgres in {} or \
             /usr/local/lib/postgresql/{v}/bin); ./scripts/install-deps installs 15 and 18, or \
             set spec.postgresql.binDir; nothing was started",
            dir.display(),
            v = pg.version
        ),
    }
}

fn which(program: &str) -> bool {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .any(|d| std::path::Path::new(d).join(program).is_file())
}

/// Runs `spilo up`.
pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    let paths = if args.paths.is_empty() {
        vec![PathBuf::from("clusters")]
    } else {
        args.paths.clone()
    };
    let run_as = RunAs::detect()?;
    let (root, note) = super::state_dir(args.state_dir.as_deref(), &paths, &run_as)?;
    if let Some(n) = note {
        eprintln!("note: {n}");
    }
    if run_as.switching {
        eprintln!(
            "running as root: PostgreSQL, the governors, etcd and HAProxy run as the {} user",
            run_as.name
        );
    }
    for tool in ["etcd", "haproxy"] {
        if !which(tool) {
            bail!("{tool} is not installed; run ./scripts/install-deps");
        }
    }
    let governor = match &args.governor {
        Some(g) => g.clone(),
        None => std::env::current_exe()?.with_file_name("governor"),
    };
    if !governor.is_file() {
        bail!(
            "the governor binary {} is missing; build it with `cargo build --workspace --bins` or pass --governor",
            governor.display()
        );
    }
    let (mut desired, mut last_text) = load(&paths)?;
    if desired.is_empty() {
        bail!(
            "no cluster in {} selects the local target",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    std::fs::create_dir_all(&root).with_context(|| format!("create {}", root.display()))?;
    run_as.own(&root)?;
    let layout = Layout { root: root.clone() };
    for name in desired.keys() {
        if let Ok(st) = layout.read(name)
            && st.supervisor_pid != std::process::id()
            && state::alive(st.supervisor_pid)
        {
            bail!(
                "cluster {name} already runs under spilo up (pid {}); stop it with `spilo down {name}`",
                st.supervisor_pid
            );
        }
        // Leftovers of a supervisor that was killed are stopped before anything starts.
        super::down::sweep(&layout, name).await;
    }
    let planned: Vec<(String, String, Ports)> = desired
        .iter()
        .map(|(n, (src, f))| (n.clone(), src.clone(), ports_of(f)))
        .collect();
    let named: Vec<(String, Ports)> = planned
        .iter()
        .map(|(n, _, p)| (n.clone(), p.clone()))
        .collect();
    if let Some(msg) = ports::clash(&named) {
        bail!("{msg}; nothing was started");
    }
    check_free(&planned)?;
    for (name, (source, f)) in &desired {
        check_postgres(name, source, f)?;
    }
    let want = instance_counts(&desired);
    for change in plan(&want, &BTreeMap::new()) {
        let resumed = layout
            .cluster(change_name(&change))
            .join("members")
            .exists();
        println!(
            "{change}{}",
            if resumed {
                " [resuming existing data]"
            } else {
                ""
            }
        );
    }
    println!("state: {}", root.display());

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut running: BTreeMap<String, LocalCluster> = BTreeMap::new();
    let started = async {
        let mut finish_upgrades = Vec::new();
        for name in sources_first(&desired) {
            let (src, f) = &desired[name];
            // Existing data of another major version starts as it is; the file's version
            // is then an upgrade, applied below like an edit.
            let f = match super::cluster::data_version(&layout.cluster(name)) {
                Some(v) => super::major::on_version(f, v),
                None => f.clone(),
            };
            let mut c = LocalCluster::prepare(
                f.clone(),
                src.clone(),
                &layout,
                ports_of(&f),
                &run_as,
                &governor,
                super::standby::resolve(&f, &desired, &layout)?,
            )?;
            if let Some((line, after)) = c.resume_upgrade().await? {
                println!("{line}");
                if after {
                    finish_upgrades.push(name.clone());
                }
            }
            c.start().await?;
            running.insert(name.clone(), c);
        }
        for c in running.values() {
            c.wait_ready(Duration::from_secs(180)).await?;
            print!("{}", c.connection_info());
        }
        for name in finish_upgrades {
            if let Some(c) = running.get_mut(&name) {
                for line in c.resume_after_upgrade().await {
                    println!("{line}");
                }
            }
        }
        anyhow::Ok(())
    };
    let outcome = tokio::select! {
        r = started => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted while starting")),
        _ = term.recv() => Err(anyhow::anyhow!("terminated while starting")),
    };
    if let Err(e) = outcome {
        eprintln!("error: {e:#}; stopping what was started");
        stop_all(&mut running).await;
        return Err(e.context("spilo up failed"));
    }
    if args.detach {
        // Nobody stays to write it later.
        for line in sync_config(&desired, &running, &layout, &run_as).await {
            eprintln!("{line}");
        }
        return Ok(());
    }
    // A file that names another major version than the data holds: the upgrade.
    if running.iter().any(|(n, c)| {
        desired
            .get(n)
            .is_some_and(|(_, f)| f.spec.postgresql.version != c.file.spec.postgresql.version)
    }) {
        apply_or_end(
            &desired,
            &mut running,
            &layout,
            &run_as,
            &governor,
            args.cluster_switchover_timeout,
        )
        .await?;
    }
    println!("spilo up keeps the clusters running; Ctrl-C stops them (`spilo status` shows them)");
    let mut config_sync = ConfigSync::default();
    config_sync.due(Instant::now());
    // Clusters added later are announced when they become ready, and member errors once.
    let mut progress: BTreeMap<String, Progress> = running
        .keys()
        .map(|n| (n.clone(), Progress::ready()))
        .collect();

    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        // `spilo down <cluster>` from another terminal.
        let downs: Vec<String> = running
            .keys()
            .filter(|n| layout.down_marker(n).exists())
            .cloned()
            .collect();
        for name in downs {
            if let Some(mut c) = running.remove(&name) {
                println!("- cluster {name} (spilo down)");
                c.stop().await;
            }
            let _ = std::fs::remove_file(layout.down_marker(&name));
        }
        if running.is_empty() {
            println!("no cluster left to run");
            return Ok(());
        }
        for c in running.values_mut() {
            if let Err(e) = c.keep_alive().await {
                eprintln!("{}: {e:#}", c.name);
            }
        }
        progress.retain(|n, _| running.contains_key(n));
        for (name, c) in &running {
            for line in progress
                .entry(name.clone())
                .or_default()
                .check(c, &layout)
                .await
            {
                println!("{line}");
            }
        }
        // What each cluster's `config` carries from the files, until written: a cluster
        // created by an edit has no `config` until it bootstrapped.
        if config_sync.is_due(Instant::now()) {
            let lines = sync_config(&desired, &running, &layout, &run_as).await;
            for line in config_sync.after(lines, Instant::now()) {
                eprintln!("{line}");
            }
        }
        // Edits of the cluster files are applied on the next pass.
        let Ok(files) = read_files(&paths) else {
            continue;
        };
        let text: String = files.iter().map(|(n, t)| format!("{n}\n{t}\n")).collect();
        if text == last_text {
            continue;
        }
        last_text = text;
        match load(&paths) {
            Err(e) => eprintln!("{e:#}\n(the clusters keep running as they are)"),
            Ok((d, _)) => {
                apply_or_end(
                    &d,
                    &mut running,
                    &layout,
                    &run_as,
                    &governor,
                    args.cluster_switchover_timeout,
                )
                .await?;
                desired = d;
                config_sync.due(Instant::now());
            }
        }
    }
    println!("stopping");
    stop_all(&mut running).await;
    Ok(())
}

/// When `spilo up` next writes into each cluster's `config` what it carries from the files
/// (its standby clusters, its roles and databases, with a fingerprint of each password): at
/// start, after an edit, every [`ConfigSync::REFRESH`] (a password file changed), and every
/// [`ConfigSync::RETRY`] while a write failed (each failure printed once). A write of what
/// `config` already holds writes nothing.
#[derive(Debug, Default)]
struct ConfigSync {
    next: Option<Instant>,
    printed: Vec<String>,
}

impl ConfigSync {
    const RETRY: Duration = Duration::from_secs(3);
    const REFRESH: Duration = Duration::from_secs(10);

    fn due(&mut self, now: Instant) {
        self.next = Some(now);
        self.printed.clear();
    }

    fn is_due(&self, now: Instant) -> bool {
        self.next.is_some_and(|t| now >= t)
    }

    /// Records a sync's errors; returns those not printed yet.
    fn after(&mut self, errors: Vec<String>, now: Instant) -> Vec<String> {
        self.next = Some(
            now + if errors.is_empty() {
                Self::REFRESH
            } else {
                Self::RETRY
            },
        );
        let new: Vec<String> = errors
            .iter()
            .filter(|e| !self.printed.contains(e))
            .cloned()
            .collect();
        self.printed = errors;
        new
    }
}

fn change_name(c: &Change) -> &str {
    match c {
        Change::Create { cluster, .. }
        | Change::Resize { cluster, .. }
        | Change::Stop { cluster } => cluster,
    }
}

/// Writes into each running cluster's `config` its standby clusters and its roles and
/// databases; returns the errors.
async fn sync_config(
    desired: &Desired,
    running: &BTreeMap<String, LocalCluster>,
    layout: &Layout,
    run_as: &RunAs,
) -> Vec<String> {
    let mut lines = super::standby::sync_downstream(desired, running, layout).await;
    lines.extend(super::catalog::sync(desired, running, layout, run_as).await);
    lines
}

/// [`apply_edit`]; a major upgrade stranded past its point of no return stops every cluster
/// and ends `spilo up` with its reason (the next start finishes the upgrade).
async fn apply_or_end(
    desired: &Desired,
    running: &mut BTreeMap<String, LocalCluster>,
    layout: &Layout,
    run_as: &RunAs,
    governor: &std::path::Path,
    step: Duration,
) -> anyhow::Result<()> {
    if let Some(stranded) = apply_edit(desired, running, layout, run_as, governor, step).await {
        eprintln!("error: {stranded}; stopping");
        stop_all(running).await;
        bail!("spilo up failed: {stranded}");
    }
    Ok(())
}

/// Applies an edit of the cluster files to the running clusters; the caller then lists each
/// cluster's standby clusters and roles and databases in its `config` ([`ConfigSync`]).
async fn apply_edit(
    desired: &Desired,
    running: &mut BTreeMap<String, LocalCluster>,
    layout: &Layout,
    run_as: &RunAs,
    governor: &std::path::Path,
    step: Duration,
) -> Option<String> {
    let running_files: BTreeMap<String, ClusterFile> = running
        .iter()
        .map(|(n, c)| (n.clone(), c.file.clone()))
        .collect();
    let (mut held_desired, upgrades) = hold_major_upgrades(desired, &running_files);
    for (name, c) in running.iter_mut() {
        let Some(to) = upgrades.get(name) else {
            c.refused_upgrade = None;
            continue;
        };
        let wanted = &desired[name].1;
        if c.refused_upgrade.as_ref() == Some(wanted) {
            continue;
        }
        let standbys = standby_blockers(name, &c.file, desired);
        match major_upgrade(c, to.clone(), standbys).await {
            Ok(true) => {
                c.refused_upgrade = None;
                held_desired.insert(name.clone(), desired[name].clone());
            }
            Ok(false) => c.refused_upgrade = Some(wanted.clone()),
            Err(stranded) => return Some(stranded),
        }
    }
    // The store a cluster runs on stays as it started: its keys would not move with it.
    for (name, c) in running.iter_mut() {
        let Some((_, f)) = held_desired.get_mut(name) else {
            continue;
        };
        if f.spec.dcs == c.file.spec.dcs {
            c.refused_dcs = None;
            continue;
        }
        if c.refused_dcs.as_ref() != Some(&f.spec.dcs) {
            eprintln!(
                "cluster {name}: a change of spec.dcs is not applied to a running cluster (its \
                 keys would not move with it); it keeps its store. To move it, stop it (spilo \
                 down {name}) and start it again: its data is kept, its store starts empty"
            );
            c.refused_dcs = Some(f.spec.dcs.clone());
        }
        f.spec.dcs = c.file.spec.dcs.clone();
    }
    let desired = &held_desired;
    let want = instance_counts(desired);
    let have: BTreeMap<String, u32> = running
        .iter()
        .map(|(n, c)| (n.clone(), c.file.spec.instances))
        .collect();
    for line in super::standby::apply_edits(desired, running, layout, step).await {
        println!("{line}");
    }
    for change in plan(&want, &have) {
        println!("{change}");
        let result = match &change {
            Change::Create { cluster, .. } => {
                let (src, f) = &desired[cluster];
                let ports = ports_of(f);
                let others: Vec<(String, Ports)> = running
                    .iter()
                    .map(|(n, c)| (n.clone(), c.ports().clone()))
                    .chain([(cluster.clone(), ports.clone())])
                    .collect();
                match ports::clash(&others) {
                    Some(msg) => Err(anyhow::anyhow!(msg)),
                    None => match check_free(&[(cluster.clone(), src.clone(), ports.clone())])
                        .and_then(|()| check_postgres(cluster, src, f))
                    {
                        Err(e) => Err(e),
                        Ok(()) => {
                            match super::standby::resolve(f, desired, layout).and_then(|standby| {
                                LocalCluster::prepare(
                                    f.clone(),
                                    src.clone(),
                                    layout,
                                    ports,
                                    run_as,
                                    governor,
                                    standby,
                                )
                            }) {
                                Err(e) => Err(e),
                                Ok(mut c) => {
                                    let r = c.start().await;
                                    running.insert(cluster.clone(), c);
                                    r
                                }
                            }
                        }
                    },
                }
            }
            Change::Resize { cluster, .. } => {
                let (_, f) = &desired[cluster];
                match running.get_mut(cluster) {
                    Some(c) => c.resize(f.clone(), ports_of(f)).await,
                    None => Ok(()),
                }
            }
            Change::Stop { cluster } => {
                if let Some(mut c) = running.remove(cluster) {
                    c.stop().await;
                }
                Ok(())
            }
        };
        if let Err(e) = result {
            eprintln!("could not apply `{change}`: {e:#}");
        }
    }
    None
}

async fn stop_all(running: &mut BTreeMap<String, LocalCluster>) {
    futures::future::join_all(running.values_mut().map(|c| c.stop())).await;
}

#[cfg(test)]
mod tests {
    use super::ConfigSync;
    use std::time::{Duration, Instant};

    #[test]
    fn a_failed_config_write_is_retried_and_each_error_printed_once() {
        let t0 = Instant::now();
        let mut s = ConfigSync::default();
        assert!(!s.is_due(t0), "nothing before an edit");
        s.due(t0);
        assert!(s.is_due(t0));
        let err = vec!["cluster src: no config yet".to_string()];
        assert_eq!(s.after(err.clone(), t0), err);
        assert!(!s.is_due(t0 + Duration::from_secs(1)));
        assert!(s.is_due(t0 + ConfigSync::RETRY));
        assert_eq!(
            s.after(err.clone(), t0 + ConfigSync::RETRY),
            Vec::<String>::new()
        );
        let written = t0 + 2 * ConfigSync::RETRY;
        assert!(s.after(Vec::new(), written).is_empty());
        assert!(
            !s.is_due(written + ConfigSync::RETRY),
            "written: the next in REFRESH"
        );
        assert!(s.is_due(written + ConfigSync::REFRESH));
    }
}
