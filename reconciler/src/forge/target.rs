//! Which request to comment on, where the forge's API is and how to authenticate, from the
//! environment a CI job runs in (never from a file in the repository):
//!
//! - GitHub Actions: `GITHUB_TOKEN` (the job's token, with `pull-requests: write`),
//!   `GITHUB_REPOSITORY`, `GITHUB_API_URL` (default `https://api.github.com`), the pull
//!   request's number from the event file `GITHUB_EVENT_PATH` (or `SPILO_PULL_REQUEST`); the
//!   run (`GITHUB_SERVER_URL`, `GITHUB_RUN_ID`) is where the full plan is kept.
//! - GitLab CI: `CI_API_V4_URL`, `CI_PROJECT_ID`, `CI_MERGE_REQUEST_IID` (or
//!   `SPILO_MERGE_REQUEST`), the token `SPILO_GITLAB_TOKEN` (a project access token with the
//!   `api` scope) or else the job's `CI_JOB_TOKEN`, which GitLab may refuse for notes; the job
//!   (`CI_JOB_URL`) keeps the full plan.
//! - Either: `SPILO_COMMENT_AUTHOR`, the login the token posts as, by which spilo's comments
//!   are told from others' (by default: GitHub's bots; GitLab's token owner, `GET /user`).
//!
//! Endpoints, from the forges' REST API documentation: GitHub "issue comments" (a pull
//! request is an issue): `GET|POST /repos/{owner}/{repo}/issues/{number}/comments`,
//! `PATCH /repos/{owner}/{repo}/issues/comments/{id}`; GitLab "notes":
//! `GET|POST /projects/{id}/merge_requests/{iid}/notes`, `PUT .../notes/{note_id}`,
//! `GET /user`.

/// Comments per page asked for (the most both forges give).
pub const PER_PAGE: usize = 100;

/// A code forge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Forge {
    /// GitHub (pull requests; GitHub Actions' environment).
    Github,
    /// GitLab (merge requests; GitLab CI's environment).
    Gitlab,
}

/// Why a comment cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum ForgeError {
    /// A variable the forge's CI sets is missing.
    #[error("{var} is not set: {why}")]
    Missing {
        /// The variable.
        var: &'static str,
        /// What it is for.
        why: &'static str,
    },
    /// The event file cannot tell the pull request.
    #[error("cannot tell the pull request from {path}: {reason} (set SPILO_PULL_REQUEST)")]
    Event {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The forge could not be reached or answered something unreadable.
    #[error("{0}")]
    Transport(String),
    /// The forge refused a call.
    #[error("{call}: HTTP {status}{hint}: {body}")]
    Refused {
        /// Method and URL.
        call: String,
        /// HTTP status.
        status: u16,
        /// The start of its answer.
        body: String,
        /// What usually causes this status here.
        hint: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Auth {
    Bearer(String),
    Header(&'static str, String),
}

/// One pull or merge request's comments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    forge: Forge,
    /// `{api}/repos/{owner}/{repo}/issues/{n}` or `{api}/projects/{id}/merge_requests/{iid}`.
    request: String,
    /// Where an edit goes: `{api}/repos/{owner}/{repo}/issues/comments` or the notes.
    comments: String,
    auth: Auth,
    /// The API's root.
    api: String,
    /// `SPILO_COMMENT_AUTHOR`: the login spilo posts as, when not the default.
    author: Option<String>,
    /// The pull/merge request, for messages (`pull request #7`).
    pub name: String,
    /// The CI run that keeps the full plan, when known.
    pub artifact: Option<String>,
    /// The pull request's own head commit, when the event names it (GitHub checks out the
    /// merge of it into the base, which is what the plan describes).
    pub head: Option<String>,
}

impl Forge {
    /// The longest comment the forge stores (GitHub 65,535 characters; GitLab 1,000,000).
    pub fn comment_limit(self) -> usize {
        match self {
            Forge::Github => 65_535,
            Forge::Gitlab => 1_000_000,
        }
    }
}

impl Target {
    /// The forge.
    pub fn forge(&self) -> Forge {
        self.forge
    }

    /// The target `forge`'s CI describes in `env` (a lookup, so tests need no process env).
    pub fn from_env(
        forge: Forge,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ForgeError> {
        let get = |var: &'static str, why: &'static str| {
            env(var)
                .filter(|v| !v.is_empty())
                .ok_or(ForgeError::Missing { var, why })
        };
        match forge {
            Forge::Github => {
                let token = get(
                    "GITHUB_TOKEN",
                    "the job's token (permissions: pull-requests: write)",
                )?;
                let repo = get("GITHUB_REPOSITORY", "owner/repository of the pull request")?;
                let api = env("GITHUB_API_URL")
                    .filter(|v| !v.is_empty())
                    .unwrap_or_else(|| "https://api.github.com".into());
                let api = api.trim_end_matches('/');
                let (number, head) = match env("SPILO_PULL_REQUEST").filter(|v| !v.is_empty()) {
                    Some(n) => (n, None),
                    None => {
                        let path = get(
                            "GITHUB_EVENT_PATH",
                            "the event of a pull_request workflow (or set SPILO_PULL_REQUEST)",
                        )?;
                        pull_request(&path)?
                    }
                };
                let artifact = match (env("GITHUB_SERVER_URL"), env("GITHUB_RUN_ID")) {
                    (Some(server), Some(run)) if !server.is_empty() && !run.is_empty() => Some(
                        format!("{}/{repo}/actions/runs/{run}", server.trim_end_matches('/')),
                    ),
                    _ => None,
                };
                Ok(Target {
                    forge,
                    api: api.to_string(),
                    author: env("SPILO_COMMENT_AUTHOR").filter(|v| !v.is_empty()),
                    request: format!("{api}/repos/{repo}/issues/{number}"),
                    comments: format!("{api}/repos/{repo}/issues/comments"),
                    auth: Auth::Bearer(token),
                    name: format!("pull request #{number} of {repo}"),
                    artifact,
                    head,
                })
            }
            Forge::Gitlab => {
                let api = get("CI_API_V4_URL", "GitLab's API (set by GitLab CI)")?;
                let api = api.trim_end_matches('/');
                let project = get("CI_PROJECT_ID", "the project (set by GitLab CI)")?;
                let iid = match env("SPILO_MERGE_REQUEST").filter(|v| !v.is_empty()) {
                    Some(n) => n,
                    None => get(
                        "CI_MERGE_REQUEST_IID",
                        "a merge request pipeline (rules: if: $CI_PIPELINE_SOURCE == \"merge_request_event\")",
                    )?,
                };
                let auth = match env("SPILO_GITLAB_TOKEN").filter(|v| !v.is_empty()) {
                    Some(t) => Auth::Header("PRIVATE-TOKEN", t),
                    None => Auth::Header(
                        "JOB-TOKEN",
                        get(
                            "SPILO_GITLAB_TOKEN",
                            "a project access token with the api scope (a masked CI/CD variable)",
                        )
                        .or_else(|_| get("CI_JOB_TOKEN", "the job's token"))?,
                    ),
                };
                let request = format!(
                    "{api}/projects/{}/merge_requests/{iid}",
                    encode_project(&project)
                );
                Ok(Target {
                    forge,
                    api: api.to_string(),
                    author: env("SPILO_COMMENT_AUTHOR").filter(|v| !v.is_empty()),
                    comments: format!("{request}/notes"),
                    request,
                    auth,
                    name: format!("merge request !{iid} of project {project}"),
                    artifact: env("CI_JOB_URL")
                        .filter(|v| !v.is_empty())
                        .map(|u| format!("{}/artifacts/browse", u.trim_end_matches('/'))),
                    head: None,
                })
            }
        }
    }

    /// Whose comments are spilo's, when known without asking: `SPILO_COMMENT_AUTHOR`, or on
    /// GitHub any bot (the job's token posts as `github-actions[bot]`); `None` on GitLab,
    /// which is asked who the token belongs to ([`Target::user_url`]).
    pub fn identity(&self) -> Option<super::Identity> {
        match (&self.author, self.forge) {
            (Some(a), _) => Some(super::Identity::Named(a.clone())),
            (None, Forge::Github) => Some(super::Identity::Bot),
            (None, Forge::Gitlab) => None,
        }
    }

    /// Who the token belongs to (GitLab `GET /user`).
    pub fn user_url(&self) -> String {
        format!("{}/user", self.api)
    }

    /// A listed comment (GitHub issue comment, GitLab note) as [`super::Posted`].
    pub fn posted(&self, c: &serde_json::Value) -> Option<super::Posted> {
        let author = match self.forge {
            Forge::Github => &c["user"],
            Forge::Gitlab => &c["author"],
        };
        Some(super::Posted {
            id: c["id"].as_u64()?,
            body: c["body"].as_str().unwrap_or_default().to_string(),
            login: author[match self.forge {
                Forge::Github => "login",
                Forge::Gitlab => "username",
            }]
            .as_str()
            .unwrap_or_default()
            .to_string(),
            author_id: author["id"].as_u64().unwrap_or_default(),
            bot: author["type"].as_str() == Some("Bot") || author["bot"].as_bool() == Some(true),
            system: c["system"].as_bool().unwrap_or(false),
        })
    }

    /// Page `page` (from 1) of the request's comments, oldest first.
    pub fn list_url(&self, page: usize) -> String {
        match self.forge {
            Forge::Github => format!("{}/comments?per_page={PER_PAGE}&page={page}", self.request),
            Forge::Gitlab => format!(
                "{}?per_page={PER_PAGE}&page={page}&sort=asc&order_by=created_at",
                self.comments
            ),
        }
    }

    /// Where a new comment is posted.
    pub fn create_url(&self) -> String {
        match self.forge {
            Forge::Github => format!("{}/comments", self.request),
            Forge::Gitlab => self.comments.clone(),
        }
    }

    /// Where comment `id` is edited.
    pub fn update_url(&self, id: u64) -> String {
        format!("{}/{id}", self.comments)
    }

    /// The edit's HTTP method.
    pub fn update_verb(&self) -> &'static str {
        match self.forge {
            Forge::Github => "PATCH",
            Forge::Gitlab => "PUT",
        }
    }

    pub(super) fn update_method(
        &self,
        http: &reqwest::Client,
        url: &str,
    ) -> reqwest::RequestBuilder {
        match self.forge {
            Forge::Github => http.patch(url),
            Forge::Gitlab => http.put(url),
        }
    }

    pub(super) fn authorize(&self, call: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let call = match &self.auth {
            Auth::Bearer(t) => call.bearer_auth(t),
            Auth::Header(name, t) => call.header(*name, t),
        };
        match self.forge {
            Forge::Github => call
                .header("Accept", "application/vnd.github+json")
                .header("X-GitHub-Api-Version", "2022-11-28"),
            Forge::Gitlab => call,
        }
    }

    /// What a refusal usually means here.
    pub(super) fn hint(&self, status: u16) -> String {
        match (self.forge, status, &self.auth) {
            (Forge::Github, 401 | 403 | 404, _) => {
                " (does the job's token have `permissions: pull-requests: write`? A pull request \
                 from a fork gets a read-only token)"
                    .into()
            }
            (Forge::Gitlab, 401 | 403, Auth::Header("JOB-TOKEN", _)) => {
                " (GitLab's CI_JOB_TOKEN may not write merge request notes: set \
                 SPILO_GITLAB_TOKEN to a project access token with the api scope)"
                    .into()
            }
            (Forge::Gitlab, 401 | 403, _) => {
                " (does SPILO_GITLAB_TOKEN have the api scope and at least the Reporter role?)"
                    .into()
            }
            _ => String::new(),
        }
    }
}

/// The pull request's number in a GitHub event file (`pull_request.number`, or `number`), and
/// its head commit (`pull_request.head.sha`) when given.
fn pull_request(path: &str) -> Result<(String, Option<String>), ForgeError> {
    let event = |reason: String| ForgeError::Event {
        path: path.to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| event(e.to_string()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| event(format!("not JSON: {e}")))?;
    v["pull_request"]["number"]
        .as_u64()
        .or_else(|| v["number"].as_u64())
        .map(|n| {
            (
                n.to_string(),
                v["pull_request"]["head"]["sha"]
                    .as_str()
                    .map(str::to_string),
            )
        })
        .ok_or_else(|| event("no pull_request.number: not a pull_request event".into()))
}

/// A project id as a path segment: a numeric id as it is, a `group/project` path encoded.
fn encode_project(project: &str) -> String {
    project.replace('%', "%25").replace('/', "%2F")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn github_reads_the_pull_request_from_the_event_and_links_the_run() {
        let dir = tempfile::tempdir().expect("test fixture");
        let event = dir.path().join("event.json");
        std::fs::write(
            &event,
            r#"{"action":"synchronize","pull_request":{"number":42,"head":{"sha":"f00d"}}}"#,
        )
        .expect("test fixture");
        let t = Target::from_env(
            Forge::Github,
            &env(&[
                ("GITHUB_TOKEN", "t0k"),
                ("GITHUB_REPOSITORY", "acme/db"),
                ("GITHUB_EVENT_PATH", event.to_str().expect("test fixture")),
                ("GITHUB_SERVER_URL", "https://github.com"),
                ("GITHUB_RUN_ID", "99"),
            ]),
        )
        .expect("test fixture");
        assert_eq!(
            t.list_url(2),
            "https://api.github.com/repos/acme/db/issues/42/comments?per_page=100&page=2"
        );
        assert_eq!(
            t.create_url(),
            "https://api.github.com/repos/acme/db/issues/42/comments"
        );
        assert_eq!(
            t.update_url(7),
            "https://api.github.com/repos/acme/db/issues/comments/7"
        );
        assert_eq!(t.update_verb(), "PATCH");
        assert_eq!(
            t.artifact.as_deref(),
            Some("https://github.com/acme/db/actions/runs/99")
        );
        assert_eq!(t.name, "pull request #42 of acme/db");
        assert_eq!(t.head.as_deref(), Some("f00d"));
    }

    #[test]
    fn github_needs_a_token_and_a_pull_request_event() {
        let missing = Target::from_env(Forge::Github, &env(&[("GITHUB_REPOSITORY", "a/b")]));
        assert!(
            matches!(
                missing,
                Err(ForgeError::Missing {
                    var: "GITHUB_TOKEN",
                    ..
                })
            ),
            "{missing:?}"
        );
        let dir = tempfile::tempdir().expect("test fixture");
        let push = dir.path().join("push.json");
        std::fs::write(&push, r#"{"ref":"refs/heads/main"}"#).expect("test fixture");
        let e = Target::from_env(
            Forge::Github,
            &env(&[
                ("GITHUB_TOKEN", "t"),
                ("GITHUB_REPOSITORY", "a/b"),
                ("GITHUB_EVENT_PATH", push.to_str().expect("test fixture")),
            ]),
        )
        .expect_err("an error");
        assert!(e.to_string().contains("not a pull_request event"), "{e}");
        let given = Target::from_env(
            Forge::Github,
            &env(&[
                ("GITHUB_TOKEN", "t"),
                ("GITHUB_REPOSITORY", "a/b"),
                ("GITHUB_EVENT_PATH", push.to_str().expect("test fixture")),
                ("SPILO_PULL_REQUEST", "5"),
                ("GITHUB_API_URL", "http://127.0.0.1:9/"),
            ]),
        )
        .expect("test fixture");
        assert_eq!(
            given.create_url(),
            "http://127.0.0.1:9/repos/a/b/issues/5/comments"
        );
    }

    #[test]
    fn gitlab_prefers_the_project_token_and_encodes_a_project_path() {
        let t = Target::from_env(
            Forge::Gitlab,
            &env(&[
                ("CI_API_V4_URL", "https://gitlab.example/api/v4"),
                ("CI_PROJECT_ID", "db-team/clusters"),
                ("CI_MERGE_REQUEST_IID", "3"),
                ("SPILO_GITLAB_TOKEN", "glpat"),
                ("CI_JOB_TOKEN", "job"),
                (
                    "CI_JOB_URL",
                    "https://gitlab.example/db-team/clusters/-/jobs/8",
                ),
            ]),
        )
        .expect("test fixture");
        assert_eq!(
            t.list_url(1),
            "https://gitlab.example/api/v4/projects/db-team%2Fclusters/merge_requests/3/notes?per_page=100&page=1&sort=asc&order_by=created_at"
        );
        assert_eq!(
            t.update_url(11),
            "https://gitlab.example/api/v4/projects/db-team%2Fclusters/merge_requests/3/notes/11"
        );
        assert_eq!(t.update_verb(), "PUT");
        assert_eq!(t.auth, Auth::Header("PRIVATE-TOKEN", "glpat".into()));
        assert_eq!(
            t.artifact.as_deref(),
            Some("https://gitlab.example/db-team/clusters/-/jobs/8/artifacts/browse")
        );
        let job = Target::from_env(
            Forge::Gitlab,
            &env(&[
                ("CI_API_V4_URL", "https://gitlab.example/api/v4"),
                ("CI_PROJECT_ID", "12"),
                ("CI_MERGE_REQUEST_IID", "3"),
                ("CI_JOB_TOKEN", "job"),
            ]),
        )
        .expect("test fixture");
        assert_eq!(job.auth, Auth::Header("JOB-TOKEN", "job".into()));
        assert!(job.hint(403).contains("SPILO_GITLAB_TOKEN"));
        let branch = Target::from_env(
            Forge::Gitlab,
            &env(&[
                ("CI_API_V4_URL", "https://gitlab.example/api/v4"),
                ("CI_PROJECT_ID", "12"),
                ("CI_JOB_TOKEN", "job"),
            ]),
        )
        .expect_err("an error");
        assert!(
            matches!(
                branch,
                ForgeError::Missing {
                    var: "CI_MERGE_REQUEST_IID",
                    ..
                }
            ),
            "{branch:?}"
        );
    }
}
