//! A stand-in for the two code forges' comment APIs on loopback, written from their REST API
//! documentation and implementing exactly the endpoints `spilo --comment` uses:
//!
//! - GitHub "issue comments" (docs.github.com/rest/issues/comments):
//!   `GET /repos/{owner}/{repo}/issues/{number}/comments?per_page=&page=`,
//!   `POST /repos/{owner}/{repo}/issues/{number}/comments` (201),
//!   `PATCH /repos/{owner}/{repo}/issues/comments/{comment_id}`; `Authorization: Bearer`.
//! - GitLab "notes" (docs.gitlab.com/api/notes, merge requests):
//!   `GET /api/v4/projects/{id}/merge_requests/{iid}/notes?per_page=&page=`,
//!   `POST .../notes` (201), `PUT .../notes/{note_id}`, `GET /api/v4/user`; `PRIVATE-TOKEN`
//!   or `JOB-TOKEN`.
//!
//! Comments of both live in one list, each with its author (GitHub `user {login, id, type}`,
//! GitLab `author {id, username}` and `system`); the token's account is
//! `github-actions[bot]` (a Bot) on GitHub and user 77 on GitLab, as for a job token and a
//! project access token. A wrong or missing token gets 401 as on the forges.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, patch, put};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Who GitHub's job token posts as.
const BOT: &str = "github-actions[bot]";
/// The account of the GitLab token.
const GITLAB_TOKEN_USER: &str = "project_12_bot";
const TOKEN_USER_ID: u64 = 77;

/// One stored comment.
#[derive(Debug, Clone)]
pub struct Comment {
    /// Its id.
    pub id: u64,
    /// `github:owner/repo#n` or `gitlab:project!iid`.
    pub on: String,
    /// Its text.
    pub body: String,
    /// Its author's login.
    pub author: String,
}

#[derive(Default)]
struct Store {
    comments: Vec<Comment>,
    next: u64,
    calls: Vec<String>,
}

#[derive(Clone)]
struct App {
    token: String,
    store: Arc<Mutex<Store>>,
}

/// A running stand-in.
pub struct Forge {
    /// `http://127.0.0.1:<port>`: GitHub's API root; GitLab's is `<url>/api/v4`.
    pub url: String,
    store: Arc<Mutex<Store>>,
    task: tokio::task::JoinHandle<()>,
}

impl Forge {
    /// Starts one that accepts `token` only.
    pub async fn start(token: &str) -> anyhow::Result<Self> {
        let store = Arc::new(Mutex::new(Store {
            next: 1000,
            ..Store::default()
        }));
        let app = App {
            token: token.to_string(),
            store: store.clone(),
        };
        let router = axum::Router::new()
            .route(
                "/repos/{owner}/{repo}/issues/{number}/comments",
                get(github_list).post(github_create),
            )
            .route(
                "/repos/{owner}/{repo}/issues/comments/{id}",
                patch(github_update),
            )
            .route(
                "/api/v4/projects/{project}/merge_requests/{iid}/notes",
                get(gitlab_list).post(gitlab_create),
            )
            .route(
                "/api/v4/projects/{project}/merge_requests/{iid}/notes/{id}",
                put(gitlab_update),
            )
            .route("/api/v4/user", get(gitlab_user))
            .with_state(app);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(Forge { url, store, task })
    }

    /// Adds a comment a reviewer (`reviewer`, a person) wrote.
    pub fn seed(&self, on: &str, body: &str) {
        self.seed_by(on, body, "reviewer");
    }

    /// Adds a comment that person `author` wrote.
    pub fn seed_by(&self, on: &str, body: &str, author: &str) {
        let mut s = self.store.lock().unwrap_or_else(|e| e.into_inner());
        s.next += 1;
        let id = s.next;
        s.comments.push(Comment {
            id,
            on: on.to_string(),
            body: body.to_string(),
            author: author.to_string(),
        });
    }

    /// The comments on `on`, oldest first.
    pub fn comments(&self, on: &str) -> Vec<Comment> {
        let s = self.store.lock().unwrap_or_else(|e| e.into_inner());
        s.comments.iter().filter(|c| c.on == on).cloned().collect()
    }

    /// Every call so far as `METHOD path`.
    pub fn calls(&self) -> Vec<String> {
        let s = self.store.lock().unwrap_or_else(|e| e.into_inner());
        s.calls.clone()
    }
}

impl Drop for Forge {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl App {
    fn allowed(&self, headers: &HeaderMap, github: bool) -> bool {
        let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        if github {
            value("authorization") == Some(&format!("Bearer {}", self.token))
        } else {
            value("private-token") == Some(&self.token) || value("job-token") == Some(&self.token)
        }
    }

    fn record(&self, call: String) {
        self.store
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .calls
            .push(call);
    }

    fn list(&self, on: &str, q: &BTreeMap<String, String>) -> Value {
        let per_page: usize = q
            .get("per_page")
            .and_then(|v| v.parse().ok())
            .unwrap_or(30)
            .min(100);
        let page: usize = q.get("page").and_then(|v| v.parse().ok()).unwrap_or(1);
        let s = self.store.lock().unwrap_or_else(|e| e.into_inner());
        let items: Vec<Value> = s
            .comments
            .iter()
            .filter(|c| c.on == on)
            .skip((page.max(1) - 1) * per_page)
            .take(per_page)
            .map(|c| {
                let bot = c.author == BOT;
                let author_id = if bot || c.author == GITLAB_TOKEN_USER {
                    TOKEN_USER_ID
                } else {
                    5
                };
                json!({
                    "id": c.id,
                    "body": c.body,
                    "user": {"login": c.author, "id": author_id, "type": if bot { "Bot" } else { "User" }},
                    "author": {"id": author_id, "username": c.author},
                    "system": false,
                })
            })
            .collect();
        Value::Array(items)
    }

    fn create(&self, on: &str, author: &str, body: &Value) -> (StatusCode, axum::Json<Value>) {
        let Some(text) = body["body"].as_str() else {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                axum::Json(json!({"message": "body is missing"})),
            );
        };
        let mut s = self.store.lock().unwrap_or_else(|e| e.into_inner());
        s.next += 1;
        let id = s.next;
        s.comments.push(Comment {
            id,
            on: on.to_string(),
            body: text.to_string(),
            author: author.to_string(),
        });
        (
            StatusCode::CREATED,
            axum::Json(json!({"id": id, "body": text})),
        )
    }

    fn update(&self, on: &str, id: u64, body: &Value) -> (StatusCode, axum::Json<Value>) {
        let Some(text) = body["body"].as_str() else {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                axum::Json(json!({"message": "body is missing"})),
            );
        };
        let mut s = self.store.lock().unwrap_or_else(|e| e.into_inner());
        match s
            .comments
            .iter_mut()
            .find(|c| c.id == id && c.on.starts_with(on))
        {
            Some(c) => {
                c.body = text.to_string();
                (StatusCode::OK, axum::Json(json!({"id": id, "body": text})))
            }
            None => (
                StatusCode::NOT_FOUND,
                axum::Json(json!({"message": "Not Found"})),
            ),
        }
    }
}

type Answer = (StatusCode, axum::Json<Value>);

fn unauthorized() -> Answer {
    (
        StatusCode::UNAUTHORIZED,
        axum::Json(json!({"message": "Bad credentials"})),
    )
}

impl App {
    /// Records `call`; refuses it without the token (`github`: as a bearer token).
    fn enter(&self, call: String, headers: &HeaderMap, github: bool) -> Result<(), Answer> {
        self.record(call);
        if self.allowed(headers, github) {
            Ok(())
        } else {
            Err(unauthorized())
        }
    }
}

async fn github_list(
    State(app): State<App>,
    Path((owner, repo, number)): Path<(String, String, u64)>,
    Query(q): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> Result<Answer, Answer> {
    app.enter(
        format!("GET /repos/{owner}/{repo}/issues/{number}/comments"),
        &headers,
        true,
    )?;
    let on = format!("github:{owner}/{repo}#{number}");
    Ok((StatusCode::OK, axum::Json(app.list(&on, &q))))
}

async fn github_create(
    State(app): State<App>,
    Path((owner, repo, number)): Path<(String, String, u64)>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Result<Answer, Answer> {
    app.enter(
        format!("POST /repos/{owner}/{repo}/issues/{number}/comments"),
        &headers,
        true,
    )?;
    Ok(app.create(&format!("github:{owner}/{repo}#{number}"), BOT, &body))
}

async fn github_update(
    State(app): State<App>,
    Path((owner, repo, id)): Path<(String, String, u64)>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Result<Answer, Answer> {
    app.enter(
        format!("PATCH /repos/{owner}/{repo}/issues/comments/{id}"),
        &headers,
        true,
    )?;
    Ok(app.update(&format!("github:{owner}/{repo}#"), id, &body))
}

async fn gitlab_list(
    State(app): State<App>,
    Path((project, iid)): Path<(String, u64)>,
    Query(q): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> Result<Answer, Answer> {
    app.enter(
        format!("GET /api/v4/projects/{project}/merge_requests/{iid}/notes"),
        &headers,
        false,
    )?;
    let on = format!("gitlab:{project}!{iid}");
    Ok((StatusCode::OK, axum::Json(app.list(&on, &q))))
}

async fn gitlab_create(
    State(app): State<App>,
    Path((project, iid)): Path<(String, u64)>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Result<Answer, Answer> {
    app.enter(
        format!("POST /api/v4/projects/{project}/merge_requests/{iid}/notes"),
        &headers,
        false,
    )?;
    Ok(app.create(&format!("gitlab:{project}!{iid}"), GITLAB_TOKEN_USER, &body))
}

async fn gitlab_update(
    State(app): State<App>,
    Path((project, iid, id)): Path<(String, u64, u64)>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Result<Answer, Answer> {
    app.enter(
        format!("PUT /api/v4/projects/{project}/merge_requests/{iid}/notes/{id}"),
        &headers,
        false,
    )?;
    Ok(app.update(&format!("gitlab:{project}!{iid}"), id, &body))
}

async fn gitlab_user(State(app): State<App>, headers: HeaderMap) -> Result<Answer, Answer> {
    app.enter("GET /api/v4/user".into(), &headers, false)?;
    Ok((
        StatusCode::OK,
        axum::Json(json!({"id": TOKEN_USER_ID, "username": GITLAB_TOKEN_USER, "bot": true})),
    ))
}
