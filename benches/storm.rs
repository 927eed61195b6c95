//! An alert storm: one Alertmanager notification with ALERTS alerts of one
//! group (an outage), sent to remedy running in this process (its real
//! router on a loopback port, its real worker and scheduler, the shipped
//! playbooks diagnosing against a fresh PostgreSQL database) with a minimal
//! fake Slack Web API that records every call. Prints how long intake took
//! to answer, how long until the storm's report was posted, until it showed
//! every member, how many diagnoses ran and how many Slack calls were made;
//! then resolves every alert and prints how long until the storm's message
//! said so; then sends five more storms of new groups 250 ms apart (each
//! lands while the members of the ones before are being admitted) and
//! prints how long each webhook took to answer.
//!
//! Run: `cargo bench --bench storm` (both stores), or with `sqlite` /
//! `postgres` as the argument; `off` as a second argument runs the same
//! storm with coalescing turned off (`storm.threshold = 0`), for comparison.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use remedy::app::App;
use remedy::config::Settings;
use serde_json::{Value, json};
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

const ALERTS: usize = 2_000;
/// Storm notifications sent one after the other after the first.
const AFTERSHOCKS: usize = 5;
const WEBHOOK_TOKEN: &str = "bench-webhook-token";
const SLACK_TOKEN: &str = "xoxb-bench";

fn pg_admin() -> String {
    std::env::var("REMEDY_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

async fn create_pg(name: &str) -> anyhow::Result<String> {
    let admin = pg_admin();
    let mut conn = sqlx::PgConnection::connect(&admin).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("create database {name}")))
        .execute(&mut conn)
        .await?;
    Ok(format!(
        "{}/{name}",
        admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b)
    ))
}

async fn drop_pg(name: &str) -> anyhow::Result<()> {
    let mut conn = sqlx::PgConnection::connect(&pg_admin()).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "drop database if exists {name} with (force)"
    )))
    .execute(&mut conn)
    .await?;
    Ok(())
}

/// One Slack call: when, which method, the message's header text.
#[derive(Debug, Clone)]
struct Call {
    at: Instant,
    method: String,
    header: String,
    text: String,
}

#[derive(Default)]
struct Slack {
    calls: Mutex<Vec<Call>>,
}

impl Slack {
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("slack lock").clone()
    }

    fn first(&self, holds: impl Fn(&Call) -> bool) -> Option<Instant> {
        self.calls().into_iter().find(|c| holds(c)).map(|c| c.at)
    }
}

async fn slack_api(
    State(slack): State<Arc<Slack>>,
    Path(method): Path<String>,
    Json(body): Json<Value>,
) -> Json<Value> {
    let blocks = body["blocks"].as_array().cloned().unwrap_or_default();
    let text: Vec<&str> = blocks
        .iter()
        .filter_map(|b| b["text"]["text"].as_str())
        .collect();
    let call = Call {
        at: Instant::now(),
        method,
        header: text.first().map(|s| (*s).to_owned()).unwrap_or_default(),
        text: text.join("\n"),
    };
    let n = {
        let mut calls = slack.calls.lock().expect("slack lock");
        calls.push(call);
        calls.len()
    };
    Json(json!({"ok": true, "channel": "C0STORM", "ts": format!("1764000000.{n:06}")}))
}

async fn start_slack() -> anyhow::Result<(String, Arc<Slack>)> {
    let slack = Arc::new(Slack::default());
    let app = axum::Router::new()
        .route("/api/{method}", axum::routing::post(slack_api))
        .with_state(slack.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/api", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, slack))
}

fn notification(status: &str, n: usize) -> String {
    notification_of("outage", 0, status, n)
}

/// `n` alerts of group `cluster`, fingerprints from `0xb00_0000 + base`.
fn notification_of(cluster: &str, base: u64, status: &str, n: usize) -> String {
    let alerts: Vec<Value> = (0..n)
        .map(|i| {
            json!({
                "status": status,
                "labels": {
                    "alertname": "DatabaseIdleInTransaction", "severity": "warning",
                    "instance": format!("db-{i:04}:5432"), "cluster": cluster,
                },
                "annotations": {"summary": "idle in transaction"},
                "startsAt": "2026-11-30T03:00:00Z",
                "endsAt": if status == "resolved" { "2026-11-30T03:20:00Z" } else { "0001-01-01T00:00:00Z" },
                "generatorURL": "http://prometheus/graph",
                "fingerprint": format!("{:016x}", 0xb00_0000_u64 + base + u64::try_from(i).unwrap_or(0)),
            })
        })
        .collect();
    json!({
        "receiver": "remedy", "status": status, "version": "4", "alerts": alerts,
        "groupLabels": {"cluster": cluster}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "groupKey": format!("{{}}:{{cluster=\"{cluster}\"}}"), "truncatedAlerts": 0
    })
    .to_string()
}

async fn wait_for(
    slack: &Slack,
    limit: Duration,
    holds: impl Fn(&Call) -> bool,
) -> Option<Instant> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(at) = slack.first(&holds) {
            return Some(at);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "not within the limit".to_owned(),
        |d| format!("{:.0} ms", d.as_secs_f64() * 1000.0),
    )
}

async fn run(backend: &str, coalesce: bool) -> anyhow::Result<()> {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let target_name = format!("remedy_bench_storm_target_{id}");
    let target = create_pg(&target_name).await?;
    let store_name = format!("remedy_bench_storm_{id}");
    let store_url = if backend == "sqlite" {
        let dir = std::env::temp_dir().join("remedy-bench");
        std::fs::create_dir_all(&dir)?;
        format!(
            "sqlite://{}",
            dir.join(format!("{store_name}.db")).display()
        )
    } else {
        create_pg(&store_name).await?
    };
    let (slack_url, slack) = start_slack().await?;
    let playbooks = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("playbooks");
    let env: Vec<(String, String)> = [
        ("REMEDY__STORE__URL", store_url.as_str()),
        ("REMEDY__INTAKE__BEARER_TOKEN", WEBHOOK_TOKEN),
        ("REMEDY__INTAKE__MAX_BODY_BYTES", "8388608"),
        ("REMEDY__API__TOKEN", "bench-api-token"),
        (
            "REMEDY__PLAYBOOKS__DIR",
            playbooks.to_str().unwrap_or_default(),
        ),
        ("REMEDY__TARGETS__MAIN__URL", target.as_str()),
        ("REMEDY__PROMETHEUS__URL", "http://127.0.0.1:9"),
        ("REMEDY__CHAT__PLATFORM", "slack"),
        ("REMEDY__CHAT__DEFAULT_CHANNEL", "C0STORM"),
        ("REMEDY__CHAT__SLACK__API_URL", slack_url.as_str()),
        ("REMEDY__CHAT__SLACK__BOT_TOKEN", SLACK_TOKEN),
        ("REMEDY__CHAT__SLACK__SIGNING_SECRET", "bench-secret"),
        (
            "REMEDY__STORM__THRESHOLD",
            if coalesce { "10" } else { "0" },
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let settings = Settings::load_from(None, env).map_err(|e| anyhow::anyhow!("{e}"))?;
    let app = App::build(settings).await?;
    let shutdown = CancellationToken::new();
    let worker = app.spawn_worker(shutdown.clone());
    let scheduler = app.spawn_scheduler(shutdown.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1/alertmanager", listener.local_addr()?);
    let router = app.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let client = remedy::net::client();

    let label = format!(
        "{backend:<8} {} alerts, coalescing {}",
        ALERTS,
        if coalesce { "on (threshold 10)" } else { "off" }
    );
    let body = notification("firing", ALERTS);
    let sent = Instant::now();
    let reply = client
        .post(&url)
        .bearer_auth(WEBHOOK_TOKEN)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    let answered = sent.elapsed();
    anyhow::ensure!(reply.status().is_success(), "intake: {}", reply.status());
    let limit = Duration::from_secs(if coalesce { 60 } else { 300 });
    let (report, complete) = if coalesce {
        let report = wait_for(&slack, limit, |c| {
            c.method == "chat.postMessage" && c.header.contains("storm of")
        })
        .await;
        let everyone = format!("storm of {} alerts", ALERTS - 10);
        let complete = wait_for(&slack, limit, |c| c.header.contains(&everyone)).await;
        (report, complete)
    } else {
        let report = wait_for(&slack, limit, |c| c.method == "chat.postMessage").await;
        let complete = wait_for(&slack, limit, |_| {
            slack
                .calls()
                .iter()
                .filter(|c| c.method == "chat.postMessage")
                .count()
                >= ALERTS
        })
        .await;
        (report, complete)
    };
    let diagnoses: i64 = match &app.state.store {
        remedy::store::Store::Sqlite(p, _) => {
            sqlx::query_scalar("select count(*) from incident_events where kind = 'diagnosed'")
                .fetch_one(p)
                .await?
        }
        remedy::store::Store::Postgres(p) => {
            sqlx::query_scalar("select count(*) from incident_events where kind = 'diagnosed'")
                .fetch_one(p)
                .await?
        }
    };
    let calls = slack.calls();
    let count = |m: &str| calls.iter().filter(|c| c.method == m).count();
    println!(
        "{label}: webhook answered 200 (committed) in {}",
        ms(Some(answered))
    );
    println!(
        "{label}: first report posted {} after sending; {} {}",
        ms(report.map(|t| t - sent)),
        if coalesce {
            "storm message showing every member"
        } else {
            "all messages posted"
        },
        ms(complete.map(|t| t - sent))
    );
    println!(
        "{label}: diagnoses run {diagnoses}; Slack chat.postMessage {}, chat.update {}, chat.postMessage within 4 s of sending {}",
        count("chat.postMessage"),
        count("chat.update"),
        calls
            .iter()
            .filter(|c| c.method == "chat.postMessage" && c.at - sent <= Duration::from_secs(4))
            .count()
    );
    if coalesce {
        let resolved_sent = Instant::now();
        let reply = client
            .post(&url)
            .bearer_auth(WEBHOOK_TOKEN)
            .header("content-type", "application/json")
            .body(notification("resolved", ALERTS))
            .send()
            .await?;
        anyhow::ensure!(reply.status().is_success(), "intake: {}", reply.status());
        let resolved = wait_for(&slack, Duration::from_secs(60), |c| {
            c.at >= resolved_sent
                && c.header.contains("storm of")
                && c.text.contains("all resolved")
        })
        .await;
        println!(
            "{label}: all resolved -> storm message says so {} (storm.update_every is 5 s)",
            ms(resolved.map(|t| t - resolved_sent))
        );
    }
    if coalesce {
        // Storms that follow each other: each notification lands while
        // the members of the ones before are still being admitted, so its
        // intake competes with their writes.
        let mut answers = Vec::new();
        for k in 1..=AFTERSHOCKS {
            let body = notification_of(
                &format!("outage-{k}"),
                1_000_000 * u64::try_from(k).unwrap_or(0),
                "firing",
                ALERTS,
            );
            let sent = Instant::now();
            let reply = client
                .post(&url)
                .bearer_auth(WEBHOOK_TOKEN)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await?;
            answers.push(sent.elapsed());
            anyhow::ensure!(reply.status().is_success(), "intake: {}", reply.status());
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let shown: Vec<String> = answers.iter().map(|d| ms(Some(*d))).collect();
        println!(
            "{label}: {AFTERSHOCKS} more storms of {ALERTS} new alerts, 250 ms apart: webhook answered 200 in {}",
            shown.join(", ")
        );
    }
    shutdown.cancel();
    let _ = worker.await;
    let _ = scheduler.await;
    let store = app.drain().await;
    store.close().await;
    drop_pg(&target_name).await?;
    if backend == "sqlite" {
        let file = std::env::temp_dir()
            .join("remedy-bench")
            .join(format!("{store_name}.db"));
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
        }
    } else {
        drop_pg(&store_name).await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let backends: Vec<&str> = match args.first().map(String::as_str) {
        Some("sqlite") => vec!["sqlite"],
        Some("postgres") => vec!["postgres"],
        _ => vec!["sqlite", "postgres"],
    };
    let off = args.iter().any(|a| a == "off");
    for backend in backends {
        run(backend, true).await?;
        if off {
            run(backend, false).await?;
        }
    }
    Ok(())
}
