//! The `spilo` binary: argument parsing, output and exit codes. The work is in the library.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

/// spilo: highly available PostgreSQL clusters declared in git.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum ValidateFormat {
    Text,
    Json,
    /// GitHub Actions workflow commands: errors and warnings on the pull request's lines.
    Github,
    /// A GitLab Code Quality report (JSON) for the merge request's changes.
    Gitlab,
}

#[derive(Subcommand)]
enum Command {
    /// Check cluster files: YAML, the schema, and the rules across fields and files.
    Validate {
        /// Files or directories (default: clusters/).
        paths: Vec<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: ValidateFormat,
    },
    /// Ask for a new cluster's settings (like `senza init`) and write its file.
    Init(Box<spilo::init::InitArgs>),
    /// Run the local clusters of clusters/ on this machine, in the foreground.
    Up(spilo::local::up::UpArgs),
    /// Show local clusters: endpoints and members with role, state, lag and pids.
    Status {
        /// One cluster (default: all).
        cluster: Option<String>,
        /// The state directory (default: .spilo/ beside clusters/).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Stop local clusters; --purge also deletes their data.
    Down {
        /// One cluster (default: all).
        cluster: Option<String>,
        /// The state directory (default: .spilo/ beside clusters/).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Delete the cluster's data, logs and generated files too.
        #[arg(long)]
        purge: bool,
    },
    /// Plan the AWS clusters of a commit against AWS and etcd, or (--local) the local clusters
    /// of cluster files against what `spilo up` runs here, a major upgrade's checks included
    /// (exit 0: no changes, 2: changes, 1: error or blocked).
    Plan(PlanCommand),
    /// Apply a plan (saved with `plan -o`, or made now) through CloudFormation change sets.
    Apply(spilo::aws::commands::ApplyArgs),
    /// What moving from one ref to another changes, without AWS credentials (for pull requests).
    Diff(spilo::aws::commands::DiffArgs),
    /// The resources of a cluster's stack.
    Resources(spilo::aws::commands::InspectArgs),
    /// The events of a cluster's stack, oldest first.
    Events(spilo::aws::commands::InspectArgs),
    /// The instances of a cluster with their members' roles.
    Instances(spilo::aws::commands::InspectArgs),
    /// Reconcile continuously from a branch: apply new commits, alert on drift, revert it where asked.
    Watch(spilo::drift::watch::WatchArgs),
    /// Report drift between git, AWS and the running clusters (exit 0: none, 2: drift, 1: error).
    Drift(spilo::drift::report::DriftArgs),
    /// Maintenance mode on: no automatic failover, promotion or restarts until `spilo resume`.
    Pause(EtcdTarget),
    /// Maintenance mode off.
    Resume(EtcdTarget),
    /// Move the primary role to a replica (now, or --at a time), without losing a commit.
    Switchover(spilo::operate::commands::SwitchoverArgs),
    /// Promote a named member when there is no healthy primary (also in maintenance mode).
    Failover(spilo::operate::commands::FailoverArgs),
    /// Restart PostgreSQL: replicas first, then the primary (--pending: by a switchover).
    Restart(spilo::operate::commands::MemberArgs),
    /// Rewrite PostgreSQL's configuration and reload it on every member (or one).
    Reload(spilo::operate::commands::MemberArgs),
    /// Throw a replica's data away and copy the primary again.
    Reinit(spilo::operate::commands::MemberArgs),
    /// Take a base backup now (the leader, into the cluster's archive); waits until it is done.
    Backup(spilo::operate::commands::BackupArgs),
    /// The promotions of a cluster: timeline, switch point, when, who and why.
    History {
        #[command(flatten)]
        target: EtcdTarget,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Print the cluster's dynamic configuration (etcd `config`) as YAML.
    ShowConfig(EtcdTarget),
    /// Change the cluster's dynamic configuration (--set, --pg, or $EDITOR); shows the diff.
    EditConfig(spilo::operate::config::EditArgs),
    /// A restore drill of a cluster's archive: restore, replay, start a throwaway PostgreSQL,
    /// check it (exit 0 verified, 2 a check failed, 1 error). Runs here for a cluster `spilo
    /// up` runs, else (--etcd) on the cluster's designated member.
    VerifyBackup(spilo::operate::verify_backup::VerifyArgs),
    /// Promote a standby cluster whose source cannot be reached (--source-unreachable); its
    /// source follows it when it runs again.
    PromoteStandby(spilo::operate::promote_standby::PromoteStandbyArgs),
    /// Print the JSON Schema of cluster files (committed as schemas/cluster.schema.json), or
    /// with `--kind EtcdCluster` of etcd cluster files (schemas/etcd-cluster.schema.json).
    #[command(hide = true)]
    Schema {
        /// The kind of file.
        #[arg(long, default_value = "PostgresCluster", value_parser = ["PostgresCluster", "EtcdCluster"])]
        kind: String,
    },
    /// Print the members of a running cluster (name, host:port, role, state, timeline, lag).
    List {
        #[command(flatten)]
        target: EtcdTarget,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
}

use spilo::operate::Target as EtcdTarget;

/// `spilo plan`: AWS, or with `--local` the local target.
#[derive(Debug, clap::Args)]
struct PlanCommand {
    /// Plan the local clusters instead: what `spilo up` would do with these files to the
    /// clusters it runs (clusters to start, resize or stop, a major upgrade checked with
    /// `pg_upgrade --check`); changes nothing. Run it as the user that runs `spilo up`.
    #[arg(long, conflicts_with_all = [
        "format", "out", "prune", "allow_replace", "comment", "repo", "reference",
    ])]
    local: bool,
    /// With --local: cluster files or directories (default: clusters/).
    #[arg(requires = "local")]
    paths: Vec<PathBuf>,
    /// With --local: the state directory of the `spilo up` running the clusters (default:
    /// .spilo/ beside the files).
    #[arg(long, requires = "local")]
    state_dir: Option<PathBuf>,
    #[command(flatten)]
    aws: spilo::aws::commands::PlanArgs,
}

async fn set_pause(t: EtcdTarget, pause: bool) -> anyhow::Result<ExitCode> {
    spilo::list::set_pause(&t, pause).await?;
    if pause {
        println!(
            "{}: maintenance mode on: no automatic failover until `spilo resume {}`",
            t.cluster, t.cluster
        );
    } else {
        println!("{}: maintenance mode off", t.cluster);
    }
    Ok(ExitCode::SUCCESS)
}

fn ok(r: anyhow::Result<()>) -> anyhow::Result<ExitCode> {
    r.map(|()| ExitCode::SUCCESS)
}

fn local_layout(state_dir: Option<PathBuf>) -> anyhow::Result<spilo::local::state::Layout> {
    let run_as = spilo::local::user::RunAs::detect()?;
    let (root, _) =
        spilo::local::state_dir(state_dir.as_deref(), &[PathBuf::from("clusters")], &run_as)?;
    Ok(spilo::local::state::Layout { root })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate { paths, format } => {
            let paths = if paths.is_empty() {
                vec![PathBuf::from("clusters")]
            } else {
                paths
            };
            let files = spilo::spec::read_files(&paths)?;
            let checked = spilo::spec::validate_files(&files);
            match format {
                ValidateFormat::Text => {
                    print!("{}", spilo::spec::render_text(&checked.diagnostics));
                    let errors = checked
                        .diagnostics
                        .iter()
                        .filter(|d| d.severity == spilo::spec::Severity::Error)
                        .count();
                    let warnings = checked.diagnostics.len() - errors;
                    eprintln!(
                        "{} file(s) checked: {errors} error(s), {warnings} warning(s)",
                        files.len()
                    );
                }
                ValidateFormat::Json => {
                    println!("{}", spilo::spec::render_json(&checked.diagnostics))
                }
                ValidateFormat::Github => {
                    print!("{}", spilo::spec::render_github(&checked.diagnostics))
                }
                ValidateFormat::Gitlab => {
                    println!("{}", spilo::spec::render_gitlab(&checked.diagnostics))
                }
            }
            Ok(if checked.has_errors() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Init(args) => {
            let stdin = std::io::stdin();
            let mut input = stdin.lock();
            let mut out = std::io::stdout();
            let endpoint = args.endpoint_url.clone();
            let mut account = |region: &str| {
                tokio::task::block_in_place(|| {
                    tokio::runtime::Handle::current()
                        .block_on(spilo::aws::clients::account_id(endpoint.as_deref(), region))
                })
            };
            let path = spilo::init::run(&args, &mut account, &mut input, &mut out)?;
            println!("Check it with: spilo validate {}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Up(args) => {
            spilo::local::up::up(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status {
            cluster,
            state_dir,
            format,
        } => {
            let layout = local_layout(state_dir)?;
            let report = spilo::local::status::collect(&layout, cluster.as_deref()).await?;
            match format {
                Format::Text => print!("{}", spilo::local::status::render(&report)),
                Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Down {
            cluster,
            state_dir,
            purge,
        } => {
            let layout = local_layout(state_dir)?;
            spilo::local::down::down(&layout, cluster.as_deref(), purge).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::VerifyBackup(a) => Ok(ExitCode::from(
            spilo::operate::verify_backup::verify_backup(a).await?,
        )),
        Command::Plan(p) if p.local => Ok(ExitCode::from(
            spilo::local::preview::run(&p.paths, p.state_dir.as_deref()).await?,
        )),
        Command::Plan(p) => Ok(ExitCode::from(spilo::aws::commands::plan(p.aws).await?)),
        Command::Apply(args) => Ok(ExitCode::from(spilo::aws::commands::apply(args).await?)),
        Command::Diff(args) => Ok(ExitCode::from(spilo::aws::commands::diff(args).await?)),
        Command::Resources(args) => Ok(ExitCode::from(
            spilo::aws::commands::inspect(spilo::aws::commands::Inspect::Resources, args).await?,
        )),
        Command::Events(args) => Ok(ExitCode::from(
            spilo::aws::commands::inspect(spilo::aws::commands::Inspect::Events, args).await?,
        )),
        Command::Instances(args) => Ok(ExitCode::from(
            spilo::aws::commands::inspect(spilo::aws::commands::Inspect::Instances, args).await?,
        )),
        Command::Watch(args) => Ok(ExitCode::from(spilo::drift::watch::watch(args).await?)),
        Command::Drift(args) => Ok(ExitCode::from(spilo::drift::report::run(args).await?)),
        Command::Switchover(a) => ok(spilo::operate::commands::switchover(a).await),
        Command::Failover(a) => ok(spilo::operate::commands::failover(a).await),
        Command::Restart(a) => ok(spilo::operate::commands::restart(a).await),
        Command::Reload(a) => ok(spilo::operate::commands::reload(a).await),
        Command::Reinit(a) => ok(spilo::operate::commands::reinit(a).await),
        Command::Backup(a) => ok(spilo::operate::commands::backup(a).await),
        Command::History { target, format } => {
            ok(spilo::operate::commands::history(target, matches!(format, Format::Json)).await)
        }
        Command::ShowConfig(t) => ok(spilo::operate::config::show(t).await),
        Command::EditConfig(a) => ok(spilo::operate::config::edit(a).await),
        Command::PromoteStandby(a) => ok(spilo::operate::promote_standby::promote_standby(a).await),
        Command::Pause(t) => set_pause(t, true).await,
        Command::Resume(t) => set_pause(t, false).await,
        Command::Schema { kind } => {
            if kind == "EtcdCluster" {
                print!("{}", spilo::spec::etcd_schema_json());
            } else {
                print!("{}", spilo::spec::schema_json());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::List { target, format } => {
            let summary = spilo::list::read_summary(&target).await?;
            match format {
                Format::Text => print!("{}", summary.to_table()),
                Format::Json => println!("{}", serde_json::to_string_pretty(&summary)?),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
