//! The `governor` binary: argument parsing, logging and exit codes. The work is in the library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

/// The spilo governor: runs beside one PostgreSQL instance and keeps the cluster highly available.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the governor for the member described in a configuration file.
    Run {
        /// The governor's YAML configuration.
        #[arg(long, short)]
        config: PathBuf,
        /// This member's identity, when the file leaves it to the instance.
        #[command(flatten)]
        identity: IdentityArgs,
    },
    /// Keep one etcd member of an `EtcdCluster` stack: start etcd, join the cluster, and (on
    /// the leader) keep the membership and the SRV records equal to the auto-scaling group.
    EtcdMember {
        /// The keeper's YAML configuration.
        #[arg(long, short)]
        config: PathBuf,
        /// The instance id: the member's name.
        #[arg(long)]
        name: String,
        /// The instance's private address.
        #[arg(long)]
        connect_host: String,
    },
    /// Archive one WAL file (PostgreSQL's `archive_command`: `governor wal-push %p -c FILE`).
    WalPush {
        /// The file, relative to the data directory as `%p` is.
        path: PathBuf,
        /// The governor's YAML configuration (its `archive:` section).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Restore one WAL file (`restore_command`: `governor wal-fetch %f %p -c FILE`); exits 1
    /// quietly when it is not archived.
    WalFetch {
        /// The file name PostgreSQL asks for.
        name: String,
        /// Where to write it.
        dest: PathBuf,
        /// The governor's YAML configuration (its `archive:` section).
        #[arg(long, short)]
        config: PathBuf,
        /// Read the source archive of `bootstrap.clone` instead (while cloning).
        #[arg(long)]
        from_clone: bool,
        /// Read the standby cluster's source archive instead (as its standby leader).
        #[arg(long, conflicts_with = "from_clone")]
        from_standby_source: bool,
    },
    /// Take a base backup of this member's PostgreSQL into the archive.
    BackupPush {
        /// The governor's YAML configuration.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// List the finished base backups in the archive.
    BackupList {
        /// The governor's YAML configuration.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Restore a base backup (a name from backup-list, or LATEST) into an empty directory.
    BackupFetch {
        /// The backup, or LATEST.
        name: String,
        /// The empty target directory.
        dest: PathBuf,
        /// With LATEST: the newest backup that finished before this time (RFC 3339), the one a
        /// recovery to it must start from.
        #[arg(long)]
        target_time: Option<spilo_model::TargetTime>,
        /// The governor's YAML configuration.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// A restore drill: restore a backup and the archive into a scratch directory, replay,
    /// start a throwaway PostgreSQL and check it (exit 0 verified, 2 a check failed, 1 error).
    VerifyBackup {
        /// The backup, or LATEST.
        #[arg(long, default_value = "LATEST")]
        backup: String,
        /// Replay up to this time (RFC 3339) instead of the archive's end; with LATEST, the
        /// newest backup that finished before it.
        #[arg(long)]
        target_time: Option<spilo_model::TargetTime>,
        /// A query that must return true on the restored database.
        #[arg(long)]
        sql: Option<String>,
        /// Where the scratch directory is made (default: the temporary directory).
        #[arg(long)]
        scratch: Option<PathBuf>,
        /// How long replay may take.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// The governor's YAML configuration.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Delete all but the newest N finished base backups, and the WAL only they need.
    BackupDelete {
        /// How many finished backups to keep (at least 1).
        #[arg(long)]
        retain: usize,
        /// The governor's YAML configuration.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Fetch WAL segments ahead into a directory (`wal-fetch` starts it; not for humans).
    #[command(hide = true)]
    WalPrefetch {
        /// Where to put them.
        dir: PathBuf,
        /// The segments.
        names: Vec<String>,
        /// The governor's YAML configuration.
        #[arg(long, short)]
        config: PathBuf,
        /// Read the source archive of `bootstrap.clone`.
        #[arg(long)]
        from_clone: bool,
        /// Read the standby cluster's source archive.
        #[arg(long, conflicts_with = "from_clone")]
        from_standby_source: bool,
    },
    /// The watchdog process the governor spawns for itself (reads its stdin; not for humans).
    #[command(hide = true)]
    Watchdog,
    /// Report a failed boot of this instance (the image's boot layer calls it): a FAILURE
    /// signal to the stack and the reason with the boot log in etcd `boot/<member>`.
    BootFailed(BootFailedArgs),
    /// One step of a major-version upgrade of this member's data directory: check
    /// (pg_upgrade --check against the running server), and, while no governor of the
    /// cluster runs, link (pg_upgrade --link beside the data), rollback (undo link), commit
    /// (the point of no return: swap the directories, the new system identifier in etcd),
    /// discard-old.
    Upgrade {
        /// The step.
        #[arg(value_enum)]
        step: UpgradeStep,
        /// The member's configuration for the new version (its `bin_dir`).
        #[arg(long, short)]
        config: PathBuf,
        /// The old version's programs.
        #[arg(long)]
        old_bin_dir: PathBuf,
        /// With link: the member's configuration for the old version. When it archives,
        /// what the old server's archiver left unarchived at its shutdown is archived with it
        /// before pg_upgrade.
        #[arg(long)]
        old_config: Option<PathBuf>,
    },
    /// Check a configuration file and the machine, then exit.
    Check {
        /// The governor's YAML configuration.
        #[arg(long, short)]
        config: PathBuf,
        /// This member's identity, when the file leaves it to the instance.
        #[command(flatten)]
        identity: IdentityArgs,
    },
}

/// The steps of `governor upgrade` (see `governor::major_upgrade`).
#[derive(Clone, Copy, clap::ValueEnum)]
enum UpgradeStep {
    Check,
    Link,
    Rollback,
    Commit,
    DiscardOld,
}

/// `governor boot-failed`'s arguments.
#[derive(clap::Args)]
struct BootFailedArgs {
    /// The governor's YAML configuration.
    #[arg(long, short)]
    config: PathBuf,
    /// This member (the instance id).
    #[arg(long)]
    name: spilo_model::MemberName,
    /// What failed, in one line.
    #[arg(long)]
    reason: String,
    /// The boot log; its last lines go to etcd.
    #[arg(long)]
    log: PathBuf,
}

/// What an instance adds to a configuration shared by all members (see
/// `governor::config::Identity`).
#[derive(clap::Args)]
struct IdentityArgs {
    /// The member name (on AWS: the instance id).
    #[arg(long)]
    name: Option<spilo_model::MemberName>,
    /// The host others reach this member at (on AWS: its private address).
    #[arg(long)]
    connect_host: Option<String>,
    /// A network (CIDR) PostgreSQL admits connections from (on AWS: the VPC's ranges);
    /// repeatable. Used when the file sets no `postgresql.networks`.
    #[arg(long = "allowed-network")]
    allowed_networks: Vec<String>,
}

impl IdentityArgs {
    fn identity(&self) -> governor::config::Identity {
        governor::config::Identity {
            name: self.name.clone(),
            connect_host: self.connect_host.clone(),
            networks: self.allowed_networks.clone(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Watchdog) {
        governor::watchdog::run();
        return ExitCode::SUCCESS;
    }
    // One TLS crypto provider for the process (the REST API's HTTPS and its clients), chosen
    // explicitly so no dependency's feature set can leave it ambiguous.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SPILO_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            // 2: the configuration cannot work as it is (the image's boot reports that at
            // once); 1: anything that may pass.
            let doomed = e
                .downcast_ref::<governor::config::ConfigError>()
                .is_some_and(governor::config::ConfigError::is_permanent)
                || e.downcast_ref::<governor::preflight::PreflightError>()
                    .is_some()
                || e.downcast_ref::<governor::drill::ChecksFailed>().is_some()
                || e.downcast_ref::<governor::major_upgrade::UpgradeError>()
                    .is_some_and(|e| {
                        matches!(e, governor::major_upgrade::UpgradeError::Blocked(_))
                    });
            ExitCode::from(if doomed { 2 } else { 1 })
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Check { config, identity } => {
            let loaded = governor::config::load(&config, &identity.identity()).await?;
            governor::preflight::check(&loaded.config)?;
            println!("{}: ok", config.display());
            Ok(())
        }
        Command::Watchdog => Ok(()),
        Command::Upgrade {
            step,
            config,
            old_bin_dir,
            old_config,
        } => {
            use governor::major_upgrade as up;
            if nix::unistd::geteuid().is_root() {
                return Err(governor::preflight::PreflightError::Root.into());
            }
            let loaded = governor::config::load(&config, &Default::default()).await?;
            let paths = up::Paths::of(&loaded, &old_bin_dir);
            let _turn = up::take_turn(&paths)?;
            match step {
                UpgradeStep::Check => {
                    // The local target puts the cluster's parameters into the file.
                    up::check(&loaded, &[&Default::default()], &paths).await?;
                    println!("{}: no blockers", paths.data.display());
                }
                UpgradeStep::Link => {
                    let old = match &old_config {
                        Some(path) => {
                            Some(governor::config::load(path, &Default::default()).await?)
                        }
                        None => None,
                    };
                    let linked =
                        up::link(&loaded, &Default::default(), &paths, old.as_ref()).await?;
                    if let Some(last) = linked.archived.last() {
                        println!(
                            "{}: the old server's WAL its archiver left archived ({} files, \
                             up to {last})",
                            paths.data.display(),
                            linked.archived.len()
                        );
                    }
                    println!(
                        "{}: upgraded, system {}",
                        paths.upgraded.display(),
                        linked.system
                    );
                }
                UpgradeStep::Rollback => {
                    let undone = up::roll_back(&paths)?;
                    println!(
                        "{}: {}",
                        paths.data.display(),
                        if undone {
                            "rolled back"
                        } else {
                            "nothing to roll back"
                        }
                    );
                }
                UpgradeStep::Commit => {
                    let sysid = up::commit(&loaded, &paths).await?;
                    println!("{}: committed, system {sysid}", paths.data.display());
                }
                UpgradeStep::DiscardOld => {
                    up::discard_old(&paths)?;
                    println!("{}: old cluster removed", paths.previous.display());
                }
            }
            Ok(())
        }
        Command::BootFailed(a) => {
            let target =
                governor::boot_report::Target::read(&a.config).map_err(anyhow::Error::msg)?;
            let r = governor::boot_report::report(&target, &a.name, &a.reason, &a.log).await;
            for p in &r.problems {
                eprintln!("cannot report: {p}");
            }
            if r.problems.len() >= r.attempted {
                anyhow::bail!("the failure could not be reported anywhere");
            }
            Ok(())
        }
        Command::WalPush { path, config } => {
            let archive = archive_config(&config)?;
            let store = governor::archive::AnyStore::open(&archive).await;
            match governor::archive::push_ahead::push(&archive, &store, &path).await? {
                governor::archive::Pushed::Stored => {}
                governor::archive::Pushed::AlreadyThere => {
                    tracing::info!(path = %path.display(), "already archived with the same content");
                }
            }
            Ok(())
        }
        Command::BackupPush { config } => {
            let cfg = parse_config(&config)?;
            let archive = archive_config(&config)?;
            let store = governor::archive::AnyStore::open(&archive).await;
            let run_dir = cfg.run_dir();
            let src = governor::archive::backup::Source {
                bin_dir: &cfg.postgresql.bin_dir,
                socket_dir: &run_dir,
                port: cfg.postgresql.listen.port(),
                user: &cfg.postgresql.authentication.superuser.username,
            };
            let s = governor::archive::backup::backup_push(&archive, &store, &src).await?;
            println!(
                "{}: {} part(s), {} bytes ({} stored), from {} to {}",
                s.name, s.parts, s.uncompressed_size, s.compressed_size, s.start_lsn, s.finish_lsn
            );
            Ok(())
        }
        Command::BackupList { config } => {
            let archive = archive_config(&config)?;
            let store = governor::archive::AnyStore::open(&archive).await;
            let all = governor::archive::backup::backup_list(&archive, &store).await?;
            println!(
                "{:<30} {:<26} {:<22} {:<12} {:<12} {:>12}",
                "name", "started", "finished", "start lsn", "finish lsn", "bytes"
            );
            for s in all {
                println!(
                    "{:<30} {:<26} {:<22} {:<12} {:<12} {:>12}",
                    s.name,
                    s.start_time,
                    s.finish_time,
                    s.start_lsn,
                    s.finish_lsn,
                    s.uncompressed_size
                );
            }
            Ok(())
        }
        Command::BackupFetch {
            name,
            dest,
            target_time,
            config,
        } => {
            use governor::archive::backup::{Pick, backup_fetch};
            if target_time.is_some() && name != "LATEST" {
                anyhow::bail!("--target-time chooses the backup itself: give LATEST, not {name}");
            }
            let archive = archive_config(&config)?;
            let store = governor::archive::AnyStore::open(&archive).await;
            let which = Pick::from_args(&name, target_time);
            let s = backup_fetch(&archive, &store, &which, &dest).await?;
            println!(
                "restored {} (finished {}) into {}",
                s.name,
                s.finish_time,
                dest.display()
            );
            if let Some(t) = target_time {
                println!(
                    "recover it with recovery_target_time = '{}'",
                    t.to_postgres()
                );
            }
            Ok(())
        }
        Command::VerifyBackup {
            backup,
            target_time,
            sql,
            scratch,
            timeout,
            json,
            config,
        } => {
            use governor::archive::backup::Pick;
            let parsed = parse_config(&config)?;
            let archive = parsed
                .archive
                .clone()
                .ok_or_else(|| anyhow::anyhow!("{}: no archive section", config.display()))?;
            let drill = governor::drill::Drill {
                config_path: std::path::absolute(&config)?,
                archive,
                bin_dir: parsed.postgresql.bin_dir.clone(),
                superuser: parsed.postgresql.authentication.superuser.username.clone(),
                pick: Pick::from_args(&backup, target_time),
                target_time,
                sql,
                scratch_parent: scratch.unwrap_or_else(std::env::temp_dir),
                timeout,
            };
            let report = governor::drill::run(&drill).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.text());
            }
            if !report.ok() {
                let failed: Vec<&str> = report
                    .checks
                    .iter()
                    .filter(|c| !c.ok)
                    .map(|c| c.name)
                    .collect();
                return Err(governor::drill::ChecksFailed(failed.join(", ")).into());
            }
            Ok(())
        }
        Command::BackupDelete { retain, config } => {
            let archive = archive_config(&config)?;
            let store = governor::archive::AnyStore::open(&archive).await;
            let d = governor::archive::retention::backup_delete(&archive, &store, retain).await?;
            if d.backups.is_empty() {
                println!("nothing to delete: no more than {retain} finished backup(s)");
            } else {
                println!(
                    "deleted {} backup(s) ({}) and {} WAL file(s) before {}",
                    d.backups.len(),
                    d.backups.join(", "),
                    d.wal_files,
                    d.keep_from.as_deref().unwrap_or("-")
                );
            }
            Ok(())
        }
        Command::WalFetch {
            name,
            dest,
            config,
            from_clone,
            from_standby_source,
        } => {
            let from = ArchiveOf::new(from_clone, from_standby_source);
            let archive = fetch_archive(&config, from)?;
            let store = governor::archive::AnyStore::open(&archive).await;
            let (found, next) =
                governor::archive::prefetch::fetch(&archive, &store, &name, &dest).await?;
            if !found {
                // Not archived: PostgreSQL probes for files that may not exist; no noise.
                std::process::exit(1);
            }
            if !next.is_empty() {
                start_prefetch(&config, from, &dest, &next);
            }
            Ok(())
        }
        Command::WalPrefetch {
            dir,
            names,
            config,
            from_clone,
            from_standby_source,
        } => {
            let archive = fetch_archive(&config, ArchiveOf::new(from_clone, from_standby_source))?;
            let store = governor::archive::AnyStore::open(&archive).await;
            governor::archive::prefetch::prefetch(&archive, &store, &names, &dir).await;
            Ok(())
        }
        Command::EtcdMember {
            config,
            name,
            connect_host,
        } => {
            if nix::unistd::geteuid().is_root() {
                return Err(governor::preflight::PreflightError::Root.into());
            }
            let shutdown = CancellationToken::new();
            let signals = tokio::spawn(wait_for_signal(shutdown.clone()));
            let r = governor::etcd_member::run(&config, &name, &connect_host, shutdown).await;
            signals.abort();
            Ok(r?)
        }
        Command::Run { config, identity } => {
            let shutdown = CancellationToken::new();
            let signals = tokio::spawn(wait_for_signal(shutdown.clone()));
            let r = loop {
                let loaded = governor::config::load(&config, &identity.identity()).await?;
                // An upgrade in place: committed, or rolled back, before anything else.
                let loaded = governor::major_upgrade::in_place::resume(loaded).await?;
                governor::preflight::check(&loaded.config)?;
                match governor::runtime::run(loaded, shutdown.clone()).await {
                    Ok(governor::runtime::Ended::Upgraded) if !shutdown.is_cancelled() => {}
                    other => break other.map(|_| ()),
                }
            };
            signals.abort();
            r
        }
    }
}

/// Which archive `wal-fetch` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArchiveOf {
    /// The member's own.
    Own,
    /// The source of `bootstrap.clone`.
    Clone,
    /// A standby cluster's source (the settings its standby leader keeps in its run directory).
    StandbySource,
}

impl ArchiveOf {
    fn new(from_clone: bool, from_standby_source: bool) -> Self {
        match (from_clone, from_standby_source) {
            (true, _) => ArchiveOf::Clone,
            (_, true) => ArchiveOf::StandbySource,
            _ => ArchiveOf::Own,
        }
    }
}

/// The archive `wal-fetch` reads.
fn fetch_archive(
    config: &std::path::Path,
    from: ArchiveOf,
) -> anyhow::Result<governor::archive::ArchiveConfig> {
    match from {
        ArchiveOf::Clone => parse_config(config)?
            .bootstrap
            .map(|b| b.clone.archive)
            .ok_or_else(|| anyhow::anyhow!("{}: no bootstrap.clone", config.display())),
        ArchiveOf::StandbySource => {
            let path = parse_config(config)?
                .run_dir()
                .join(governor::postgres::archiving::STANDBY_SOURCE_ARCHIVE);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("read {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("{}", path.display()))
        }
        ArchiveOf::Own => archive_config(config),
    }
}

/// Starts `governor wal-prefetch` in the background, detached: PostgreSQL waits for this
/// `wal-fetch` to exit, not for the prefetch. A failure to start only costs speed.
fn start_prefetch(
    config: &std::path::Path,
    from: ArchiveOf,
    dest: &std::path::Path,
    next: &[String],
) {
    use std::os::unix::process::CommandExt;
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("wal-prefetch")
        .arg(governor::archive::prefetch::dir_for(dest))
        .args(next)
        .arg("--config")
        .arg(config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0);
    match from {
        ArchiveOf::Clone => {
            cmd.arg("--from-clone");
        }
        ArchiveOf::StandbySource => {
            cmd.arg("--from-standby-source");
        }
        ArchiveOf::Own => {}
    }
    if let Err(e) = cmd.spawn() {
        tracing::debug!(error = %e, "cannot start prefetching");
    }
}

/// A configuration file, parsed and checked but with no secret resolved: the commands
/// PostgreSQL runs (`wal-push`, `wal-fetch`) may not have the governor's environment.
fn parse_config(path: &std::path::Path) -> anyhow::Result<governor::config::GovernorConfig> {
    Ok(governor::config::read(path)?)
}

/// The `archive:` section of a configuration file (no secrets are resolved: PostgreSQL runs
/// the archive commands, possibly without the governor's environment).
fn archive_config(path: &std::path::Path) -> anyhow::Result<governor::archive::ArchiveConfig> {
    parse_config(path)?
        .archive
        .ok_or_else(|| anyhow::anyhow!("{}: no archive section", path.display()))
}

/// Cancels `shutdown` on SIGTERM or SIGINT.
async fn wait_for_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}
