//! The runbook's idle-in-transaction flow through Mattermost, end to end:
//! the `remedy` binary on a fresh PostgreSQL store, Debian's Alertmanager,
//! a real PostgreSQL session left idle in transaction on a per-test target
//! database, and a fake Mattermost server at the HTTP boundary. Clicks are
//! the requests the Mattermost server sends to the button's
//! `integration.url` (the stored context, verbatim), confirmed through the
//! dialog remedy opens; forged contexts and a user outside the approver
//! roles are refused while the flow runs. Needs `prometheus-alertmanager`
//! (see `.ci/run`). Run only these: `cargo nextest run --test mattermost_e2e`.

mod common;
#[path = "e2e/harness.rs"]
#[allow(dead_code, reason = "the harness serves several end-to-end test files")]
mod harness;

use std::time::Duration;

use common::fake_mattermost::FakeMattermost;
use harness::{
    Alert, Alertmanager, ChatTo, Remedy, RemedyConfig, Scratch, StoreDb, TargetDb, http,
    scaled_playbooks, wait_for,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
/// The approvers of the harness (`[approvers.backend-developer]`,
/// `[approvers.team-lead]`) and someone in no role.
const DEV: &str = "mmdev000000000000000000000";
const LEAD: &str = "mmlead00000000000000000000";
const STRANGER: &str = "mmstranger0000000000000000";

/// Delivers what the Mattermost server sends to an integration URL; gives
/// the status and the JSON answer.
async fn deliver(url: &str, body: &Value) -> (u16, Value) {
    let reply = http()
        .post(url)
        .json(body)
        .send()
        .await
        .expect("remedy answers");
    let status = reply.status().as_u16();
    (status, reply.json().await.unwrap_or(Value::Null))
}

/// The Approve button of the action whose attachment text holds `title`.
fn approve_button(post: &Value, title: &str) -> (String, String) {
    post["props"]["attachments"]
        .as_array()
        .expect("attachments")
        .iter()
        .filter(|a| a["text"].as_str().is_some_and(|t| t.contains(title)))
        .flat_map(|a| a["actions"].as_array().cloned().unwrap_or_default())
        .find(|b| {
            b["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("Approve "))
        })
        .map(|b| {
            (
                b["id"].as_str().expect("id").to_owned(),
                b["integration"]["url"].as_str().expect("url").to_owned(),
            )
        })
        .unwrap_or_else(|| panic!("no Approve button for {title:?} in {post}"))
}

fn buttons(post: &Value) -> usize {
    post["props"]["attachments"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| a["actions"].as_array().map_or(0, Vec::len))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mattermost_idle_in_transaction_session_is_terminated_on_signed_confirmed_clicks_and_resolved()
 {
    let scratch = Scratch::new();
    let fake = FakeMattermost::start().await;
    fake.add_user(DEV, "dev", "system_user");
    fake.add_user(LEAD, "lead", "system_user");
    fake.add_user(STRANGER, "stranger", "system_user system_admin");
    let store = StoreDb::create().await;
    let target = TargetDb::create().await;
    let playbooks = scaled_playbooks(&scratch, &[]);
    let config = RemedyConfig::new(
        &store.url,
        &playbooks,
        &target.url,
        ChatTo::Mattermost(fake.api_url.clone()),
    );
    let remedy = Remedy::start(&scratch, &config).await;
    let am = Alertmanager::start(&scratch, &[remedy.webhook_url()]).await;

    let (_leak, pid) = target.leak("checkout-worker").await;
    target.wait_idle(&[pid], 2.5).await;
    let alert = Alert::new(&[
        ("alertname", "DatabaseIdleInTransaction"),
        ("severity", "warning"),
        ("instance", "db-mattermost"),
    ]);
    am.fire(&alert).await;

    let post_id = wait_for("a Mattermost report", WAIT, || async { fake.report_id() }).await;
    let post = fake.post(&post_id).expect("stored");
    let message = post["message"].as_str().expect("message");
    assert!(message.contains("DatabaseIdleInTransaction"), "{message}");
    assert!(
        message.contains(&format!("pid={pid}  ")) || message.contains(&format!("pid={pid}\n")),
        "pid {pid} not in the evidence: {message}"
    );
    // The responder (backend-developer) is mentioned by username.
    assert!(message.contains("Responder: @dev"), "{message}");
    let (action, url) = approve_button(&post, &format!("Terminate pid {pid} ("));
    assert_eq!(
        url,
        format!("{}/v1/interactions/mattermost", remedy.url),
        "buttons point at remedy"
    );

    // Forged contexts: refused before anything is read or recorded.
    let genuine = fake.click_body(&post_id, &action, DEV);
    for (name, edit) in [
        ("approval id", json!({"approval": 999})),
        ("digest", json!({"digest": "ffffffffffffffff"})),
        ("mac", json!({"mac": "00".repeat(32)})),
        ("no mac", json!({"mac": null})),
    ] {
        let mut forged = genuine.clone();
        for (k, v) in edit.as_object().expect("object") {
            if v.is_null() {
                forged["context"]
                    .as_object_mut()
                    .expect("context")
                    .remove(k);
            } else {
                forged["context"][k] = v.clone();
            }
        }
        let (status, _) = deliver(&url, &forged).await;
        assert_eq!(status, 401, "{name}");
    }
    // Someone outside the approver roles: told so, nothing recorded.
    let (status, answer) = deliver(&url, &fake.click_body(&post_id, &action, STRANGER)).await;
    assert_eq!(status, 200);
    assert!(
        answer["ephemeral_text"]
            .as_str()
            .is_some_and(|t| t.contains("not among the approvers")),
        "{answer}"
    );
    let decisions: i64 = sqlx::query_scalar("select count(*) from decisions")
        .fetch_one(&store.pool)
        .await
        .expect("decisions");
    assert_eq!(decisions, 0);

    // Two approvers: each click opens the confirmation, each submission
    // decides.
    for (n, user) in [DEV, LEAD].into_iter().enumerate() {
        let (status, answer) = deliver(&url, &fake.click_body(&post_id, &action, user)).await;
        assert_eq!((status, &answer), (200, &json!({})), "click by {user}");
        assert_eq!(fake.dialogs().len(), n + 1, "a confirmation for {user}");
        let submission = fake.submit_last_dialog(user);
        let dialog_url = fake.dialogs()[n]["url"].as_str().expect("url").to_owned();
        let (status, answer) = deliver(&dialog_url, &submission).await;
        assert_eq!((status, &answer), (200, &json!({})), "submission by {user}");
    }
    let channels: Vec<String> = sqlx::query_scalar("select channel from decisions")
        .fetch_all(&store.pool)
        .await
        .expect("decisions");
    assert_eq!(channels, ["mattermost", "mattermost"]);

    wait_for("the approved session to be gone", WAIT, || async {
        (!target.alive(pid).await).then_some(())
    })
    .await;
    wait_for("the executed update", WAIT, || async {
        fake.post(&post_id)
            .filter(|p| p.to_string().contains("executed (done)"))
    })
    .await;
    let replies = wait_for("the outcome reply", WAIT, || async {
        let r = fake.replies();
        r.iter()
            .any(|r| r["message"].as_str().is_some_and(|m| m.contains("done")))
            .then_some(r)
    })
    .await;
    assert!(
        replies.iter().all(|r| r["root_id"] == post_id.as_str()),
        "in the report's thread: {replies:?}"
    );

    am.resolve(&alert).await;
    let resolved = wait_for("the RESOLVED update", WAIT, || async {
        fake.post(&post_id).filter(|p| {
            p["message"]
                .as_str()
                .is_some_and(|m| m.contains("\\[RESOLVED\\]"))
        })
    })
    .await;
    assert_eq!(
        buttons(&resolved),
        0,
        "no buttons once resolved: {resolved}"
    );
    let incident = store.wait_incident("instance", "db-mattermost").await;
    wait_for(
        "no pending work for the resolved incident",
        WAIT,
        || async { (store.pending_work(incident).await == 0).then_some(()) },
    )
    .await;
    assert_eq!(fake.reports().len(), 1, "one post per incident");
}
