//! Roles and databases declared in a local cluster file (`spec.roles`, `spec.databases`):
//! after `spilo up` each role logs in to its database through HAProxy with its password (one
//! generated and kept in the state directory, one from a file beside the cluster file), the
//! extensions and schemas exist; an edit (a new role, a changed flag, a membership) converges;
//! and after a kill -9 failover the new leader converges the next edit.

use spilo_e2e::local::LocalRepo;
use spilo_e2e::sql::connect_dsn;
use spilo_e2e::{ports, proc, wait};
use std::time::Duration;

const READY: Duration = Duration::from_secs(240);

fn cluster(base: u16, extra: &str) -> String {
    let mut y = LocalRepo::cluster_yaml("cat", 2, base);
    y.push_str("  ha: {ttl: 10, loopWait: 2, retryTimeout: 3}\n");
    y.push_str(
        "  roles:\n    \
         app: {password: {generated: true}}\n    \
         reporter: {memberOf: [readers], connectionLimit: 5, password: {file: reporter.pw}}\n    \
         readers: {login: false}\n",
    );
    y.push_str(extra);
    y.push_str(
        "  databases:\n    \
         app: {owner: app, extensions: [pg_stat_statements, pgcrypto], schemas: [billing]}\n    \
         reports: {owner: reporter}\n",
    );
    y
}

/// A session as `user` with `password` in `db`, through the cluster's primary port.
async fn login(
    repo: &LocalRepo,
    base: u16,
    user: &str,
    password: &str,
    db: &str,
) -> anyhow::Result<tokio_postgres::Client> {
    let dsn = repo
        .dsn("cat", base)?
        .replace("user=postgres", &format!("user={user}"))
        .replace("dbname=postgres", &format!("dbname={db}"));
    let dsn = dsn
        .split(' ')
        .map(|kv| {
            if kv.starts_with("password=") {
                format!("password={password}")
            } else {
                kv.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    connect_dsn(&dsn).await
}

fn generated(repo: &LocalRepo, role: &str) -> Option<String> {
    std::fs::read_to_string(repo.state().join("cat/secrets/roles").join(role))
        .ok()
        .map(|p| p.trim().to_string())
}

async fn one_bool(c: &tokio_postgres::Client, sql: &str) -> anyhow::Result<bool> {
    Ok(c.query_one(sql, &[]).await?.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_roles_and_databases_are_converged_by_the_leader() -> anyhow::Result<()> {
    let mut repo = LocalRepo::new()?;
    let r = scenario(&mut repo).await;
    repo.finish(r)
}

async fn scenario(repo: &mut LocalRepo) -> anyhow::Result<()> {
    let base = ports::free_block(30);
    repo.write("reporter.pw", "reporter-s3cret\n")?;
    repo.write("cat.yaml", &cluster(base, ""))?;
    repo.up()?;
    repo.wait_printed("cluster cat is ready", READY).await?;

    // Each role logs in to its database with its password (`reports` is converged last).
    let reporter = wait::until("reporter to log in to its database", READY, || async {
        login(repo, base, "reporter", "reporter-s3cret", "reports")
            .await
            .ok()
    })
    .await?;
    let app = login(
        repo,
        base,
        "app",
        &generated(repo, "app").unwrap_or_default(),
        "app",
    )
    .await?;
    let extensions: Vec<String> = app
        .query("SELECT extname::text FROM pg_extension ORDER BY 1", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(extensions, ["pg_stat_statements", "pgcrypto", "plpgsql"]);
    assert!(
        one_bool(
            &app,
            "SELECT pg_get_userbyid(nspowner) = 'app' FROM pg_namespace WHERE nspname = 'billing'"
        )
        .await?
    );
    app.batch_execute("CREATE TABLE billing.invoices (id int)")
        .await?;
    assert!(
        one_bool(
            &reporter,
            "SELECT pg_has_role('reporter', 'readers', 'member')"
        )
        .await?
    );
    assert!(
        one_bool(
            &reporter,
            "SELECT rolconnlimit = 5 AND NOT rolcreatedb FROM pg_roles WHERE rolname = 'reporter'"
        )
        .await?
    );
    let wrong = login(repo, base, "reporter", "not-it", "reports").await;
    assert!(wrong.is_err(), "a wrong password is refused");
    let readers = login(repo, base, "readers", "", "reports").await;
    assert!(readers.is_err(), "a group role cannot log in");
    let log = repo.up_log();
    assert!(!log.contains("reporter-s3cret"), "no password in the log");
    // `spilo status` says where each password is kept, and how to connect to each database.
    let status = repo.status()?;
    let roles = status["clusters"][0]["roles"].clone();
    let app_password = repo.state().join("cat/secrets/roles/app");
    assert_eq!(roles[0]["name"], "app", "{roles}");
    assert_eq!(
        roles[0]["password_file"],
        app_password.display().to_string().as_str()
    );
    let databases = status["clusters"][0]["databases"].clone();
    assert!(
        databases[0]["dsn"]
            .as_str()
            .is_some_and(|d| d.contains("user=app dbname=app")),
        "{databases}"
    );

    // An edit: a new role, a changed flag, a membership.
    repo.write(
        "cat.yaml",
        &cluster(
            base,
            "    auditor: {memberOf: [readers], password: {generated: true}}\n",
        )
        .replace(
            "reporter: {memberOf",
            "reporter: {flags: [createdb], memberOf",
        ),
    )?;
    let auditor = wait::until("the new role to log in", READY, || async {
        login(
            repo,
            base,
            "auditor",
            &generated(repo, "auditor")?,
            "reports",
        )
        .await
        .ok()
    })
    .await?;
    assert!(
        one_bool(
            &auditor,
            "SELECT pg_has_role('auditor', 'readers', 'member')"
        )
        .await?
    );
    wait::until("reporter to get createdb", READY, || async {
        let c = login(repo, base, "reporter", "reporter-s3cret", "reports")
            .await
            .ok()?;
        one_bool(
            &c,
            "SELECT rolcreatedb FROM pg_roles WHERE rolname = 'reporter'",
        )
        .await
        .ok()?
        .then_some(())
    })
    .await?;

    // `spilo up` said what the edit changes, in words; `spilo list` tells where each
    // password is kept.
    let log = repo.up_log();
    for line in [
        "cluster cat: + role auditor (login, member of readers, password from file",
        "cluster cat: ~ role reporter: +createdb",
    ] {
        assert!(log.contains(line), "{line} not in:\n{log}");
    }
    let (code, list, err) = repo.spilo(&["list", "cat"])?;
    assert_eq!(code, 0, "{err}");
    let auditor_file = repo.state().join("cat/secrets/roles/auditor");
    assert!(
        list.contains(&format!(
            "Role: auditor (password from file {})",
            auditor_file.display()
        )) && list.contains(
            "Database: reports (owner reporter; connect with dbname=reports user=reporter)"
        ),
        "{list}"
    );

    // A change by hand: undone within a check (every 10 s) under the local default, `drift:
    // revert`; under `drift: warn` reported on `spilo status` (and as `catalog` drift) and
    // left alone.
    let superuser = connect_dsn(&repo.dsn("cat", base)?).await?;
    let createdb = || async {
        let c = connect_dsn(&repo.dsn("cat", base).ok()?).await.ok()?;
        one_bool(
            &c,
            "SELECT rolcreatedb FROM pg_roles WHERE rolname = 'reporter'",
        )
        .await
        .ok()
    };
    superuser
        .batch_execute("ALTER ROLE reporter NOCREATEDB")
        .await?;
    wait::until("the change by hand to be undone", READY, || async {
        createdb().await?.then_some(())
    })
    .await?;
    let edited = cluster(
        base,
        "    auditor: {memberOf: [readers], password: {generated: true}}\n",
    )
    .replace(
        "reporter: {memberOf",
        "reporter: {flags: [createdb], memberOf",
    );
    repo.write(
        "cat.yaml",
        &format!("{edited}  reconcile: {{drift: warn}}\n"),
    )?;
    wait::until("the policy to reach the leader", READY, || async {
        let (_, out, _) = repo.spilo(&["show-config", "cat"]).ok()?;
        (!out.contains("revert: true")).then_some(())
    })
    .await?;
    // (Made again while the leader may still converge the edit, which undoes it.)
    wait::until("the change by hand to be reported", READY, || async {
        if createdb().await? {
            superuser
                .batch_execute("ALTER ROLE reporter NOCREATEDB")
                .await
                .ok()?;
        }
        let (_, text, _) = repo.spilo(&["status", "cat"]).ok()?;
        text.contains("Catalog:  changed by hand (reported, not undone): role reporter: +createdb")
            .then_some(())
    })
    .await?;
    assert_eq!(createdb().await, Some(false), "reported, not undone");
    drop(superuser);

    // A new password in the role's file: set within a refresh (10 s), the old one refused.
    repo.write("reporter.pw", "reporter-n3w\n")?;
    wait::until("the new password to work", READY, || async {
        login(repo, base, "reporter", "reporter-n3w", "reports")
            .await
            .ok()
    })
    .await?;
    assert!(
        login(repo, base, "reporter", "reporter-s3cret", "reports")
            .await
            .is_err(),
        "the old password is refused"
    );

    // kill -9 of the primary: the new leader converges the next edit (a new database).
    let status = repo.status()?;
    let primary = status["clusters"][0]["members"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["role"] == "primary"))
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no primary: {status}"))?;
    proc::kill_group(primary["governor_pid"].as_u64().unwrap_or(0) as u32);
    proc::kill_postgres(primary["postmaster_pid"].as_u64().unwrap_or(0) as u32);
    let killed = primary["name"].as_str().unwrap_or_default().to_string();
    wait::until("another member to lead", READY, || async {
        let s = repo.status().ok()?;
        let p = s["clusters"][0]["members"]
            .as_array()?
            .iter()
            .find(|m| m["role"] == "primary")?
            .clone();
        (p["name"] != killed.as_str() && p["state"] == "running").then_some(())
    })
    .await?;
    repo.write(
        "cat.yaml",
        &format!(
            "{}    audit: {{owner: auditor, schemas: [trail]}}\n",
            cluster(
                base,
                "    auditor: {memberOf: [readers], password: {generated: true}}\n"
            )
            .replace(
                "reporter: {memberOf",
                "reporter: {flags: [createdb], memberOf"
            )
        ),
    )?;
    let audit = wait::until("the new leader to create the database", READY, || async {
        login(repo, base, "auditor", &generated(repo, "auditor")?, "audit")
            .await
            .ok()
    })
    .await?;
    // The database is made before its schemas: the login can come between the two.
    wait::until("the new leader to create the schema", READY, || async {
        one_bool(
            &audit,
            "SELECT count(*) = 1 FROM pg_namespace WHERE nspname = 'trail'",
        )
        .await
        .ok()?
        .then_some(())
    })
    .await?;
    // The data written before the failover is there, owned as declared.
    let app = login(
        repo,
        base,
        "app",
        &generated(repo, "app").unwrap_or_default(),
        "app",
    )
    .await?;
    app.batch_execute("INSERT INTO billing.invoices VALUES (1)")
        .await?;
    let log = repo.up_log();
    assert!(
        !log.contains("cannot write its roles and databases"),
        "{log}"
    );

    // A step that fails is on the leader's /status (and `spilo status`) until a change of the
    // file converges again.
    let with_audit = format!(
        "{}    audit: {{owner: auditor, schemas: [trail]}}\n",
        cluster(
            base,
            "    auditor: {memberOf: [readers], password: {generated: true}}\n"
        )
        .replace(
            "reporter: {memberOf",
            "reporter: {flags: [createdb], memberOf"
        )
    );
    repo.write(
        "cat.yaml",
        &with_audit.replace(
            "reports: {owner: reporter}",
            "reports: {owner: reporter, extensions: [no_such_ext]}",
        ),
    )?;
    wait::until("the failed step on the leader's status", READY, || async {
        let (_, text, _) = repo.spilo(&["status", "cat"]).ok()?;
        text.contains("Catalog:  not converged on")
            .then_some(())
            .filter(|()| text.contains("no_such_ext"))
    })
    .await?;
    repo.write("cat.yaml", &with_audit)?;
    wait::until("the error to clear once converged", READY, || async {
        let (_, text, _) = repo.spilo(&["status", "cat"]).ok()?;
        (!text.contains("Catalog:")).then_some(())
    })
    .await?;

    // Every step is logged with its reason, and no password is.
    let logs = governor_logs(&repo.state());
    for reason in [
        "role auditor does not exist",
        "role reporter: +createdb",
        "database audit does not exist",
        "database app: extension pgcrypto does not exist",
    ] {
        assert!(logs.contains(reason), "no step logged with {reason:?}");
    }
    let secrets = [
        "reporter-s3cret".to_string(),
        "reporter-n3w".to_string(),
        generated(repo, "app").unwrap_or_default(),
        generated(repo, "auditor").unwrap_or_default(),
    ];
    for secret in &secrets {
        assert!(
            !secret.is_empty() && !logs.contains(secret.as_str()),
            "a password in the logs"
        );
    }
    Ok(())
}

/// Every `.log` under `dir`, concatenated.
fn governor_logs(dir: &std::path::Path) -> String {
    let mut out = String::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.push_str(&governor_logs(&p));
        } else if p.extension().is_some_and(|x| x == "log") {
            out.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
        }
    }
    out
}
