//! Full diagnosis of DatabasePoolExhaustionCritical, 200 times, against the
//! local PostgreSQL (a fresh database) and a fast fake Prometheus on
//! loopback; prints p50, p99 and max. Run: `cargo bench --bench diagnosis`.
//! (The playbook's log step runs /usr/bin/docker when it exists; where it
//! does not, the step fails at once, as the report then says.)

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use remedy::playbook::AlertContext;
use sqlx::Connection;

const RUNS: usize = 200;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let admin = std::env::var("REMEDY_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!("remedy_bench_{}", std::process::id());
    let mut conn = sqlx::PgConnection::connect(&admin).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("create database {name}")))
        .execute(&mut conn)
        .await?;
    let target = format!(
        "{}/{name}",
        admin
            .rsplit_once('/')
            .map_or(admin.as_str(), |(base, _)| base)
    );

    let prometheus = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let prometheus_url = format!("http://{}", prometheus.local_addr()?);
    let app = Router::new().route(
        "/api/v1/query",
        post(|| async {
            axum::Json(serde_json::json!({
                "status": "success",
                "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1_764_000_000.0, "95.5"]}]}
            }))
        }),
    );
    tokio::spawn(async move { axum::serve(prometheus, app).await });

    let env: Vec<(String, String)> = [
        ("REMEDY__INTAKE__BEARER_TOKEN", "bench"),
        ("REMEDY__TARGETS__MAIN__URL", target.as_str()),
        ("REMEDY__PROMETHEUS__URL", prometheus_url.as_str()),
        (
            "REMEDY__PLAYBOOKS__DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/playbooks"),
        ),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let settings = remedy::config::Settings::load_from(None, env)?;
    let engine = remedy::app::build_engine(&settings, None)?;
    let alert = AlertContext {
        labels: [
            ("alertname", "DatabasePoolExhaustionCritical"),
            ("severity", "critical"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect(),
        status: "firing".into(),
        ..AlertContext::default()
    };
    // Warm the connection pool once, as a running service has it warm.
    let first = remedy::engine::diagnose::diagnose(&engine, &alert).await;
    let failed: Vec<&String> = first
        .steps
        .iter()
        .filter(|(_, s)| !s.ok)
        .map(|(id, _)| id)
        .collect();
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let started = Instant::now();
        let report = remedy::engine::diagnose::diagnose(&engine, &alert).await;
        times.push(started.elapsed());
        assert!(
            report.matched && report.steps["connections"].ok,
            "diagnosis failed: {report:?}"
        );
    }
    times.sort();
    let pct = |p: f64| -> Duration {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "an index into 200 samples"
        )]
        let i = ((times.len() as f64 - 1.0) * p).round() as usize;
        times[i]
    };
    println!(
        "diagnosis DatabasePoolExhaustionCritical, {RUNS} runs: p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms  (steps that fail here: {failed:?})",
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3
    );
    drop(engine);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "drop database {name} with (force)"
    )))
    .execute(&mut conn)
    .await?;
    Ok(())
}
