//! The AWS commands' arguments and their runs: `spilo plan`, `apply`, `diff`, `resources`,
//! `events`, `instances`. Exit codes follow Terraform's `-detailed-exitcode`: 0 no changes,
//! 2 changes (plan, diff), 1 error (including a blocked or refused cluster).

use super::clients::Clients;
use super::plan::{FORMAT_VERSION, Plan, PlanOptions};
use super::{apply, inspect, show};
use crate::desired;
use anyhow::Context;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

/// Exit code: nothing to change.
pub const EXIT_CLEAN: u8 = 0;
/// Exit code: an error, or a cluster that cannot be planned or applied.
pub const EXIT_ERROR: u8 = 1;
/// Exit code: changes.
pub const EXIT_CHANGES: u8 = 2;

/// Plan output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PlanFormat {
    /// Terraform-like text.
    Text,
    /// The plan as JSON (docs/plan-format.md).
    Json,
    /// Markdown for a pull-request comment.
    Markdown,
}

/// Where desired state comes from.
#[derive(Debug, Clone, clap::Args)]
pub struct Source {
    /// The git repository: a path or a URL (https, ssh, file).
    #[arg(long, default_value = ".")]
    pub repo: String,
    /// The ref to read cluster files from.
    #[arg(long = "ref", default_value = "HEAD")]
    pub reference: String,
}

/// How to reach AWS.
#[derive(Debug, Clone, clap::Args)]
pub struct AwsArgs {
    /// Send AWS calls to this endpoint instead of AWS (e.g. a moto server).
    #[arg(long, env = "SPILO_AWS_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,
    /// Also look for stacks whose file is gone in these regions (the files' regions always).
    #[arg(long = "region", env = "AWS_REGION", value_delimiter = ',')]
    pub regions: Vec<String>,
}

/// `spilo plan`.
#[derive(Debug, Clone, clap::Args)]
pub struct PlanArgs {
    #[command(flatten)]
    source: Source,
    #[command(flatten)]
    aws: AwsArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: PlanFormat,
    /// Also save the plan as JSON for `spilo apply FILE`.
    #[arg(short = 'o', long = "out")]
    out: Option<PathBuf>,
    /// Delete stacks whose file is gone even if their prune setting was off.
    #[arg(long)]
    prune: bool,
    /// Allow changes that replace resources (load balancer, DNS record, ...).
    #[arg(long)]
    allow_replace: bool,
    /// Also write the plan (markdown) as spilo's one comment on the pull request (GitHub) or
    /// merge request (GitLab) of this CI job, editing the earlier one; the comment is cut to
    /// the forge's limit, a markdown stdout is not (keep it as the job's artefact).
    #[arg(long, value_enum, value_name = "FORGE")]
    comment: Option<crate::forge::Forge>,
}

/// `spilo apply`.
#[derive(Debug, Clone, clap::Args)]
pub struct ApplyArgs {
    /// A plan saved with `spilo plan -o`; without it, plans now and asks.
    plan: Option<PathBuf>,
    #[command(flatten)]
    source: Source,
    #[command(flatten)]
    aws: AwsArgs,
    /// Do not ask for confirmation.
    #[arg(long)]
    auto_approve: bool,
    /// As for plan (ignored with a saved plan, which carries its options).
    #[arg(long)]
    prune: bool,
    /// As for plan (ignored with a saved plan).
    #[arg(long)]
    allow_replace: bool,
    /// Deletes cluster NAME, whose file is gone but did not set `reconcile.prune`, with its
    /// data volumes (its name typed back; asked for without it, refused with --auto-approve).
    #[arg(long = "confirm-delete", value_name = "NAME")]
    confirm_delete: Vec<String>,
}

/// `spilo diff`.
#[derive(Debug, Clone, clap::Args)]
pub struct DiffArgs {
    /// The base ref (e.g. the pull request's target branch).
    base: String,
    /// The head ref.
    #[arg(default_value = "HEAD")]
    head: String,
    /// The git repository.
    #[arg(long, default_value = ".")]
    repo: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: PlanFormat,
    /// Also write the plan (markdown) as spilo's one comment on the pull request (GitHub) or
    /// merge request (GitLab) of this CI job, editing the earlier one; the comment is cut to
    /// the forge's limit, a markdown stdout is not (keep it as the job's artefact).
    #[arg(long, value_enum, value_name = "FORGE")]
    comment: Option<crate::forge::Forge>,
}

/// `spilo resources|events|instances`.
#[derive(Debug, Clone, clap::Args)]
pub struct InspectArgs {
    /// The cluster.
    cluster: String,
    #[command(flatten)]
    source: Source,
    /// Send AWS calls to this endpoint instead of AWS.
    #[arg(long, env = "SPILO_AWS_ENDPOINT_URL")]
    endpoint_url: Option<String>,
    /// The region when the ref has no readable file for the cluster (the file's region wins).
    #[arg(long, env = "AWS_REGION")]
    region: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: crate::aws::commands::TableFormat,
}

/// Table output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TableFormat {
    /// A table.
    Text,
    /// JSON.
    Json,
}

/// Where remote repositories are mirrored.
pub fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("spilo").join("repos")
}

fn print_desired_error(e: &anyhow::Error) {
    if let Some(desired::DesiredError::Invalid { diagnostics, .. }) = e.downcast_ref() {
        eprint!("{}", crate::spec::render_text(diagnostics));
    }
}

/// With `--comment` the comment is cut to the forge's limit; stdout then carries the whole
/// markdown, which the CI keeps as the artefact the comment links to.
fn render_for(plan: &Plan, format: PlanFormat, comment: Option<crate::forge::Forge>) -> String {
    match (format, comment) {
        (PlanFormat::Markdown, Some(_)) => show::markdown(plan, usize::MAX),
        _ => render(plan, format),
    }
}

fn render(plan: &Plan, format: PlanFormat) -> String {
    match format {
        PlanFormat::Text => show::text(plan, show::Style::new(std::io::stdout().is_terminal())),
        PlanFormat::Json => show::json(plan) + "\n",
        PlanFormat::Markdown => show::markdown(plan, show::GITHUB_COMMENT_LIMIT),
    }
}

fn exit_code(plan: &Plan) -> u8 {
    if plan.has_blocked() {
        EXIT_ERROR
    } else if plan.has_changes() {
        EXIT_CHANGES
    } else {
        EXIT_CLEAN
    }
}

/// Reads the desired state and plans it; an invalid commit prints its diagnostics.
async fn plan_now(
    clients: &Clients,
    source: &Source,
    aws: &AwsArgs,
    options: PlanOptions,
) -> anyhow::Result<Plan> {
    super::make_plan(
        clients,
        &source.repo,
        &source.reference,
        &cache_dir(),
        &aws.regions,
        options,
    )
    .await
    .map(|(_, plan)| plan)
    .inspect_err(print_desired_error)
}

/// `spilo plan`.
pub async fn plan(args: PlanArgs) -> anyhow::Result<u8> {
    let clients = Clients::new(args.aws.endpoint_url.clone());
    let options = PlanOptions {
        prune: args.prune,
        allow_replace: args.allow_replace,
        check_upgrades: true,
    };
    let plan = plan_now(&clients, &args.source, &args.aws, options).await?;
    print!("{}", render_for(&plan, args.format, args.comment));
    if let Some(path) = &args.out {
        std::fs::write(path, show::json(&plan) + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!(
            "Saved the plan to {}; apply it with: spilo apply {}",
            path.display(),
            path.display()
        );
    }
    if let Some(forge) = args.comment {
        comment(forge, &plan).await?;
    }
    Ok(exit_code(&plan))
}

/// `spilo diff`.
pub async fn diff(args: DiffArgs) -> anyhow::Result<u8> {
    let cache = cache_dir();
    let read = |r: &str| {
        desired::read(&args.repo, r, &cache)
            .map_err(anyhow::Error::from)
            .inspect_err(print_desired_error)
    };
    let base = read(&args.base)?;
    let head = read(&args.head)?;
    let plan = super::plan_between(&base, &head, PlanOptions::default());
    print!("{}", render_for(&plan, args.format, args.comment));
    if let Some(forge) = args.comment {
        comment(forge, &plan).await?;
    }
    Ok(exit_code(&plan))
}

/// Writes `plan` as spilo's comment on the request this CI job runs for.
async fn comment(forge: crate::forge::Forge, plan: &Plan) -> anyhow::Result<()> {
    use crate::forge::{self, Target, Upserted};
    let target = Target::from_env(forge, &|k| std::env::var(k).ok())
        .context("cannot write the plan as a comment")?;
    let commit = &plan.based_on.commit;
    let room = forge.comment_limit().saturating_sub(forge::overhead(
        commit,
        target.head.as_deref(),
        target.artifact.as_deref(),
    ));
    let body = forge::comment_body(
        &show::markdown(plan, room),
        commit,
        target.head.as_deref(),
        target.artifact.as_deref(),
    );
    match forge::upsert(&target, &body)
        .await
        .with_context(|| format!("cannot write the plan as a comment on {}", target.name))?
    {
        Upserted::Created(id) => eprintln!("Wrote the plan as comment {id} on {}", target.name),
        Upserted::Updated(id) => {
            eprintln!(
                "Updated spilo's comment {id} on {} with this plan",
                target.name
            )
        }
    }
    Ok(())
}

/// `spilo apply`.
pub async fn apply(args: ApplyArgs) -> anyhow::Result<u8> {
    let clients = Clients::new(args.aws.endpoint_url.clone());
    let plan = match &args.plan {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let plan: Plan = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a spilo plan", path.display()))?;
            if plan.format_version != FORMAT_VERSION {
                anyhow::bail!(
                    "{}: plan format version {} is not {FORMAT_VERSION}; plan again with this spilo",
                    path.display(),
                    plan.format_version
                );
            }
            let (commit, _) =
                desired::read_files(&plan.based_on.repo, &plan.based_on.reference, &cache_dir())?;
            let fresh = apply::current_basis(&clients, &plan).await;
            let stale = apply::stale_reasons(&plan, &commit, &fresh);
            if !stale.is_empty() {
                eprintln!("error: the saved plan is stale; plan again:");
                for s in stale {
                    eprintln!("  - {s}");
                }
                return Ok(EXIT_ERROR);
            }
            print!("{}", render(&plan, PlanFormat::Text));
            plan
        }
        None => {
            let options = PlanOptions {
                prune: args.prune,
                allow_replace: args.allow_replace,
                check_upgrades: true,
            };
            let plan = plan_now(&clients, &args.source, &args.aws, options).await?;
            print!("{}", render(&plan, PlanFormat::Text));
            plan
        }
    };
    if !plan.has_changes() {
        println!("Nothing to apply.");
        return Ok(if plan.has_blocked() {
            EXIT_ERROR
        } else {
            EXIT_CLEAN
        });
    }
    if !args.auto_approve {
        print!("Apply these changes? Only 'yes' is accepted: ");
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if answer.trim() != "yes" {
            println!("Apply cancelled.");
            return Ok(EXIT_ERROR);
        }
    }
    let mut plan = plan;
    let mut unconfirmed = false;
    for c in plan
        .clusters
        .iter_mut()
        .filter(|c| c.action == super::plan::Action::Delete && !c.refused && !c.delete_by_file)
    {
        let typed = if args.confirm_delete.contains(&c.name) {
            true
        } else if args.auto_approve {
            false
        } else {
            print!(
                "{} did not set reconcile.prune: type its name to delete it with its data volumes: ",
                c.name
            );
            std::io::stdout().flush()?;
            let mut answer = String::new();
            std::io::stdin().lock().read_line(&mut answer)?;
            answer.trim() == c.name
        };
        if !typed {
            unconfirmed = true;
            c.refused = true;
            c.reason = Some(format!(
                "not deleted: its file did not set reconcile.prune, and its name was not typed \
                 back (--confirm-delete {})",
                c.name
            ));
        }
    }
    let log = apply::Log::new(std::io::stdout());
    let report = apply::apply(&clients, &plan, &log).await;
    println!();
    for (name, outcome) in &report.clusters {
        match outcome {
            apply::Outcome::Applied => println!("{name}: applied"),
            apply::Outcome::Skipped(why) => println!("{name}: skipped ({why})"),
            apply::Outcome::Failed(why) => {
                println!("{name}: FAILED: {why}");
                print_boot_failures(&plan, name).await;
            }
        }
    }
    Ok(if report.failed() || plan.has_blocked() || unconfirmed {
        EXIT_ERROR
    } else {
        EXIT_CLEAN
    })
}

/// What `spilo resources|events|instances` shows.
#[derive(Debug, Clone, Copy)]
pub enum Inspect {
    /// The stack's resources.
    Resources,
    /// The stack's events.
    Events,
    /// The instances and their members.
    Instances,
}

/// `spilo resources|events|instances`.
pub async fn inspect(what: Inspect, args: InspectArgs) -> anyhow::Result<u8> {
    let clients = Clients::new(args.endpoint_url.clone());
    let file = desired::read(&args.source.repo, &args.source.reference, &cache_dir())
        .ok()
        .and_then(|d| d.cluster(&args.cluster).cloned());
    let region = args
        .region
        .clone()
        .or_else(|| {
            file.as_ref()
                .and_then(|f| f.spec.aws.as_ref())
                .map(|a| a.region.clone())
        })
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no AWS cluster file named {} at {}; pass --region",
                args.cluster,
                args.source.reference
            )
        })?;
    let json = args.format == TableFormat::Json;
    match what {
        Inspect::Resources => {
            let rows = inspect::resources(&clients, &region, &args.cluster).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", inspect::resources_table(&rows));
            }
        }
        Inspect::Events => {
            let rows = inspect::events(&clients, &region, &args.cluster).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                for r in rows {
                    println!("{}", r.line);
                }
            }
        }
        Inspect::Instances => {
            let dcs = file.as_ref().and_then(|f| f.spec.dcs.clone());
            let rows = inspect::instances(&clients, &region, &args.cluster, dcs.as_ref()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", inspect::instances_table(&rows));
            }
        }
    }
    Ok(EXIT_CLEAN)
}

/// After a failed apply: the boot failures the cluster's instances reported to etcd, with
/// their boot logs (a member that could not start says why there, and with a FAILURE signal).
async fn print_boot_failures(plan: &Plan, name: &str) {
    let Some(c) = plan.clusters.iter().find(|c| c.name == name) else {
        return;
    };
    let Ok(scope) = spilo_model::ClusterName::new(name.to_string()) else {
        return;
    };
    if let super::observed::Observation::Present(e) =
        super::observe::observe_etcd(c.dcs.as_ref(), &scope).await
    {
        for (instance, f) in &e.boot_failures {
            print!("{name}: {}", inspect::boot_failure_text(instance, f));
        }
    }
}
