//! The major-upgrade benchmark: a 3-member local cluster on PostgreSQL 15 with a
//! `pgbench -i -s SCALE` database and a client writing through HAProxy every 20 ms, upgraded
//! to 18 by a commit of `postgresql.version: 18` (`spilo up`: `pg_upgrade --link` on the
//! primary, replicas copied again). Measured: the write downtime `spilo up` reports, the
//! client's longest gap between acknowledged writes, and the time from the edit until every
//! step after the downtime is done (replicas streaming, a base backup, analyze). Beside it,
//! on the same data, the logical route a team takes without an in-place upgrade: writes
//! stopped, `pg_dumpall` of the 15 primary piped into `psql` on a new PostgreSQL 18 server;
//! its write downtime is that copy (before any replica of the new server exists).
//!
//! Run it with `bench/upgrade [--scales 1,10]`.

use clap::Parser;
use spilo_e2e::local::LocalRepo;
use spilo_e2e::pair::Writer;
use spilo_e2e::sql::connect_dsn;
use spilo_e2e::{Etcd, ports, wait};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// pgbench scale factors (100,000 rows of pgbench_accounts each).
    #[arg(long, value_delimiter = ',', default_value = "1,10")]
    scales: Vec<u32>,
}

const V15: &str = "/usr/lib/postgresql/15/bin";
const V18: &str = "/usr/local/lib/postgresql/18/bin";
const LONG: Duration = Duration::from_secs(1800);

struct Row {
    scale: u32,
    size_mb: f64,
    design: &'static str,
    downtime: f64,
    gap: Option<f64>,
    done: f64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut rows = Vec::new();
    for scale in args.scales {
        let mut repo = LocalRepo::new()?;
        let etcd = Etcd::start(&repo.state().with_file_name("etcd")).await?;
        let r = one_scale(&mut repo, &etcd, scale).await;
        let r = repo.finish(r);
        let _ = repo.spilo(&["down", "--purge"]);
        rows.extend(r?);
    }
    println!(
        "\n| pgbench scale (database size) | design | write downtime | client's longest write gap | edit to all steps done |"
    );
    println!("|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} ({:.0} MB) | {} | {:.1} s | {} | {:.1} s |",
            r.scale,
            r.size_mb,
            r.design,
            r.downtime,
            r.gap.map_or("-".into(), |g| format!("{g:.1} s")),
            r.done
        );
    }
    Ok(())
}

fn cluster_file(base: u16, version: u32, etcd: &Etcd) -> String {
    LocalRepo::cluster_yaml("bench", 3, base).replace(
        "postgresql: {parameters:",
        &format!("postgresql: {{version: {version}, parameters:"),
    ) + &format!(
        "  dcs: {{hosts: [\"{}\"]}}\n  backup: {{bucket: wal}}\n",
        etcd.client_addr
    )
}

async fn one_scale(repo: &mut LocalRepo, etcd: &Etcd, scale: u32) -> anyhow::Result<Vec<Row>> {
    let base = ports::free_block(30);
    repo.write("bench.yaml", &cluster_file(base, 15, etcd))?;
    repo.up()?;
    repo.wait_printed("cluster bench is ready", Duration::from_secs(180))
        .await?;
    let pw = std::fs::read_to_string(repo.state().join("bench/secrets/superuser"))?;
    let pw = pw.trim().to_string();
    let dsn = repo.plain_dsn("bench", base)?;
    let c = wait::until("a session", LONG, || async { connect_dsn(&dsn).await.ok() }).await?;
    run(Command::new(Path::new(V15).join("pgbench"))
        .args(["-i", "-q", "-s", &scale.to_string(), "-h", "127.0.0.1"])
        .args(["-p", &base.to_string(), "-U", "postgres", "postgres"])
        .env("PGPASSWORD", &pw))?;
    c.batch_execute("CREATE TABLE w (id bigint PRIMARY KEY)")
        .await?;
    let size: i64 = c
        .query_one("SELECT pg_database_size('postgres')", &[])
        .await?
        .get(0);
    let size_mb = size as f64 / 1e6;
    let accounts = i64::from(scale) * 100_000;

    // The logical route, on the same data: dump the 15 primary into a new 18 server.
    let logical = dump_restore(base, &pw, repo.path(), accounts).await?;
    eprintln!("scale {scale}: pg_dumpall | psql into PostgreSQL 18: {logical:.1} s");

    let writer = Writer::start(dsn.clone());
    wait::until("writes acknowledged", LONG, || async {
        (writer.last() > 10).then_some(())
    })
    .await?;
    let edit = Instant::now();
    repo.write("bench.yaml", &cluster_file(base, 18, etcd))?;
    repo.wait_printed("cluster bench runs PostgreSQL 18: write downtime", LONG)
        .await?;
    let reported = repo.printed_downtime()?;
    let done_file = repo.state().join("bench/upgrade.json");
    wait::until("every step after the downtime", LONG, || async {
        (!done_file.exists()).then_some(())
    })
    .await?;
    let done = edit.elapsed().as_secs_f64();
    let at = writer.last();
    wait::until("writes on 18", LONG, || async {
        (writer.last() > at + 5).then_some(())
    })
    .await?;
    let acked = writer.stop().await;
    let gap = acked
        .windows(2)
        .map(|w| w[1].1.duration_since(w[0].1).as_secs_f64())
        .fold(0.0, f64::max);
    let c = wait::until("a session on 18", LONG, || async {
        connect_dsn(&dsn).await.ok()
    })
    .await?;
    let n: i64 = c
        .query_one("SELECT count(*) FROM pgbench_accounts", &[])
        .await?
        .get(0);
    anyhow::ensure!(n == accounts, "{n} of {accounts} rows after the upgrade");
    eprintln!("scale {scale}: spilo's upgrade: downtime {reported:.1} s, gap {gap:.1} s");
    Ok(vec![
        Row {
            scale,
            size_mb,
            design: "spilo: `pg_upgrade --link` in place, replicas copied again",
            downtime: reported,
            gap: Some(gap),
            done,
        },
        Row {
            scale,
            size_mb,
            design: "logical: `pg_dumpall` (18) piped into `psql` on a new PostgreSQL 18",
            downtime: logical,
            gap: None,
            done: logical,
        },
    ])
}

/// Seconds to copy the 15 primary at `port` into a fresh PostgreSQL 18 (initdb'd and started
/// first, outside the measurement) with `pg_dumpall | psql`; checks the row count.
async fn dump_restore(port: u16, pw: &str, scratch: &Path, accounts: i64) -> anyhow::Result<f64> {
    let dir = scratch.join("logical-18");
    let new_port = ports::free_block(2);
    let as_postgres = |cmd: &mut Command| {
        use std::os::unix::process::CommandExt;
        if nix::unistd::geteuid().is_root()
            && let Ok(Some(u)) = nix::unistd::User::from_name("postgres")
        {
            cmd.uid(u.uid.as_raw()).gid(u.gid.as_raw());
        }
    };
    std::fs::create_dir_all(&dir)?;
    if nix::unistd::geteuid().is_root() {
        run(Command::new("chown").args(["postgres:postgres"]).arg(&dir))?;
    }
    let data = dir.join("data");
    let mut initdb = Command::new(Path::new(V18).join("initdb"));
    initdb.arg("-D").arg(&data).args([
        "-U",
        "postgres",
        "--auth=trust",
        "--encoding=UTF8",
        "--locale=C",
    ]);
    as_postgres(&mut initdb);
    run(&mut initdb)?;
    let mut start = Command::new(Path::new(V18).join("pg_ctl"));
    start
        .arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(dir.join("log"))
        .arg("-o")
        .arg(format!(
            "-p {new_port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={}",
            dir.display()
        ))
        .args(["-w", "start"]);
    as_postgres(&mut start);
    run(&mut start)?;
    let t0 = Instant::now();
    let pipeline = format!(
        "set -o pipefail; {V18}/pg_dumpall -h 127.0.0.1 -p {port} -U postgres \
         | {V18}/psql -q -X -v ON_ERROR_STOP=0 -h 127.0.0.1 -p {new_port} -U postgres -d postgres >/dev/null"
    );
    let copied = run(Command::new("bash")
        .arg("-c")
        .arg(&pipeline)
        .env("PGPASSWORD", pw));
    let secs = t0.elapsed().as_secs_f64();
    let check = copied.and_then(|_| {
        let out = Command::new(Path::new(V18).join("psql"))
            .args(["-At", "-h", "127.0.0.1", "-p", &new_port.to_string()])
            .args(["-U", "postgres", "-d", "postgres"])
            .args(["-c", "SELECT count(*) FROM pgbench_accounts"])
            .output()?;
        let n: i64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
        anyhow::ensure!(n == accounts, "{n} of {accounts} rows after the restore");
        Ok(())
    });
    let mut stop = Command::new(Path::new(V18).join("pg_ctl"));
    stop.arg("-D").arg(&data).args(["-m", "fast", "-w", "stop"]);
    as_postgres(&mut stop);
    let _ = run(&mut stop);
    check?;
    Ok(secs)
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output()?;
    anyhow::ensure!(
        out.status.success(),
        "{:?} failed: {}{}",
        cmd.get_program(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
