//! Issue 13 finding 2, replayed: the Silence control against a fake
//! Alertmanager, with clicks signed as Slack and Discord sign them. An
//! alert with only its alertname cannot mute every alert of that name; a
//! silence that would also mute another firing incident is refused; a
//! narrow one shows its exact matchers before anything is silenced
//! (Slack's confirm dialog, Discord's ephemeral confirmation, the API's
//! dry run) and is created by the person who decided.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::fake_alertmanager::FakeAlertmanager;
use common::fake_chat::{DISCORD_TOKEN, FakeChat, SLACK_TOKEN, UNPACED};
use common::{Backend, Reply, TestApp, send};
use ed25519_dalek::{Signer, SigningKey};
use remedy::domain::now_millis;
use remedy::engine::{self, WorkerSettings};
use serde_json::{Value, json};

const SIGNING_SECRET: &str = "slack-signing-secret-for-silence-tests";
const DISCORD_KEY: [u8; 32] = [11; 32];

on_both_stores!(
    a_silence_of_the_alertname_alone_is_refused_with_the_reason_and_nothing_is_posted,
    a_narrow_silence_shows_its_matchers_in_slacks_confirm_and_is_created_by_the_person,
    a_silence_that_would_mute_another_firing_incident_is_refused,
    the_api_previews_a_silences_matchers_and_needs_them_back,
    discord_asks_for_an_ephemeral_confirmation_and_only_the_signed_confirm_silences,
    a_storms_silence_may_mute_its_own_members_but_not_an_incident_outside_it,
);

/// alice is one person on Slack, Discord and the console and holds the
/// on-call role; the matrix's other roles are held by nobody here.
const SETTINGS: &str = r#"
[people.alice]
slack = "U0ALICE"
discord = "1001"
api_token = "alice-token"
[people.mallory]
api_token = "mallory-token"

[approvers.on-call-engineer]
people = ["alice"]
[approvers.team-lead]
slack_users = ["U0LEAD"]
[approvers.backend-developer]
slack_users = ["U0BACK"]
[approvers.dba]
slack_users = ["U0DBA"]
[approvers.devops]
slack_users = ["U0OPS"]
[approvers.cto]
slack_users = ["U0CTO"]
"#;

/// The issue's example: an alert that carries nothing but its name (and a
/// severity, which narrows nothing).
const BROAD: &[(&str, &str)] = &[("alertname", "HighErrorRate5xx"), ("severity", "critical")];
const NARROW: &[(&str, &str)] = &[
    ("alertname", "HighErrorRate5xx"),
    ("instance", "web-1:8080"),
    ("service", "agente-api"),
    ("severity", "critical"),
];
const NARROW_MATCHERS: [&str; 4] = [
    r#"alertname="HighErrorRate5xx""#,
    r#"instance="web-1:8080""#,
    r#"service="agente-api""#,
    r#"severity="critical""#,
];

struct Silence {
    app: TestApp,
    chat: FakeChat,
    am: FakeAlertmanager,
}

fn discord_public_key() -> String {
    hex::encode(
        SigningKey::from_bytes(&DISCORD_KEY)
            .verifying_key()
            .to_bytes(),
    )
}

async fn setup(backend: Backend, platform: &str) -> Silence {
    setup_with(backend, platform, &[]).await
}

async fn setup_with(backend: Backend, platform: &str, extra: &[(&str, &str)]) -> Silence {
    let chat = FakeChat::start().await;
    let am = FakeAlertmanager::start().await;
    let slack_api = format!("{}/slack/api", chat.url);
    let discord_api = format!("{}/discord/api/v10", chat.url);
    let key = discord_public_key();
    let mut env = vec![
        ("REMEDY__CHAT__PLATFORM", platform),
        ("REMEDY__CHAT__DEFAULT_CHANNEL", "C0INCIDENTS"),
        ("REMEDY__CHAT__SLACK__API_URL", &slack_api),
        ("REMEDY__CHAT__SLACK__BOT_TOKEN", SLACK_TOKEN),
        ("REMEDY__CHAT__SLACK__SIGNING_SECRET", SIGNING_SECRET),
        ("REMEDY__CHAT__SLACK__POST_RATE", UNPACED),
        ("REMEDY__CHAT__SLACK__UPDATE_RATE", UNPACED),
        ("REMEDY__CHAT__DISCORD__API_URL", &discord_api),
        ("REMEDY__CHAT__DISCORD__BOT_TOKEN", DISCORD_TOKEN),
        ("REMEDY__CHAT__DISCORD__PUBLIC_KEY", &key),
        ("REMEDY__ALERTMANAGER__URL", &am.url),
        // The fake knows no alerts: reconciliation would close them.
        ("REMEDY__RECONCILE__ENABLED", "false"),
    ];
    env.extend_from_slice(extra);
    let app = common::spawn_app_with_toml(backend, SETTINGS, &env).await;
    Silence { app, chat, am }
}

fn worker() -> WorkerSettings {
    WorkerSettings::new("silence-test-worker".into())
}

impl Silence {
    async fn drain(&self) {
        for _ in 0..12 {
            if engine::step(&self.app.app.engine, &worker(), now_millis())
                .await
                .expect("step")
                == 0
            {
                return;
            }
        }
        panic!("work kept coming");
    }

    /// Opens an incident with these labels and lets the worker post it.
    async fn open(&self, fingerprint: &str, labels: &[(&str, &str)]) -> i64 {
        self.open_group(fingerprint, &[(fingerprint, labels)]).await;
        common::scalar(
            &self.app.store,
            &format!("select max(id) from incidents where fingerprint = '{fingerprint}'"),
        )
        .await
    }

    /// One notification of the group `group` with these alerts
    /// (fingerprint, labels), in order; the worker runs after it.
    async fn open_group(&self, group: &str, alerts: &[(&str, &[(&str, &str)])]) {
        let alerts: Vec<Value> = alerts
            .iter()
            .map(|(fingerprint, labels)| {
                let labels: serde_json::Map<String, Value> = labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
                    .collect();
                json!({
                    "status": "firing", "labels": labels,
                    "annotations": {"summary": "5xx rate above 5%"},
                    "startsAt": "2026-11-27T01:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": "http://prometheus/graph", "fingerprint": fingerprint,
                })
            })
            .collect();
        let body = json!({
            "receiver": "remedy", "status": "firing", "version": "4", "alerts": alerts,
            "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
            "externalURL": "http://alertmanager:9093",
            "groupKey": format!("{{}}:{{x=\"{group}\"}}"), "truncatedAlerts": 0
        });
        let reply = self.app.post_webhook(body.to_string()).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
        self.drain().await;
    }

    async fn slack_click(&self, user: &str, action_id: &str, incident: i64) -> Reply {
        let payload = json!({
            "type": "block_actions",
            "user": {"id": user, "username": user.to_lowercase(), "team_id": "T0TEAM"},
            "api_app_id": "A0APP", "token": "deprecated",
            "container": {"type": "message", "message_ts": "1764000000.000001",
                          "channel_id": "C0INCIDENTS"},
            "trigger_id": "1.2.3", "team": {"id": "T0TEAM", "domain": "example"},
            "channel": {"id": "C0INCIDENTS", "name": "incidents"},
            "response_url": format!("{}/slack/response/1", self.chat.url),
            "actions": [{"type": "button", "action_id": action_id, "block_id": "ctl-1-0-0",
                         "value": incident.to_string(),
                         "text": {"type": "plain_text", "text": "x"},
                         "action_ts": "1764000001.000001"}]
        });
        let body = form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", &payload.to_string())
            .finish();
        let ts = (now_millis() / 1000).to_string();
        let signature = remedy::chat::slack::sign(SIGNING_SECRET, &ts, body.as_bytes());
        let request = Request::post("/v1/interactions/slack")
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-slack-request-timestamp", ts)
            .header("x-slack-signature", signature)
            .body(Body::from(body))
            .expect("request");
        send(&self.app.router, request).await
    }

    /// The ephemeral replies Slack got through the clicks' `response_url`.
    fn ephemeral_texts(&self) -> Vec<String> {
        self.chat
            .calls("/slack/response/1")
            .iter()
            .map(|r| r.body["text"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    async fn discord_click(&self, custom_id: &str, user: &str, key: &SigningKey) -> Reply {
        let body = json!({
            "id": "1300000000000000001", "application_id": "1200000000000000001", "type": 3,
            "data": {"custom_id": custom_id, "component_type": 2, "id": 3},
            "guild_id": "1100000000000000001", "channel_id": "1000000000000000001",
            "member": {"user": {"id": user, "username": format!("user{user}")},
                       "roles": [], "deaf": false, "mute": false, "flags": 0,
                       "joined_at": "2026-01-01T00:00:00+00:00", "permissions": "0"},
            "token": "interaction-token", "version": 1,
            "message": {"id": "900000000000000000", "channel_id": "1000000000000000001"},
        })
        .to_string();
        let ts = (now_millis() / 1000).to_string();
        let signature = key.sign(&[ts.as_bytes(), body.as_bytes()].concat());
        let request = Request::post("/v1/interactions/discord")
            .header("content-type", "application/json")
            .header("x-signature-timestamp", ts)
            .header("x-signature-ed25519", hex::encode(signature.to_bytes()))
            .body(Body::from(body))
            .expect("request");
        send(&self.app.router, request).await
    }

    async fn api_silence(&self, incident: i64, token: &str, body: &Value) -> Reply {
        let request = Request::post(format!("/v1/incidents/{incident}/silence"))
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::from(body.to_string()))
            .expect("request");
        send(&self.app.router, request).await
    }

    async fn events(&self, incident: i64) -> Vec<String> {
        common::column(
            &self.app.store,
            &format!("select kind from incident_events where incident_id = {incident} order by id"),
        )
        .await
    }

    async fn silence_requests(&self) -> i64 {
        common::scalar(
            &self.app.store,
            "select count(*) from approvals where action_id = 'silence'",
        )
        .await
    }
}

fn matcher_names(body: &Value) -> Vec<String> {
    body["matchers"]
        .as_array()
        .expect("matchers")
        .iter()
        .map(|m| {
            assert_eq!(m["isEqual"], true, "{m}");
            assert_eq!(m["isRegex"], false, "{m}");
            format!(
                "{}=\"{}\"",
                m["name"].as_str().expect("name"),
                m["value"].as_str().expect("value")
            )
        })
        .collect()
}

/// The Slack message's button with this `action_id`.
fn slack_button(message: &Value, action_id: &str) -> Value {
    message["blocks"]
        .as_array()
        .expect("blocks")
        .iter()
        .flat_map(|b| b["elements"].as_array().cloned().unwrap_or_default())
        .find(|e| e["action_id"] == action_id)
        .unwrap_or_else(|| panic!("no {action_id} button in {message}"))
}

async fn a_silence_of_the_alertname_alone_is_refused_with_the_reason_and_nothing_is_posted(
    backend: Backend,
) {
    let s = setup(backend, "slack").await;
    let id = s.open("b5b5b5b5b5b5b5b5", BROAD).await;
    // The confirm dialog still shows what the silence would match.
    let posted = s.chat.calls("/chat.postMessage");
    let confirm = &slack_button(&posted[0].body, "silence:3600")["confirm"];
    assert!(
        confirm["text"]["text"]
            .as_str()
            .expect("text")
            .contains(r#"alertname="HighErrorRate5xx", severity="critical""#),
        "{confirm}"
    );
    let reply = s.slack_click("U0ALICE", "silence:3600", id).await;
    assert_eq!(reply.status, StatusCode::OK);
    s.drain().await;
    assert!(
        s.am.posted_silences().is_empty(),
        "nothing reaches Alertmanager"
    );
    assert_eq!(s.silence_requests().await, 0);
    let replies = s.ephemeral_texts();
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert!(
        replies[0].contains("silence.required_labels") && replies[0].contains("instance, service"),
        "the clicker reads why: {}",
        replies[0]
    );
    assert!(s.events(id).await.contains(&"silence_refused".to_owned()));
    // Clicking again changes nothing and records the refusal once.
    s.slack_click("U0ALICE", "silence:3600", id).await;
    s.drain().await;
    assert!(s.am.posted_silences().is_empty());
    let refusals = s
        .events(id)
        .await
        .into_iter()
        .filter(|k| k == "silence_refused")
        .count();
    assert_eq!(refusals, 1);
}

async fn a_narrow_silence_shows_its_matchers_in_slacks_confirm_and_is_created_by_the_person(
    backend: Backend,
) {
    let s = setup(backend, "slack").await;
    let id = s.open("a1a1a1a1a1a1a1a1", NARROW).await;
    // The fake Slack checked the confirm objects' limits; the dialog shows
    // the exact matchers and the length.
    let posted = s.chat.calls("/chat.postMessage");
    assert_eq!(posted.len(), 1);
    let button = slack_button(&posted[0].body, "silence:14400");
    let confirm = &button["confirm"];
    assert_eq!(confirm["title"]["text"], "Silence for 4h?", "{confirm}");
    assert_eq!(confirm["text"]["type"], "plain_text");
    let text = confirm["text"]["text"].as_str().expect("text");
    assert!(text.contains("for 4h"), "{text}");
    assert!(text.contains(&NARROW_MATCHERS.join(", ")), "{text}");
    assert_eq!(confirm["confirm"]["text"], "Silence 4h");
    assert_eq!(confirm["deny"]["text"], "Cancel");
    assert_eq!(confirm["style"], "danger");

    // Slack sends the click only after the dialog's Confirm.
    let reply = s.slack_click("U0ALICE", "silence:14400", id).await;
    assert_eq!(reply.status, StatusCode::OK);
    s.drain().await;
    let silences = s.am.posted_silences();
    assert_eq!(silences.len(), 1, "{silences:?}");
    assert_eq!(matcher_names(&silences[0]), NARROW_MATCHERS);
    assert_eq!(
        silences[0]["createdBy"], "alice",
        "the person, not slack:U0ALICE"
    );
    assert!(
        silences[0]["comment"]
            .as_str()
            .unwrap_or_default()
            .contains("approved by alice")
    );
    assert!(s.ephemeral_texts().is_empty(), "{:?}", s.ephemeral_texts());
    let state: String = common::scalar(&s.app.store, "select state from executions").await;
    assert_eq!(state, "done");
}

async fn a_silence_that_would_mute_another_firing_incident_is_refused(backend: Backend) {
    let s = setup(backend, "slack").await;
    // Both name the service; the second also its instance, so the first's
    // matchers (a subset of the second's labels) would mute it too.
    let wide = s
        .open(
            "c3c3c3c3c3c3c3c3",
            &[
                ("alertname", "HighErrorRate5xx"),
                ("service", "agente-api"),
                ("severity", "critical"),
            ],
        )
        .await;
    let other = s.open("c4c4c4c4c4c4c4c4", NARROW).await;
    s.slack_click("U0ALICE", "silence:3600", wide).await;
    s.drain().await;
    assert!(s.am.posted_silences().is_empty());
    let replies = s.ephemeral_texts();
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert!(
        replies[0].contains(&format!("incident #{other}"))
            && replies[0].contains("not in this incident")
            && replies[0].contains("storm"),
        "{}",
        replies[0]
    );
    // The narrower one mutes only itself: it goes through.
    s.slack_click("U0ALICE", "silence:3600", other).await;
    s.drain().await;
    let silences = s.am.posted_silences();
    assert_eq!(silences.len(), 1);
    assert_eq!(matcher_names(&silences[0]), NARROW_MATCHERS);
}

async fn the_api_previews_a_silences_matchers_and_needs_them_back(backend: Backend) {
    let s = setup(backend, "console").await;
    let id = s.open("d4d4d4d4d4d4d4d4", NARROW).await;
    // A dry run shows the matchers and silences nothing.
    let preview = s
        .api_silence(id, "alice-token", &json!({"for": "4h", "dry_run": true}))
        .await;
    assert_eq!(preview.status, StatusCode::OK, "{}", preview.json);
    assert_eq!(preview.json["result"], "preview");
    assert_eq!(preview.json["for"], "4h");
    assert_eq!(preview.json["matchers"], json!(NARROW_MATCHERS));
    // Without the matchers, or with others, nothing is silenced.
    let blind = s
        .api_silence(id, "alice-token", &json!({"for": "4h"}))
        .await;
    assert_eq!(blind.status, StatusCode::BAD_REQUEST, "{}", blind.json);
    assert_eq!(blind.json["field"], "matchers");
    assert!(
        blind.json["message"]
            .as_str()
            .unwrap_or_default()
            .contains(NARROW_MATCHERS[1]),
        "{}",
        blind.json
    );
    let other = s
        .api_silence(
            id,
            "alice-token",
            &json!({"for": "4h", "matchers": [NARROW_MATCHERS[0]]}),
        )
        .await;
    assert_eq!(other.status, StatusCode::BAD_REQUEST, "{}", other.json);
    // A length the matrix does not offer is refused, dry run or not.
    let long = s
        .api_silence(id, "alice-token", &json!({"for": "2h", "dry_run": true}))
        .await;
    assert_eq!(long.status, StatusCode::FORBIDDEN, "{}", long.json);
    assert_eq!(long.json["message"], "silence for one of: 1h, 4h");
    // Someone who holds no role sees no matchers.
    let stranger = s
        .api_silence(id, "mallory-token", &json!({"for": "4h", "dry_run": true}))
        .await;
    assert_eq!(stranger.status, StatusCode::FORBIDDEN);
    s.drain().await;
    assert!(s.am.posted_silences().is_empty());
    assert_eq!(s.silence_requests().await, 0);
    // The confirmed matchers: silenced, created by the token's person.
    let done = s
        .api_silence(
            id,
            "alice-token",
            &json!({"for": "4h", "matchers": NARROW_MATCHERS}),
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.json);
    s.drain().await;
    let silences = s.am.posted_silences();
    assert_eq!(silences.len(), 1);
    assert_eq!(silences[0]["createdBy"], "alice");
    // A broad alert's dry run already says why it would be refused.
    let broad = s.open("d5d5d5d5d5d5d5d5", BROAD).await;
    let refused = s
        .api_silence(broad, "alice-token", &json!({"for": "1h", "dry_run": true}))
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.json);
    assert!(
        refused.json["message"]
            .as_str()
            .unwrap_or_default()
            .contains("silence.required_labels"),
        "{}",
        refused.json
    );
    assert!(
        !s.events(broad)
            .await
            .contains(&"silence_refused".to_owned())
    );
    // Asked for anyway (with its matchers): refused and recorded.
    let matchers = [r#"alertname="HighErrorRate5xx""#, r#"severity="critical""#];
    let forced = s
        .api_silence(
            broad,
            "alice-token",
            &json!({"for": "1h", "matchers": matchers}),
        )
        .await;
    assert_eq!(forced.status, StatusCode::FORBIDDEN, "{}", forced.json);
    assert!(
        s.events(broad)
            .await
            .contains(&"silence_refused".to_owned())
    );
    s.drain().await;
    assert_eq!(s.am.posted_silences().len(), 1, "only the narrow one");
}

async fn discord_asks_for_an_ephemeral_confirmation_and_only_the_signed_confirm_silences(
    backend: Backend,
) {
    let s = setup(backend, "discord").await;
    let id = s.open("e5e5e5e5e5e5e5e5", NARROW).await;
    let key = SigningKey::from_bytes(&DISCORD_KEY);
    // The Silence click: an ephemeral confirmation with the exact matchers
    // and the length, and a Confirm button; nothing silenced yet.
    let shown = s
        .discord_click(&format!("si:{id}:14400"), "1001", &key)
        .await;
    assert_eq!(shown.status, StatusCode::OK);
    assert_eq!(shown.json["type"], 4, "{}", shown.json);
    assert_eq!(shown.json["data"]["flags"], 64, "ephemeral");
    assert_eq!(shown.json["data"]["allowed_mentions"], json!({"parse": []}));
    let content = shown.json["data"]["content"].as_str().expect("content");
    assert!(content.contains("Silence for 4h?"), "{content}");
    for m in NARROW_MATCHERS {
        assert!(content.contains(&format!("`{m}`")), "{m} in {content}");
    }
    let confirm = &shown.json["data"]["components"][0]["components"][0];
    let confirm_id = format!("sc:{id}:14400");
    assert_eq!(confirm["custom_id"], confirm_id.as_str(), "{confirm}");
    assert_eq!(confirm["type"], 2);
    s.drain().await;
    assert!(s.am.posted_silences().is_empty());
    assert_eq!(s.silence_requests().await, 0);

    // A forged Confirm is refused like every unsigned interaction.
    let forged = s
        .discord_click(&confirm_id, "1001", &SigningKey::from_bytes(&[3; 32]))
        .await;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED);
    // Someone without the role gets the reason, not a confirmation, and
    // cannot confirm either.
    let stranger = s
        .discord_click(&format!("si:{id}:14400"), "4242", &key)
        .await;
    assert_eq!(stranger.json["type"], 4);
    assert_eq!(stranger.json["data"]["flags"], 64);
    assert!(
        stranger.json["data"]["components"].is_null(),
        "{}",
        stranger.json
    );
    let stranger = s.discord_click(&confirm_id, "4242", &key).await;
    assert_eq!(stranger.json["type"], 4);
    s.drain().await;
    assert!(s.am.posted_silences().is_empty());

    // The signed Confirm by alice: the confirmation loses its button, the
    // silence is requested and posted as her.
    let confirmed = s.discord_click(&confirm_id, "1001", &key).await;
    assert_eq!(confirmed.status, StatusCode::OK);
    assert_eq!(confirmed.json["type"], 7, "{}", confirmed.json);
    assert_eq!(confirmed.json["data"]["components"], json!([]));
    s.drain().await;
    let silences = s.am.posted_silences();
    assert_eq!(silences.len(), 1);
    assert_eq!(matcher_names(&silences[0]), NARROW_MATCHERS);
    assert_eq!(silences[0]["createdBy"], "alice");

    // A broad alert's Silence click shows the reason instead.
    let broad = s.open("e6e6e6e6e6e6e6e6", BROAD).await;
    let refused = s
        .discord_click(&format!("si:{broad}:3600"), "1001", &key)
        .await;
    assert_eq!(refused.json["type"], 4);
    let reason = refused.json["data"]["content"].as_str().expect("content");
    assert!(reason.contains("required"), "{reason}");
    assert!(refused.json["data"]["components"].is_null());
}

/// In a storm the storm incident stands for its members: its silence (the
/// representative's labels) may mute them, but not an incident outside
/// the storm.
async fn a_storms_silence_may_mute_its_own_members_but_not_an_incident_outside_it(
    backend: Backend,
) {
    // The second incident of a group opens a storm; the third joins it.
    let s = setup_with(backend, "slack", &[("REMEDY__STORM__THRESHOLD", "1")]).await;
    let billing = [
        ("alertname", "HighErrorRate5xx"),
        ("instance", "billing-1"),
        ("service", "billing"),
        ("severity", "critical"),
    ];
    let representative = [
        ("alertname", "HighErrorRate5xx"),
        ("service", "agente-api"),
        ("severity", "critical"),
    ];
    // One notification each, so that the second (the representative, whose
    // labels the storm incident copies) is known.
    s.open_group("g1", &[("f1f1f1f1f1f1f1f1", &billing)]).await;
    s.open_group("g1", &[("f2f2f2f2f2f2f2f2", &representative)])
        .await;
    s.open_group("g1", &[("f3f3f3f3f3f3f3f3", NARROW)]).await;
    let storm: i64 = common::scalar(&s.app.store, "select min(incident_id) from storms").await;
    let members: i64 = common::scalar(
        &s.app.store,
        &format!("select count(*) from incidents where storm_id = {storm}"),
    )
    .await;
    assert_eq!(members, 2, "the representative and the narrow one joined");
    // Its matchers (the representative's labels) also match the narrow
    // member: same storm, allowed.
    s.slack_click("U0ALICE", "silence:3600", storm).await;
    s.drain().await;
    assert!(s.ephemeral_texts().is_empty(), "{:?}", s.ephemeral_texts());
    let silences = s.am.posted_silences();
    assert_eq!(silences.len(), 1);
    assert_eq!(
        matcher_names(&silences[0]),
        [
            r#"alertname="HighErrorRate5xx""#,
            r#"service="agente-api""#,
            r#"severity="critical""#
        ]
    );
    // An incident of another group with the same labels and more: outside
    // the storm, so a silence that would mute it is refused.
    s.open_group(
        "g2",
        &[(
            "f4f4f4f4f4f4f4f4",
            &[
                ("alertname", "HighErrorRate5xx"),
                ("instance", "web-9:8080"),
                ("service", "agente-api"),
                ("severity", "critical"),
            ],
        )],
    )
    .await;
    let outsider: i64 = common::scalar(
        &s.app.store,
        "select id from incidents where fingerprint = 'f4f4f4f4f4f4f4f4'",
    )
    .await;
    s.slack_click("U0ALICE", "silence:14400", storm).await;
    s.drain().await;
    assert_eq!(s.am.posted_silences().len(), 1, "no second silence");
    let replies = s.ephemeral_texts();
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert!(
        replies[0].contains("would also mute incident #")
            && replies[0].contains("not in this incident"),
        "{}",
        replies[0]
    );
    // The first incident it names is the outsider or the storm it opened.
    let named: i64 = replies[0]
        .split("incident #")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("an incident number");
    assert!(named >= outsider, "{named} is outside the storm {storm}");
}
