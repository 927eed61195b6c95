//! Pagers end to end on the HTTP boundary: an escalation level that names
//! PagerDuty, Opsgenie and a signed webhook pages each once when it is
//! reached (two replicas on one PostgreSQL included), acknowledges them when
//! the incident is acknowledged, resolves them when it resolves; PagerDuty's
//! signed v3 webhooks acknowledge the incident in remedy and forged ones are
//! refused. The services are local fakes that check the documented bodies,
//! keys and signatures; timers fire with the clock passed in.

mod common;

use std::path::PathBuf;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::fake_pager::{FakePager, HOOK_SECRET, OPSGENIE_KEY, PD_ROUTING_KEY};
use common::{Backend, Reply, TestApp, send};
use hmac::{Hmac, KeyInit, Mac};
use remedy::app::App;
use remedy::domain::now_millis;
use remedy::engine::{self, Engine, WorkerSettings, escalate};
use serde_json::{Value, json};

const MINUTE: i64 = 60_000;
const PD_WEBHOOK_SECRET: &str = "pd-v3-subscription-secret";

on_both_stores!(
    a_signed_pagerduty_acknowledgement_acknowledges_and_unsigned_or_forged_ones_are_refused,
    opsgenie_gets_create_acknowledge_and_close_by_alias_with_its_key,
    the_webhook_pager_signs_every_delivery,
    a_rate_limited_page_waits_in_the_queue_and_is_sent_once,
    an_incident_resolved_before_its_level_is_reached_pages_nobody,
    a_refused_page_is_recorded_and_not_retried,
    a_page_the_service_fails_to_take_is_retried_with_backoff_and_sent_once,
);

/// The runbook's CRITICAL row, paging at the 15-minute level.
const MATRIX: &str = "
roles:
  on-call-engineer: On-Call Engineer
  team-lead: Team Lead
policies:
  - alert: DatabasePoolExhaustionCritical
    initial: on-call-engineer
    escalate:
      - {to: team-lead, after: 15m, page: [pd, ops, hook], repeat: {every: 15m, times: 1}}
default:
  initial: on-call-engineer
  escalate: [{to: team-lead, after: 1h}]
";

struct Paging {
    app: TestApp,
    fake: FakePager,
    settings: PathBuf,
    env: Vec<(String, String)>,
}

async fn setup(backend: Backend) -> Paging {
    let fake = FakePager::start().await;
    let dir = std::env::temp_dir().join(format!("remedy-paging-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let matrix = dir.join("escalation.yaml");
    std::fs::write(&matrix, MATRIX).expect("matrix");
    let hook_secret = dir.join("hook-secret");
    std::fs::write(&hook_secret, format!("{HOOK_SECRET}\n")).expect("secret file");
    let settings = dir.join("settings.toml");
    std::fs::write(
        &settings,
        format!(
            r#"
[people.olga]
api_token = "olga-token"

[approvers.on-call-engineer]
console_users = ["olga"]

[approvers.team-lead]
console_users = ["olga"]

[paging]
pagerduty_url = "{url}/pagerduty"
opsgenie_url = "{url}/opsgenie"

[pagers.pd]
kind = "pagerduty"

[pagers.ops]
kind = "opsgenie"

[pagers.hook]
kind = "webhook"
url = "{url}/hook"
secret_file = "{secret}"
"#,
            url = fake.url,
            secret = hook_secret.display()
        ),
    )
    .expect("settings");
    // Keys from the environment, as operators pass them.
    let env: Vec<(String, String)> = [
        ("REMEDY__ESCALATION__FILE", matrix.to_str().expect("utf-8")),
        ("REMEDY__CHAT__PUBLIC_URL", "https://remedy.example"),
        ("REMEDY__PAGERS__PD__ROUTING_KEY", PD_ROUTING_KEY),
        ("REMEDY__PAGERS__PD__WEBHOOK_SECRET", PD_WEBHOOK_SECRET),
        ("REMEDY__PAGERS__OPS__API_KEY", OPSGENIE_KEY),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let store_url = common::fresh_store_url(backend).await;
    let app = build(&store_url, &settings, &env).await;
    Paging {
        app,
        fake,
        settings,
        env,
    }
}

async fn build(store_url: &str, settings: &std::path::Path, env: &[(String, String)]) -> TestApp {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let settings = common::test_settings_with_file(store_url, Some(settings), &pairs);
    let app = App::build(settings).await.expect("app builds");
    TestApp {
        router: app.router(),
        store: app.state.store.clone(),
        app,
        store_url: store_url.to_owned(),
    }
}

fn notification(fingerprint: &str, resolved: bool) -> String {
    let status = if resolved { "resolved" } else { "firing" };
    json!({
        "receiver": "remedy", "status": status, "version": "4",
        "alerts": [{
            "status": status,
            "labels": {"alertname": "DatabasePoolExhaustionCritical", "severity": "critical",
                       "instance": "db-1:5432", "service": "agente-api"},
            "annotations": {"summary": "Pool exhausted on agente-api",
                            "description": "All 20 connections in use"},
            "startsAt": "2026-11-27T01:00:00Z",
            "endsAt": if resolved { "2026-11-27T01:40:00Z" } else { "0001-01-01T00:00:00Z" },
            "generatorURL": "http://prometheus/graph",
            "fingerprint": fingerprint,
        }],
        "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "groupKey": format!("{{}}:{{fp=\"{fingerprint}\"}}"), "truncatedAlerts": 0
    })
    .to_string()
}

fn worker(name: &str) -> WorkerSettings {
    WorkerSettings::new(name.into())
}

async fn drain(engine: &Engine, name: &str, at: i64) {
    for _ in 0..12 {
        if engine::step(engine, &worker(name), at).await.expect("step") == 0 {
            return;
        }
    }
    panic!("work kept coming");
}

impl Paging {
    fn engine(&self) -> &Engine {
        &self.app.app.engine
    }

    /// Opens an incident; returns its id and when it opened.
    async fn open(&self, fingerprint: &str) -> (i64, i64) {
        let reply = self
            .app
            .post_webhook(notification(fingerprint, false))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
        drain(self.engine(), "a", now_millis()).await;
        let id: i64 = common::scalar(
            &self.app.store,
            &format!("select max(id) from incidents where fingerprint = '{fingerprint}'"),
        )
        .await;
        let opened: i64 = common::scalar(
            &self.app.store,
            &format!("select opened_at from incidents where id = {id}"),
        )
        .await;
        (id, opened)
    }

    async fn resolve(&self, fingerprint: &str, at: i64) {
        let reply = self.app.post_webhook(notification(fingerprint, true)).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
        drain(self.engine(), "a", at).await;
    }

    /// Fires what is due at `at` and runs the work it queued.
    async fn tick(&self, at: i64) -> usize {
        let fired = escalate::fire_due(self.engine(), at).await.expect("fire");
        drain(self.engine(), "a", at).await;
        fired
    }

    async fn ack_in_chat(&self, id: i64) {
        let request = Request::post(format!("/v1/incidents/{id}/ack"))
            .header("content-type", "application/json")
            .header("authorization", "Bearer olga-token")
            .body(Body::from("{}"))
            .expect("request");
        let acked = send(&self.app.router, request).await;
        assert_eq!(acked.status, StatusCode::OK, "{}", acked.json);
    }

    async fn pagerduty_webhook(&self, body: &str, signature: Option<&str>) -> Reply {
        let mut request = Request::post("/v1/pagers/pd/pagerduty")
            .header("content-type", "application/json")
            .header("user-agent", "PagerDuty-Webhook/V3.0");
        if let Some(signature) = signature {
            request = request.header("x-pagerduty-signature", signature);
        }
        send(
            &self.app.router,
            request.body(Body::from(body.to_owned())).expect("request"),
        )
        .await
    }

    /// The incident's pending `page` work row: its attempts, and `column`
    /// (`lease_until` or `due_at`) less `at`.
    async fn pending_page(&self, id: i64, column: &str, at: i64) -> (i64, i64) {
        let row =
            format!("from work where incident_id = {id} and kind = 'page' and state = 'pending'");
        (
            common::scalar(&self.app.store, &format!("select attempts {row}")).await,
            common::scalar(&self.app.store, &format!("select {column} - {at} {row}")).await,
        )
    }

    async fn events(&self, id: i64) -> Vec<String> {
        common::column(
            &self.app.store,
            &format!("select kind from incident_events where incident_id = {id} order by id"),
        )
        .await
    }

    async fn acked_by(&self, id: i64) -> Value {
        self.app.api(&format!("/v1/incidents/{id}")).await["escalation"]["acked_by"].clone()
    }
}

/// HMAC-SHA256 as PagerDuty signs v3 webhooks, computed here on its own.
fn pagerduty_signature(secret: &str, body: &str) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(body.as_bytes());
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// An `incident.acknowledged` v3 webhook as PagerDuty documents it.
fn acknowledged(incident_key: &str) -> String {
    json!({"event": {
        "id": "01DEN4HPBQ2SKAB8LV8R9RH4PO",
        "event_type": "incident.acknowledged",
        "resource_type": "incident",
        "occurred_at": "2026-11-27T01:17:04.134Z",
        "agent": {"html_url": "https://acme.pagerduty.com/users/PLH1HKV", "id": "PLH1HKV",
                  "self": "https://api.pagerduty.com/users/PLH1HKV", "summary": "Tina Lead",
                  "type": "user_reference"},
        "client": null,
        "data": {
            "id": "PGR0VU2", "type": "incident",
            "self": "https://api.pagerduty.com/incidents/PGR0VU2",
            "html_url": "https://acme.pagerduty.com/incidents/PGR0VU2",
            "number": 2, "status": "acknowledged", "incident_key": incident_key,
            "created_at": "2026-11-27T01:15:02Z", "title": "[remedy] pool exhausted",
            "service": {"id": "PF9KMXH", "summary": "API Service", "type": "service_reference"},
            "assignees": [], "escalation_policy": {"id": "PUS0KTE", "type": "escalation_policy_reference"},
            "teams": [], "priority": null, "urgency": "high", "conference_bridge": null,
            "resolve_reason": null
        }
    }})
    .to_string()
}

/// The issue's test: a 15-minute level fires one PagerDuty trigger across
/// two replicas sharing PostgreSQL, both running their scheduler and their
/// worker at once; the resolve sends one resolve with the same dedup_key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifteen_minute_level_triggers_pagerduty_once_across_two_replicas() {
    let s = setup(Backend::Postgres).await;
    let other = build(&s.app.store_url, &s.settings, &s.env).await;
    let (id, opened) = s.open("a1a1a1a1a1a1a1a1").await;
    // Before 15 minutes nothing pages.
    let early = opened + 14 * MINUTE;
    let (a, b) = tokio::join!(
        escalate::fire_due(s.engine(), early),
        escalate::fire_due(&other.app.engine, early)
    );
    assert_eq!(a.expect("a") + b.expect("b"), 0);
    assert!(s.fake.calls().is_empty(), "{:?}", s.fake.calls());
    // At 15 minutes both replicas fire and work at once.
    let due = opened + 15 * MINUTE + 1_000;
    for _ in 0..3 {
        let (a, b) = tokio::join!(
            escalate::fire_due(s.engine(), due),
            escalate::fire_due(&other.app.engine, due)
        );
        a.expect("a");
        b.expect("b");
        tokio::join!(
            drain(s.engine(), "replica-a", due),
            drain(&other.app.engine, "replica-b", due)
        );
    }
    let triggers = s.fake.accepted("pagerduty");
    assert_eq!(triggers.len(), 1, "{triggers:?}");
    let trigger = &triggers[0].body;
    let key = format!("remedy-{id}");
    assert_eq!(trigger["routing_key"], PD_ROUTING_KEY);
    assert_eq!(trigger["event_action"], "trigger");
    assert_eq!(trigger["dedup_key"], key);
    assert_eq!(trigger["payload"]["severity"], "critical");
    assert_eq!(trigger["payload"]["source"], "db-1:5432");
    assert_eq!(
        trigger["payload"]["class"],
        "DatabasePoolExhaustionCritical"
    );
    assert_eq!(
        trigger["payload"]["summary"],
        format!(
            "[remedy #{id}] DatabasePoolExhaustionCritical: Pool exhausted on agente-api — not resolved in 15m, escalated to Team Lead"
        )
    );
    assert_eq!(trigger["payload"]["custom_details"]["level"], 1);
    assert_eq!(
        trigger["links"][0]["href"],
        format!("https://remedy.example/v1/incidents/{id}")
    );
    // The ping in chat says who was paged.
    let shown = s.app.api(&format!("/v1/incidents/{id}")).await;
    assert_eq!(
        shown["escalation"]["timers"][0]["pagers"],
        json!(["pd", "ops", "hook"])
    );
    assert!(
        s.events(id).await.contains(&"pinged".to_owned()),
        "the chat ping went out too"
    );
    // The level's re-ping (15 minutes later) pings in chat but pages no one again.
    let later = due + 15 * MINUTE;
    assert_eq!(s.tick(later).await, 1);
    assert_eq!(s.fake.accepted("pagerduty").len(), 1);
    // Resolve sends resolve, once, on the same key.
    s.resolve("a1a1a1a1a1a1a1a1", later + MINUTE).await;
    drain(&other.app.engine, "replica-b", later + MINUTE).await;
    let calls = s.fake.accepted("pagerduty");
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(
        calls[1].body,
        json!({"routing_key": PD_ROUTING_KEY, "event_action": "resolve", "dedup_key": key})
    );
    // Recorded on the timeline and in the export.
    let events = s.events(id).await;
    assert_eq!(
        events.iter().filter(|e| *e == "paged").count(),
        // pd, ops, hook triggered; each resolved.
        6,
        "{events:?}"
    );
    let export = s
        .app
        .api(&format!("/v1/incidents/{id}/export?format=json"))
        .await;
    let pd: Vec<&Value> = export["pages"]
        .as_array()
        .expect("pages")
        .iter()
        .filter(|p| p["pager"] == "pd")
        .collect();
    assert_eq!(pd.len(), 2);
    assert_eq!(
        (pd[0]["action"].as_str(), pd[0]["state"].as_str()),
        (Some("trigger"), Some("sent"))
    );
    assert_eq!(
        (pd[1]["action"].as_str(), pd[1]["state"].as_str()),
        (Some("resolve"), Some("sent"))
    );
    let markdown = s
        .app
        .get(
            &format!("/v1/incidents/{id}/export?format=md"),
            Some(common::API_TOKEN),
        )
        .await;
    let text = markdown.json.as_str().unwrap_or_default().to_owned();
    assert!(
        text.contains(&format!("paged pd: trigger (level 1, {key})")),
        "{text}"
    );
}

async fn a_signed_pagerduty_acknowledgement_acknowledges_and_unsigned_or_forged_ones_are_refused(
    backend: Backend,
) {
    let s = setup(backend).await;
    let (id, opened) = s.open("b2b2b2b2b2b2b2b2").await;
    let key = format!("remedy-{id}");
    // Before remedy paged PagerDuty, an acknowledgement naming the key is
    // not remedy's to act on.
    let body = acknowledged(&key);
    let early = s
        .pagerduty_webhook(&body, Some(&pagerduty_signature(PD_WEBHOOK_SECRET, &body)))
        .await;
    assert_eq!(early.status, StatusCode::OK, "{}", early.json);
    assert!(early.json["ignored"].is_string(), "{}", early.json);
    assert_eq!(s.acked_by(id).await, Value::Null);

    assert_eq!(s.tick(opened + 16 * MINUTE).await, 1);
    assert_eq!(s.fake.accepted("pagerduty").len(), 1);

    // Unsigned, signed with another secret, or signed over another body: 401.
    let unsigned = s.pagerduty_webhook(&body, None).await;
    assert_eq!(
        unsigned.status,
        StatusCode::UNAUTHORIZED,
        "{}",
        unsigned.json
    );
    let forged = s
        .pagerduty_webhook(&body, Some(&pagerduty_signature("guessed", &body)))
        .await;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED, "{}", forged.json);
    let other_body = acknowledged("remedy-999");
    let replayed = s
        .pagerduty_webhook(
            &body,
            Some(&pagerduty_signature(PD_WEBHOOK_SECRET, &other_body)),
        )
        .await;
    assert_eq!(
        replayed.status,
        StatusCode::UNAUTHORIZED,
        "{}",
        replayed.json
    );
    assert_eq!(
        s.acked_by(id).await,
        Value::Null,
        "refused webhooks change nothing"
    );

    // Signed (among a rotated-out signature, as PagerDuty sends during a
    // secret rotation): acknowledged in remedy.
    let signature = format!(
        "{},{}",
        pagerduty_signature("old-secret", &body),
        pagerduty_signature(PD_WEBHOOK_SECRET, &body)
    );
    let acked = s.pagerduty_webhook(&body, Some(&signature)).await;
    assert_eq!(acked.status, StatusCode::OK, "{}", acked.json);
    assert_eq!(acked.json["state"], "acknowledged");
    assert_eq!(s.acked_by(id).await, "Tina Lead (PagerDuty)");
    let paused: i64 = common::scalar(
        &s.app.store,
        &format!(
            "select count(*) from escalation_timers where incident_id = {id} and state = 'paused'"
        ),
    )
    .await;
    assert_eq!(paused, 1, "the pending re-ping is paused");
    // The other pagers hear of it; PagerDuty, where it came from, does not.
    drain(s.engine(), "a", opened + 17 * MINUTE).await;
    assert_eq!(s.fake.accepted("pagerduty").len(), 1);
    let ops = s.fake.accepted("opsgenie");
    assert_eq!(
        ops.last().map(|c| c.path.clone()),
        Some(format!("/v2/alerts/{key}/acknowledge"))
    );
    let hook = s.fake.accepted("webhook");
    assert_eq!(
        hook.last().map(|c| c.body["event"].clone()),
        Some(json!("acknowledge"))
    );
    // A second delivery of the same event is a repeat.
    let again = s.pagerduty_webhook(&body, Some(&signature)).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json["repeat"], true);
    let events = s.events(id).await;
    assert_eq!(
        events.iter().filter(|e| *e == "acknowledged").count(),
        1,
        "{events:?}"
    );
}

async fn opsgenie_gets_create_acknowledge_and_close_by_alias_with_its_key(backend: Backend) {
    let s = setup(backend).await;
    let (id, opened) = s.open("c3c3c3c3c3c3c3c3").await;
    let alias = format!("remedy-{id}");
    s.tick(opened + 15 * MINUTE).await;
    s.ack_in_chat(id).await;
    drain(s.engine(), "a", opened + 16 * MINUTE).await;
    s.resolve("c3c3c3c3c3c3c3c3", opened + 20 * MINUTE).await;
    let calls = s.fake.accepted("opsgenie");
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert!(
        calls
            .iter()
            .all(|c| c.authorization.as_deref() == Some(&format!("GenieKey {OPSGENIE_KEY}"))),
        "{calls:?}"
    );
    let create = &calls[0];
    assert_eq!(create.path, "/v2/alerts");
    assert_eq!(create.body["alias"], alias);
    assert_eq!(create.body["priority"], "P1");
    assert_eq!(
        create.body["message"],
        format!("[remedy #{id}] DatabasePoolExhaustionCritical: Pool exhausted on agente-api")
    );
    assert_eq!(create.body["details"]["instance"], "db-1:5432");
    assert_eq!(create.body["details"]["remedy_escalated_to"], "Team Lead");
    assert_eq!(calls[1].path, format!("/v2/alerts/{alias}/acknowledge"));
    assert_eq!(calls[1].query.as_deref(), Some("identifierType=alias"));
    assert_eq!(calls[1].body["source"], "remedy");
    assert_eq!(calls[1].body["note"], "acknowledged in remedy by olga");
    assert_eq!(calls[2].path, format!("/v2/alerts/{alias}/close"));
    assert_eq!(calls[2].query.as_deref(), Some("identifierType=alias"));
    // PagerDuty got its acknowledge too (it did not send it).
    let pd: Vec<Value> = s
        .fake
        .accepted("pagerduty")
        .iter()
        .map(|c| c.body["event_action"].clone())
        .collect();
    assert_eq!(
        pd,
        [json!("trigger"), json!("acknowledge"), json!("resolve")]
    );
}

async fn the_webhook_pager_signs_every_delivery(backend: Backend) {
    let s = setup(backend).await;
    let (id, opened) = s.open("d4d4d4d4d4d4d4d4").await;
    s.tick(opened + 15 * MINUTE).await;
    s.resolve("d4d4d4d4d4d4d4d4", opened + 20 * MINUTE).await;
    // The fake answers 401 to any body whose signature it cannot verify.
    let calls: Vec<_> = s
        .fake
        .calls()
        .into_iter()
        .filter(|c| c.service == "webhook")
        .collect();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(calls.iter().all(|c| c.status == 200), "{calls:?}");
    let trigger = &calls[0].body;
    assert_eq!(trigger["event"], "trigger");
    assert_eq!(trigger["dedup_key"], format!("remedy-{id}"));
    assert_eq!(trigger["incident"]["id"], id);
    assert_eq!(trigger["incident"]["labels"]["service"], "agente-api");
    assert_eq!(trigger["level"], 1);
    assert_eq!(trigger["escalated_to"], "Team Lead");
    assert_eq!(calls[1].body["event"], "resolve");
}

async fn a_rate_limited_page_waits_in_the_queue_and_is_sent_once(backend: Backend) {
    let s = setup(backend).await;
    let (id, opened) = s.open("e5e5e5e5e5e5e5e5").await;
    s.fake.script(429);
    let due = opened + 15 * MINUTE;
    s.tick(due).await;
    assert_eq!(s.fake.accepted("pagerduty").len(), 0);
    assert_eq!(s.fake.accepted("opsgenie").len(), 1);
    assert_eq!(s.fake.accepted("webhook").len(), 1);
    // Waiting, not failing: the attempt is not spent and the row waits
    // `paging.rate_limited_wait` (5s) in the queue.
    let (attempts, wait) = s.pending_page(id, "lease_until", due).await;
    assert_eq!(attempts, 0);
    assert!((5_000..10_000).contains(&wait), "{wait}");
    s.tick(due + 10_000).await;
    let sent = s.fake.accepted("pagerduty");
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].body["event_action"], "trigger");
    // PagerDuty's limit held back only PagerDuty: Opsgenie and the webhook
    // got their trigger at once, and only once.
    assert_eq!(s.fake.accepted("opsgenie").len(), 1);
    assert_eq!(s.fake.accepted("webhook").len(), 1);
}

async fn a_page_the_service_fails_to_take_is_retried_with_backoff_and_sent_once(backend: Backend) {
    let s = setup(backend).await;
    let (id, opened) = s.open("b8b8b8b8b8b8b8b8").await;
    // PagerDuty has an outage (503): not a refusal, so the page is retried.
    s.fake.script(503);
    let due = opened + 15 * MINUTE;
    s.tick(due).await;
    assert_eq!(s.fake.accepted("pagerduty").len(), 0);
    let (attempts, backoff) = s.pending_page(id, "due_at", due).await;
    assert_eq!(attempts, 1, "an outage spends an attempt");
    assert!(backoff > 0, "and waits before the next: {backoff}");
    let state: String = common::scalar(
        &s.app.store,
        &format!("select state from pages where incident_id = {id} and pager = 'pd'"),
    )
    .await;
    assert_ne!(state, "failed");
    s.tick(due + 10 * MINUTE).await;
    let sent = s.fake.accepted("pagerduty");
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].body["event_action"], "trigger");
    assert_eq!(s.fake.accepted("opsgenie").len(), 1);
    assert_eq!(s.fake.accepted("webhook").len(), 1);
}

async fn an_incident_resolved_before_its_level_is_reached_pages_nobody(backend: Backend) {
    let s = setup(backend).await;
    let (id, opened) = s.open("f6f6f6f6f6f6f6f6").await;
    s.resolve("f6f6f6f6f6f6f6f6", opened + 5 * MINUTE).await;
    assert_eq!(s.tick(opened + 16 * MINUTE).await, 0);
    assert!(s.fake.calls().is_empty(), "{:?}", s.fake.calls());
    let pages: i64 = common::scalar(
        &s.app.store,
        &format!("select count(*) from pages where incident_id = {id}"),
    )
    .await;
    assert_eq!(pages, 0);
}

async fn a_refused_page_is_recorded_and_not_retried(backend: Backend) {
    let s = setup(backend).await;
    let (id, opened) = s.open("a7a7a7a7a7a7a7a7").await;
    // PagerDuty refuses the trigger (400, as for an invalid event).
    s.fake.script(400);
    let due = opened + 15 * MINUTE;
    s.tick(due).await;
    let state: String = common::scalar(
        &s.app.store,
        &format!("select state || ':' || coalesce(last_error, '') from pages where incident_id = {id} and pager = 'pd'"),
    )
    .await;
    assert!(
        state.starts_with("failed:pagerduty answered 400"),
        "{state}"
    );
    assert!(s.events(id).await.contains(&"page_failed".to_owned()));
    let pending: i64 = common::scalar(
        &s.app.store,
        &format!("select count(*) from work where incident_id = {id} and kind = 'page' and state = 'pending'"),
    )
    .await;
    assert_eq!(pending, 0, "a refusal is not retried");
    // The other pagers were paged; a resolve goes only where a trigger was
    // accepted (or may still be).
    s.resolve("a7a7a7a7a7a7a7a7", due + MINUTE).await;
    let pd = s
        .fake
        .calls()
        .into_iter()
        .filter(|c| c.service == "pagerduty")
        .count();
    assert_eq!(pd, 1, "no resolve for a trigger PagerDuty refused");
    assert_eq!(s.fake.accepted("opsgenie").len(), 2);
    let resolves: i64 = common::scalar(
        &s.app.store,
        &format!("select count(*) from pages where incident_id = {id} and pager = 'pd' and action = 'resolve'"),
    )
    .await;
    assert_eq!(
        resolves, 0,
        "nothing to resolve where the trigger was refused"
    );
}
