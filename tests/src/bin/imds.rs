//! An instance metadata service (IMDSv2) for the "AWS in a box" test tier: the harness runs
//! one inside each instance's network namespace at 169.254.169.254:80, serving the files
//! under `--dir` (`meta-data/instance-id`, `meta-data/local-ipv4`, `user-data`, the role's
//! credentials, ...). As on EC2, every read needs a token from `PUT /latest/api/token`, whose
//! answer carries its TTL header; a path ending in `/` lists (serves its `index` file).

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

#[derive(Parser)]
struct Args {
    /// Where to listen.
    #[arg(long)]
    listen: SocketAddr,
    /// The metadata tree.
    #[arg(long)]
    dir: PathBuf,
}

#[derive(Default)]
struct Tokens(Mutex<Vec<String>>);

struct App {
    dir: PathBuf,
    tokens: Tokens,
}

async fn token(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let ttl = headers
        .get("x-aws-ec2-metadata-token-ttl-seconds")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok());
    let Some(ttl) = ttl.filter(|t| (1..=21600).contains(t)) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let t = format!("token-{:016x}", fastrand::u64(..));
    if let Ok(mut all) = app.tokens.0.lock() {
        all.push(t.clone());
    }
    (
        [("x-aws-ec2-metadata-token-ttl-seconds", ttl.to_string())],
        t,
    )
        .into_response()
}

async fn read(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(path): Path<String>,
) -> Response {
    let given = headers
        .get("x-aws-ec2-metadata-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let known = app
        .tokens
        .0
        .lock()
        .map(|all| all.iter().any(|t| t == given))
        .unwrap_or(false);
    if !known {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if path.split('/').any(|s| s == "..") {
        return StatusCode::NOT_FOUND.into_response();
    }
    let file = if path.ends_with('/') || path.is_empty() {
        app.dir.join(&path).join("index")
    } else {
        app.dir.join(&path)
    };
    match std::fs::read(&file) {
        Ok(body) => body.into_response(),
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let app = Arc::new(App {
        dir: args.dir,
        tokens: Tokens::default(),
    });
    let router = Router::new()
        .route("/latest/api/token", put(token))
        .route("/latest/{*path}", get(read))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    axum::serve(listener, router).await?;
    Ok(())
}
