//! The archiving benchmark: spilo's `governor wal-push` / `backup-push` side by side with
//! pgBackRest's `archive-push` / `backup`, on one PostgreSQL 15 instance, in one run, each
//! into its own repository on the local disk.
//!
//! - WAL: real segments (written by `pgbench -i`) pushed the way PostgreSQL's archiver does,
//!   one call per segment in order, each `.ready` turned `.done` after the call succeeds: one
//!   at a time, and with each tool's parallel mode (spilo's push-ahead, pgBackRest's
//!   `archive-async` with `process-max`).
//! - Base backup of the `pgbench -i -s SCALE` database, with archiving into both tools'
//!   repositories running (each backup waits for the WAL it needs).
//!
//! CPU is the machine's busy time from `/proc/stat` over the measured interval (it counts
//! detached workers such as pgBackRest's async process; the machine is otherwise idle).
//! Run it with `bench/archive` (which installs pgBackRest).

use clap::Parser;
use spilo_e2e::proc::RunAs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// `pgbench -i` scale of the backed-up database.
    #[arg(long, default_value_t = 50)]
    scale: u32,
    /// WAL segments (16 MiB each) pushed per configuration.
    #[arg(long, default_value_t = 32)]
    segments: usize,
    /// The `pgbackrest` program.
    #[arg(long, default_value = "/usr/bin/pgbackrest")]
    pgbackrest: PathBuf,
}

const BIN: &str = "/usr/lib/postgresql/15/bin";

/// The machine's busy CPU time so far (user, nice, system, irq, softirq, steal).
fn cpu_busy() -> Duration {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: u64 = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .enumerate()
        .filter(|(i, _)| matches!(i, 0 | 1 | 2 | 5 | 6 | 7))
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum();
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

fn du(path: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(path) else {
        return 0;
    };
    rd.filter_map(|e| e.ok())
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => du(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

struct Bench {
    work: PathBuf,
    user: RunAs,
    governor: PathBuf,
    pgbackrest: PathBuf,
    data: PathBuf,
    run: PathBuf,
    port: u16,
}

struct Row {
    what: String,
    input: u64,
    took: Duration,
    /// Bytes stored.
    stored: u64,
    cpu: Duration,
}

impl Bench {
    fn mkdir(&self, p: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(p)?;
        self.user.own(p)?;
        Ok(())
    }

    /// Runs `program args` as the servers' user; fails with its stderr.
    fn run(&self, program: &Path, args: &[&str]) -> anyhow::Result<String> {
        let out = self
            .user
            .command(program)
            .args(args)
            .env("PGHOST", &self.run)
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", "postgres")
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "{} {args:?}: {}{}",
            program.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn psql(&self, sql: &str) -> anyhow::Result<String> {
        self.run(
            &Path::new(BIN).join("psql"),
            &["-qAtX", "-d", "postgres", "-c", sql],
        )
    }

    /// A governor configuration whose `archive:` goes to `dir`.
    fn governor_config(
        &self,
        name: &str,
        compression: &str,
        concurrency: usize,
    ) -> anyhow::Result<PathBuf> {
        let dir = self.work.join(format!("spilo-{name}"));
        self.mkdir(&dir)?;
        let store = format!("directory: {}", dir.display());
        let secret = self.work.join("secret");
        std::fs::write(&secret, "bench")?;
        let path = self.work.join(format!("governor-{name}.yaml"));
        std::fs::write(
            &path,
            format!(
                "scope: bench\nname: b1\netcd: {{hosts: [\"127.0.0.1:2379\"]}}\n\
                 postgresql:\n  bin_dir: {BIN}\n  data_dir: {data}\n  run_dir: {run}\n  \
                 listen: 127.0.0.1:{port}\n  authentication:\n    \
                 superuser: {{username: postgres, password: {{file: {secret}}}}}\n    \
                 replication: {{username: replicator, password: {{file: {secret}}}}}\n\
                 restapi: {{listen: 127.0.0.1:8008}}\n\
                 archive: {{prefix: bench-{name}/, compression: {compression}, {store}, \
                 upload_concurrency: {concurrency}}}\n",
                data = self.data.display(),
                run = self.run.display(),
                port = self.port,
                secret = secret.display(),
            ),
        )?;
        Ok(path)
    }

    /// pgBackRest's options for repository `name` (its stanza created): a configuration
    /// file, since pgBackRest refuses command-line options a command does not take.
    fn pgbr(&self, name: &str) -> anyhow::Result<Vec<String>> {
        // One spool per repository: pgBackRest's async mode keeps its acknowledgements there.
        let base = self.work.join(format!("pgbackrest-{name}"));
        for d in ["log", "lock", "spool"] {
            self.mkdir(&base.join(d))?;
        }
        let repo = self.work.join(format!("pgbr-{name}"));
        self.mkdir(&repo)?;
        let conf = self.work.join(format!("pgbackrest-{name}.conf"));
        std::fs::write(
            &conf,
            format!(
                "[global]\nrepo1-path={repo}\nlog-path={log}\nlock-path={lock}\nspool-path={spool}\n\
                 log-level-console=warn\nlog-level-file=off\nstart-fast=y\n\n\
                 [bench]\npg1-path={data}\npg1-port={port}\npg1-socket-path={run}\npg1-user=postgres\n",
                repo = repo.display(),
                log = base.join("log").display(),
                lock = base.join("lock").display(),
                spool = base.join("spool").display(),
                data = self.data.display(),
                port = self.port,
                run = self.run.display(),
            ),
        )?;
        let args = vec![
            "--stanza=bench".into(),
            format!("--config={}", conf.display()),
        ];
        self.pgbackrest(&args, "stanza-create", &[])?;
        Ok(args)
    }

    fn pgbackrest(&self, args: &[String], command: &str, more: &[&str]) -> anyhow::Result<String> {
        let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
        all.push(command);
        all.extend(more);
        self.run(&self.pgbackrest, &all)
    }

    /// Copies `segments` into a fresh `pg_wal`-like directory with `.ready` files, then calls
    /// `push` for each in order as the archiver would, marking it `.done` after success.
    fn push_all(
        &self,
        what: &str,
        segments: &[PathBuf],
        stored: &Path,
        push: &dyn Fn(&Path) -> anyhow::Result<String>,
    ) -> anyhow::Result<Row> {
        // `<dir>/pg_wal`: pgBackRest's async mode wants the WAL under its `pg1-path`.
        let pg_wal = self.work.join(what.replace([' ', ','], "_")).join("pg_wal");
        let status = pg_wal.join("archive_status");
        // Owned like a real pg_wal: the tools write beside the segments (spilo its records,
        // pgBackRest its spool links).
        self.mkdir(&pg_wal)?;
        self.mkdir(&status)?;
        // pgBackRest also reads the control file there (the cluster's identity).
        let global = pg_wal.with_file_name("global");
        self.mkdir(&global)?;
        std::fs::copy(
            self.data.join("global/pg_control"),
            global.join("pg_control"),
        )?;
        self.user.own(&global.join("pg_control"))?;
        let mut paths = Vec::new();
        let mut input = 0;
        for s in segments {
            let to = pg_wal.join(s.file_name().unwrap_or_default());
            std::fs::copy(s, &to)?;
            self.user.own(&to)?;
            input += std::fs::metadata(&to)?.len();
            let ready = status.join(format!(
                "{}.ready",
                to.file_name().unwrap_or_default().to_string_lossy()
            ));
            std::fs::write(&ready, "")?;
            self.user.own(&ready)?;
            paths.push(to);
        }
        let before = du(stored);
        let cpu = cpu_busy();
        let started = Instant::now();
        for p in &paths {
            push(p)?;
            let name = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            std::fs::rename(
                status.join(format!("{name}.ready")),
                status.join(format!("{name}.done")),
            )?;
        }
        let took = started.elapsed();
        let cpu = cpu_busy().saturating_sub(cpu);
        let _ = std::fs::remove_dir_all(pg_wal.parent().unwrap_or(&pg_wal));
        Ok(Row {
            what: what.into(),
            input,
            took,
            stored: du(stored) - before,
            cpu,
        })
    }
}

fn table(title: &str, rows: &[Row]) {
    println!("\n{title}\n");
    println!("| what | input MiB | seconds | MB/s | stored MiB | ratio | CPU s (machine) |");
    println!("|---|---|---|---|---|---|---|");
    for r in rows {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        let (stored, ratio) = (
            format!("{:.1}", mib(r.stored)),
            format!("{:.2}", r.stored as f64 / r.input.max(1) as f64),
        );
        println!(
            "| {} | {:.0} | {:.2} | {:.0} | {stored} | {ratio} | {:.2} |",
            r.what,
            mib(r.input),
            r.took.as_secs_f64(),
            r.input as f64 / 1e6 / r.took.as_secs_f64().max(1e-9),
            r.cpu.as_secs_f64()
        );
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let user = RunAs::detect()?;
    let tmp = tempfile::Builder::new()
        .prefix("spilo-archive-bench-")
        .tempdir()?;
    let work = tmp.path().to_path_buf();
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o755))?;
    user.own(&work)?;
    let target = spilo_e2e::proc::target_dir()?;
    let b = Bench {
        data: work.join("data"),
        run: work.join("run"),
        governor: target.join("governor"),
        pgbackrest: args.pgbackrest.clone(),
        port: spilo_e2e::ports::free(),
        work,
        user,
    };
    b.mkdir(&b.run)?;
    b.mkdir(&b.data)?;
    let segments_dir = b.work.join("segments");
    b.mkdir(&segments_dir)?;
    b.run(
        &Path::new(BIN).join("initdb"),
        &[
            "-D",
            &b.data.display().to_string(),
            "-U",
            "postgres",
            "--auth=trust",
            "-N",
        ],
    )?;
    let conf = b.data.join("postgresql.auto.conf");
    std::fs::write(
        &conf,
        format!(
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
             archive_mode = on\narchive_command = 'cp %p {}/%f'\nmax_wal_size = '4GB'\n\
             shared_buffers = '128MB'\n",
            b.port,
            b.run.display(),
            segments_dir.display()
        ),
    )?;
    b.run(
        &Path::new(BIN).join("pg_ctl"),
        &[
            "-D",
            &b.data.display().to_string(),
            "-l",
            &b.work.join("pg.log").display().to_string(),
            "-w",
            "start",
        ],
    )?;
    let result = measure(&b, &args, &segments_dir);
    let _ = b.run(
        &Path::new(BIN).join("pg_ctl"),
        &["-D", &b.data.display().to_string(), "-m", "fast", "stop"],
    );
    result
}

fn measure(b: &Bench, args: &Args, segments_dir: &Path) -> anyhow::Result<()> {
    eprintln!(
        "pgbench -i -s {} (its WAL is the WAL benchmark's input)",
        args.scale
    );
    b.run(
        &Path::new(BIN).join("pgbench"),
        &["-i", "-s", &args.scale.to_string(), "-q", "postgres"],
    )?;
    b.psql("SELECT pg_switch_wal()")?;
    let db_size: u64 = b
        .psql("SELECT pg_database_size('postgres')")?
        .trim()
        .parse()?;
    let mut segments: Vec<PathBuf> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while segments.len() < args.segments && Instant::now() < deadline {
        segments = std::fs::read_dir(segments_dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.file_name().is_some_and(|n| n.len() == 24))
            .collect();
        std::thread::sleep(Duration::from_millis(200));
    }
    segments.sort();
    // The first segments hold initdb's catalog; take the pgbench data after them.
    let skip = segments.len().saturating_sub(args.segments);
    let segments: Vec<PathBuf> = segments
        .into_iter()
        .skip(skip)
        .take(args.segments)
        .collect();
    anyhow::ensure!(!segments.is_empty(), "no WAL segments were archived");

    let mut wal = Vec::new();
    for (name, compression, concurrency) in [
        ("lz4 one at a time", "lz4", 1),
        ("lz4 push-ahead 4", "lz4", 4),
        ("zstd push-ahead 4", "zstd", 4),
    ] {
        let key = name.replace(' ', "_");
        let config = b.governor_config(&key, compression, concurrency)?;
        let config = config.display().to_string();
        let stored = b.work.join(format!("spilo-{key}"));
        eprintln!("spilo wal-push, {name}");
        wal.push(b.push_all(
            &format!("spilo wal-push, {name}"),
            &segments,
            &stored,
            &|p| {
                b.run(
                    &b.governor,
                    &["wal-push", &p.display().to_string(), "--config", &config],
                )
            },
        )?);
    }
    for (name, extra) in [
        ("lz4 one at a time", vec!["--compress-type=lz4"]),
        (
            "lz4 async process-max 4",
            vec!["--compress-type=lz4", "--archive-async", "--process-max=4"],
        ),
        (
            "zst async process-max 4",
            vec!["--compress-type=zst", "--archive-async", "--process-max=4"],
        ),
    ] {
        let key = format!("wal-{}", name.replace(' ', "_"));
        let mut opts = b.pgbr(&key)?;
        opts.extend(extra.iter().map(|s| s.to_string()));
        let stored = b.work.join(format!("pgbr-{key}"));
        eprintln!("pgBackRest archive-push, {name}");
        wal.push(b.push_all(
            &format!("pgBackRest archive-push, {name}"),
            &segments,
            &stored,
            &|p| {
                let pg1 = p.parent().and_then(Path::parent).unwrap_or(p);
                let pg1 = format!("--pg1-path={}", pg1.display());
                b.pgbackrest(&opts, "archive-push", &[&pg1, &p.display().to_string()])
            },
        )?);
    }

    // Backups: archiving into both repositories, as each backup needs its WAL archived.
    let spilo_config = b.governor_config("backups", "lz4", 4)?;
    let pgbr = b.pgbr("backups")?;
    let archive_command = format!(
        "{} wal-push %p --config {} && {} {} --compress-type=lz4 archive-push %p",
        b.governor.display(),
        spilo_config.display(),
        b.pgbackrest.display(),
        pgbr.join(" ")
    );
    b.psql(&format!(
        "ALTER SYSTEM SET archive_command = '{}'",
        archive_command.replace('\'', "''")
    ))?;
    b.psql("SELECT pg_reload_conf()")?;
    b.psql("CHECKPOINT")?;
    let mut backups = Vec::new();
    for (name, compression) in [("lz4", "lz4"), ("zstd", "zstd")] {
        let config = b.governor_config(&format!("backup-{name}"), compression, 4)?;
        let stored = b.work.join(format!("spilo-backup-{name}"));
        eprintln!("spilo backup-push, {name}");
        let cpu = cpu_busy();
        let started = Instant::now();
        b.run(
            &b.governor,
            &["backup-push", "--config", &config.display().to_string()],
        )?;
        backups.push(Row {
            what: format!("spilo backup-push, {name}"),
            input: db_size,
            took: started.elapsed(),
            stored: du(&stored),
            cpu: cpu_busy().saturating_sub(cpu),
        });
    }
    for (name, extra) in [
        ("lz4", vec!["--compress-type=lz4"]),
        ("zst", vec!["--compress-type=zst"]),
        (
            "lz4 process-max 2",
            vec!["--compress-type=lz4", "--process-max=2"],
        ),
    ] {
        let mut opts = pgbr.clone();
        opts.extend(extra.iter().map(|s| s.to_string()));
        let backup_dir = b.work.join("pgbr-backups/backup/bench");
        let before = du(&backup_dir);
        eprintln!("pgBackRest backup, {name}");
        let cpu = cpu_busy();
        let started = Instant::now();
        b.pgbackrest(&opts, "backup", &["--type=full"])?;
        backups.push(Row {
            what: format!("pgBackRest backup --type=full, {name}"),
            input: db_size,
            took: started.elapsed(),
            stored: du(&backup_dir) - before,
            cpu: cpu_busy().saturating_sub(cpu),
        });
    }
    table(
        &format!(
            "WAL: {} segments of 16 MiB from pgbench -i, pushed in order as PostgreSQL's archiver does",
            segments.len()
        ),
        &wal,
    );
    table(
        &format!(
            "Base backup of a pgbench -i -s {} database ({} MiB), archiving running into both repositories",
            args.scale,
            db_size >> 20
        ),
        &backups,
    );
    Ok(())
}
