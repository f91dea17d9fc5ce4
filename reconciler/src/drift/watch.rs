//! `spilo watch`: the always-on half of GitOps for the AWS target.
//!
//! Triggers: a filesystem watch (notify) on the local checkout's git directory, so a commit on
//! the branch starts a pass at once; for a remote, a periodic fetch; and a periodic full
//! resync. A pass reads the branch's commit: an invalid commit is reported (an
//! `invalid_commit` alert) and never applied, and the last good commit stays the desired
//! state. A new commit is applied (sync). Otherwise the pass looks for drift: each drift is
//! alerted once and resolved once; clusters with `reconcile.drift: revert` get their file
//! re-applied. A cluster whose apply fails waits with exponential backoff; the others go on.
//! `/healthz` and `/metrics` are served over HTTP.

use super::alerts::Alerts;
use super::detect::{self, Drift, DriftKind};
use super::metrics::Metrics;
use super::notify::{self, Notifier};
use crate::aws::apply::{self, Log, Outcome};
use crate::aws::clients::Clients;
use crate::aws::observed::{Observation, Observed};
use crate::aws::plan::{Action, Plan, PlanOptions};
use crate::desired::{self, Desired, DesiredError};
use spilo_model::spec::DriftPolicy;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// `spilo watch`.
#[derive(Debug, Clone, clap::Args)]
pub struct WatchArgs {
    /// The target: aws (apply commits, alert and revert drift), or local (alert on the runtime
    /// drift of the clusters `spilo up` runs; `spilo up` itself applies edits and, with
    /// `reconcile.drift: revert`, replaces dead members).
    #[arg(long, value_enum, default_value = "aws")]
    pub target: WatchTarget,
    /// The git repository: a local checkout (watched) or a URL (fetched periodically).
    #[arg(long, default_value = ".")]
    pub repo: String,
    /// The branch to follow.
    #[arg(long, default_value = "main")]
    pub branch: String,
    /// Full resync (drift check) period.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub resync: Duration,
    /// Fetch period for a remote repository.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub fetch_interval: Duration,
    /// How long a cluster may have no leader before it is an alert.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub no_leader_after: Duration,
    /// `/healthz`, `/metrics` and `POST /hooks/git`.
    #[arg(long, default_value = "127.0.0.1:9187")]
    pub listen: std::net::SocketAddr,
    /// The secret a forge's push webhook signs `POST /hooks/git` with (GitHub) or sends
    /// (GitLab); a verified hook starts the next pass at once. Without it the endpoint is off.
    #[arg(long, env = "SPILO_WATCH_HOOK_SECRET", hide_env_values = true)]
    pub hook_secret: Option<String>,
    /// The alert sinks (default: alerts.yaml beside clusters/ in the checkout).
    #[arg(long)]
    pub alerts: Option<PathBuf>,
    /// Send AWS calls to this endpoint instead of AWS.
    #[arg(long, env = "SPILO_AWS_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,
    /// Also look for stacks whose file is gone in these regions.
    #[arg(long = "region", env = "AWS_REGION", value_delimiter = ',')]
    pub regions: Vec<String>,
    /// With `--target local`: the state directory of `spilo up` (default: the one it picks
    /// for the checkout's `clusters/`), where each cluster's etcd endpoints and TLS files are.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

/// What `spilo watch` reconciles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WatchTarget {
    /// CloudFormation stacks.
    Aws,
    /// The clusters `spilo up` runs on this machine.
    Local,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    Start,
    Commit,
    Resync,
}

/// Per-cluster failure backoff.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
    until: Option<Instant>,
}

struct Watcher {
    args: WatchArgs,
    clients: Clients,
    notifier: Notifier,
    metrics: Arc<Mutex<Metrics>>,
    alerts: Alerts,
    last_good: Option<Desired>,
    /// Per cluster, the commit last applied to it (or found already in sync).
    synced: BTreeMap<String, String>,
    /// The commit whose removed files were last handled.
    applied_commit: Option<String>,
    backoff: BTreeMap<String, Backoff>,
    started: Instant,
}

fn log(fields: serde_json::Value) {
    eprintln!("{fields}");
}

/// Runs until Ctrl-C.
pub async fn watch(args: WatchArgs) -> anyhow::Result<u8> {
    let alerts_path = args.alerts.clone().unwrap_or_else(|| {
        PathBuf::from(if desired::is_url(&args.repo) {
            "."
        } else {
            args.repo.as_str()
        })
        .join(notify::CONFIG_FILE)
    });
    let alerts_config = notify::load(&alerts_path)?;
    let metrics = Arc::new(Mutex::new(Metrics::default()));
    let (tx, mut rx) = mpsc::unbounded_channel();
    // An empty secret is none: it would admit an empty token.
    let hook = args
        .hook_secret
        .clone()
        .filter(|s| !s.is_empty())
        .map(|secret| (secret, tx.clone()));
    let mut server = serve(args.listen, metrics.clone(), hook).await?;
    // A repository URL is fetched every `fetch_interval`; a checkout is watched (the
    // filesystem watcher lives for the whole run).
    let mut fetch = desired::is_url(&args.repo).then(|| {
        tokio::time::interval_at(
            tokio::time::Instant::now() + args.fetch_interval,
            args.fetch_interval,
        )
    });
    let _fs_watch = if fetch.is_some() {
        None
    } else {
        Some(watch_git_dir(&args.repo, tx.clone())?)
    };
    let mut w = Watcher {
        clients: Clients::new(args.endpoint_url.clone()),
        notifier: Notifier::start(&alerts_config),
        metrics,
        alerts: Alerts::default(),
        last_good: None,
        synced: BTreeMap::new(),
        applied_commit: None,
        backoff: BTreeMap::new(),
        started: Instant::now(),
        args,
    };
    log(
        serde_json::json!({"level": "info", "msg": "watching", "repo": w.args.repo, "branch": w.args.branch, "listen": w.args.listen.to_string(), "webhooks": alerts_config.webhooks.len()}),
    );
    let mut resync = tokio::time::interval(w.args.resync);
    resync.tick().await;
    w.pass(Trigger::Start).await;
    loop {
        tokio::select! {
            t = rx.recv() => {
                let Some(t) = t else { break };
                // Coalesce a burst of filesystem events into one pass.
                while rx.try_recv().is_ok() {}
                w.pass(t).await;
            }
            _ = resync.tick() => w.pass(Trigger::Resync).await,
            _ = async {
                match fetch.as_mut() {
                    Some(t) => {
                        t.tick().await;
                    }
                    None => std::future::pending().await,
                }
            } => w.pass(Trigger::Commit).await,
            why = w.notifier.delivery_ended() => anyhow::bail!("{why}"),
            r = &mut server => {
                anyhow::bail!("the metrics endpoint on {} stopped: {}", w.args.listen, match r {
                    Ok(Ok(())) => "it ended".to_string(),
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                });
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    Ok(0)
}

/// Watches the checkout's git directory (refs, packed refs, HEAD) and sends a trigger on
/// every change.
fn watch_git_dir(
    repo: &str,
    tx: mpsc::UnboundedSender<Trigger>,
) -> anyhow::Result<::notify::RecommendedWatcher> {
    use ::notify::{RecursiveMode, Watcher as _};
    let git_dir = git2::Repository::discover(repo)
        .map_err(|e| anyhow::anyhow!("{repo}: not a git checkout: {e}"))?
        .path()
        .to_path_buf();
    let mut watcher =
        ::notify::recommended_watcher(move |ev: ::notify::Result<::notify::Event>| {
            if let Ok(ev) = ev {
                // Only writes: reading refs (every pass does) raises access events too, and
                // those must not trigger the next pass.
                let writes = matches!(
                    ev.kind,
                    ::notify::EventKind::Create(_)
                        | ::notify::EventKind::Modify(_)
                        | ::notify::EventKind::Remove(_)
                );
                let relevant = writes
                    && ev.paths.iter().any(|p| {
                        let s = p.to_string_lossy();
                        !s.ends_with(".lock")
                            && (s.contains("/refs/")
                                || s.ends_with("packed-refs")
                                || s.ends_with("HEAD"))
                    });
                if relevant {
                    let _ = tx.send(Trigger::Commit);
                }
            }
        })?;
    watcher.watch(&git_dir, RecursiveMode::NonRecursive)?;
    let refs = git_dir.join("refs");
    if refs.exists() {
        watcher.watch(&refs, RecursiveMode::Recursive)?;
    }
    Ok(watcher)
}

/// Serves `/healthz`, `/metrics` and, with a secret, `POST /hooks/git` (which sends a trigger
/// on `hook`'s channel) on `listen`; the watch loop stops when this task ends.
async fn serve(
    listen: std::net::SocketAddr,
    metrics: Arc<Mutex<Metrics>>,
    hook: Option<(String, mpsc::UnboundedSender<Trigger>)>,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    use axum::routing::{get, post};
    let mut app = axum::Router::new();
    if let Some((secret, tx)) = hook {
        app = app.route(
            "/hooks/git",
            post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let (secret, tx) = (secret.clone(), tx.clone());
                    async move {
                        super::hook::answer(&secret, &headers, &body, || {
                            log(serde_json::json!({"level": "info", "msg": "push hook: fetching now"}));
                            let _ = tx.send(Trigger::Commit);
                        })
                    }
                },
            )
            // GitHub sends push payloads of up to 25 MB (axum's default limit is 2 MB).
            .layer(axum::extract::DefaultBodyLimit::max(25 * 1024 * 1024)),
        );
    }
    let app = app.route("/healthz", get(|| async { "ok\n" })).route(
        "/metrics",
        get(move || {
            let m = metrics.clone();
            async move {
                m.lock()
                    .map(|m| m.render())
                    .unwrap_or_else(|_| String::new())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    Ok(tokio::spawn(
        async move { axum::serve(listener, app).await },
    ))
}

impl Watcher {
    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    fn metrics(&self, f: impl FnOnce(&mut Metrics)) {
        if let Ok(mut m) = self.metrics.lock() {
            f(&mut m);
        }
    }

    /// Sets the drift gauges of `names` from the raised alerts.
    fn publish_drift(&self, names: &[String]) {
        let active = self.alerts.active();
        self.metrics(|m| m.set_drift(names, &active));
    }

    fn alert(&mut self, observed: &BTreeSet<String>, drifts: &[Drift]) {
        let no_leader = self.args.no_leader_after;
        let events = self.alerts.update(self.now(), observed, drifts, |k| {
            if k == DriftKind::NoLeader {
                no_leader
            } else {
                Duration::ZERO
            }
        });
        for ev in &events {
            self.notifier.send(ev);
        }
        let dropped = self.notifier.dropped();
        self.metrics(|m| m.alerts_dropped = dropped);
    }

    async fn pass(&mut self, trigger: Trigger) {
        let started = Instant::now();
        self.pass_inner(trigger).await;
        log(
            serde_json::json!({"level": "info", "msg": "pass done", "commit": self.applied_commit, "seconds": started.elapsed().as_secs_f64()}),
        );
    }

    async fn pass_inner(&mut self, trigger: Trigger) {
        self.metrics(|m| m.reconciles += 1);
        let cache = crate::aws::commands::cache_dir();
        let star: BTreeSet<String> = ["*".to_string()].into();
        match desired::read(&self.args.repo, &self.args.branch, &cache) {
            Ok(d) => {
                self.alert(&star, &[]);
                self.last_good = Some(d);
            }
            Err(DesiredError::Invalid {
                commit,
                count,
                diagnostics,
            }) => {
                log(
                    serde_json::json!({"level": "error", "msg": "invalid commit: not applied; the last good commit stays", "commit": commit, "errors": count, "diagnostics": diagnostics}),
                );
                self.alert(
                    &star,
                    &[Drift {
                        cluster: "*".into(),
                        kind: DriftKind::InvalidCommit,
                        subject: None,
                        detail: format!(
                            "{commit} has {count} error(s) in cluster files: {}",
                            diagnostics
                                .iter()
                                .map(|d| format!(
                                    "{}:{}: {}: {}",
                                    d.file, d.line, d.path, d.message
                                ))
                                .collect::<Vec<_>>()
                                .join("; ")
                        ),
                    }],
                );
                self.metrics(|m| m.errors += 1);
            }
            Err(e) => {
                log(
                    serde_json::json!({"level": "error", "msg": "cannot read the branch", "error": e.to_string()}),
                );
                self.metrics(|m| m.errors += 1);
                return;
            }
        }
        let Some(mut d) = self.last_good.clone() else {
            return;
        };
        if self.args.target == WatchTarget::Local {
            self.local_pass(&d, trigger).await;
            return;
        }
        let new_commit = self.applied_commit.as_deref() != Some(d.commit.as_str());
        let names: Vec<String> = crate::aws::aws_clusters(&d)
            .iter()
            .map(|(_, f)| f.metadata.name.to_string())
            .chain(
                crate::aws::etcd_clusters(&d)
                    .iter()
                    .map(|(_, f)| f.metadata.name.to_string()),
            )
            .collect();
        // Clusters whose file changed since they were last applied (or that failed then).
        let pending: BTreeSet<String> = names
            .iter()
            .filter(|n| self.synced.get(*n) != Some(&d.commit))
            .cloned()
            .collect();
        log(
            serde_json::json!({"level": "info", "msg": "plan started", "commit": d.commit, "trigger": format!("{trigger:?}").to_lowercase(), "pending": pending}),
        );
        let (plan, observed) = crate::aws::plan_desired(
            &self.clients,
            &mut d,
            &self.args.regions,
            PlanOptions::default(),
        )
        .await;
        // Sync: the pending clusters, and on a new commit the stacks whose file is gone.
        let known: BTreeSet<&String> = names.iter().collect();
        let applied = self
            .apply(&plan, |c| {
                pending.contains(c) || (new_commit && !known.contains(&c.to_string()))
            })
            .await;
        for c in &plan.clusters {
            if pending.contains(&c.name) && (c.action == Action::Noop || applied.contains(&c.name))
            {
                self.synced.insert(c.name.clone(), d.commit.clone());
            }
        }
        self.applied_commit = Some(d.commit.clone());
        self.metrics(|m| m.commit = d.commit.clone());
        // Drift: the clusters that were in sync before this pass.
        let (mut drifts, mut seen) = self.drifts(&d, &observed);
        drifts.retain(|x| !pending.contains(&x.cluster));
        seen.retain(|c| !pending.contains(c));
        let revert: BTreeSet<String> = crate::aws::aws_clusters(&d)
            .iter()
            .filter(|(_, f)| f.spec.drift_policy() == DriftPolicy::Revert)
            .filter(|(_, f)| {
                drifts
                    .iter()
                    .any(|x| x.cluster == f.metadata.name.as_str() && x.kind.revertible())
            })
            .map(|(_, f)| f.metadata.name.to_string())
            .collect();
        self.alert(&seen, &drifts);
        if !revert.is_empty() {
            log(serde_json::json!({"level": "info", "msg": "reverting drift", "clusters": revert}));
            self.apply(&plan, |c| revert.contains(c)).await;
        }
        self.publish_drift(&names);
    }

    /// `state.json` of a local cluster, when `spilo up` runs (or ran) it.
    fn local_state(&self, cluster: &str) -> Option<crate::local::state::ClusterState> {
        let run_as = crate::local::user::RunAs::detect().ok()?;
        let clusters = std::path::Path::new(&self.args.repo).join("clusters");
        let (root, _) =
            crate::local::state_dir(self.args.state_dir.as_deref(), &[clusters], &run_as).ok()?;
        crate::local::state::Layout { root }.read(cluster).ok()
    }

    /// The local target: runtime drift of every local cluster, from its etcd.
    async fn local_pass(&mut self, d: &Desired, trigger: Trigger) {
        log(
            serde_json::json!({"level": "info", "msg": "plan started", "commit": d.commit, "trigger": format!("{trigger:?}").to_lowercase(), "target": "local"}),
        );
        self.applied_commit = Some(d.commit.clone());
        let mut drifts = Vec::new();
        let mut seen = BTreeSet::new();
        let mut names = Vec::new();
        for (_, f) in &d.clusters {
            if f.spec.target != spilo_model::spec::Target::Local {
                continue;
            }
            let name = f.metadata.name.to_string();
            names.push(name.clone());
            // What `spilo up` recorded (its etcd over TLS with spilo's certificate), else the
            // file's own etcd or the derived port in plaintext.
            let running = self.local_state(&name);
            let tls = running
                .as_ref()
                .and_then(|st| st.tls.as_ref())
                .and_then(|t| t.etcd_client().ok());
            let hosts = match (&running, &f.spec.dcs) {
                (Some(st), _) if !st.etcd_endpoints.is_empty() => st.etcd_endpoints.clone(),
                (_, Some(dcs)) if !dcs.hosts.is_empty() => dcs.hosts.clone(),
                _ => match crate::local::ports::Ports::of(f, true).etcd {
                    Some(port) => vec![format!("127.0.0.1:{port}")],
                    None => continue,
                },
            };
            let on_zookeeper = running.as_ref().map_or_else(
                || f.spec.dcs.as_ref().is_some_and(|d| d.zookeeper.is_some()),
                |st| st.zookeeper,
            );
            let observed = if on_zookeeper {
                // Its servers as `spilo up` recorded them, else the file's, else the port
                // `spilo up` gives the ZooKeeper it runs.
                let hosts = match (
                    &running,
                    f.spec.dcs.as_ref().and_then(|d| d.zookeeper.as_ref()),
                ) {
                    (Some(st), _) if !st.etcd_endpoints.is_empty() => st.etcd_endpoints.clone(),
                    (_, Some(z)) if !z.hosts.is_empty() => z.hosts.clone(),
                    _ => hosts,
                };
                crate::aws::observe::observe_zookeeper(&hosts, &f.metadata.name).await
            } else {
                let dcs = spilo_model::spec::DcsSpec {
                    hosts,
                    ..Default::default()
                };
                crate::aws::observe::observe_etcd_with(Some(&dcs), &f.metadata.name, tls.as_ref())
                    .await
            };
            match observed {
                Observation::Present(etcd) => {
                    drifts.extend(detect::runtime(f, &etcd));
                    seen.insert(name.clone());
                    let t = unix_now();
                    let drill = etcd.drill.clone();
                    self.metrics(|m| {
                        match drill {
                            Some(d) => m.drills.insert(name.clone(), d),
                            None => m.drills.remove(&name),
                        };
                        m.last_success.insert(name, t);
                    });
                }
                other => {
                    let why = other.unknown().unwrap_or("no etcd").to_string();
                    log(
                        serde_json::json!({"level": "warn", "msg": "cannot check drift (is spilo up running?)", "cluster": name, "reason": why}),
                    );
                }
            }
        }
        self.alert(&seen, &drifts);
        self.publish_drift(&names);
    }

    /// Drift of every cluster that could be observed, and the set of those clusters.
    fn drifts(&self, d: &Desired, observed: &Observed) -> (Vec<Drift>, BTreeSet<String>) {
        let mut drifts = Vec::new();
        let mut seen = BTreeSet::new();
        let found = crate::aws::aws_clusters(d)
            .into_iter()
            .map(|(path, f)| (f.metadata.name.as_str(), Either::Postgres(path, f)))
            .chain(
                crate::aws::etcd_clusters(d)
                    .into_iter()
                    .map(|(path, f)| (f.metadata.name.as_str(), Either::Etcd(path, f))),
            );
        for (name, file) in found {
            let name = name.to_string();
            let Some(o) = observed.clusters.get(&name) else {
                continue;
            };
            let result = match file {
                Either::Postgres(path, f) => detect::detect(path, f, o),
                Either::Etcd(path, f) => detect::detect_etcd(path, f, o),
            };
            let drill = match &o.etcd {
                Observation::Present(e) => e.drill.clone(),
                _ => None,
            };
            match result {
                Ok(found) => {
                    drifts.extend(found);
                    seen.insert(name.clone());
                    let t = unix_now();
                    self.metrics(|m| {
                        match drill {
                            Some(d) => m.drills.insert(name.clone(), d),
                            None => m.drills.remove(&name),
                        };
                        m.last_success.insert(name, t);
                    });
                }
                Err(why) => {
                    log(
                        serde_json::json!({"level": "warn", "msg": "cannot check drift", "cluster": name, "reason": why}),
                    );
                }
            }
        }
        (drifts, seen)
    }

    /// Applies the changes of the clusters `which` selects, except those backing off; returns
    /// the clusters applied.
    async fn apply(&mut self, plan: &Plan, which: impl Fn(&str) -> bool) -> BTreeSet<String> {
        let mut done = BTreeSet::new();
        let now = Instant::now();
        let mut selected = plan.clone();
        selected.clusters.retain(|c| {
            which(&c.name)
                && self
                    .backoff
                    .get(&c.name)
                    .and_then(|b| b.until)
                    .is_none_or(|until| until <= now)
        });
        if !selected.has_changes() {
            for c in &selected.clusters {
                if c.action == Action::Noop {
                    let t = unix_now();
                    let name = c.name.clone();
                    self.metrics(|m| {
                        m.last_success.insert(name, t);
                    });
                }
            }
            return done;
        }
        let started = Instant::now();
        let report = apply::apply(&self.clients, &selected, &Log::new(std::io::stderr())).await;
        let seconds = started.elapsed().as_secs_f64();
        for (name, outcome) in report.clusters {
            match outcome {
                Outcome::Applied => {
                    done.insert(name.clone());
                    self.backoff.remove(&name);
                    let t = unix_now();
                    self.metrics(|m| {
                        m.apply_seconds.insert(name.clone(), seconds);
                        m.last_success.insert(name.clone(), t);
                    });
                    log(serde_json::json!({"level": "info", "msg": "applied", "cluster": name}));
                }
                Outcome::Failed(why) => {
                    let b = self.backoff.entry(name.clone()).or_default();
                    b.failures += 1;
                    let wait = Duration::from_secs(1u64 << b.failures.min(8))
                        .min(Duration::from_secs(300));
                    b.until = Some(Instant::now() + wait);
                    self.metrics(|m| *m.cluster_errors.entry(name.clone()).or_insert(0) += 1);
                    log(
                        serde_json::json!({"level": "error", "msg": "apply failed; backing off", "cluster": name, "error": why, "retry_in_s": wait.as_secs()}),
                    );
                }
                Outcome::Skipped(_) => {}
            }
        }
        done
    }
}

/// A file of either kind, with its path.
enum Either<'a> {
    Postgres(&'a str, &'a spilo_model::spec::ClusterFile),
    Etcd(&'a str, &'a spilo_model::spec::EtcdClusterFile),
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}
