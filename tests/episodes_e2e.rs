//! Episodes as a real Alertmanager delivers them (protocols.md §1.5a): a
//! Prometheus HA pair posts the same alert with two `startsAt`, Alertmanager
//! merges the copies and keeps the earliest, a change in the group forces a
//! second notification that carries it, then the alert resolves. remedy must
//! keep exactly one incident for the alert, close it, post one message for
//! it and cancel its timers; on SQLite, on PostgreSQL, and with two replicas
//! on one PostgreSQL. The usual manual resolve (`amtool alert add --end`)
//! too. Needs Debian's `prometheus-alertmanager` (see `.ci/run`).

mod common;
#[path = "e2e/harness.rs"]
#[allow(dead_code, reason = "the harness serves several end-to-end test files")]
mod harness;

use std::time::Duration;

use common::fake_chat::FakeChat;
use harness::{
    Alert, Alertmanager, ChatTo, Remedy, RemedyConfig, Scratch, StoreDb, TargetDb, rfc3339,
    scaled_playbooks, wait_for,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy)]
enum StoreKind {
    Sqlite,
    Postgres,
}

/// Alertmanager → `replicas` remedy processes on one store → fake Slack.
struct World {
    am: Alertmanager,
    remedies: Vec<Remedy>,
    fake: FakeChat,
    _store: Option<StoreDb>,
    _target: TargetDb,
    _scratch: Scratch,
}

impl World {
    async fn start(kind: StoreKind, replicas: usize) -> Self {
        let scratch = Scratch::new();
        let fake = FakeChat::start().await;
        let target = TargetDb::create().await;
        let (store, url) = match kind {
            StoreKind::Sqlite => (
                None,
                format!("sqlite://{}", scratch.path("remedy.db").display()),
            ),
            StoreKind::Postgres => {
                let store = StoreDb::create().await;
                let url = store.url.clone();
                (Some(store), url)
            }
        };
        let playbooks = scaled_playbooks(&scratch, &[]);
        let config = RemedyConfig::new(
            &url,
            &playbooks,
            &target.url,
            ChatTo::Slack(fake.url.clone()),
        );
        let mut remedies = Vec::new();
        for _ in 0..replicas {
            remedies.push(Remedy::start(&scratch, &config).await);
        }
        let hooks: Vec<String> = remedies.iter().map(Remedy::webhook_url).collect();
        let am = Alertmanager::start(&scratch, &hooks).await;
        Self {
            am,
            remedies,
            fake,
            _store: store,
            _target: target,
            _scratch: scratch,
        }
    }

    /// The incidents of one fingerprint, through the first replica's API.
    async fn incidents_of(&self, fingerprint: &str) -> Vec<Value> {
        self.remedies[0]
            .incidents("limit=500")
            .await
            .into_iter()
            .filter(|i| i["fingerprint"] == fingerprint)
            .collect()
    }

    async fn wait_one_incident(&self, instance: &str) -> Value {
        wait_for(&format!("an incident for {instance}"), WAIT, || async {
            self.remedies[0]
                .incidents("limit=500")
                .await
                .into_iter()
                .find(|i| i["labels"]["instance"] == instance)
        })
        .await
    }

    /// Slack reports (not thread replies) that mention `needle`.
    fn reports_with(&self, needle: &str) -> usize {
        self.fake
            .calls("/chat.postMessage")
            .into_iter()
            .filter(|r| r.body.get("thread_ts").is_none() && r.body.to_string().contains(needle))
            .count()
    }
}

fn alert(instance: &str, extra: Option<(&str, &str)>, started_ago: i64) -> Alert {
    let mut labels = vec![
        ("alertname", "DatabasePoolExhaustionWarning"),
        ("severity", "warning"),
        ("instance", instance),
    ];
    labels.extend(extra);
    let mut alert = Alert::new(&labels);
    alert.starts_at =
        rfc3339(time::OffsetDateTime::now_utc() - time::Duration::seconds(started_ago));
    alert
}

async fn ha_pair_makes_one_episode(kind: StoreKind, replicas: usize) {
    let w = World::start(kind, replicas).await;
    let instance = harness::unique("ha-");
    // Replica A's copy: active for 5 s.
    let a = alert(&instance, None, 5);
    w.am.post_as_prometheus(&a, None).await;
    let first = w.wait_one_incident(&instance).await;
    let fingerprint = first["fingerprint"]
        .as_str()
        .expect("fingerprint")
        .to_owned();
    wait_for("the first report", WAIT, || async {
        (w.reports_with(&instance) == 1).then_some(())
    })
    .await;

    // Replica B's copy of the same alert: active 35 s longer. Alertmanager
    // keeps the earliest start; a second alert joining the group makes it
    // notify again, with that earlier startsAt.
    let b = alert(&instance, None, 40);
    w.am.post_as_prometheus(&b, None).await;
    let sibling = alert(&instance, Some(("pool", "replica")), 3);
    w.am.post_as_prometheus(&sibling, None).await;
    let moved = wait_for("the earlier startsAt reaches remedy", WAIT, || async {
        let mine = w.incidents_of(&fingerprint).await;
        (mine.len() > 1 || mine.first().is_some_and(|i| i["starts_at"] == b.starts_at))
            .then_some(mine)
    })
    .await;
    assert_eq!(moved.len(), 1, "one incident for one episode: {moved:?}");
    assert_eq!(moved[0]["status"], "firing");

    // Both replicas see it resolved (Prometheus sends endsAt once it ends).
    let end = rfc3339(time::OffsetDateTime::now_utc() - time::Duration::seconds(1));
    w.am.post_as_prometheus(&b, Some(&end)).await;
    w.am.post_as_prometheus(&a, Some(&end)).await;
    w.am.post_as_prometheus(&sibling, Some(&end)).await;
    let closed = wait_for("the incident resolved", WAIT, || async {
        let mine = w.incidents_of(&fingerprint).await;
        mine.iter()
            .all(|i| i["status"] == "resolved")
            .then_some(mine)
    })
    .await;
    assert_eq!(closed.len(), 1, "still one incident: {closed:?}");
    let id = closed[0]["id"].as_i64().expect("id");
    let detail: Value = wait_for("its timers cancelled", WAIT, || async {
        let reply: Value = harness::http()
            .get(format!("{}/v1/incidents/{id}", w.remedies[0].url))
            .bearer_auth(&w.remedies[0].api_token)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let timers = reply["escalation"].to_string();
        (timers.contains("\"state\":\"cancelled\"")
            && !timers.contains("\"state\":\"pending\"")
            && !timers.contains("\"state\":\"paused\""))
        .then_some(reply)
    })
    .await;
    assert_eq!(detail["incident"]["status"], "resolved");
    assert_eq!(
        w.reports_with(&instance),
        2,
        "one message for the alert and one for its sibling"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_pair_on_sqlite_makes_one_incident_closed_by_the_resolve() {
    ha_pair_makes_one_episode(StoreKind::Sqlite, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_pair_on_postgres_makes_one_incident_closed_by_the_resolve() {
    ha_pair_makes_one_episode(StoreKind::Postgres, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_pair_with_two_replicas_on_postgres_makes_one_incident_closed_by_the_resolve() {
    ha_pair_makes_one_episode(StoreKind::Postgres, 2).await;
}

async fn manual_resolve_closes_the_one_incident(kind: StoreKind) {
    let w = World::start(kind, 1).await;
    let instance = harness::unique("manual-");
    let firing = alert(&instance, None, 5);
    w.am.fire(&firing).await;
    let first = w.wait_one_incident(&instance).await;
    let fingerprint = first["fingerprint"]
        .as_str()
        .expect("fingerprint")
        .to_owned();
    w.am.resolve_by_hand(&firing).await;
    let closed = wait_for("the incident resolved", WAIT, || async {
        let mine = w.incidents_of(&fingerprint).await;
        mine.iter()
            .all(|i| i["status"] == "resolved")
            .then_some(mine)
    })
    .await;
    assert_eq!(closed.len(), 1, "one incident: {closed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amtool_end_without_start_closes_the_incident_on_sqlite() {
    manual_resolve_closes_the_one_incident(StoreKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amtool_end_without_start_closes_the_incident_on_postgres() {
    manual_resolve_closes_the_one_incident(StoreKind::Postgres).await;
}
