//! The whole pipeline against a real `remedy serve` process (the release
//! binary), per store (SQLite file, then a fresh PostgreSQL database):
//!
//! * alert → message: from POSTing an Alertmanager webhook
//!   (DatabaseIdleInTransaction, then DatabasePoolExhaustionCritical; the
//!   shipped playbooks with their time thresholds scaled to seconds, real
//!   diagnosis against a fresh database on the local PostgreSQL) to a fake
//!   Slack Web API on loopback receiving the report's `chat.postMessage`;
//! * click → executed: a real session idle in transaction, its
//!   DatabaseIdleInTransaction report, one signed Approve click, then the
//!   signed click that completes the quorum of 2; timed from sending that
//!   click to the outcome's reply in the report's thread (`terminate_stale:
//!   done — …`), and to the execution's `finished_at` in the store;
//! * the process's resident memory: VmRSS idle after start, VmHWM and
//!   VmRSS after the load.
//!
//! Settings are the shipped defaults (worker `poll_interval` 1 s: intake and
//! clicks wake the worker) except: Slack as the chat platform, approvers for
//! the playbooks' roles, the per-action execution budget raised (the shipped
//! 10/10m would hold back the 11th run) and Prometheus / Alertmanager on the
//! discard port (the promql step fails at once; /usr/bin/docker, when absent,
//! fails the command step at once).
//!
//! Run: `cargo bench --bench pipeline` (both stores), or with `sqlite` /
//! `postgres` as the argument. `BENCH_ALERT_RUNS` (default 100) and
//! `BENCH_CLICK_RUNS` (default 30) set the number of measured runs;
//! `BENCH_STORM_ALERTS` (default 2000) and `BENCH_STORM_RUNS` (default 5):
//! the click → executed runs again with a notification of that many new
//! alerts (one group, coalescing off, so every one is a diagnosis waiting
//! for the target) landing just before each quorum click (0 skips it);
//! `BENCH_KEEP=1` keeps the scratch folder (remedy's log, settings, the
//! Slack calls in `slack.jsonl`).
//! PostgreSQL is the local server (`REMEDY_TEST_POSTGRES`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::routing::post;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};

const SLACK_TOKEN: &str = "xoxb-bench-token";
const SLACK_SECRET: &str = "bench-slack-signing-secret";
const WEBHOOK_TOKEN: &str = "bench-webhook-token";
const API_TOKEN: &str = "bench-api-token";
const CHANNEL: &str = "C0BENCH";
/// The application role of the leaked sessions (not a superuser: remedy
/// never terminates superusers' sessions).
const APP_ROLE: &str = "remedy_bench_app";
const WAIT: Duration = Duration::from_secs(30);
/// How long the next run's report may wait behind a storm's diagnoses.
const STORM_WAIT: Duration = Duration::from_secs(600);

// ---------------------------------------------------------------------------
// A minimal fake Slack Web API

#[derive(Clone)]
struct Call {
    method: String,
    body: Value,
    at: Instant,
}

#[derive(Clone, Default)]
struct FakeSlack {
    calls: Arc<Mutex<Vec<Call>>>,
    next_ts: Arc<Mutex<u64>>,
}

impl FakeSlack {
    /// Serves `/api/{method}` (answers like Slack) and `/response/{id}`
    /// (a click's `response_url`); gives its base URL.
    async fn start(&self) -> anyhow::Result<String> {
        let app = Router::new()
            .route("/api/{method}", post(slack_api))
            .route("/response/{id}", post(slack_response))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(url)
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("fake slack lock").clone()
    }

    /// The first call at or after `from` that `holds`.
    fn find(&self, from: usize, holds: impl Fn(&Call) -> bool) -> Option<Call> {
        self.calls
            .lock()
            .expect("fake slack lock")
            .iter()
            .skip(from)
            .find(|c| holds(c))
            .cloned()
    }

    fn len(&self) -> usize {
        self.calls.lock().expect("fake slack lock").len()
    }
}

async fn slack_api(
    State(fake): State<FakeSlack>,
    UrlPath(method): UrlPath<String>,
    headers: axum::http::HeaderMap,
    Json(body): Json<Value>,
) -> Json<Value> {
    let at = Instant::now();
    if headers.get("authorization").and_then(|v| v.to_str().ok())
        != Some(&format!("Bearer {SLACK_TOKEN}"))
    {
        return Json(json!({"ok": false, "error": "not_authed"}));
    }
    let ts = match (method.as_str(), body["ts"].as_str()) {
        ("chat.update", Some(ts)) => ts.to_owned(),
        _ => {
            let mut next = fake.next_ts.lock().expect("fake slack lock");
            *next += 1;
            format!("1764000000.{:06}", *next)
        }
    };
    fake.calls.lock().expect("fake slack lock").push(Call {
        method: method.clone(),
        body: body.clone(),
        at,
    });
    match method.as_str() {
        "chat.postMessage" | "chat.update" => Json(
            json!({"ok": true, "channel": body["channel"], "ts": ts, "message": {"text": body["text"]}}),
        ),
        "usergroups.users.list" => Json(json!({"ok": true, "users": []})),
        _ => Json(json!({"ok": false, "error": "unknown_method"})),
    }
}

async fn slack_response(
    State(fake): State<FakeSlack>,
    UrlPath(_id): UrlPath<String>,
    Json(body): Json<Value>,
) -> Json<Value> {
    fake.calls.lock().expect("fake slack lock").push(Call {
        method: "response_url".into(),
        body,
        at: Instant::now(),
    });
    Json(json!({"ok": true}))
}

fn is_report(call: &Call) -> bool {
    call.method == "chat.postMessage" && call.body.get("thread_ts").is_none()
}

// ---------------------------------------------------------------------------
// Helpers

async fn wait_for<T, F, Fut>(what: &str, probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    wait_within(WAIT, what, probe).await
}

async fn wait_within<T, F, Fut>(limit: Duration, what: &str, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe().await {
            return Ok(value);
        }
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn proc_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// "p50 … p99 … max …" of the samples (nearest rank).
fn summary(samples: &[Duration]) -> String {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let pct = |p: f64| -> Duration {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "an index into a short list"
        )]
        let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted[i]
    };
    format!(
        "p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        ms(pct(0.5)),
        ms(pct(0.99)),
        ms(sorted[sorted.len() - 1])
    )
}

fn unix_millis() -> i64 {
    remedy::domain::now_millis()
}

fn pg_admin() -> String {
    std::env::var("REMEDY_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn pg_url(database: &str) -> String {
    let admin = pg_admin();
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    format!("{base}/{database}")
}

async fn admin_sql(sql: &str) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(&pg_admin()).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(())
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The shipped playbooks with their minute thresholds in seconds (the
/// e2e tests do the same); SQL, findings and actions unchanged.
fn scaled_playbooks(dir: &Path) -> anyhow::Result<PathBuf> {
    const SCALE: &[(&str, &str, &str)] = &[
        (
            "database-idle-in-transaction.yaml",
            "idle_threshold",
            "500ms",
        ),
        ("database-idle-in-transaction.yaml", "kill_threshold", "1s"),
        (
            "database-pool-exhaustion-critical.yaml",
            "idle_threshold",
            "500ms",
        ),
        (
            "database-pool-exhaustion-critical.yaml",
            "kill_threshold",
            "1s",
        ),
        ("database-pool-exhaustion-critical.yaml", "long_query", "1s"),
    ];
    let out = dir.join("playbooks");
    std::fs::create_dir_all(&out)?;
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("playbooks");
    for entry in std::fs::read_dir(shipped)? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let file = path
            .file_name()
            .and_then(|f| f.to_str())
            .unwrap_or_default()
            .to_owned();
        let mut text = std::fs::read_to_string(&path)?;
        for (_, var, value) in SCALE.iter().filter(|(f, _, _)| *f == file) {
            let prefix = format!("  {var}: ");
            let mut found = false;
            text = text
                .lines()
                .map(|line| {
                    if !found && line.starts_with(&prefix) {
                        found = true;
                        format!("{prefix}{value}")
                    } else {
                        line.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            anyhow::ensure!(found, "{file} has no var {var}");
        }
        std::fs::write(out.join(&file), text)?;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// remedy serve

struct Remedy {
    child: Child,
    url: String,
}

impl Remedy {
    async fn start(
        scratch: &Path,
        store_url: &str,
        target_url: &str,
        slack_url: &str,
    ) -> anyhow::Result<Self> {
        let playbooks = scaled_playbooks(scratch)?;
        let settings = format!(
            r#"
[playbooks]
dir = "{playbooks}"

[prometheus]
url = "http://127.0.0.1:9"

[alertmanager]
url = "http://127.0.0.1:9"

[probes]
pms = "http://127.0.0.1:9"

[executor.rate_limits]
per_action = "100000/1m"

[chat]
platform = "slack"
default_channel = "{CHANNEL}"

[chat.slack]
api_url = "{slack_url}/api"

[escalation]
file = "{escalation}"

[approvers.backend-developer]
slack_users = ["U0DEV"]

[approvers.team-lead]
slack_users = ["U0LEAD"]

[approvers.dba]
slack_users = ["U0DBA"]

[approvers.on-call-engineer]
slack_users = ["U0ONCALL"]

[approvers.devops]
slack_users = ["U0DEVOPS"]

[approvers.cto]
slack_users = ["U0CTO"]
"#,
            playbooks = playbooks.display(),
            escalation = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("config/escalation.yaml")
                .display(),
        );
        let file = scratch.join("remedy.toml");
        std::fs::write(&file, settings)?;
        let client = remedy::net::client();
        for attempt in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let log = std::fs::File::create(scratch.join(format!("remedy-{attempt}.log")))?;
            let mut command = Command::new(env!("CARGO_BIN_EXE_remedy"));
            for (key, _) in std::env::vars() {
                if key.starts_with("REMEDY") {
                    command.env_remove(key);
                }
            }
            let child = command
                .arg("serve")
                .arg("--config")
                .arg(&file)
                .current_dir(scratch)
                .env("REMEDY__SERVER__LISTEN", format!("127.0.0.1:{port}"))
                .env("REMEDY__STORE__URL", store_url)
                .env("REMEDY__TARGETS__MAIN__URL", target_url)
                .env("REMEDY__INTAKE__BEARER_TOKEN", WEBHOOK_TOKEN)
                .env("REMEDY__API__TOKEN", API_TOKEN)
                .env("REMEDY__CHAT__SLACK__BOT_TOKEN", SLACK_TOKEN)
                .env("REMEDY__CHAT__SLACK__SIGNING_SECRET", SLACK_SECRET)
                // The runs post one after the other into one channel: at
                // Slack's pace (1 a second) the figures would measure the
                // pace, not the pipeline.
                .env("REMEDY__CHAT__SLACK__POST_RATE", "100000/1s")
                .env("REMEDY__CHAT__SLACK__UPDATE_RATE", "100000/1s")
                // One message per alert is what this measures; 100 alerts
                // of one alertname in a few seconds would be a storm.
                .env("REMEDY__STORM__THRESHOLD", "0")
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?;
            let mut remedy = Self {
                child,
                url: format!("http://127.0.0.1:{port}"),
            };
            let deadline = Instant::now() + WAIT;
            while Instant::now() < deadline && matches!(remedy.child.try_wait(), Ok(None)) {
                // Only this remedy knows this API token.
                let ready = client
                    .get(format!("{}/v1/incidents", remedy.url))
                    .bearer_auth(API_TOKEN)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ready {
                    return Ok(remedy);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            remedy.stop();
            eprintln!(
                "remedy did not become ready on port {port}; see {}",
                scratch.display()
            );
        }
        anyhow::bail!("remedy could not be started")
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then SIGKILL after 10 s.
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Remedy {
    fn drop(&mut self) {
        self.stop();
    }
}

fn webhook(alertname: &str, severity: &str, instance: &str, fingerprint: &str) -> String {
    let starts_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    json!({
        "receiver": "remedy", "status": "firing", "version": "4",
        "alerts": [{
            "status": "firing",
            "labels": {"alertname": alertname, "severity": severity, "instance": instance},
            "annotations": {"summary": "raised by the pipeline benchmark"},
            "startsAt": starts_at, "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus:9090/graph", "fingerprint": fingerprint
        }],
        "groupLabels": {"alertname": alertname, "instance": instance},
        "commonLabels": {"alertname": alertname, "instance": instance},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "groupKey": format!("{{}}:{{alertname=\"{alertname}\", instance=\"{instance}\"}}"),
        "truncatedAlerts": 0
    })
    .to_string()
}

/// The Approve button's value of the action whose title starts with `title`.
fn approve_value(message: &Value, title: &str) -> Option<String> {
    let blocks = message["blocks"].as_array()?;
    blocks
        .iter()
        .enumerate()
        .filter(|(_, b)| {
            b["type"] == "section"
                && b["text"]["text"]
                    .as_str()
                    .is_some_and(|t| t.starts_with(&format!("*{title}")))
        })
        .find_map(|(i, _)| {
            blocks.get(i + 1)?["elements"]
                .as_array()?
                .iter()
                .find(|e| e["action_id"] == "approve")?["value"]
                .as_str()
                .map(str::to_owned)
        })
}

/// A signed `block_actions` click, as Slack sends it; the HTTP status.
async fn click(
    client: &reqwest::Client,
    remedy: &Remedy,
    slack_url: &str,
    user: &str,
    value: &str,
) -> anyhow::Result<u16> {
    let payload = json!({
        "type": "block_actions",
        "user": {"id": user, "username": user.to_lowercase(), "name": user.to_lowercase(), "team_id": "T0BENCH"},
        "api_app_id": "A0BENCH", "token": "deprecated-verification-token",
        "container": {"type": "message", "message_ts": "1764000000.000001", "channel_id": CHANNEL, "is_ephemeral": false},
        "trigger_id": "123.456.bench",
        "team": {"id": "T0BENCH", "domain": "example"},
        "channel": {"id": CHANNEL, "name": "incidents"},
        "message": {"type": "message", "ts": "1764000000.000001", "text": "report", "blocks": []},
        "response_url": format!("{slack_url}/response/bench"),
        "actions": [{"type": "button", "action_id": "approve", "block_id": "act", "value": value,
                     "text": {"type": "plain_text", "text": "Approve"}, "action_ts": "1764000001.000001"}]
    });
    let body = form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &payload.to_string())
        .finish();
    let ts = (unix_millis() / 1000).to_string();
    let signature = remedy::chat::slack::sign(SLACK_SECRET, &ts, body.as_bytes());
    Ok(client
        .post(format!("{}/v1/interactions/slack", remedy.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", ts)
        .header("x-slack-signature", signature)
        .body(body)
        .send()
        .await?
        .status()
        .as_u16())
}

// ---------------------------------------------------------------------------
// The target database's conditions

struct Target {
    name: String,
    url: String,
}

impl Target {
    async fn create(name: &str) -> anyhow::Result<Self> {
        admin_sql(&format!("create database {name}")).await?;
        admin_sql(&format!(
            "do $$ begin create role {APP_ROLE} login;
                exception when duplicate_object or unique_violation then null; end $$;"
        ))
        .await?;
        Ok(Self {
            name: name.to_owned(),
            url: pg_url(name),
        })
    }

    /// A session of the application role idle in transaction; its pid.
    async fn leak(&self, application: &str) -> anyhow::Result<(PgConnection, i32)> {
        let url = self.url.replacen("postgres@", &format!("{APP_ROLE}@"), 1);
        let mut conn = PgConnection::connect(&url).await?;
        sqlx::query("select set_config('application_name', $1, false)")
            .bind(application)
            .execute(&mut conn)
            .await?;
        sqlx::raw_sql("begin; select 1").execute(&mut conn).await?;
        let pid: i32 = sqlx::query_scalar("select pg_backend_pid()")
            .fetch_one(&mut conn)
            .await?;
        Ok((conn, pid))
    }

    /// Waits until each pid has been idle in transaction for `seconds`.
    async fn wait_idle(
        &self,
        admin: &mut PgConnection,
        pids: &[i32],
        seconds: f64,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + WAIT;
        loop {
            let n: i64 = sqlx::query_scalar(
                "select count(*) from pg_catalog.pg_stat_activity
                  where pid = any($1) and state = 'idle in transaction'
                    and now() - state_change > make_interval(secs => $2)",
            )
            .bind(pids)
            .bind(seconds)
            .fetch_one(&mut *admin)
            .await?;
            if usize::try_from(n).ok() == Some(pids.len()) {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "sessions never aged");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

// ---------------------------------------------------------------------------
// The measurements

struct Bench {
    client: reqwest::Client,
    fake: FakeSlack,
    slack_url: String,
    remedy: Remedy,
    run: String,
    n: usize,
}

impl Bench {
    /// POSTs one webhook with a new fingerprint and an `instance` label
    /// unique to it; gives the instance and when the POST was sent.
    async fn fire(
        &mut self,
        alertname: &str,
        severity: &str,
    ) -> anyhow::Result<(String, Instant, Duration)> {
        self.n += 1;
        let instance = format!("bench-{}-{}", self.run, self.n);
        let fingerprint = format!("{:016x}", uuid::Uuid::now_v7().as_u64_pair().1);
        let body = webhook(alertname, severity, &instance, &fingerprint);
        let sent = Instant::now();
        let reply = self
            .client
            .post(format!("{}/v1/alertmanager", self.remedy.url))
            .bearer_auth(WEBHOOK_TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        anyhow::ensure!(
            reply.status().is_success(),
            "webhook answered {}",
            reply.status()
        );
        Ok((instance, sent, sent.elapsed()))
    }

    /// The report (top-level postMessage) of the incident with `instance`.
    async fn report_of(&self, from: usize, instance: &str) -> anyhow::Result<Call> {
        self.report_within(WAIT, from, instance).await
    }

    async fn report_within(
        &self,
        limit: Duration,
        from: usize,
        instance: &str,
    ) -> anyhow::Result<Call> {
        let needle = format!("instance={instance}");
        let plain = instance.to_owned();
        wait_within(limit, &format!("the report of {instance}"), || {
            let found = self.fake.find(from, |c| {
                is_report(c) && {
                    let text = c.body.to_string();
                    text.contains(&needle) || text.contains(&plain)
                }
            });
            async move { found }
        })
        .await
    }

    /// Alert → message, `runs` times (after 3 unmeasured warm-up runs).
    async fn alert_to_message(
        &mut self,
        alertname: &str,
        severity: &str,
        runs: usize,
    ) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
        let (mut times, mut acks) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
        for i in 0..runs + 3 {
            let from = self.fake.len();
            let (instance, sent, ack) = self.fire(alertname, severity).await?;
            let report = self.report_of(from, &instance).await?;
            if i >= 3 {
                times.push(report.at - sent);
                acks.push(ack);
            }
            // Let the worker finish this incident's bookkeeping first.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok((times, acks))
    }

    /// Posts one notification of `alerts` alerts of one group (an outage:
    /// each a new incident whose playbook diagnoses against the target).
    async fn storm(&mut self, alerts: usize) -> anyhow::Result<()> {
        self.n += 1;
        let group = format!("storm-{}-{}", self.run, self.n);
        let starts_at = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let list: Vec<Value> = (0..alerts)
            .map(|i| {
                json!({
                    "status": "firing",
                    "labels": {"alertname": "DatabasePoolExhaustionWarning", "severity": "warning",
                               "instance": format!("{group}-{i}"), "cluster": group},
                    "annotations": {"summary": "raised by the pipeline benchmark's storm"},
                    "startsAt": starts_at, "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": "http://prometheus:9090/graph",
                    "fingerprint": format!("{:016x}", uuid::Uuid::now_v7().as_u64_pair().1),
                })
            })
            .collect();
        let body = json!({
            "receiver": "remedy", "status": "firing", "version": "4", "alerts": list,
            "groupLabels": {"cluster": group}, "commonLabels": {"cluster": group},
            "commonAnnotations": {}, "externalURL": "http://alertmanager:9093",
            "groupKey": format!("{{}}:{{cluster=\"{group}\"}}"), "truncatedAlerts": 0
        });
        let reply = self
            .client
            .post(format!("{}/v1/alertmanager", self.remedy.url))
            .bearer_auth(WEBHOOK_TOKEN)
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(
            reply.status().is_success(),
            "storm webhook answered {}",
            reply.status()
        );
        Ok(())
    }

    /// Click → executed, `runs` times: one leaked session per run. With
    /// `storm` > 0, a notification of that many new alerts lands just
    /// before each quorum click.
    async fn click_to_executed(
        &mut self,
        target: &Target,
        store: &StoreProbe,
        runs: usize,
        storm: usize,
    ) -> anyhow::Result<(Vec<Duration>, Vec<Duration>, Vec<Duration>)> {
        let mut admin = PgConnection::connect(&target.url).await?;
        let (mut to_thread, mut to_finished, mut answered) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..runs + 1 {
            let (leak, pid) = target.leak("bench-app").await?;
            // Over the (scaled) kill threshold of 1 s.
            target.wait_idle(&mut admin, &[pid], 1.1).await?;
            let from = self.fake.len();
            let (instance, _, _) = self.fire("DatabaseIdleInTransaction", "warning").await?;
            // After a storm its diagnoses (coalescing off) are still queued
            // ahead of this one's: setting up the next run waits them out.
            let limit = if storm > 0 { STORM_WAIT } else { WAIT };
            let report = self.report_within(limit, from, &instance).await?;
            let value = approve_value(&report.body, &format!("Terminate pid {pid} ("))
                .ok_or_else(|| anyhow::anyhow!("no Approve button for pid {pid}"))?;
            let approval: i64 = value
                .split(':')
                .next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| anyhow::anyhow!("approval id in {value}"))?;
            // The first approver; wait for the message update it causes, so
            // the worker is idle when the second click arrives.
            let before_first = self.fake.len();
            anyhow::ensure!(
                click(&self.client, &self.remedy, &self.slack_url, "U0DEV", &value).await? == 200
            );
            wait_for("the update after the first approval", || {
                let update = self.fake.find(before_first, |c| {
                    c.method == "chat.update" && c.body.to_string().contains("1 of 2")
                });
                async move { update }
            })
            .await?;
            tokio::time::sleep(Duration::from_millis(50)).await;
            if storm > 0 {
                self.storm(storm).await?;
            }
            let before_second = self.fake.len();
            let sent = Instant::now();
            let sent_ms = unix_millis();
            let status = click(
                &self.client,
                &self.remedy,
                &self.slack_url,
                "U0LEAD",
                &value,
            )
            .await?;
            let answer = sent.elapsed();
            anyhow::ensure!(status == 200, "quorum click answered {status}");
            let outcome = wait_for("the outcome in the thread", || {
                let reply = self.fake.find(before_second, |c| {
                    c.method == "chat.postMessage"
                        && c.body.get("thread_ts").is_some()
                        && c.body["text"]
                            .as_str()
                            .is_some_and(|t| t.starts_with("terminate_stale") && t.contains(": "))
                });
                async move { reply }
            })
            .await?;
            let text = outcome.body["text"].as_str().unwrap_or_default().to_owned();
            anyhow::ensure!(
                text.contains(": done"),
                "run {i}: the action did not run: {text}"
            );
            let finished = store.finished_at(approval).await?;
            let state = self.execution_state(&instance).await?;
            anyhow::ensure!(state == "done", "API says the execution is {state}");
            drop(leak);
            if i >= 1 {
                to_thread.push(outcome.at - sent);
                to_finished.push(Duration::from_millis(
                    u64::try_from(finished - sent_ms).unwrap_or(0),
                ));
                answered.push(answer);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok((to_thread, to_finished, answered))
    }

    /// `executions[0].state` of the incident with `instance`, from the API.
    async fn execution_state(&self, instance: &str) -> anyhow::Result<String> {
        let list: Value = self
            .client
            .get(format!(
                "{}/v1/incidents?alertname=DatabaseIdleInTransaction&limit=20",
                self.remedy.url
            ))
            .bearer_auth(API_TOKEN)
            .send()
            .await?
            .json()
            .await?;
        let id = list["incidents"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["labels"]["instance"] == instance)
            .and_then(|i| i["id"].as_i64())
            .ok_or_else(|| anyhow::anyhow!("no incident for {instance} in {list}"))?;
        let shown: Value = self
            .client
            .get(format!("{}/v1/incidents/{id}", self.remedy.url))
            .bearer_auth(API_TOKEN)
            .send()
            .await?
            .json()
            .await?;
        Ok(shown["executions"][0]["state"]
            .as_str()
            .unwrap_or("(none)")
            .to_owned())
    }
}

/// Reads `executions.finished_at` from remedy's store (the API does not
/// show it).
enum StoreProbe {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl StoreProbe {
    async fn finished_at(&self, approval: i64) -> anyhow::Result<i64> {
        let sql = "select finished_at from executions where approval_id = $1";
        Ok(match self {
            Self::Sqlite(pool) => {
                sqlx::query_scalar(sql)
                    .bind(approval)
                    .fetch_one(pool)
                    .await?
            }
            Self::Postgres(pool) => {
                sqlx::query_scalar(sql)
                    .bind(approval)
                    .fetch_one(pool)
                    .await?
            }
        })
    }
}

async fn bench(backend: &str, alert_runs: usize, click_runs: usize) -> anyhow::Result<()> {
    let run = uuid::Uuid::now_v7().simple().to_string();
    let scratch = std::env::temp_dir().join(format!("remedy-bench-pipeline-{run}"));
    std::fs::create_dir_all(&scratch)?;
    let target = Target::create(&format!("remedy_bench_target_{run}")).await?;
    let store_db = format!("remedy_bench_store_{run}");
    let store_url = match backend {
        "sqlite" => format!("sqlite://{}", scratch.join("remedy.db").display()),
        _ => {
            admin_sql(&format!("create database {store_db}")).await?;
            pg_url(&store_db)
        }
    };
    let fake = FakeSlack::default();
    let slack_url = fake.start().await?;
    let remedy = Remedy::start(&scratch, &store_url, &target.url, &slack_url).await?;
    let pid = remedy.pid();
    let store = match backend {
        "sqlite" => StoreProbe::Sqlite(
            sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(1)
                .connect(&store_url)
                .await?,
        ),
        _ => StoreProbe::Postgres(
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect(&store_url)
                .await?,
        ),
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = proc_kib(pid, "VmRSS:");
    let mut b = Bench {
        client: remedy::net::client(),
        fake,
        slack_url,
        remedy,
        run: run[run.len() - 8..].to_owned(),
        n: 0,
    };

    // Two real leaks, so the reports have findings, evidence and actions.
    let mut admin = PgConnection::connect(&target.url).await?;
    let (leak_a, pid_a) = target.leak("checkout-worker").await?;
    let (leak_b, pid_b) = target.leak("report-job").await?;
    target.wait_idle(&mut admin, &[pid_a, pid_b], 1.1).await?;
    for (alertname, severity) in [
        ("DatabaseIdleInTransaction", "warning"),
        ("DatabasePoolExhaustionCritical", "critical"),
    ] {
        let (times, acks) = b.alert_to_message(alertname, severity, alert_runs).await?;
        println!(
            "{backend:<8} alert -> Slack chat.postMessage, {alertname}, {alert_runs} runs: {}",
            summary(&times)
        );
        println!(
            "{backend:<8} alert -> webhook answered 200 (committed), {alertname}, {alert_runs} runs: {}",
            summary(&acks)
        );
    }
    drop((leak_a, leak_b));

    let (to_thread, to_finished, answered) =
        b.click_to_executed(&target, &store, click_runs, 0).await?;
    println!(
        "{backend:<8} quorum click -> outcome posted in the Slack thread (terminate_stale: done), {click_runs} runs: {}",
        summary(&to_thread)
    );
    println!(
        "{backend:<8} quorum click -> execution finished_at in the store (ms clock), {click_runs} runs: {}",
        summary(&to_finished)
    );
    println!(
        "{backend:<8} quorum click -> HTTP 200 to the click, {click_runs} runs: {}",
        summary(&answered)
    );
    let storm = env_usize("BENCH_STORM_ALERTS", 2000);
    let storm_runs = env_usize("BENCH_STORM_RUNS", 5);
    if storm > 0 && storm_runs > 0 {
        let (to_thread, to_finished, _) = b
            .click_to_executed(&target, &store, storm_runs, storm)
            .await?;
        println!(
            "{backend:<8} quorum click during a storm of {storm} new alerts (coalescing off: {storm} diagnoses queued) -> outcome in the thread, {storm_runs} runs: {}",
            summary(&to_thread)
        );
        println!(
            "{backend:<8} quorum click during a storm of {storm} new alerts -> execution finished_at in the store, {storm_runs} runs: {}",
            summary(&to_finished)
        );
    }
    let reports = b.fake.calls().iter().filter(|c| is_report(c)).count();
    println!(
        "{backend:<8} remedy RSS: idle after start {:.1} MiB, after the load {:.1} MiB, peak (VmHWM) {:.1} MiB  ({} incidents, {} Slack reports, {} Slack calls)",
        idle_rss as f64 / 1024.0,
        proc_kib(pid, "VmRSS:") as f64 / 1024.0,
        proc_kib(pid, "VmHWM:") as f64 / 1024.0,
        b.n,
        reports,
        b.fake.len()
    );

    let keep = std::env::var_os("BENCH_KEEP").is_some();
    if keep {
        let lines: Vec<String> = b
            .fake
            .calls()
            .iter()
            .map(|c| json!({"method": c.method, "body": c.body}).to_string())
            .collect();
        std::fs::write(scratch.join("slack.jsonl"), lines.join("\n"))?;
    }
    drop(b);
    match store {
        StoreProbe::Sqlite(p) => p.close().await,
        StoreProbe::Postgres(p) => p.close().await,
    }
    drop(admin);
    admin_sql(&format!("drop database {} with (force)", target.name)).await?;
    if backend != "sqlite" {
        admin_sql(&format!("drop database {store_db} with (force)")).await?;
    }
    if keep {
        eprintln!("kept {}", scratch.display());
    } else {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    remedy::net::install_crypto_provider();
    let which = std::env::args()
        .skip(1)
        .find(|a| a == "sqlite" || a == "postgres");
    let backends: Vec<&str> = match which.as_deref() {
        Some(b) => vec![b],
        None => vec!["sqlite", "postgres"],
    };
    let alert_runs = env_usize("BENCH_ALERT_RUNS", 100);
    let click_runs = env_usize("BENCH_CLICK_RUNS", 30);
    for backend in backends {
        bench(backend, alert_runs, click_runs).await?;
    }
    Ok(())
}
