//! `spilo init` the way a person uses it: the real binary on a pseudo-terminal, each answer
//! typed after its prompt appears, with moto as the AWS account the default bucket is named
//! after.

use spilo_e2e::aws::Moto;
use spilo_e2e::{proc, wait};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the terminal showed so far, filled by a reader thread.
#[derive(Clone, Default)]
struct Screen(Arc<Mutex<String>>);

impl Screen {
    fn text(&self) -> String {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// Waits until `prompt` appears after `from` bytes of the screen; returns its end.
async fn prompt_after(screen: &Screen, from: usize, prompt: &str) -> anyhow::Result<usize> {
    wait::until(
        &format!("the prompt {prompt:?}"),
        Duration::from_secs(30),
        || {
            let text = screen.text();
            async move {
                text.get(from..)
                    .and_then(|t| t.find(prompt))
                    .map(|i| from + i + prompt.len())
            }
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\nthe screen:\n{}", screen.text()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_at_a_terminal_takes_typed_answers_and_names_the_bucket_after_the_account()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let moto = Moto::start(dir.path()).await?;
    let out_path = dir.path().join("shop.yaml");
    let pty = nix::pty::openpty(None, None)?;
    let slave = std::fs::File::from(pty.slave);
    let mut child = Command::new(proc::target_dir()?.join("spilo"))
        .arg("init")
        .arg("--output")
        .arg(&out_path)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TERM", "dumb")
        .env("SPILO_AWS_ENDPOINT_URL", &moto.endpoint)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave))
        .spawn()?;
    let mut master = std::fs::File::from(pty.master);
    let mut reader = master.try_clone()?;
    let screen = Screen::default();
    let sink = screen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        // Ends with EIO once the child has exited and the slave is closed.
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            if let Ok(mut s) = sink.0.lock() {
                s.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
    });

    let dialogue: &[(&str, &str)] = &[
        ("Cluster name: ", "shop"),
        ("Number of instances [3]: ", ""),
        ("Target (aws or local) [aws]: ", ""),
        ("AWS region [eu-central-1]: ", "eu-west-1"),
        (
            "S3 bucket for the WAL archive and backups [spilo-123456789012-eu-west-1-shop]: ",
            "",
        ),
        (
            "(kept when the cluster is deleted: it holds the backups) [yes]: ",
            "",
        ),
        ("EC2 instance type [t3.medium]: ", ""),
        ("Route53 hosted zone (e.g. db.example.com): ", ""),
        ("Error: an answer is required", "db.example.com"),
        ("VPC id: ", "vpc-0a1b2c3d"),
        (
            "one per availability zone): ",
            "subnet-0a1b2c3d, subnet-1a1b2c3d",
        ),
        ("_etcd-server._tcp.<domain>): ", "etcd.example.com"),
        ("Database volume size (GB, 10 or more) [10]: ", "5"),
        ("Error: enter a number of at least 10", "20"),
        ("(gp3, gp2, io1, io2 or standard) [gp3]: ", ""),
        ("ID of the snapshot to populate EBS volume from: ", ""),
        ("Filesystem for the data partition [ext4]: ", ""),
        (
            "Filesystem mount options (comma-separated) [noatime,nodiratime]: ",
            "noatime,nobarrier",
        ),
        ("(comma-separated, empty for none): ", "shop"),
        (
            "(comma-separated, e.g. pg_stat_statements, pgcrypto): ",
            "pgcrypto",
        ),
    ];
    let mut at = 0;
    for (prompt, answer) in dialogue {
        at = prompt_after(&screen, at, prompt).await?;
        master.write_all(format!("{answer}\n").as_bytes())?;
        master.flush()?;
    }
    let shown = prompt_after(&screen, at, " OK").await?;
    let status = wait::until("spilo init to exit", Duration::from_secs(30), || {
        let done = child.try_wait().ok().flatten();
        async move { done }
    })
    .await?;
    assert!(status.success(), "{}", screen.text());
    let tail = &screen.text()[shown..];
    assert!(
        tail.contains(
            "spec.aws.storage.mountOptions[1]: warning: nobarrier turns off write barriers"
        ),
        "the warning is shown: {tail}"
    );

    let text = std::fs::read_to_string(&out_path)?;
    for line in [
        "instances: 3\n",
        "region: eu-west-1\n",
        "instanceType: t3.medium\n",
        "hostedZone: db.example.com\n",
        "subnets: [subnet-0a1b2c3d, subnet-1a1b2c3d]\n",
        "storage: {size: 20, type: gp3, filesystem: ext4, mountOptions: [noatime, nobarrier]}\n",
        "bucket: spilo-123456789012-eu-west-1-shop\n    createBucket: true\n",
        "restapi: {ssm: /spilo/shop/restapi-token}",
        "ca: {ssm: /spilo/shop/ca}",
        "roles:\n    shop: {password: {generated: true}}\n",
        "databases:\n    shop: {owner: shop, extensions: [pgcrypto]}\n",
    ] {
        assert!(text.contains(line), "{line:?} in:\n{text}");
    }
    let validate = Command::new(proc::target_dir()?.join("spilo"))
        .arg("validate")
        .arg(&out_path)
        .output()?;
    let report = String::from_utf8_lossy(&validate.stdout).into_owned()
        + &String::from_utf8_lossy(&validate.stderr);
    assert_eq!(validate.status.code(), Some(0), "{report}");
    assert!(report.contains("warning: nobarrier"), "{report}");
    Ok(())
}
