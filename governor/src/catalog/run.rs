//! The leader's side of [`super::plan`]: reads the declared roles and databases from
//! PostgreSQL (over its local socket, as the superuser), runs the steps one by one (each
//! logged with its reason), and the task that does so whenever this member leads a running
//! primary and the catalog in `config` changed, or it just became the leader, or the last
//! attempt failed (the same catalog again after [`RETRY`], never in a tight loop), or a change
//! made by hand is to be undone. A failure is on `/status` (`catalog_error`) until an attempt
//! succeeds; failures and hand-made changes are in the etcd key `catalog` (drift).

use super::{Observed, ObservedDatabase, ObservedRole, Step, plan};
use crate::shared::Shared;
use spilo_model::catalog::{Catalog, RoleFlag};
use spilo_model::governor::SecretRef;
use spilo_model::{MemberRole, MemberState};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

/// How long after a failed attempt the next one starts.
pub const RETRY: Duration = Duration::from_secs(30);

/// Where PostgreSQL is.
#[derive(Debug, Clone)]
pub struct Local {
    /// The socket directory.
    pub socket_dir: PathBuf,
    /// The port.
    pub port: u16,
    /// The superuser.
    pub user: String,
}

impl Local {
    async fn client(&self, dbname: &str) -> Result<Client, tokio_postgres::Error> {
        let mut c = tokio_postgres::Config::new();
        c.host_path(&self.socket_dir)
            .port(self.port)
            .user(&self.user)
            .dbname(dbname)
            .connect_timeout(Duration::from_secs(5))
            // A statement waiting on a lock, or running long, fails the pass instead of
            // holding the task (and the checks for changes by hand) forever.
            .options("-c lock_timeout=10s -c statement_timeout=120s");
        let (client, conn) = c.connect(NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    }
}

/// The declared roles and databases as PostgreSQL has them.
pub async fn observe(local: &Local, desired: &Catalog) -> Result<Observed, tokio_postgres::Error> {
    let c = local.client("postgres").await?;
    let names: Vec<String> = desired.roles.keys().cloned().collect();
    let mut observed = Observed::default();
    for row in c
        .query(
            "SELECT rolname, rolcanlogin, rolcreatedb, rolcreaterole, rolbypassrls, rolinherit, \
             rolconnlimit, rolsuper OR rolreplication FROM pg_roles WHERE rolname = ANY($1)",
            &[&names],
        )
        .await?
    {
        let mut flags = std::collections::BTreeSet::new();
        for (i, f) in [
            (2, RoleFlag::Createdb),
            (3, RoleFlag::Createrole),
            (4, RoleFlag::Bypassrls),
        ] {
            if row.get::<_, bool>(i) {
                flags.insert(f);
            }
        }
        if !row.get::<_, bool>(5) {
            flags.insert(RoleFlag::Noinherit);
        }
        observed.roles.insert(
            row.get(0),
            ObservedRole {
                login: row.get(1),
                flags,
                connection_limit: row.get(6),
                privileged: row.get(7),
                member_of: Default::default(),
            },
        );
    }
    for row in c
        .query(
            "SELECT m.rolname, g.rolname FROM pg_auth_members a \
             JOIN pg_roles m ON m.oid = a.member JOIN pg_roles g ON g.oid = a.roleid \
             WHERE m.rolname = ANY($1)",
            &[&names],
        )
        .await?
    {
        let member: String = row.get(0);
        if let Some(r) = observed.roles.get_mut(&member) {
            r.member_of.insert(row.get(1));
        }
    }
    let databases: Vec<String> = desired.databases.keys().cloned().collect();
    for row in c
        .query(
            "SELECT datname, pg_get_userbyid(datdba) FROM pg_database WHERE datname = ANY($1)",
            &[&databases],
        )
        .await?
    {
        let name: String = row.get(0);
        let inside = local.client(&name).await?;
        let extensions = inside
            .query("SELECT extname FROM pg_extension", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let schemas = inside
            .query("SELECT nspname FROM pg_namespace", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        observed.databases.insert(
            name,
            ObservedDatabase {
                owner: row.get(1),
                extensions,
                schemas,
            },
        );
    }
    Ok(observed)
}

/// Reads each password a role names, as a SCRAM verifier; an error names the role. A file
/// is read here; an SSM parameter or a Secrets Manager secret in `region` (a generated
/// password on AWS is stored into its SSM parameter first when there is none).
async fn verifiers(
    desired: &Catalog,
    region: Option<&str>,
) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (name, role) in &desired.roles {
        // A role declared absent is dropped: its password is neither read nor made.
        if role.state == spilo_model::catalog::Presence::Absent {
            continue;
        }
        let Some(p) = &role.password else { continue };
        let text = match p.as_secret() {
            Some(SecretRef {
                file: Some(file), ..
            }) => std::fs::read_to_string(&file).map_err(|e| {
                format!(
                    "role {name}: cannot read its password from {}: {e}",
                    file.display()
                )
            })?,
            Some(secret) => {
                let Some(region) = region else {
                    return Err(format!(
                        "role {name}: its password is in AWS, and this governor has no aws.region"
                    ));
                };
                let read = match (&p.ssm, p.generated) {
                    (Some(at), true) => crate::config::generated_parameter(at, region).await,
                    _ => crate::config::resolve_secret(
                        &secret,
                        &format!("role {name}"),
                        region,
                        std::path::Path::new("config.catalog"),
                    )
                    .await
                    .map_err(|e| e.to_string()),
                };
                read.map_err(|e| format!("role {name}: cannot read its password: {e}"))?
            }
            None => {
                return Err(format!(
                    "role {name}: its password was not resolved by the target (a file, SSM \
                     parameter or Secrets Manager secret)"
                ));
            }
        };
        let password = text.trim_end_matches(['\n', '\r']);
        if password.is_empty() {
            return Err(format!("role {name}: its password is empty"));
        }
        out.insert(
            name.clone(),
            postgres_protocol::password::scram_sha_256(password.as_bytes()),
        );
    }
    Ok(out)
}

/// One convergence: reads, plans, runs. Returns the steps run; an error names the step.
pub async fn converge(
    local: &Local,
    desired: &Catalog,
    with_passwords: bool,
    region: Option<&str>,
) -> Result<Vec<Step>, String> {
    let observed = observe(local, desired)
        .await
        .map_err(|e| format!("cannot read the catalog: {e}"))?;
    let passwords = if with_passwords {
        verifiers(desired, region).await?
    } else {
        BTreeMap::new()
    };
    let steps = plan(desired, &observed, &passwords);
    let mut clients: BTreeMap<String, Client> = BTreeMap::new();
    for s in &steps {
        let db = s.database.clone().unwrap_or_else(|| "postgres".into());
        if !clients.contains_key(&db) {
            let c = local
                .client(&db)
                .await
                .map_err(|e| format!("{}: cannot connect to {db}: {e}", s.why))?;
            clients.insert(db.clone(), c);
        }
        let c = &clients[&db];
        c.batch_execute(&s.sql)
            .await
            .map_err(|e| format!("{}: {e}", s.why))?;
        tracing::info!(database = %db, reason = %s.why, "catalog: done");
    }
    Ok(steps)
}

/// How often the leader looks for changes made by hand.
pub const CHECK_EVERY: Duration = Duration::from_secs(10);

/// What the task needs.
pub struct Task {
    /// Where PostgreSQL is.
    pub local: Local,
    /// The shared state.
    pub shared: Arc<Shared>,
    /// Where the `catalog` status is written.
    pub dcs: crate::dcs::Store,
    /// This member.
    pub me: String,
    /// Where passwords kept in AWS are read (the configuration's `aws.region`).
    pub region: Option<String>,
}

/// Runs until `cancel` fires: converges while this member leads a running primary, and looks
/// for changes made by hand every [`CHECK_EVERY`]: undone when the catalog says `revert`,
/// otherwise written to the `catalog` key as drift.
pub async fn task(t: Task, cancel: CancellationToken) {
    // What was converged last (with passwords), and what failed when: the same catalog is
    // tried again only after RETRY; a changed one at once.
    let mut done: Option<Catalog> = None;
    // Whose passwords were set last (they are set again when a role's password changes).
    let mut passwords_of: Option<Catalog> = None;
    let mut failed: Option<(Catalog, Instant)> = None;
    let mut checked = Instant::now();
    let mut written: Option<(Option<String>, Vec<String>)> = None;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let leads = {
            let node = t.shared.node.read().await;
            node.is_leader
                && node.member.role == MemberRole::Primary
                && node.member.state == MemberState::Running
        };
        if !leads {
            // A leader again later sets every password anew, and writes its status; what
            // this member said as leader is no longer its to say.
            done = None;
            passwords_of = None;
            written = None;
            *t.shared.catalog_error.write().await = None;
            continue;
        }
        let desired = {
            let view = t.shared.view.read().await;
            view.as_ref()
                .and_then(|v| v.config.as_ref())
                .and_then(|c| c.catalog.clone())
        };
        let Some(desired) = desired.filter(|c| !c.is_empty()) else {
            *t.shared.catalog_error.write().await = None;
            continue;
        };
        let mut undo = false;
        if done.as_ref() == Some(&desired) {
            if checked.elapsed() < CHECK_EVERY {
                continue;
            }
            checked = Instant::now();
            let drift = match differences(&t.local, &desired).await {
                Ok(d) => d,
                Err(e) => {
                    // What was reported stands until the catalog can be read again.
                    tracing::warn!(error = %e, "catalog: cannot read it to look for changes");
                    continue;
                }
            };
            if drift.is_empty() || !desired.revert {
                report(&t, &mut written, None, drift).await;
                continue;
            }
            tracing::warn!(changes = ?drift, "catalog: undoing changes made by hand");
            undo = true;
        }
        let waiting = failed
            .as_ref()
            .is_some_and(|(c, at)| *c == desired && at.elapsed() < RETRY);
        if waiting {
            continue;
        }
        let passwords = passwords_of.as_ref().is_none_or(|p: &Catalog| {
            p.roles
                .iter()
                .map(|(n, r)| (n, &r.password))
                .ne(desired.roles.iter().map(|(n, r)| (n, &r.password)))
        });
        match converge(&t.local, &desired, passwords, t.region.as_deref()).await {
            Ok(steps) => {
                tracing::info!(steps = steps.len(), "catalog: converged");
                *t.shared.catalog_error.write().await = None;
                done = Some(desired.clone());
                passwords_of = Some(desired.clone());
                failed = None;
                checked = Instant::now();
                // A change by hand the steps did not undo stays reported (tried again at the
                // next check).
                let remaining = if undo {
                    differences(&t.local, &desired).await.unwrap_or_default()
                } else {
                    Vec::new()
                };
                report(&t, &mut written, None, remaining).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?RETRY, "catalog: not converged");
                *t.shared.catalog_error.write().await = Some(e.clone());
                failed = Some((desired, Instant::now()));
                // Partly applied: whatever comes next is converged anew.
                done = None;
                report(&t, &mut written, Some(e), Vec::new()).await;
            }
        }
    }
}

/// What differs between `desired` and PostgreSQL now (passwords aside), as the steps that
/// would undo it say it.
async fn differences(
    local: &Local,
    desired: &Catalog,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let observed = observe(local, desired).await?;
    Ok(plan(desired, &observed, &BTreeMap::new())
        .into_iter()
        .map(|s| s.why)
        .collect())
}

/// Writes the `catalog` key when what it says changed.
async fn report(
    t: &Task,
    written: &mut Option<(Option<String>, Vec<String>)>,
    error: Option<String>,
    drift: Vec<String>,
) {
    let now = (error, drift);
    if written.as_ref() == Some(&now) {
        return;
    }
    if !now.1.is_empty() {
        tracing::warn!(changes = ?now.1, "catalog: changed by hand (reported, not undone)");
    }
    let status = spilo_model::catalog::CatalogStatus {
        member: t.me.clone(),
        unix: u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0),
        error: now.0.clone(),
        drift: now.1.clone(),
    };
    match t.dcs.put_catalog_status(&status).await {
        Ok(()) => *written = Some(now),
        Err(e) => tracing::warn!(error = %e, "catalog: cannot write its status to etcd"),
    }
}
