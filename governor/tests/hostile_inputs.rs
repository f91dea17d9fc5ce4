//! Property tests for everything a governor parses from outside: its configuration file, the
//! values other writers left in etcd, and REST request bodies and credentials. Whatever the
//! input, nothing panics; values that do not parse are left out, never guessed at.
//!
//! `PROPTEST_CASES=100000 cargo test -p governor --test hostile_inputs` runs a longer search
//! (`scripts/fuzz` runs every such target).

use governor::api::auth;
use governor::api::ops::{RestartBody, SwitchoverBody, parse_body};
use governor::config::ApiCredentials;
use governor::dcs::parse_view;
use governor::ha::{DataDir, DcsView, HaConfig, LeaseView, LocalState, PgState, Snapshot, decide};
use governor::shared::failsafe::{self, Gate, Heartbeat};
use proptest::prelude::*;
use spilo_model::{ClusterConfig, ClusterName, Keyspace, MemberName, MemberTags, TimelineId};
use std::path::Path;
use std::time::{Duration, Instant};

const VALID_CONFIG: &str = "scope: demo\nname: demo-0\netcd: {hosts: [\"127.0.0.1:2379\"]}\n\
postgresql:\n  bin_dir: /usr/lib/postgresql/15/bin\n  data_dir: /var/lib/spilo/demo-0\n  \
listen: 127.0.0.1:5432\n  authentication:\n    superuser: {username: postgres, password: {env: A}}\n    \
replication: {username: replicator, password: {env: B}}\n\
restapi: {listen: 127.0.0.1:8008, auth: {token: {env: T}}}\nha: {ttl: 4, synchronous_mode: true}\n";

/// Valid text with one byte range replaced by arbitrary bytes.
fn mutated(valid: &'static str) -> impl Strategy<Value = String> {
    (
        0..valid.len(),
        0..8usize,
        proptest::collection::vec(any::<u8>(), 0..8),
    )
        .prop_map(move |(at, cut, bytes)| {
            let mut b = valid.as_bytes().to_vec();
            let end = (at + cut).min(b.len());
            b.splice(at..end, bytes);
            String::from_utf8_lossy(&b).into_owned()
        })
}

fn keys() -> Keyspace {
    Keyspace::new(&ClusterName::new("demo").expect("valid"))
}

/// Values for the cluster's keys: arbitrary bytes, or JSON of plausible and hostile shapes.
fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        Just(b"{}".to_vec()),
        Just(b"null".to_vec()),
        Just(br#"{"conn_url":"postgres://x:99999/","api_url":"","role":"primary","state":"running","wal":{"write":"FFFFFFFF/FFFFFFFF"}}"#.to_vec()),
        Just(br#"{"conn_url":"","api_url":"","role":"replica","state":"running","timeline":4294967295,"wal":{"receive":"0/0"}}"#.to_vec()),
        Just(br#"[{"timeline":0,"switch_lsn":"0/0","reason":"","promoted_at":"","member":"m1"}]"#.to_vec()),
        Just(br#"{"leader":"m1","members":["m2","../etc"]}"#.to_vec()),
        Just(br#"{"m1":"http://127.0.0.1:8008","Bad Name":"x"}"#.to_vec()),
        Just(br#"{"m1":"http://127.0.0.1:8008","m2":7}"#.to_vec()),
        Just(br#"{"candidate":"m2","requested_at":0,"failover":true,"scheduled_at":18446744073709551615}"#.to_vec()),
        Just(br#"{"ttl":0,"loop_wait":18446744073709551615,"pause":true,"synchronous_mode":true,"synchronous_node_count":0}"#.to_vec()),
        Just(b"m1".to_vec()),
        Just(b"".to_vec()),
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("initialize".to_string()),
        Just("leader".to_string()),
        Just("config".to_string()),
        Just("history".to_string()),
        Just("sync".to_string()),
        Just("failsafe".to_string()),
        Just("switchover".to_string()),
        Just("members/m1".to_string()),
        Just("members/m2".to_string()),
        Just("members/Bad Name".to_string()),
        "[a-z/]{0,12}",
    ]
    .prop_map(|k| format!("{}{k}", keys().prefix()))
}

fn snapshot_with(view: governor::ha::ClusterView, now: Instant) -> Snapshot {
    Snapshot {
        me: MemberName::new("m1").expect("valid"),
        tags: MemberTags::default(),
        dcs: DcsView::Known(view),
        lease: LeaseView {
            id: Some(7),
            valid_until: Some(now + Duration::from_secs(4)),
        },
        local: LocalState {
            data: DataDir::Initialized {
                sysid: "7000".into(),
                was_primary: true,
                timeline: TimelineId(1),
                clean_checkpoint: None,
            },
            postgres: PgState::Stopped,
            recent_crashes: 0,
            primary_down_since: None,
            bootstrap_blocked: None,
            data_seen_at: now,
        },
        peers: vec![],
        failsafe: Default::default(),
        unix_now: 1_000_000,
    }
}

proptest! {
    #[test]
    fn governor_config_never_panics(text in prop_oneof![mutated(VALID_CONFIG), ".{0,200}"]) {
        let _ = governor::config::parse(&text, Path::new("fuzz.yaml"));
    }

    #[test]
    fn hostile_etcd_values_are_left_out_and_decide_never_panics(
        kvs in proptest::collection::vec((key(), value(), any::<i64>(), any::<i64>()), 0..12),
    ) {
        let k = keys();
        let view = parse_view(&k, kvs.iter().map(|(key, v, l, r)| (key.as_str(), v.as_slice(), *l, *r)));
        // Nothing outside the cluster's own, well-formed keys gets in.
        for name in view.members.keys() {
            prop_assert!(MemberName::new(name.as_str()).is_ok());
        }
        if let Some(l) = &view.leader {
            prop_assert!(kvs.iter().any(|(key, v, ..)| key.ends_with("/leader") && v == l.name.as_str().as_bytes()));
        }
        let now = Instant::now();
        let cfg = HaConfig {
            maximum_lag_on_failover: 1 << 20,
            primary_start_timeout: Duration::from_secs(30),
            max_primary_crashes: 3,
            fence_margin: Duration::from_secs(1),
            rewind_check_after: Duration::from_secs(15),
            // Recovery from the archive on at once: its branch sees the hostile views too.
            archive_recovery_after: Some(Duration::ZERO),
            standby: None,
        };
        let _ = decide(&snapshot_with(view, now), &cfg, now);
    }

    #[test]
    fn request_bodies_never_panic(raw in prop_oneof![
        ".{0,120}",
        Just(r#"{"candidate":"m2","scheduled_at":"2026-13-99T99:99:99Z"}"#.to_string()),
        Just(r#"{"leader":"m1","ttl_ms":18446744073709551615}"#.to_string()),
        Just(r#"{"leader":"../m1","ttl_ms":-1}"#.to_string()),
    ]) {
        let _ = parse_body::<SwitchoverBody>(&raw);
        let _ = parse_body::<RestartBody>(&raw);
        if let Ok(beat) = serde_json::from_str::<Heartbeat>(&raw) {
            let promise = failsafe::promise_length(Duration::from_secs(4), beat.ttl_ms);
            prop_assert!(promise <= failsafe::LONGEST_PROMISE);
            prop_assert!(Gate::default().confirm(beat.leader, Instant::now(), promise).is_ok());
        }
        if let Ok(patch) = serde_json::from_str::<serde_json::Value>(&raw) {
            let _ = ClusterConfig::merge_patch(&serde_json::json!({"ttl": 4}), &patch);
        }
    }

    #[test]
    fn only_the_exact_credentials_pass(header in ".{0,80}") {
        let creds = ApiCredentials {
            token: Some("s3cret".into()),
            basic: Some(("admin".into(), "pw".into())),
        };
        let mut h = axum::http::HeaderMap::new();
        if let Ok(v) = axum::http::HeaderValue::from_str(&header) {
            h.insert(axum::http::header::AUTHORIZATION, v);
        }
        let ok = auth::check(Some(&creds), &h).is_ok();
        let exact = header.trim_end() == "Bearer s3cret"
            || header.strip_prefix("Bearer ").is_some_and(|t| t.trim() == "s3cret")
            || header.strip_prefix("Basic ").is_some_and(|b| b.trim() == "YWRtaW46cHc=");
        prop_assert_eq!(ok, exact, "{:?}", header);
    }
}
