//! Webhook intake against both stores: fixtures a real Alertmanager sent,
//! duplicates, resolves, re-fires, and every kind of bad input.

mod common;

use axum::http::StatusCode;
use base64::Engine;
use common::{Backend, TestApp, firing, fixture, resolved, spawn_app, spawn_app_with};
use serde_json::Value;

on_both_stores!(
    each_fixture_produces_the_expected_incidents,
    the_same_notification_fifty_times_concurrently_yields_one_incident,
    resolve_closes_the_incident_and_cancels_its_work,
    resolve_of_an_unknown_episode_is_recorded,
    a_new_starts_at_after_a_resolve_opens_a_second_incident,
    a_late_firing_duplicate_does_not_reopen_a_resolved_incident,
    bad_inputs_get_their_status_and_change_nothing,
    basic_auth_is_accepted,
    a_failing_store_answers_503_and_records_nothing,
    an_earlier_starts_at_joins_the_open_incident_and_the_resolve_closes_it,
    a_firing_copy_after_a_resolve_in_the_same_batch_opens_a_new_episode,
    every_incident_a_batch_opens_gets_one_opened_event_and_one_diagnosis,
    hostile_values_get_400_naming_the_field,
    valid_notifications_commit_beside_hostile_ones,
    a_notification_the_store_refuses_does_not_fail_its_batch,
);

fn statuses(incidents: &[Value]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = incidents
        .iter()
        .map(|i| {
            (
                i["fingerprint"].as_str().unwrap_or_default().to_owned(),
                i["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

async fn post_ok(app: &TestApp, body: String) -> Value {
    let reply = app.post_webhook(body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    reply.json
}

async fn each_fixture_produces_the_expected_incidents(backend: Backend) {
    let app = spawn_app(backend).await;

    let reply = post_ok(&app, fixture("firing_single.json")).await;
    assert_eq!(reply["incidents_opened"], 1);
    let reply = post_ok(&app, fixture("resolved_single.json")).await;
    assert_eq!(reply["incidents_resolved"], 1);
    let single = app
        .incidents("alertname=DatabasePoolExhaustionCritical")
        .await;
    assert_eq!(
        statuses(&single),
        vec![("4c3f5dd55641e094".into(), "resolved".into())]
    );
    assert_eq!(single[0]["starts_at"], "2026-11-26T17:46:18.814059248Z");
    assert_eq!(single[0]["labels"]["instance"], "127.0.0.1:5432");

    post_ok(&app, fixture("grouped_firing_3.json")).await;
    assert_eq!(app.incidents("status=firing").await.len(), 3);

    // One of three resolved, with a startsAt a second earlier than the
    // firing copy's (Alertmanager kept the earliest of merged copies): it
    // still closes that fingerprint's open incident. The other two repeat.
    let reply = post_ok(&app, fixture("grouped_mixed_2firing_1resolved.json")).await;
    assert_eq!(reply["incidents_opened"], 0);
    assert_eq!(reply["incidents_resolved"], 1);
    assert_eq!(app.incidents("status=firing").await.len(), 2);
    assert_eq!(app.incidents("").await.len(), 4);

    // The resolve repeated for the one already closed changes nothing.
    let reply = post_ok(&app, fixture("grouped_resolved_3.json")).await;
    assert_eq!(reply["incidents_resolved"], 2);
    assert!(app.incidents("status=firing").await.is_empty());
    assert_eq!(app.incidents("status=resolved").await.len(), 4);

    let repeated = app
        .incidents("status=resolved")
        .await
        .into_iter()
        .find(|i| i["fingerprint"] == "68720d700f34fd7a")
        .expect("grouped incident");
    // firing, firing again (in the mixed notification), resolved.
    assert_eq!(repeated["seen_count"], 3);
}

async fn the_same_notification_fifty_times_concurrently_yields_one_incident(backend: Backend) {
    let app = spawn_app(backend).await;
    let body = fixture("firing_single.json");
    let replies = futures_join_all((0..50).map(|_| app.post_webhook(body.clone()))).await;
    assert!(replies.iter().all(|r| r.status == StatusCode::OK));
    assert_eq!(
        replies
            .iter()
            .filter(|r| r.json["duplicate"] == false)
            .count(),
        1
    );
    let incidents = app.incidents("").await;
    assert_eq!(incidents.len(), 1);
    assert_eq!(incidents[0]["seen_count"], 50);
    assert_eq!(app.count("work").await, 1, "one diagnosis queued");
    assert_eq!(app.count("notifications").await, 1);
}

async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futures {
        set.push(f);
    }
    let mut out = Vec::with_capacity(set.len());
    // Poll them together so the writer sees them as one burst.
    let joined = futures_util_join(set);
    out.extend(joined.await);
    out
}

async fn futures_util_join<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    use std::pin::Pin;
    use std::task::Poll;
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut results: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(move |cx| {
        let mut pending = false;
        for (f, slot) in futures.iter_mut().zip(results.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *slot = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(
                results
                    .iter_mut()
                    .map(|s| s.take().expect("ready"))
                    .collect(),
            )
        }
    })
    .await
}

async fn resolve_closes_the_incident_and_cancels_its_work(backend: Backend) {
    let app = spawn_app(backend).await;
    post_ok(&app, firing("aaaa000000000001", "2026-11-26T10:00:00Z")).await;
    post_ok(
        &app,
        resolved(
            "aaaa000000000001",
            "2026-11-26T10:00:00Z",
            "2026-11-26T10:05:00Z",
        ),
    )
    .await;
    let incidents = app.incidents("").await;
    assert_eq!(
        statuses(&incidents),
        vec![("aaaa000000000001".into(), "resolved".into())]
    );
    assert_eq!(incidents[0]["ends_at"], "2026-11-26T10:05:00Z");
    let id = incidents[0]["id"].as_i64().expect("id");
    let shown = app.api(&format!("/v1/incidents/{id}")).await;
    let kinds: Vec<&str> = shown["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert_eq!(kinds, ["opened", "resolved"]);
    // The diagnosis that was queued will never run for a resolved incident.
    let pending = remedy::engine::step(
        &app.app.engine,
        &remedy::engine::WorkerSettings::new("w".into()),
        remedy::domain::now_millis() + 1,
    )
    .await
    .expect("step");
    assert_eq!(pending, 0);
}

async fn resolve_of_an_unknown_episode_is_recorded(backend: Backend) {
    let app = spawn_app(backend).await;
    let reply = post_ok(
        &app,
        resolved(
            "bbbb000000000001",
            "2026-11-26T10:00:00Z",
            "2026-11-26T10:01:00Z",
        ),
    )
    .await;
    assert_eq!(reply["incidents_resolved"], 0);
    let incidents = app.incidents("").await;
    assert_eq!(
        statuses(&incidents),
        vec![("bbbb000000000001".into(), "resolved".into())]
    );
    let id = incidents[0]["id"].as_i64().expect("id");
    let shown = app.api(&format!("/v1/incidents/{id}")).await;
    assert_eq!(shown["timeline"][0]["kind"], "resolved_unseen");
    assert_eq!(
        app.count("work").await,
        0,
        "a resolved alert never triggers work"
    );
}

async fn a_new_starts_at_after_a_resolve_opens_a_second_incident(backend: Backend) {
    let app = spawn_app(backend).await;
    post_ok(&app, firing("cccc000000000001", "2026-11-26T10:00:00Z")).await;
    post_ok(
        &app,
        resolved(
            "cccc000000000001",
            "2026-11-26T10:00:00Z",
            "2026-11-26T10:05:00Z",
        ),
    )
    .await;
    let reply = post_ok(&app, firing("cccc000000000001", "2026-11-26T11:00:00Z")).await;
    assert_eq!(reply["incidents_opened"], 1);
    let incidents = app.incidents("").await;
    assert_eq!(incidents.len(), 2);
    assert_eq!(incidents[0]["status"], "firing");
    assert_eq!(incidents[0]["starts_at"], "2026-11-26T11:00:00Z");
    assert_eq!(incidents[1]["status"], "resolved");
}

async fn a_late_firing_duplicate_does_not_reopen_a_resolved_incident(backend: Backend) {
    let app = spawn_app(backend).await;
    post_ok(&app, firing("dddd000000000001", "2026-11-26T10:00:00Z")).await;
    post_ok(
        &app,
        resolved(
            "dddd000000000001",
            "2026-11-26T10:00:00Z",
            "2026-11-26T10:05:00Z",
        ),
    )
    .await;
    // An HA peer's delayed copy of the first notification.
    let reply = post_ok(&app, firing("dddd000000000001", "2026-11-26T10:00:00Z")).await;
    assert_eq!(reply["duplicate"], true);
    let incidents = app.incidents("").await;
    assert_eq!(
        statuses(&incidents),
        vec![("dddd000000000001".into(), "resolved".into())]
    );
}

async fn bad_inputs_get_their_status_and_change_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let good = fixture("firing_single.json");
    let edit = |f: &dyn Fn(&mut Value)| {
        let mut v: Value = serde_json::from_str(&good).expect("json");
        f(&mut v);
        v.to_string()
    };
    let bearer = format!("Bearer {}", common::WEBHOOK_TOKEN);
    let wrong_basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:nope", common::BASIC_USER))
    );
    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(2 * 1024 * 1024));
    let json = Some("application/json");
    // (case, body, authorization, content type, status, error code, field)
    type Case<'a> = (
        &'a str,
        String,
        Option<&'a str>,
        Option<&'a str>,
        StatusCode,
        &'a str,
        Option<&'a str>,
    );
    let cases: Vec<Case> = vec![
        (
            "no credentials",
            good.clone(),
            None,
            json,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            None,
        ),
        (
            "wrong token",
            good.clone(),
            Some("Bearer not-the-token"),
            json,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            None,
        ),
        (
            "wrong basic password",
            good.clone(),
            Some(&wrong_basic),
            json,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            None,
        ),
        (
            "malformed json",
            "{\"version\": \"4\", ".into(),
            Some(&bearer),
            json,
            StatusCode::BAD_REQUEST,
            "invalid_payload",
            Some("."),
        ),
        (
            "alerts missing",
            edit(&|v| {
                v.as_object_mut().expect("object").remove("alerts");
            }),
            Some(&bearer),
            json,
            StatusCode::BAD_REQUEST,
            "invalid_payload",
            Some("alerts"),
        ),
        (
            "wrong version",
            edit(&|v| v["version"] = "3".into()),
            Some(&bearer),
            json,
            StatusCode::BAD_REQUEST,
            "invalid_payload",
            Some("version"),
        ),
        (
            "wrong field type",
            edit(&|v| v["alerts"][0]["labels"] = Value::Array(vec![])),
            Some(&bearer),
            json,
            StatusCode::BAD_REQUEST,
            "invalid_payload",
            Some("alerts[0].labels"),
        ),
        (
            "alerts not an array",
            edit(&|v| v["alerts"] = "many".into()),
            Some(&bearer),
            json,
            StatusCode::BAD_REQUEST,
            "invalid_payload",
            Some("alerts"),
        ),
        (
            "bad startsAt",
            edit(&|v| v["alerts"][0]["startsAt"] = "soon".into()),
            Some(&bearer),
            json,
            StatusCode::BAD_REQUEST,
            "invalid_payload",
            Some("alerts[0].startsAt"),
        ),
        (
            "2 MiB body",
            big,
            Some(&bearer),
            json,
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            None,
        ),
        (
            "text/plain",
            good.clone(),
            Some(&bearer),
            Some("text/plain"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            None,
        ),
        (
            "no content type",
            good.clone(),
            Some(&bearer),
            None,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            None,
        ),
    ];
    for (name, body, auth, content_type, status, error, field) in cases {
        let reply = app.post_webhook_with(body, auth, content_type).await;
        assert_eq!(reply.status, status, "{name}: {}", reply.json);
        assert_eq!(reply.json["error"], error, "{name}: {}", reply.json);
        assert!(
            reply.json["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{name}"
        );
        if let Some(field) = field {
            assert_eq!(reply.json["field"], field, "{name}: {}", reply.json);
        }
        assert_eq!(
            app.snapshot().await,
            [0, 0, 0, 0],
            "{name} changed the store"
        );
    }
    // The same body with the right credentials is accepted: the refusals above
    // were about what they name.
    assert_eq!(app.post_webhook(good).await.status, StatusCode::OK);
}

async fn basic_auth_is_accepted(backend: Backend) {
    let app = spawn_app(backend).await;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            common::BASIC_USER,
            common::BASIC_PASSWORD
        ))
    );
    let reply = app
        .post_webhook_with(
            fixture("firing_single.json"),
            Some(&basic),
            Some("application/json; charset=utf-8"),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
    assert_eq!(app.count("incidents").await, 1);
}

async fn a_failing_store_answers_503_and_records_nothing(backend: Backend) {
    let app = spawn_app_with(backend, &[]).await;
    app.store.close().await;
    let reply = app.post_webhook(fixture("firing_single.json")).await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.json
    );
    assert_eq!(reply.json["error"], "unavailable");
    let reopened =
        remedy::store::Store::connect(&app.store_url, &remedy::store::StoreOptions::default())
            .await
            .expect("reopen");
    let incidents: i64 = common::scalar(&reopened, "select count(*) from incidents").await;
    assert_eq!(incidents, 0);
}

/// Prometheus HA pairs: the second replica's copy starts 35 s earlier, and
/// Alertmanager's merged notification carries that earlier `startsAt`.
async fn an_earlier_starts_at_joins_the_open_incident_and_the_resolve_closes_it(backend: Backend) {
    let app = spawn_app(backend).await;
    let fp = "eeee000000000001";
    let reply = post_ok(&app, firing(fp, "2026-11-26T10:00:35Z")).await;
    assert_eq!(reply["incidents_opened"], 1);
    let reply = post_ok(&app, firing(fp, "2026-11-26T10:00:00Z")).await;
    assert_eq!(reply["incidents_opened"], 0);
    let incidents = app.incidents("").await;
    assert_eq!(incidents.len(), 1, "one incident for one episode");
    assert_eq!(incidents[0]["starts_at"], "2026-11-26T10:00:00Z");
    assert_eq!(incidents[0]["seen_count"], 2);
    let moved: Vec<String> = common::column(
        &app.store,
        "select kind from incident_events where kind = 'starts_at_moved'",
    )
    .await;
    assert_eq!(moved.len(), 1);
    assert_eq!(app.count("work").await, 1, "one diagnosis queued");

    // `amtool alert add --end`: the resolve's startsAt is its endsAt,
    // earlier still than the firing copy's.
    let reply = post_ok(
        &app,
        resolved(fp, "2026-11-26T09:59:00Z", "2026-11-26T09:59:00Z"),
    )
    .await;
    assert_eq!(reply["incidents_resolved"], 1);
    let incidents = app.incidents("").await;
    assert_eq!(statuses(&incidents), vec![(fp.into(), "resolved".into())]);

    // A late firing copy of that episode (starting no later than it ended)
    // does not reopen it; one that starts after it ended is a new episode.
    let reply = post_ok(&app, firing(fp, "2026-11-26T10:00:00Z")).await;
    assert_eq!(reply["incidents_opened"], 0);
    let reply = post_ok(&app, firing(fp, "2026-11-26T11:00:00Z")).await;
    assert_eq!(reply["incidents_opened"], 1);
    assert_eq!(app.incidents("status=firing").await.len(), 1);
    assert_eq!(app.incidents("").await.len(), 2);
}

/// A resolve and the next episode's first firing copy can be committed in
/// one batch: arrival order decides, so the new episode stays open.
async fn a_firing_copy_after_a_resolve_in_the_same_batch_opens_a_new_episode(backend: Backend) {
    let app = spawn_app(backend).await;
    let fp = "eeee000000000002";
    post_ok(&app, firing(fp, "2026-11-26T10:00:00Z")).await;
    let mut writer = app.store.intake_writer();
    let resolve = remedy::intake::parse(
        resolved(fp, "2026-11-26T10:00:00Z", "2026-11-26T10:05:00Z").as_bytes(),
    )
    .expect("resolve parses");
    let again = remedy::intake::parse(firing(fp, "2026-11-26T11:00:00Z").as_bytes())
        .expect("firing parses");
    let outcomes = writer.record(&[&resolve, &again], 1_000).await;
    let outcomes: Vec<_> = outcomes
        .into_iter()
        .map(|o| o.expect("committed"))
        .collect();
    assert_eq!(outcomes[0].incidents_resolved, 1);
    assert_eq!(outcomes[1].incidents_opened, 1);
    let firing_now = app.incidents("status=firing").await;
    assert_eq!(firing_now.len(), 1);
    assert_eq!(firing_now[0]["starts_at"], "2026-11-26T11:00:00Z");
    writer.release();
}

/// Whichever way a batch is written (one query for firing alerts only, a
/// query per step when it also resolves), each incident it opens gets one
/// `opened` event and one `diagnose` row, and no incident opened before
/// gets another: on SQLite the opened incidents are found above a mark
/// taken before each segment's insert.
async fn every_incident_a_batch_opens_gets_one_opened_event_and_one_diagnosis(backend: Backend) {
    let app = spawn_app(backend).await;
    post_ok(&app, firing("abab000000000001", "2026-11-26T10:00:00Z")).await;
    let parse = |body: String| remedy::intake::parse(body.as_bytes()).expect("parses");
    let mut writer = app.store.intake_writer();
    // Firing alerts only: three new, one copy of the open incident.
    let only_firing: Vec<_> = ["abab000000000002", "abab000000000003", "abab000000000001"]
        .into_iter()
        .chain(["abab000000000004"])
        .map(|fp| parse(firing(fp, "2026-11-26T10:00:00Z")))
        .collect();
    let outcomes = writer
        .record(&only_firing.iter().collect::<Vec<_>>(), 1_000)
        .await;
    let opened: Vec<u32> = outcomes
        .into_iter()
        .map(|o| o.expect("committed").incidents_opened)
        .collect();
    assert_eq!(opened, [1, 1, 0, 1]);
    // Two segments, each opening incidents: a new one, the resolve of the
    // first, then its next episode and another new one.
    let segmented = [
        parse(firing("abab000000000005", "2026-11-26T10:00:00Z")),
        parse(resolved(
            "abab000000000001",
            "2026-11-26T10:00:00Z",
            "2026-11-26T10:05:00Z",
        )),
        parse(firing("abab000000000001", "2026-11-26T11:00:00Z")),
        parse(firing("abab000000000006", "2026-11-26T10:00:00Z")),
    ];
    let outcomes = writer
        .record(&segmented.iter().collect::<Vec<_>>(), 2_000)
        .await;
    let counted: Vec<(u32, u32)> = outcomes
        .into_iter()
        .map(|o| o.expect("committed"))
        .map(|o| (o.incidents_opened, o.incidents_resolved))
        .collect();
    assert_eq!(counted, [(1, 0), (0, 1), (1, 0), (1, 0)]);
    writer.release();
    assert_eq!(app.count("incidents").await, 7);
    let per_incident = |table: &str, kind: &str| {
        format!(
            "select count(*) from incidents i where (select count(*) from {table} x
              where x.incident_id = i.id and x.kind = '{kind}') <> 1"
        )
    };
    for (table, kind) in [("incident_events", "opened"), ("work", "diagnose")] {
        let wrong: i64 = common::scalar(&app.store, &per_incident(table, kind)).await;
        assert_eq!(wrong, 0, "incidents without exactly one {kind} in {table}");
    }
}

fn hostile(edit: impl Fn(&mut Value)) -> String {
    let mut v: Value =
        serde_json::from_str(&firing("ffff000000000001", "2026-11-26T10:00:00Z")).expect("json");
    edit(&mut v);
    v.to_string()
}

async fn hostile_values_get_400_naming_the_field(backend: Backend) {
    let app = spawn_app_with(
        backend,
        &[
            ("REMEDY__INTAKE__MAX_ALERTS_PER_NOTIFICATION", "3"),
            ("REMEDY__INTAKE__MAX_VALUE_BYTES", "4096"),
        ],
    )
    .await;
    let cases: Vec<(String, &str)> = vec![
        (
            hostile(|v| v["alerts"][0]["labels"]["x"] = "a\u{0}b".into()),
            "alerts[0].labels.x",
        ),
        (
            hostile(|v| v["alerts"][0]["annotations"]["summary"] = "\u{0}".into()),
            "alerts[0].annotations.summary",
        ),
        (hostile(|v| v["groupKey"] = "{}:\u{0}".into()), "groupKey"),
        (
            firing("ffff000000000001", "2026-11-26T10:00:00Z").replace(
                "\"truncatedAlerts\":0",
                "\"truncatedAlerts\":18446744073709551615",
            ),
            "truncatedAlerts",
        ),
        (
            hostile(|v| v["alerts"][0]["labels"][""] = "x".into()),
            "alerts[0].labels",
        ),
        (
            hostile(|v| v["alerts"][0]["annotations"]["description"] = "y".repeat(4097).into()),
            "alerts[0].annotations.description",
        ),
        (
            hostile(|v| {
                let one = v["alerts"][0].clone();
                v["alerts"] = Value::Array(vec![one; 4]);
            }),
            "alerts",
        ),
    ];
    for (body, field) in cases {
        let reply = app.post_webhook(body).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{field}: {}",
            reply.json
        );
        assert_eq!(reply.json["field"], field, "{}", reply.json);
    }
    assert_eq!(app.count("incidents").await, 0);
    assert_eq!(app.count("notifications").await, 0);
}

/// 40 valid notifications and 40 hostile ones at once: the hostile ones are
/// refused at the edge and every valid one commits.
async fn valid_notifications_commit_beside_hostile_ones(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut bodies = Vec::new();
    for i in 0..40 {
        bodies.push((
            true,
            firing(&format!("a1a1{i:012x}"), "2026-11-26T10:00:00Z"),
        ));
        let nul = hostile(|v| {
            v["alerts"][0]["fingerprint"] = format!("b2b2{i:012x}").into();
            v["alerts"][0]["labels"]["x"] = format!("{i}\u{0}").into();
        });
        let huge = hostile(|v| {
            v["alerts"][0]["fingerprint"] = format!("c3c3{i:012x}").into();
            v["truncatedAlerts"] = serde_json::json!(u64::MAX);
        });
        bodies.push((false, if i % 2 == 0 { nul } else { huge }));
    }
    let replies = futures_join_all(bodies.iter().map(|(_, b)| app.post_webhook(b.clone()))).await;
    for ((valid, _), reply) in bodies.iter().zip(&replies) {
        let expected = if *valid {
            StatusCode::OK
        } else {
            StatusCode::BAD_REQUEST
        };
        assert_eq!(reply.status, expected, "{}", reply.json);
    }
    assert_eq!(app.incidents("status=firing").await.len(), 40);
}

/// A notification that passes the edge but that the store refuses (a
/// trigger stands in for any constraint) gets its own 400; the others
/// committed in the same burst get 200.
async fn a_notification_the_store_refuses_does_not_fail_its_batch(backend: Backend) {
    let app = spawn_app(backend).await;
    match backend {
        Backend::Sqlite => {
            common::execute(
                &app.store,
                "create trigger refuse_bad before insert on incidents
                  when new.fingerprint = 'badbadbadbadbad0'
                  begin select raise(abort, 'refused by test trigger'); end",
            )
            .await;
        }
        Backend::Postgres => {
            common::execute(
                &app.store,
                "create function refuse_bad() returns trigger language plpgsql as $$
                 begin
                   if new.fingerprint = 'badbadbadbadbad0' then
                     raise exception 'refused by test trigger' using errcode = '23514';
                   end if;
                   return new;
                 end $$",
            )
            .await;
            common::execute(
                &app.store,
                "create trigger refuse_bad before insert on incidents
                  for each row execute function refuse_bad()",
            )
            .await;
        }
    }
    let mut bodies: Vec<String> = (0..30)
        .map(|i| firing(&format!("d4d4{i:012x}"), "2026-11-26T10:00:00Z"))
        .collect();
    bodies.insert(15, firing("badbadbadbadbad0", "2026-11-26T10:00:00Z"));
    let replies = futures_join_all(bodies.iter().map(|b| app.post_webhook(b.clone()))).await;
    let refused: Vec<usize> = replies
        .iter()
        .enumerate()
        .filter(|(_, r)| r.status != StatusCode::OK)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(refused, vec![15], "only the refused one fails");
    assert_eq!(replies[15].status, StatusCode::BAD_REQUEST);
    assert_eq!(app.incidents("status=firing").await.len(), 30);
}

/// On PostgreSQL the intake writer keeps a connection of its own, with
/// generic plans in that session only. When the server ends it (a restart,
/// an administrator's `pg_terminate_backend`), the batch on it answers 503,
/// so Alertmanager retries, and the next batch commits on a new connection;
/// the pool's connections, which serve everything else, never plan
/// generically.
#[tokio::test]
async fn postgres_intake_writer_outlives_its_connection() {
    let app = spawn_app(Backend::Postgres).await;
    post_ok(&app, firing("ffff000000000001", "2026-11-26T10:00:00Z")).await;
    let mode: String = common::scalar(&app.store, "show plan_cache_mode").await;
    assert_eq!(mode, "auto", "a pooled connection plans as PostgreSQL does");
    let ended: i64 = common::scalar(
        &app.store,
        "select count(*) from (select pg_terminate_backend(pid) from pg_stat_activity
          where datname = current_database() and pid <> pg_backend_pid()) t",
    )
    .await;
    assert!(ended >= 1, "the writer's connection was ended");

    let second = firing("ffff000000000002", "2026-11-26T10:00:00Z");
    let mut unavailable = 0;
    loop {
        let reply = app.post_webhook(second.clone()).await;
        if reply.status == StatusCode::OK {
            break;
        }
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            reply.json
        );
        unavailable += 1;
        assert!(unavailable <= 1, "the writer did not take a new connection");
    }
    assert_eq!(app.count("incidents").await, 2);
    let mode: String = common::scalar(&app.store, "show plan_cache_mode").await;
    assert_eq!(mode, "auto");
}
