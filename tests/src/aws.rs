//! The AWS stand-in: `moto_server` (from the virtualenv `scripts/install-deps` makes) on a
//! free loopback port, one per test so tests never see each other's stacks; a network
//! fixture (VPC, subnets, hosted zone) made in it with boto3; `cfn-lint` from the same
//! virtualenv; and a scratch git repository of cluster files.

use crate::ports;
use crate::proc::Spawned;
use crate::wait;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The virtualenv with moto, boto3 and cfn-lint.
pub fn venv() -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os("SPILO_AWS_VENV") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/spilo/aws-venv"),
    };
    if !dir.join("bin/moto_server").exists() {
        anyhow::bail!(
            "{} has no moto_server: run ./scripts/install-deps (or set SPILO_AWS_VENV)",
            dir.display()
        );
    }
    Ok(dir)
}

/// A running moto server.
pub struct Moto {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// Where `spilo` keeps what it recorded of this server's stacks (`SPILO_STACK_CACHE`).
    pub stack_records: PathBuf,
    /// Its log: one line per request.
    pub log: PathBuf,
    _process: Spawned,
}

/// What the network fixture made.
#[derive(Debug, serde::Deserialize)]
pub struct Network {
    /// The VPC id.
    pub vpc: String,
    /// Three subnets.
    pub subnets: Vec<String>,
    /// The hosted zone's name.
    pub zone: String,
    /// An image id moto knows.
    pub image: String,
}

impl Moto {
    /// Starts moto under `dir` and waits until it answers; with the fixes of
    /// `fixtures/moto_box_server.py` (stacks a change set created have their outputs and see
    /// the others' exports, SSM-typed parameters are described by name).
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(dir, "127.0.0.1", &[], Some("moto_box_server.py")).await
    }

    /// Starts moto on `host` with `env` (e.g. `INITIAL_NO_AUTH_ACTION_COUNT` to enforce IAM),
    /// through `wrapper` (a fixture script taking moto_server's arguments) when given.
    pub async fn start_with(
        dir: &Path,
        host: &str,
        env: &[(&str, &str)],
        wrapper: Option<&str>,
    ) -> anyhow::Result<Self> {
        let venv = venv()?;
        let port = ports::free();
        let mut cmd = match wrapper {
            Some(w) => {
                let mut c = Command::new(venv.join("bin/python"));
                c.arg(
                    Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("fixtures")
                        .join(w),
                );
                c
            }
            None => Command::new(venv.join("bin/moto_server")),
        };
        cmd.args(["-H", host, "-p", &port.to_string()]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let process = Spawned::start(cmd, &dir.join("moto.log"))?;
        let endpoint = format!("http://{host}:{port}");
        let url = format!("{endpoint}/moto-api/");
        let client = reqwest::Client::new();
        wait::until("moto_server to answer", Duration::from_secs(30), || {
            let (client, url) = (client.clone(), url.clone());
            async move { client.get(url).send().await.ok().map(|_| ()) }
        })
        .await?;
        Ok(Moto {
            endpoint,
            stack_records: dir.join("stack-records"),
            log: dir.join("moto.log"),
            _process: process,
        })
    }

    /// Makes a VPC with three subnets in `region` and a hosted zone `zone`.
    pub fn network(&self, region: &str, zone: &str) -> anyhow::Result<Network> {
        let out = self.python(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/moto_network.py"),
            &[region, zone],
        )?;
        Ok(serde_json::from_str(&out)?)
    }

    /// The lines of its log so far: werkzeug's access log (`127.0.0.1 - - [date] "POST /
    /// HTTP/1.1" 200 -`, one per request) and the fixture's `moto-action SERVICE ACTION`.
    pub fn log_lines(&self) -> anyhow::Result<Vec<String>> {
        let text = std::fs::read_to_string(&self.log)?;
        Ok(text.lines().map(str::to_string).collect())
    }

    /// Runs a Python script of the fixtures against this server; returns its stdout.
    pub fn python(&self, script: &Path, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(venv()?.join("bin/python"))
            .arg(script)
            .args(args)
            .env("MOTO_ENDPOINT", &self.endpoint)
            .output()?;
        if !out.status.success() {
            anyhow::bail!(
                "{} failed: {}",
                script.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// Environment for a `spilo` run against this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SPILO_AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", "eu-central-1".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
            (
                "SPILO_STACK_CACHE",
                self.stack_records.display().to_string(),
            ),
        ]
    }
}

/// A scratch git repository.
pub struct Repo {
    /// Its work tree.
    pub path: PathBuf,
}

impl Repo {
    /// `git init` in `path`.
    pub fn init(path: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(path.join("clusters"))?;
        let r = Repo {
            path: path.to_path_buf(),
        };
        r.git(&["init", "-q", "-b", "main"])?;
        Ok(r)
    }

    fn git(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("git")
            .arg("-C")
            .arg(&self.path)
            .args(["-c", "user.name=test", "-c", "user.email=test@example.com"])
            .args(args)
            .output()?;
        if !out.status.success() {
            anyhow::bail!("git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    }

    /// Writes `clusters/<name>.yaml` (or removes it for `None`) and commits; returns the commit.
    pub fn commit(&self, name: &str, text: Option<&str>) -> anyhow::Result<String> {
        self.commit_files(&[(name, text)])
    }

    /// [`Self::commit`] for several cluster files in one commit.
    pub fn commit_files(&self, files: &[(&str, Option<&str>)]) -> anyhow::Result<String> {
        for (name, text) in files {
            let path = self.path.join("clusters").join(format!("{name}.yaml"));
            match text {
                Some(t) => std::fs::write(&path, t)?,
                None => std::fs::remove_file(&path)?,
            }
        }
        let names: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
        self.git(&["add", "-A"])?;
        self.git(&[
            "commit",
            "-q",
            "-m",
            &format!("change {}", names.join(", ")),
        ])?;
        self.git(&["rev-parse", "HEAD"])
    }
}
