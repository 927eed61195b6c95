//! The escalation timer scheduler at scale: a store holding PENDING timers
//! (one incident each), of which DUE fall due evenly over WINDOW seconds
//! while the real scheduler loop (`engine::escalate::run_scheduler`) runs.
//! Prints the lag between due and fired (p50, p99, max, from the timers'
//! own `lag_ms`) and the bench process's resident memory before and while
//! scheduling, for a small and a large number of pending timers, so that
//! memory can be compared.
//!
//! Run: `cargo bench --bench timers` (both stores), or with `sqlite` /
//! `postgres` as the argument. PostgreSQL is the local server
//! (`REMEDY_TEST_POSTGRES`), each run in a fresh database.

use std::time::{Duration, Instant};

use remedy::domain::now_millis;
use remedy::store::{Store, StoreOptions};
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

const DUE: i64 = 10_000;
const WINDOW_MS: i64 = 20_000;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn pg_admin() -> String {
    std::env::var("REMEDY_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn sqlite_file(name: &str) -> std::path::PathBuf {
    std::env::temp_dir()
        .join("remedy-bench")
        .join(format!("{name}.db"))
}

/// A fresh store: its URL and its name (database or file stem).
async fn fresh(backend: &str) -> anyhow::Result<(String, String)> {
    let name = format!("remedy_bench_timers_{}", uuid::Uuid::now_v7().simple());
    let url = match backend {
        "sqlite" => {
            let file = sqlite_file(&name);
            if let Some(dir) = file.parent() {
                std::fs::create_dir_all(dir)?;
            }
            format!("sqlite://{}", file.display())
        }
        _ => {
            let admin = pg_admin();
            let mut conn = sqlx::PgConnection::connect(&admin).await?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("create database {name}")))
                .execute(&mut conn)
                .await?;
            format!(
                "{}/{name}",
                admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b)
            )
        }
    };
    Ok((url, name))
}

/// Removes the store `fresh` made.
async fn remove(backend: &str, name: &str) -> anyhow::Result<()> {
    if std::env::var_os("REMEDY_BENCH_KEEP").is_some() {
        println!("kept store: {name}");
        return Ok(());
    }
    if backend == "sqlite" {
        let file = sqlite_file(name);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
        }
    } else {
        let mut conn = sqlx::PgConnection::connect(&pg_admin()).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "drop database {name} with (force)"
        )))
        .execute(&mut conn)
        .await?;
    }
    Ok(())
}

/// `pending` incidents with one timer each: the first DUE fall due evenly
/// over the window starting at `start`, the rest a day later.
async fn seed(store: &Store, pending: i64, start: i64) -> anyhow::Result<()> {
    let series = match store {
        Store::Sqlite(..) => {
            "with recursive s(i) as (select 1 union all select i + 1 from s where i < $1) select i from s"
        }
        Store::Postgres(_) => "select generate_series(1, $1::bigint) as i",
    };
    let incidents = format!(
        "insert into incidents (fingerprint, starts_at, alertname, severity, status, labels,
             annotations, generator_url, receiver, group_key, opened_at, last_seen_at, seen_count)
         select 'f' || i, '2026-11-27T01:00:00Z', 'DatabasePoolExhaustionCritical', 'critical',
                'firing', '{{}}', '{{}}', '', 'remedy', 'g', $2, $2, 1
           from ({series}) s"
    );
    let timers = format!(
        "insert into escalation_timers (incident_id, level, nth, kind, role, reason, due_at,
             repeats_left, created_at)
         select i, 1, 0, 'escalate', 'team-lead', 'not resolved in 15m',
                case when i <= $3 then $2 + (i * $4) / $3 else $2 + 86400000 end, 0, $2
           from ({series}) s"
    );
    remedy_exec(store, &incidents, pending, start).await?;
    remedy_exec_timers(store, &timers, pending, start).await?;
    Ok(())
}

async fn remedy_exec(store: &Store, sql: &str, n: i64, start: i64) -> anyhow::Result<()> {
    match store {
        Store::Sqlite(pool, _) => {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(n)
                .bind(start)
                .execute(pool)
                .await?;
        }
        Store::Postgres(pool) => {
            sqlx::query(sqlx::AssertSqlSafe(sql.replace("'{}'", "'{}'::jsonb")))
                .bind(n)
                .bind(start)
                .execute(pool)
                .await?;
        }
    }
    Ok(())
}

async fn remedy_exec_timers(store: &Store, sql: &str, n: i64, start: i64) -> anyhow::Result<()> {
    macro_rules! run {
        ($pool:expr) => {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(n)
                .bind(start)
                .bind(DUE.min(n))
                .bind(WINDOW_MS)
                .execute($pool)
                .await
                .map(drop)?
        };
    }
    match store {
        Store::Sqlite(pool, _) => run!(pool),
        Store::Postgres(pool) => run!(pool),
    };
    Ok(())
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "an index into a short list"
    )]
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

async fn run(backend: &str, pending: i64) -> anyhow::Result<()> {
    let (url, name) = fresh(backend).await?;
    let store = Store::connect(&url, &StoreOptions::default()).await?;
    store.migrate().await?;
    let settings = remedy::config::Settings::load_from(
        None,
        [
            ("REMEDY__STORE__URL".to_owned(), url.clone()),
            (
                "REMEDY__INTAKE__BEARER_TOKEN".to_owned(),
                "bench".to_owned(),
            ),
            (
                "REMEDY__PLAYBOOKS__DIR".to_owned(),
                std::env::temp_dir().display().to_string(),
            ),
        ],
    )?;
    let engine = remedy::app::build_engine(&settings, Some(store.clone()))?;
    let seeded = Instant::now();
    let start = now_millis() + 3_000;
    seed(&store, pending, start).await?;
    let seed_time = seeded.elapsed();
    let before = rss_kib();
    let shutdown = CancellationToken::new();
    let scheduler = tokio::spawn(remedy::engine::escalate::run_scheduler(
        engine.clone(),
        std::sync::Arc::new(tokio::sync::Notify::new()),
        shutdown.clone(),
    ));
    let mut peak = before;
    while now_millis() < start + WINDOW_MS + 2_000 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(rss_kib());
    }
    shutdown.cancel();
    scheduler.await?;
    let mut lags: Vec<i64> = match &store {
        Store::Sqlite(pool, _) => {
            sqlx::query_scalar("select lag_ms from escalation_timers where state = 'fired'")
                .fetch_all(pool)
                .await?
        }
        Store::Postgres(pool) => {
            sqlx::query_scalar("select lag_ms from escalation_timers where state = 'fired'")
                .fetch_all(pool)
                .await?
        }
    };
    let still = store.pending_timers().await?;
    lags.sort_unstable();
    println!(
        "{backend:<8} pending {pending:>7}  fired {:>6} (of {} due in {} s)  lag p50 {:>4} ms  p99 {:>4} ms  max {:>5} ms  still pending {still:>6}  rss before {} MiB, peak while scheduling {} MiB  (seeded in {:.1} s)",
        lags.len(),
        DUE.min(pending),
        WINDOW_MS / 1000,
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
        lags.last().copied().unwrap_or(0),
        before / 1024,
        peak / 1024,
        seed_time.as_secs_f64()
    );
    store.close().await;
    remove(backend, &name).await
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let which = std::env::args()
        .skip(1)
        .find(|a| a == "sqlite" || a == "postgres");
    let backends: Vec<&str> = match which.as_deref() {
        Some(b) => vec![b],
        None => vec!["sqlite", "postgres"],
    };
    for backend in backends {
        for pending in [DUE, 100_000] {
            run(backend, pending).await?;
        }
    }
    Ok(())
}
