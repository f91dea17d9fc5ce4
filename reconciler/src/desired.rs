//! Desired state from git: the cluster files of one commit, read with git2 from the commit's
//! tree (never from the work tree), so a plan names exactly the commit it was made from.
//!
//! A local path is opened in place. A URL (`https://`, `ssh://`, `git@host:path`, `file://`)
//! is mirrored into a cache directory with the `git` command (libgit2 is built without TLS and
//! SSH here, and `git` brings the user's credential helpers and SSH agent), then read with git2.

use crate::spec::{Diagnostic, Severity, validate_files};
use spilo_model::spec::{ClusterFile, EtcdClusterFile};
use std::path::{Path, PathBuf};

/// The directory cluster files live in, relative to the repository root.
pub const CLUSTERS_DIR: &str = "clusters";

/// Why desired state could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DesiredError {
    /// libgit2 failed (no repository, unknown ref, unreadable object).
    #[error("{what}: {source}")]
    Git {
        /// What was being done.
        what: String,
        /// libgit2's error.
        source: git2::Error,
    },
    /// Mirroring a remote repository failed.
    #[error("fetching {url}: {message}")]
    Fetch {
        /// The remote.
        url: String,
        /// git's output.
        message: String,
    },
    /// A file in the commit is not UTF-8.
    #[error("{path} at {commit}: not UTF-8 text")]
    NotText {
        /// The file.
        path: String,
        /// The commit.
        commit: String,
    },
    /// Some cluster files are invalid: nothing is planned from a commit with a broken file,
    /// because a broken file could otherwise read as a deleted cluster.
    #[error("{commit}: {count} invalid cluster file(s); nothing is planned from this commit")]
    Invalid {
        /// The commit.
        commit: String,
        /// The number of errors.
        count: usize,
        /// Every diagnostic, errors and warnings.
        diagnostics: Vec<Diagnostic>,
    },
}

/// The cluster files of one commit, validated.
#[derive(Debug, Clone)]
pub struct Desired {
    /// Where they were read from, as given.
    pub repo: String,
    /// The ref as given (`HEAD`, a branch, a tag, a commit).
    pub reference: String,
    /// The commit id the ref resolved to.
    pub commit: String,
    /// Each cluster with the path of its file inside the repository.
    pub clusters: Vec<(String, ClusterFile)>,
    /// Each etcd cluster (`kind: EtcdCluster`) with the path of its file.
    pub etcd_clusters: Vec<(String, EtcdClusterFile)>,
    /// Warnings from validation.
    pub warnings: Vec<Diagnostic>,
}

impl Desired {
    /// The cluster named `name`.
    pub fn cluster(&self, name: &str) -> Option<&ClusterFile> {
        self.clusters
            .iter()
            .map(|(_, c)| c)
            .find(|c| c.metadata.name.as_str() == name)
    }
}

fn git(what: impl Into<String>) -> impl FnOnce(git2::Error) -> DesiredError {
    let what = what.into();
    move |source| DesiredError::Git { what, source }
}

/// Whether `repo` names a remote rather than a local path.
pub fn is_url(repo: &str) -> bool {
    repo.contains("://") || (repo.contains('@') && repo.contains(':') && !Path::new(repo).exists())
}

/// Reads and validates the cluster files of `reference` in `repo`.
pub fn read(repo: &str, reference: &str, cache: &Path) -> Result<Desired, DesiredError> {
    let files = read_files(repo, reference, cache)?;
    let (commit, files) = files;
    let checked = validate_files(&files);
    let errors = checked
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    if errors > 0 {
        return Err(DesiredError::Invalid {
            commit,
            count: errors,
            diagnostics: checked.diagnostics,
        });
    }
    let mut clusters = checked.files;
    resolve_etcd_clusters(&mut clusters, &checked.etcd_clusters);
    resolve_standby_sources(&mut clusters);
    Ok(Desired {
        repo: repo.to_string(),
        reference: reference.to_string(),
        commit,
        clusters,
        etcd_clusters: checked.etcd_clusters,
        warnings: checked.diagnostics,
    })
}

/// Gives each cluster on an etcd cluster of the same commit (`dcs.etcdCluster`, checked by
/// validation) that cluster's SRV domain as its `dcs.discoveryDomain`, which the members and
/// `spilo` look up.
pub fn resolve_etcd_clusters(
    clusters: &mut [(String, ClusterFile)],
    etcd: &[(String, EtcdClusterFile)],
) {
    for (_, f) in clusters.iter_mut() {
        let Some(dcs) = f.spec.dcs.as_mut() else {
            continue;
        };
        if let Some(e) = dcs.etcd_cluster.as_ref().and_then(|name| {
            etcd.iter()
                .find(|(_, e)| e.metadata.name == *name)
                .map(|(_, e)| e)
        }) {
            dcs.discovery_domain = Some(e.domain());
        }
    }
}

/// Gives each AWS cluster whose `spec.standby.from` names an AWS cluster of the same commit
/// (checked by validation) that cluster's endpoint and archive: `hosts` is its DNS name at its
/// primary port (the load balancer routes it to whoever is primary), `archive` its bucket and
/// prefix. The template and the instance role are rendered from them.
pub fn resolve_standby_sources(clusters: &mut [(String, ClusterFile)]) {
    use spilo_model::spec::{StandbyArchive, Target};
    let sources: Vec<ClusterFile> = clusters.iter().map(|(_, f)| f.clone()).collect();
    for (_, f) in clusters.iter_mut() {
        if f.spec.target != Target::Aws {
            continue;
        }
        let Some(sb) = f.spec.standby.as_mut() else {
            continue;
        };
        let Some(source) = sb
            .from
            .as_ref()
            .and_then(|from| sources.iter().find(|s| s.metadata.name == *from))
            .filter(|s| s.spec.target == Target::Aws)
        else {
            continue;
        };
        if let Some(dns) = source.dns_name() {
            sb.hosts = vec![format!(
                "{}:{}",
                dns.trim_end_matches('.'),
                source.spec.endpoints.primary.port
            )];
        }
        sb.archive = source.spec.backup.as_ref().map(|b| StandbyArchive {
            bucket: b.bucket.clone(),
            prefix: source.wal_prefix(),
            region: source.spec.aws.as_ref().map(|a| a.region.clone()),
        });
    }
}

/// The commit `reference` resolves to and the `(path, text)` of every `clusters/*.y(a)ml` in it.
pub fn read_files(
    repo: &str,
    reference: &str,
    cache: &Path,
) -> Result<(String, Vec<(String, String)>), DesiredError> {
    let path = if is_url(repo) {
        mirror(repo, cache)?
    } else {
        PathBuf::from(repo)
    };
    let repository = git2::Repository::discover(&path).map_err(git(format!(
        "opening the git repository {}",
        path.display()
    )))?;
    let object = repository
        .revparse_single(reference)
        .map_err(git(format!("resolving {reference:?} in {repo}")))?;
    let commit = object
        .peel_to_commit()
        .map_err(git(format!("{reference:?} is not a commit")))?;
    let id = commit.id().to_string();
    let tree = commit.tree().map_err(git("reading the commit's tree"))?;
    let mut files = Vec::new();
    let dir = match tree.get_path(Path::new(CLUSTERS_DIR)) {
        Ok(entry) => entry,
        Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok((id, files)),
        Err(e) => return Err(git("reading clusters/")(e)),
    };
    let dir = dir
        .to_object(&repository)
        .and_then(|o| o.peel_to_tree())
        .map_err(git("clusters/ is not a directory"))?;
    for entry in dir.iter() {
        let Ok(name) = entry.name() else { continue };
        if !(name.ends_with(".yaml") || name.ends_with(".yml"))
            || entry.kind() != Some(git2::ObjectType::Blob)
        {
            continue;
        }
        let blob = entry
            .to_object(&repository)
            .and_then(|o| o.peel_to_blob())
            .map_err(git(format!("reading {CLUSTERS_DIR}/{name}")))?;
        let path = format!("{CLUSTERS_DIR}/{name}");
        let text = std::str::from_utf8(blob.content())
            .map_err(|_| DesiredError::NotText {
                path: path.clone(),
                commit: id.clone(),
            })?
            .to_string();
        files.push((path, text));
    }
    files.sort();
    Ok((id, files))
}

/// Mirrors `url` into `cache/<sanitized url>` (clone once, fetch afterwards) and returns it.
fn mirror(url: &str, cache: &Path) -> Result<PathBuf, DesiredError> {
    let fetch_error = |message: String| DesiredError::Fetch {
        url: url.to_string(),
        message,
    };
    let dir_name: String = url
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let dir = cache.join(dir_name);
    std::fs::create_dir_all(cache)
        .map_err(|e| fetch_error(format!("creating {}: {e}", cache.display())))?;
    let mut cmd = std::process::Command::new("git");
    if dir.exists() {
        cmd.arg("-C")
            .arg(&dir)
            .args(["fetch", "--prune", "--quiet", "origin"]);
    } else {
        cmd.args(["clone", "--mirror", "--quiet", url]).arg(&dir);
    }
    let (status, stderr) = run_with_deadline(cmd, GIT_TIMEOUT)
        .map_err(|e| fetch_error(format!("running git: {e}")))?;
    if !status.success() {
        return Err(fetch_error(stderr.trim().to_string()));
    }
    Ok(dir)
}

/// How long a `git clone` or `git fetch` of a repository URL may take.
pub const GIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Runs `cmd` (its stderr captured, its output discarded) and kills it when it takes longer
/// than `deadline`: a hung remote must not hold a pass (or `spilo watch`) forever.
fn run_with_deadline(
    mut cmd: std::process::Command,
    deadline: std::time::Duration,
) -> std::io::Result<(std::process::ExitStatus, String)> {
    use std::io::Read;
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    // Read stderr beside the wait, so a chatty child never blocks on a full pipe.
    let mut pipe = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(p) = pipe.as_mut() {
            let _ = p.read_to_string(&mut text);
        }
        text
    });
    let until = std::time::Instant::now() + deadline;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if std::time::Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("git did not finish within {}s", deadline.as_secs()),
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    Ok((status, reader.join().unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_that_outlives_its_deadline_is_killed() {
        let mut slow = std::process::Command::new("sleep");
        slow.arg("30");
        let started = std::time::Instant::now();
        let e =
            run_with_deadline(slow, std::time::Duration::from_millis(200)).expect_err("timed out");
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        let mut quick = std::process::Command::new("sh");
        quick.args(["-c", "echo oops >&2; exit 3"]);
        let (status, stderr) =
            run_with_deadline(quick, std::time::Duration::from_secs(10)).expect("ran");
        assert_eq!(status.code(), Some(3));
        assert_eq!(stderr, "oops\n");
    }

    fn commit_files(repo: &git2::Repository, files: &[(&str, &str)], message: &str) -> String {
        let root = repo.workdir().expect("work tree").to_path_buf();
        let mut index = repo.index().expect("index");
        index
            .remove_all(["*"].iter(), None)
            .expect("clear the index");
        for (path, text) in files {
            let full = root.join(path);
            std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
            std::fs::write(&full, text).expect("write");
            index.add_path(Path::new(path)).expect("add");
        }
        index.write().expect("write index");
        let tree = repo
            .find_tree(index.write_tree().expect("tree"))
            .expect("find tree");
        let sig = git2::Signature::now("t", "t@example.com").expect("signature");
        let parents: Vec<git2::Commit> = repo
            .head()
            .ok()
            .and_then(|h| h.peel_to_commit().ok())
            .into_iter()
            .collect();
        let parents: Vec<&git2::Commit> = parents.iter().collect();
        repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &parents)
            .expect("commit")
            .to_string()
    }

    const A: &str = "apiVersion: spilo/v1\nkind: PostgresCluster\nmetadata: {name: a}\nspec: {}\n";
    const B: &str = "apiVersion: spilo/v1\nkind: PostgresCluster\nmetadata: {name: b}\nspec: {}\n";

    #[test]
    fn files_come_from_the_commit_not_the_work_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = git2::Repository::init(dir.path()).expect("init");
        let first = commit_files(&repo, &[("clusters/a.yaml", A)], "one");
        let second = commit_files(
            &repo,
            &[("clusters/a.yaml", A), ("clusters/b.yaml", B)],
            "two",
        );
        // An uncommitted edit is not desired state.
        std::fs::write(
            dir.path().join("clusters/c.yaml"),
            A.replace("{name: a}", "{name: c}"),
        )
        .expect("write");
        let cache = dir.path().join("cache");
        let repo_path = dir.path().to_str().expect("utf-8");
        let head = read(repo_path, "HEAD", &cache).expect("reads HEAD");
        assert_eq!(head.commit, second);
        let names: Vec<&str> = head
            .clusters
            .iter()
            .map(|(_, c)| c.metadata.name.as_str())
            .collect();
        assert_eq!(names, ["a", "b"]);
        let old = read(repo_path, &first, &cache).expect("reads the first commit");
        assert_eq!(old.clusters.len(), 1);
        assert_eq!(old.clusters[0].0, "clusters/a.yaml");
    }

    #[test]
    fn a_commit_with_an_invalid_file_is_refused_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = git2::Repository::init(dir.path()).expect("init");
        commit_files(
            &repo,
            &[
                ("clusters/a.yaml", A),
                (
                    "clusters/b.yaml",
                    "apiVersion: spilo/v1\nkind: PostgresCluster\nmetadata: {name: b}\nspec: {instances: 0}\n",
                ),
            ],
            "bad",
        );
        let err = read(
            dir.path().to_str().expect("utf-8"),
            "HEAD",
            &dir.path().join("cache"),
        )
        .expect_err("invalid");
        match err {
            DesiredError::Invalid { diagnostics, .. } => {
                assert!(
                    diagnostics
                        .iter()
                        .any(|d| d.file == "clusters/b.yaml" && d.path == "spec.instances"),
                    "{diagnostics:?}"
                );
            }
            other => panic!("expected Invalid, got {other}"),
        }
    }

    #[test]
    fn a_remote_url_is_mirrored_and_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let origin = dir.path().join("origin");
        let repo = git2::Repository::init(&origin).expect("init");
        let id = commit_files(&repo, &[("clusters/a.yaml", A)], "one");
        let url = format!("file://{}", origin.display());
        let cache = dir.path().join("cache");
        let got = read(&url, "HEAD", &cache).expect("clone");
        assert_eq!(got.commit, id);
        let id2 = commit_files(
            &repo,
            &[("clusters/a.yaml", A), ("clusters/b.yaml", B)],
            "two",
        );
        let got = read(&url, "HEAD", &cache).expect("fetch");
        assert_eq!(got.commit, id2);
        assert_eq!(got.clusters.len(), 2);
    }

    #[test]
    fn an_unknown_ref_names_the_ref() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = git2::Repository::init(dir.path()).expect("init");
        commit_files(&repo, &[("clusters/a.yaml", A)], "one");
        let err = read(
            dir.path().to_str().expect("utf-8"),
            "no-such-branch",
            &dir.path().join("cache"),
        )
        .expect_err("unknown ref");
        assert!(err.to_string().contains("\"no-such-branch\""), "{err}");
    }
}
