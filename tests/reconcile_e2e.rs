//! Reconciliation end to end, with real processes: `remedy serve` on a
//! PostgreSQL store and Debian's Alertmanager. remedy stops, an alert
//! resolves while it is down, and the resolve never reaches it; restarted
//! with a short interval and grace, remedy finds the alert gone from
//! Alertmanager's API and closes the incident (nobody is paged) — but not
//! while one of its configured peers cannot be reached.
//!
//! Alertmanager retries an undelivered resolve at every `group_interval`
//! for as long as it holds the alert, so "its retries are exhausted" is
//! stood for by the old remedy's port turning into a black hole (a socket
//! that hangs up on every connection): every retry fails, as it would after
//! the retries ran out, and a restarted remedy (on another port) never
//! receives the resolve. Run only this: `cargo nextest run --test reconcile_e2e`.

mod common;
#[allow(dead_code, reason = "this test binary uses part of the harness")]
#[path = "e2e/harness.rs"]
mod harness;

use std::time::Duration;

use harness::{
    Alert, Alertmanager, ChatTo, Remedy, RemedyConfig, Scratch, StoreDb, free_port, http, wait_for,
};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const WAIT: Duration = Duration::from_secs(30);
const GRACE_MS: i64 = 2_000;

fn config(store: &StoreDb, playbooks: &std::path::Path, alertmanager: &str) -> RemedyConfig {
    let mut config = RemedyConfig::new(
        &store.url,
        playbooks,
        &common::postgres_admin_url(),
        ChatTo::Console,
    )
    .env("REMEDY__RECONCILE__INTERVAL", "300ms")
    .env("REMEDY__RECONCILE__GRACE", &format!("{GRACE_MS}ms"));
    config.alertmanager_url = alertmanager.to_owned();
    config
}

async fn status(store: &StoreDb, id: i64) -> String {
    sqlx::query_scalar("select status from incidents where id = $1")
        .bind(id)
        .fetch_one(&store.pool)
        .await
        .expect("incident")
}

async fn events(store: &StoreDb, id: i64) -> Vec<(String, Value, i64)> {
    let rows: Vec<(String, sqlx::types::Json<Value>, i64)> = sqlx::query_as(
        "select kind, detail, at from incident_events where incident_id = $1 order by id",
    )
    .bind(id)
    .fetch_all(&store.pool)
    .await
    .expect("events");
    rows.into_iter().map(|(k, d, at)| (k, d.0, at)).collect()
}

/// The fingerprints Alertmanager's API lists with `instance=…`.
async fn listed(am: &Alertmanager, instance: &str) -> usize {
    let reply: Vec<Value> = http()
        .get(format!("{}/api/v2/alerts", am.url))
        .query(&[("filter", format!("instance=\"{instance}\""))])
        .send()
        .await
        .expect("alertmanager answers")
        .json()
        .await
        .expect("alert list");
    reply.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolve_that_never_arrives_is_found_by_reconciliation_unless_a_peer_is_unreachable() {
    let scratch = Scratch::new();
    let store = StoreDb::create().await;
    let playbooks = common::empty_dir();

    // remedy and Alertmanager, two CRITICAL alerts (the matrix pages the
    // Team Lead after 15 minutes).
    let mut first =
        Remedy::start(&scratch, &config(&store, &playbooks, "http://127.0.0.1:9")).await;
    let am = Alertmanager::start(&scratch, &[first.webhook_url()]).await;
    let labels = |instance: &'static str| {
        Alert::new(&[
            ("alertname", "DatabasePoolExhaustionCritical"),
            ("severity", "critical"),
            ("instance", instance),
        ])
    };
    let (gone, stays) = (labels("db-gone"), labels("db-stays"));
    am.fire(&gone).await;
    am.fire(&stays).await;
    let gone_id = store.wait_incident("instance", "db-gone").await;
    let stays_id = store.wait_incident("instance", "db-stays").await;
    wait_for("escalation timers of both incidents", WAIT, || async {
        (store
            .count("select count(distinct incident_id) from escalation_timers")
            .await
            == 2)
            .then_some(())
    })
    .await;

    // remedy stops; its port becomes a black hole (below); the alert
    // resolves meanwhile and Alertmanager fails to deliver the resolve.
    first.proc.signal("TERM");
    assert!(
        first.proc.wait_exit(Duration::from_secs(20)),
        "remedy stops"
    );
    let old = first
        .url
        .strip_prefix("http://")
        .expect("http url")
        .to_owned();
    let hole = tokio::net::TcpListener::bind(&old)
        .await
        .expect("the old port is free again");
    let _hole = tokio::spawn(async move {
        // Accepts and hangs up at once: each attempt fails fast.
        while let Ok((socket, _)) = hole.accept().await {
            drop(socket);
        }
    });
    let failed = || {
        am.metric_sum(
            "alertmanager_notification_requests_failed_total",
            &[("integration", "webhook")],
        )
    };
    let failed_before = failed().await;
    am.resolve(&gone).await;
    wait_for(
        "Alertmanager's failed attempt to send the resolve",
        WAIT,
        || async { (failed().await > failed_before).then_some(()) },
    )
    .await;
    assert_eq!(listed(&am, "db-gone").await, 0, "resolved in Alertmanager");
    assert_eq!(listed(&am, "db-stays").await, 1);

    // Restarted with a second peer that cannot be reached: runs happen,
    // well past the grace, and close nothing.
    let unreachable = format!("http://127.0.0.1:{}", free_port());
    let second = Remedy::start(
        &scratch,
        &config(&store, &playbooks, &am.url).env(
            "REMEDY__ALERTMANAGER__URLS",
            &format!("{},{unreachable}", am.url),
        ),
    )
    .await;
    let partial_runs = GRACE_MS / 300 + 3;
    wait_for("reconciliation runs with a peer down", WAIT, || async {
        let runs = second
            .metric_sum("remedy_reconcile_runs_total", &[("result", "partial")])
            .await;
        #[allow(clippy::cast_precision_loss, reason = "a small count")]
        (runs >= partial_runs as f64).then_some(())
    })
    .await;
    assert_eq!(status(&store, gone_id).await, "firing");
    assert_eq!(
        store.count("select count(*) from incident_absences").await,
        0,
        "a partial view records nothing"
    );
    drop(second);

    // Restarted with every peer reachable: the incident closes after the
    // grace; the other alert is still active and its incident stays open.
    let third = Remedy::start(&scratch, &config(&store, &playbooks, &am.url)).await;
    wait_for("the incident closed by reconciliation", WAIT, || async {
        (status(&store, gone_id).await == "resolved").then_some(())
    })
    .await;
    let timeline = events(&store, gone_id).await;
    let kinds: Vec<&str> = timeline.iter().map(|(k, _, _)| k.as_str()).collect();
    assert!(
        !kinds.contains(&"resolved"),
        "the webhook never came: {kinds:?}"
    );
    let (_, detail, closed_at) = timeline
        .iter()
        .find(|(k, _, _)| k == "resolved_by_reconciliation")
        .unwrap_or_else(|| panic!("{kinds:?}"));
    let since = OffsetDateTime::parse(
        detail["absent_since"].as_str().expect("absent_since"),
        &Rfc3339,
    )
    .expect("RFC 3339");
    let since_ms = i64::try_from(since.unix_timestamp_nanos() / 1_000_000).expect("ms");
    assert!(
        closed_at - since_ms >= GRACE_MS,
        "closed {} ms after it was first missing",
        closed_at - since_ms
    );
    // Nothing pages about it: its timers were cancelled, none fired.
    let timers: Vec<String> =
        sqlx::query_scalar("select state from escalation_timers where incident_id = $1")
            .bind(gone_id)
            .fetch_all(&store.pool)
            .await
            .expect("timers");
    assert!(
        !timers.is_empty() && timers.iter().all(|s| s == "cancelled"),
        "{timers:?}"
    );
    assert_eq!(status(&store, stays_id).await, "firing");
    assert_eq!(
        third
            .metric_sum("remedy_incidents_reconciled_total", &[])
            .await,
        1.0
    );

    // The alert still firing is silenced in Alertmanager: its incident
    // stays open and its escalation is held until the silence's end, as
    // Alertmanager's own API (alert status, then the silence) tells.
    let out = tokio::process::Command::new(harness::AMTOOL)
        .arg(format!("--alertmanager.url={}", am.url))
        .args(["silence", "add", "instance=db-stays", "--duration=1h"])
        .args(["--comment=maintenance", "--author=e2e"])
        .output()
        .await
        .expect("amtool runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let silence = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let ends_at: Value = http()
        .get(format!("{}/api/v2/silence/{silence}", am.url))
        .send()
        .await
        .expect("alertmanager answers")
        .json()
        .await
        .expect("silence");
    let ends_at = OffsetDateTime::parse(ends_at["endsAt"].as_str().expect("endsAt"), &Rfc3339)
        .expect("RFC 3339");
    let until: i64 = wait_for("escalation held by the silence", WAIT, || async {
        sqlx::query_scalar::<_, Option<i64>>(
            "select silenced_until from escalations where incident_id = $1",
        )
        .bind(stays_id)
        .fetch_one(&store.pool)
        .await
        .expect("escalation")
    })
    .await;
    assert_eq!(
        i128::from(until),
        ends_at.unix_timestamp_nanos() / 1_000_000
    );
    let held: Vec<Option<i64>> = sqlx::query_scalar(
        "select due_at from escalation_timers where incident_id = $1 and state = 'pending'
          order by level, nth",
    )
    .bind(stays_id)
    .fetch_all(&store.pool)
    .await
    .expect("timers");
    assert_eq!(held.first().copied().flatten(), Some(until), "{held:?}");
    assert_eq!(status(&store, stays_id).await, "firing");
}
