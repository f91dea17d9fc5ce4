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
//! - Restore, what users wait for during an incident: the archived segments fetched back in
//!   order, one call per segment as PostgreSQL's startup process asks (`wal-fetch` with and
//!   without its prefetch, `archive-get` with and without `archive-async`), and each base
//!   backup restored into an empty directory (`backup-fetch`, `restore`).
//!
//! Every configuration runs `--reps` times (5 by default) into fresh repositories, the tools'
//! order alternating from one repetition to the next; before each measured step the files it
//! reads are read once (page cache warm for both alike) and dirty pages are written out
//! (`sync`). The tables give medians, with min-max of the seconds. CPU is the machine's busy
//! time from `/proc/stat` over the measured interval (it counts detached workers such as
//! pgBackRest's async process and spilo's prefetcher; the machine is otherwise idle).
//! Run it with `bench/archive` (which installs pgBackRest and builds release binaries).

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
    /// Repetitions of every configuration.
    #[arg(long, default_value_t = 5)]
    reps: usize,
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

/// Reads every file under `path` once, so a measured step finds them in the page cache, then
/// writes dirty pages out so no earlier write lands in its interval.
fn warm(path: &Path) {
    fn read_all(path: &Path) {
        if path.is_dir() {
            if let Ok(rd) = std::fs::read_dir(path) {
                for e in rd.flatten() {
                    read_all(&e.path());
                }
            }
        } else if let Ok(mut f) = std::fs::File::open(path) {
            let _ = std::io::copy(&mut f, &mut std::io::sink());
        }
    }
    read_all(path);
    let _ = std::process::Command::new("sync").status();
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
    /// Bytes read (pushed, backed up) or written (fetched, restored).
    input: u64,
    took: Duration,
    /// Bytes stored, for pushes and backups.
    stored: Option<u64>,
    cpu: Duration,
}

/// Measures `step`: wall time and the machine's busy CPU.
fn timed(step: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<(Duration, Duration)> {
    let cpu = cpu_busy();
    let started = Instant::now();
    step()?;
    Ok((started.elapsed(), cpu_busy().saturating_sub(cpu)))
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

    /// A governor configuration whose `archive:` goes to `<work>/spilo-<name>`, prefetching
    /// `prefetch` segments on `wal-fetch`.
    fn governor_config(
        &self,
        name: &str,
        compression: &str,
        concurrency: usize,
        prefetch: usize,
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
                 upload_concurrency: {concurrency}, prefetch: {prefetch}}}\n",
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
        let args = self.pgbr_options(name);
        self.pgbackrest(&args, "stanza-create", &[])?;
        Ok(args)
    }

    /// The options naming repository `name`'s configuration (made by [`Bench::pgbr`]).
    fn pgbr_options(&self, name: &str) -> Vec<String> {
        let conf = self.work.join(format!("pgbackrest-{name}.conf"));
        vec![
            "--stanza=bench".into(),
            format!("--config={}", conf.display()),
        ]
    }

    /// The labels of the backups in a repository, oldest first.
    fn pgbr_sets(&self, opts: &[String]) -> anyhow::Result<Vec<String>> {
        let info: serde_json::Value =
            serde_json::from_str(&self.pgbackrest(opts, "info", &["--output=json"])?)?;
        Ok(info[0]["backup"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|b| b["label"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
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
        warm(&pg_wal);
        let (took, cpu) = timed(|| {
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
            Ok(())
        })?;
        let _ = std::fs::remove_dir_all(pg_wal.parent().unwrap_or(&pg_wal));
        Ok(Row {
            what: what.into(),
            input,
            took,
            stored: Some(du(stored) - before),
            cpu,
        })
    }

    /// Fetches `names` in order into a fresh `pg_wal` as PostgreSQL's startup process asks
    /// for them (`%f` -> `pg_wal/RECOVERYXLOG`, which it reads and removes), reading `repo`
    /// into the page cache first.
    fn fetch_all(
        &self,
        what: &str,
        names: &[String],
        repo: &Path,
        fetch: &dyn Fn(&str, &Path, &Path) -> anyhow::Result<String>,
    ) -> anyhow::Result<Row> {
        let pg1 = self
            .work
            .join(format!("fetch-{}", what.replace([' ', ','], "_")));
        let pg_wal = pg1.join("pg_wal");
        for d in [&pg1, &pg_wal, &pg_wal.join("archive_status")] {
            self.mkdir(d)?;
        }
        // pgBackRest checks the cluster's identity in the control file.
        self.mkdir(&pg1.join("global"))?;
        let control = pg1.join("global/pg_control");
        std::fs::copy(self.data.join("global/pg_control"), &control)?;
        self.user.own(&control)?;
        warm(repo);
        let dest = pg_wal.join("RECOVERYXLOG");
        let mut output = 0;
        let (took, cpu) = timed(|| {
            for name in names {
                fetch(name, &dest, &pg1)?;
                output += std::fs::metadata(&dest)?.len();
                std::fs::remove_file(&dest)?;
            }
            Ok(())
        })?;
        let _ = std::fs::remove_dir_all(&pg1);
        Ok(Row {
            what: what.into(),
            input: output,
            took,
            stored: None,
            cpu,
        })
    }

    /// Restores into a fresh empty directory with `restore(dir)`, reading `repo` into the page
    /// cache first; the row's bytes are the restored directory's.
    fn restore(
        &self,
        what: &str,
        repo: &Path,
        restore: &dyn Fn(&Path) -> anyhow::Result<String>,
    ) -> anyhow::Result<Row> {
        let dest = self
            .work
            .join(format!("restore-{}", what.replace([' ', ','], "_")));
        self.mkdir(&dest)?;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o700))?;
        warm(repo);
        let (took, cpu) = timed(|| restore(&dest).map(|_| ()))?;
        let restored = du(&dest);
        let _ = std::fs::remove_dir_all(&dest);
        Ok(Row {
            what: what.into(),
            input: restored,
            took,
            stored: None,
            cpu,
        })
    }
}

/// Each configuration's rows over the repetitions, in the order first seen.
#[derive(Default)]
struct Results(Vec<(String, Vec<Row>)>);

impl Results {
    fn add(&mut self, rows: Vec<Row>) {
        for r in rows {
            match self.0.iter_mut().find(|(w, _)| *w == r.what) {
                Some((_, v)) => v.push(r),
                None => self.0.push((r.what.clone(), vec![r])),
            }
        }
    }

    fn table(&self, title: &str) {
        println!("\n{title}\n");
        println!(
            "| what | runs | MiB | median seconds (min-max) | MB/s at the median | stored MiB | ratio | CPU s (machine) |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        let median = |mut v: Vec<f64>| {
            v.sort_by(|a, b| a.total_cmp(b));
            v.get(v.len() / 2).copied().unwrap_or_default()
        };
        let mib = |b: f64| b / (1 << 20) as f64;
        for (what, rows) in &self.0 {
            let secs: Vec<f64> = rows.iter().map(|r| r.took.as_secs_f64()).collect();
            let (min, max) = secs
                .iter()
                .fold((f64::MAX, 0f64), |(a, b), s| (a.min(*s), b.max(*s)));
            let took = median(secs);
            let input = median(rows.iter().map(|r| r.input as f64).collect());
            let cpu = median(rows.iter().map(|r| r.cpu.as_secs_f64()).collect());
            let (stored, ratio) = match rows.iter().map(|r| r.stored).collect::<Option<Vec<u64>>>()
            {
                Some(v) => {
                    let st = median(v.iter().map(|b| *b as f64).collect());
                    (
                        format!("{:.1}", mib(st)),
                        format!("{:.2}", st / input.max(1.0)),
                    )
                }
                None => ("-".into(), "-".into()),
            };
            println!(
                "| {what} | {} | {:.0} | {took:.2} ({min:.2}-{max:.2}) | {:.0} | {stored} | {ratio} | {cpu:.2} |",
                rows.len(),
                mib(input),
                input / 1e6 / took.max(1e-9),
            );
        }
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

    let (mut wal, mut backups, mut fetches, mut restores) = Default::default();
    for rep in 1..=args.reps {
        // Odd repetitions run spilo first, even ones pgBackRest first.
        let spilo_first = rep % 2 == 1;
        eprintln!(
            "repetition {rep} of {}, {} first",
            args.reps,
            if spilo_first { "spilo" } else { "pgBackRest" }
        );
        one_repetition(
            b,
            &format!("r{rep}"),
            spilo_first,
            &segments,
            db_size,
            [&mut wal, &mut backups, &mut fetches, &mut restores],
        )?;
    }
    let n = segments.len();
    let results: [&Results; 4] = [&wal, &backups, &fetches, &restores];
    results[0].table(&format!(
        "WAL: {n} segments of 16 MiB from pgbench -i, pushed in order as PostgreSQL's archiver does"
    ));
    results[1].table(&format!(
        "Base backup of a pgbench -i -s {} database ({} MiB), archiving running into both repositories",
        args.scale,
        db_size >> 20
    ));
    results[2].table(&format!(
        "WAL restore: the {n} segments fetched back in order, one call per segment as PostgreSQL's recovery asks (no replay between calls)"
    ));
    results[3]
        .table("Base backup restore into an empty directory (the lz4 and zstd backups above)");
    Ok(())
}

/// Both tools' steps of one phase, in the repetition's order.
fn in_order(
    spilo_first: bool,
    spilo: impl FnOnce() -> anyhow::Result<Vec<Row>>,
    pgbr: impl FnOnce() -> anyhow::Result<Vec<Row>>,
) -> anyhow::Result<Vec<Row>> {
    Ok(if spilo_first {
        let mut v = spilo()?;
        v.extend(pgbr()?);
        v
    } else {
        let p = pgbr()?;
        let mut v = spilo()?;
        v.extend(p);
        v
    })
}

/// One repetition of every configuration, into repositories named after `rep` (removed at
/// its end).
fn one_repetition(
    b: &Bench,
    rep: &str,
    spilo_first: bool,
    segments: &[PathBuf],
    db_size: u64,
    into: [&mut Results; 4],
) -> anyhow::Result<()> {
    let [wal, backups, fetches, restores] = into;
    let names: Vec<String> = segments
        .iter()
        .filter_map(|p| Some(p.file_name()?.to_string_lossy().into_owned()))
        .collect();
    let spilo_wal = [
        ("lz4 one at a time", "lz4", 1),
        ("lz4 push-ahead 4", "lz4", 4),
        ("zstd push-ahead 4", "zstd", 4),
    ];
    let pgbr_wal = [
        ("lz4 one at a time", vec!["--compress-type=lz4"]),
        (
            "lz4 async process-max 4",
            vec!["--compress-type=lz4", "--archive-async", "--process-max=4"],
        ),
        (
            "zst async process-max 4",
            vec!["--compress-type=zst", "--archive-async", "--process-max=4"],
        ),
    ];
    let spilo_key = |name: &str| format!("{rep}-{}", name.replace(' ', "_"));
    let pgbr_key = |name: &str| format!("{rep}-wal-{}", name.replace(' ', "_"));
    wal.add(in_order(
        spilo_first,
        || {
            let mut rows = Vec::new();
            for (name, compression, concurrency) in spilo_wal {
                let key = spilo_key(name);
                let config = b.governor_config(&key, compression, concurrency, 0)?;
                let config = config.display().to_string();
                let stored = b.work.join(format!("spilo-{key}"));
                eprintln!("  spilo wal-push, {name}");
                rows.push(b.push_all(
                    &format!("spilo wal-push, {name}"),
                    segments,
                    &stored,
                    &|p| {
                        b.run(
                            &b.governor,
                            &["wal-push", &p.display().to_string(), "--config", &config],
                        )
                    },
                )?);
            }
            Ok(rows)
        },
        || {
            let mut rows = Vec::new();
            for (name, extra) in &pgbr_wal {
                let key = pgbr_key(name);
                let mut opts = b.pgbr(&key)?;
                opts.extend(extra.iter().map(|s| s.to_string()));
                let stored = b.work.join(format!("pgbr-{key}"));
                eprintln!("  pgBackRest archive-push, {name}");
                rows.push(b.push_all(
                    &format!("pgBackRest archive-push, {name}"),
                    segments,
                    &stored,
                    &|p| {
                        let pg1 = p.parent().and_then(Path::parent).unwrap_or(p);
                        let pg1 = format!("--pg1-path={}", pg1.display());
                        b.pgbackrest(&opts, "archive-push", &[&pg1, &p.display().to_string()])
                    },
                )?);
            }
            Ok(rows)
        },
    )?);

    // WAL restore from the lz4 repositories of the one-at-a-time pushes.
    let spilo_repo = spilo_key("lz4 one at a time");
    let pgbr_repo = pgbr_key("lz4 one at a time");
    fetches.add(in_order(
        spilo_first,
        || {
            let mut rows = Vec::new();
            for (name, prefetch) in [("one at a time", 0), ("prefetch 8", 8)] {
                // The pushes' repository, read with this prefetch setting.
                let config = b.governor_config(&spilo_repo, "lz4", 1, prefetch)?;
                let config = config.display().to_string();
                eprintln!("  spilo wal-fetch, {name}");
                rows.push(b.fetch_all(
                    &format!("spilo wal-fetch, {name}"),
                    &names,
                    &b.work.join(format!("spilo-{spilo_repo}")),
                    &|seg, dest, _| {
                        b.run(
                            &b.governor,
                            &[
                                "wal-fetch",
                                seg,
                                &dest.display().to_string(),
                                "--config",
                                &config,
                            ],
                        )
                    },
                )?);
            }
            Ok(rows)
        },
        || {
            let opts = b.pgbr_options(&pgbr_repo);
            let mut rows = Vec::new();
            for (name, extra) in [
                ("one at a time", vec![]),
                (
                    "async queue 128 MiB (8 segments)",
                    vec!["--archive-async", "--archive-get-queue-max=128MiB"],
                ),
            ] {
                eprintln!("  pgBackRest archive-get, {name}");
                rows.push(b.fetch_all(
                    &format!("pgBackRest archive-get, {name}"),
                    &names,
                    &b.work.join(format!("pgbr-{pgbr_repo}")),
                    &|seg, dest, pg1| {
                        let mut o = opts.clone();
                        o.extend(extra.iter().map(|s| s.to_string()));
                        o.push(format!("--pg1-path={}", pg1.display()));
                        b.pgbackrest(&o, "archive-get", &[seg, &dest.display().to_string()])
                    },
                )?);
            }
            Ok(rows)
        },
    )?);

    // Backups: archiving into both repositories, as each backup needs its WAL archived.
    let spilo_config = b.governor_config(&format!("{rep}-backups"), "lz4", 4, 0)?;
    let pgbr = b.pgbr(&format!("{rep}-backups"))?;
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
    let pgbr_backups = [
        ("lz4", vec!["--compress-type=lz4"]),
        ("zst", vec!["--compress-type=zst"]),
        (
            "lz4 process-max 2",
            vec!["--compress-type=lz4", "--process-max=2"],
        ),
    ];
    let spilo_backup_key = |name: &str| format!("{rep}-backup-{name}");
    backups.add(in_order(
        spilo_first,
        || {
            let mut rows = Vec::new();
            for (name, compression) in [("lz4", "lz4"), ("zstd", "zstd")] {
                let config = b.governor_config(&spilo_backup_key(name), compression, 4, 0)?;
                let stored = b.work.join(format!("spilo-{}", spilo_backup_key(name)));
                eprintln!("  spilo backup-push, {name}");
                warm(&b.data);
                let (took, cpu) = timed(|| {
                    b.run(
                        &b.governor,
                        &["backup-push", "--config", &config.display().to_string()],
                    )
                    .map(|_| ())
                })?;
                rows.push(Row {
                    what: format!("spilo backup-push, {name}"),
                    input: db_size,
                    took,
                    stored: Some(du(&stored)),
                    cpu,
                });
            }
            Ok(rows)
        },
        || {
            let mut rows = Vec::new();
            for (name, extra) in &pgbr_backups {
                let mut opts = pgbr.clone();
                opts.extend(extra.iter().map(|s| s.to_string()));
                let backup_dir = b.work.join(format!("pgbr-{rep}-backups/backup/bench"));
                let before = du(&backup_dir);
                eprintln!("  pgBackRest backup, {name}");
                warm(&b.data);
                let (took, cpu) =
                    timed(|| b.pgbackrest(&opts, "backup", &["--type=full"]).map(|_| ()))?;
                rows.push(Row {
                    what: format!("pgBackRest backup --type=full, {name}"),
                    input: db_size,
                    took,
                    stored: Some(du(&backup_dir) - before),
                    cpu,
                });
            }
            Ok(rows)
        },
    )?);

    // Restores of those backups. pgBackRest's sets, oldest first, in the order taken above.
    let sets = b.pgbr_sets(&pgbr)?;
    anyhow::ensure!(
        sets.len() == pgbr_backups.len(),
        "pgBackRest lists {} backups, {} were taken: {sets:?}",
        sets.len(),
        pgbr_backups.len()
    );
    restores.add(in_order(
        spilo_first,
        || {
            let mut rows = Vec::new();
            for (name, compression) in [("lz4", "lz4"), ("zstd", "zstd")] {
                let key = spilo_backup_key(name);
                let config = b.governor_config(&key, compression, 4, 0)?;
                let config = config.display().to_string();
                eprintln!("  spilo backup-fetch, {name}");
                rows.push(b.restore(
                    &format!("spilo backup-fetch, {name}"),
                    &b.work.join(format!("spilo-{key}")),
                    &|dest| {
                        b.run(
                            &b.governor,
                            &[
                                "backup-fetch",
                                "LATEST",
                                &dest.display().to_string(),
                                "--config",
                                &config,
                            ],
                        )
                    },
                )?);
            }
            Ok(rows)
        },
        || {
            let mut rows = Vec::new();
            for (name, set, process_max) in [
                ("lz4", &sets[0], 1),
                ("zst", &sets[1], 1),
                ("lz4 process-max 2", &sets[0], 2),
            ] {
                eprintln!("  pgBackRest restore, {name}");
                rows.push(b.restore(
                    &format!("pgBackRest restore, {name}"),
                    &b.work.join(format!("pgbr-{rep}-backups")),
                    &|dest| {
                        let mut o = pgbr.clone();
                        o.push(format!("--pg1-path={}", dest.display()));
                        o.push(format!("--set={set}"));
                        o.push(format!("--process-max={process_max}"));
                        b.pgbackrest(&o, "restore", &[])
                    },
                )?);
            }
            Ok(rows)
        },
    )?);

    // This repetition's repositories.
    for e in std::fs::read_dir(&b.work)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.contains(&format!("-{rep}-")) {
            let _ = match e.file_type() {
                Ok(t) if t.is_dir() => std::fs::remove_dir_all(e.path()),
                _ => std::fs::remove_file(e.path()),
            };
        }
    }
    Ok(())
}
