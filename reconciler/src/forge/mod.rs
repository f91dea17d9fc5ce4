//! The plan as one comment on a pull request (GitHub) or merge request (GitLab), kept up to
//! date: `spilo diff|plan --comment github|gitlab` finds spilo's earlier comment by a hidden
//! marker and its author (the account spilo posts as) and edits it, or creates it, so a pull request carries one plan however often it is
//! pushed to. Where to post and with which token comes from the CI's environment only
//! ([`Target::from_env`], pure); [`upsert`] makes the three calls each forge documents (list
//! the comments, create one, edit one).

mod body;
mod target;

pub use body::{Identity, MARKER, Posted, comment_body, find_marked, overhead};
pub use target::{Forge, ForgeError, Target};

use std::time::Duration;

/// The most comments read to find spilo's (100 a page).
const MAX_PAGES: usize = 50;
/// Each call's deadline.
const TIMEOUT: Duration = Duration::from_secs(30);

/// What [`upsert`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upserted {
    /// Created comment `id`.
    Created(u64),
    /// Edited spilo's comment `id`.
    Updated(u64),
}

/// Creates or edits spilo's comment on the request `target` names, with `body` (which must
/// carry [`MARKER`]).
pub async fn upsert(target: &Target, body: &str) -> Result<Upserted, ForgeError> {
    let http = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .user_agent(concat!("spilo/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ForgeError::Transport(e.to_string()))?;
    let me =
        match target.identity() {
            Some(me) => me,
            None => {
                let url = target.user_url();
                let user: serde_json::Value = send(target, http.get(&url), "GET", &url)
                    .await?
                    .json()
                    .await
                    .map_err(|e| ForgeError::Transport(format!("GET {url}: {e}")))?;
                Identity::Id(user["id"].as_u64().ok_or_else(|| {
                    ForgeError::Transport(format!("GET {url}: no id in the answer"))
                })?)
            }
        };
    let mut comments: Vec<Posted> = Vec::new();
    for page in 1..=MAX_PAGES {
        let url = target.list_url(page);
        let got: Vec<serde_json::Value> = send(target, http.get(&url), "GET", &url)
            .await?
            .json()
            .await
            .map_err(|e| ForgeError::Transport(format!("GET {url}: {e}")))?;
        let n = got.len();
        comments.extend(got.iter().filter_map(|c| target.posted(c)));
        if n < target::PER_PAGE {
            break;
        }
    }
    let payload = serde_json::json!({ "body": body });
    match find_marked(&comments, &me) {
        Some(id) => {
            let url = target.update_url(id);
            let call = target.update_method(&http, &url).json(&payload);
            send(target, call, target.update_verb(), &url).await?;
            Ok(Upserted::Updated(id))
        }
        None => {
            let url = target.create_url();
            let created: serde_json::Value =
                send(target, http.post(&url).json(&payload), "POST", &url)
                    .await?
                    .json()
                    .await
                    .map_err(|e| ForgeError::Transport(format!("POST {url}: {e}")))?;
            Ok(Upserted::Created(
                created["id"].as_u64().unwrap_or_default(),
            ))
        }
    }
}

async fn send(
    target: &Target,
    call: reqwest::RequestBuilder,
    verb: &str,
    url: &str,
) -> Result<reqwest::Response, ForgeError> {
    let response = target
        .authorize(call)
        .send()
        .await
        .map_err(|e| ForgeError::Transport(format!("{verb} {url}: {e}")))?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let text = response.text().await.unwrap_or_default();
    Err(ForgeError::Refused {
        call: format!("{verb} {url}"),
        status: status.as_u16(),
        body: text.chars().take(300).collect(),
        hint: target.hint(status.as_u16()),
    })
}
