//! Storms: when more than `storm.threshold` incidents of one Alertmanager
//! group (or one alertname) open within `storm.window`, the next ones join
//! one storm incident. The decision is taken where an incident's
//! `diagnose` work runs, in one transaction that also admits up to
//! `SWEEP_BATCH` members queued behind it (a storm of thousands costs a
//! few transactions, not one each); the storm incident is an ordinary
//! incident row (so diagnosis, chat, approvals and escalation serve it
//! unchanged) described by a `storms` row, at most one open per key.

use std::sync::LazyLock;

use serde::Serialize;
use sqlx::types::Json;

use super::conn::Conn;
use super::intake::close_incident;
use super::retention::{IDS_POSTGRES, IDS_SQLITE, id_list};
use super::work::MARK_DONE;
use super::{
    ClaimedWork, IncidentRecord, Store, StoreError, finish_before_incident, on_pool, record_event,
    transaction,
};
use crate::domain::{IncidentId, IncidentStatus, Millis, format_millis};

/// What a storm groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StormScope {
    /// One Alertmanager group (`groupKey`).
    Group,
    /// One alertname, across groups (`group_by: [instance]` routes).
    Alertname,
}

/// How many incidents of candidate `i`'s key (`$key`, the key's column)
/// opened in `i`'s own window (`$7`) before it, storm incidents left out,
/// capped at `$6` and read from the newest back: `count_sql` as a
/// correlated subquery.
macro_rules! counted_before {
    ($key:literal) => {
        concat!(
            "(select count(*) from (select 1 from incidents j
                where j.",
            $key,
            " = i.",
            $key,
            " and j.id < i.id
                  and j.opened_at >= i.opened_at - $7
                  and not exists (select 1 from storms s where s.incident_id = j.id)
                order by j.id desc limit $6) c)"
        )
    };
}

/// The sweep of one scope (`$key`, the key's column), with a further
/// condition on a member opened after the admitted one (`$also`) and the
/// store's row lock clause (`$lock`): see `StormScope::sweep_sql`.
macro_rules! sweep_sql {
    ($key:literal, $also:expr, $lock:literal) => {
        concat!(
            "update incidents set storm_id = $1
              where id in (select i.id from incidents i join work w on w.incident_id = i.id
                            where i.",
            $key,
            " = $2 and i.id > $3
                              and i.status = 'firing' and i.storm_id is null
                              and w.kind = 'diagnose' and w.state = 'pending'
                              and (w.lease_owner is null or w.lease_owner = $8)
                              and not exists (select 1 from storms s where s.incident_id = i.id)
                              and (i.opened_at <= $4
                                   or (",
            counted_before!($key),
            " >= $6",
            $also,
            "))
                            order by i.id limit $5 ",
            $lock,
            ")
              returning id"
        )
    };
}

/// In the alertname scope, a member opened after the admitted one is not
/// taken when its group alone would make it join its group's storm.
macro_rules! group_not_enough {
    () => {
        concat!(
            " and (i.group_key = '' or ",
            counted_before!("group_key"),
            " < $6)"
        )
    };
}

impl StormScope {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Group => "group",
            Self::Alertname => "alertname",
        }
    }

    /// Incidents of the same key opened in the window before this one
    /// (`$1` key, `$2` the incident's id, `$3` window start, `$4` how many
    /// are enough), storm incidents left out. Capped at `$4` and read from
    /// the newest back, so a storm of thousands, or an alertname with months
    /// of history, costs a short index scan per member, not a full count.
    fn count_sql(self) -> &'static str {
        match self {
            Self::Group => {
                "select count(*) from (select 1 from incidents i
                  where i.group_key = $1 and i.id < $2 and i.opened_at >= $3
                    and not exists (select 1 from storms s where s.incident_id = i.id)
                  order by i.id desc limit $4) c"
            }
            Self::Alertname => {
                "select count(*) from (select 1 from incidents i
                  where i.alertname = $1 and i.id < $2 and i.opened_at >= $3
                    and not exists (select 1 from storms s where s.incident_id = i.id)
                  order by i.id desc limit $4) c"
            }
        }
    }

    /// Admits, with the member just admitted, the members queued behind
    /// it, and returns their ids: `$1` storm, `$2` key, `$3` the admitted
    /// incident's id, `$4` its `opened_at`, `$5` at most this many, `$6`
    /// the threshold, `$7` the window. Each is taken only when its own
    /// admission would have joined this storm: opened no later than the
    /// admitted one (its window then holds every incident the admitted one
    /// counted, and that one too), or with at least `$6` incidents of the
    /// key in its own window before it, as `count_sql` counts them; in the
    /// alertname scope, not when its group alone would make it join its
    /// group's storm (group comes first). Only rows no worker holds are
    /// taken. Under a sustained storm intake commits a batch at a time, so
    /// the members queued behind one admission were mostly opened after it:
    /// without the second rule each of them was admitted on its own.
    ///
    /// On PostgreSQL the candidates and their work rows are locked `for
    /// update skip locked`: admissions running side by side take disjoint
    /// members, and a sweep never waits for a row another admission holds
    /// (it locked the incident and then waited for the work row the other
    /// had marked done, which waited for the incident: a deadlock, one of
    /// them rolled back after `deadlock_timeout`).
    fn sweep_sql(self, postgres: bool) -> &'static str {
        match (self, postgres) {
            (Self::Group, false) => sweep_sql!("group_key", "", ""),
            (Self::Group, true) => sweep_sql!("group_key", "", "for update of i, w skip locked"),
            (Self::Alertname, false) => sweep_sql!("alertname", group_not_enough!(), ""),
            (Self::Alertname, true) => {
                sweep_sql!(
                    "alertname",
                    group_not_enough!(),
                    "for update of i, w skip locked"
                )
            }
        }
    }
}

/// How many queued members one admission takes with it: a storm of
/// thousands is admitted in a few transactions, not one per member, so
/// the intake writer never queues behind thousands of small ones.
const SWEEP_BATCH: i64 = 500;

/// The statements that finish a sweep, by the swept ids (bound as one
/// JSON array in `$1`, as retention binds its batches): the members'
/// `storm_joined` events (`$2` now, `$3` detail, `$4` the claim's token),
/// for those whose diagnose work is still queued or held by that claim,
/// then that work finished (`$2` now, `$3` the token). Both read only
/// the swept rows: by the storm's id they read every member it ever had,
/// thousands in a long storm, once per sweep.
struct SweptStatements {
    events: String,
    work: String,
}

impl SweptStatements {
    /// `ids` is the dialect's `{ids}` (`retention::IDS_SQLITE` or
    /// `IDS_POSTGRES`); `work_join` is how work rows are reached from them
    /// (SQLite's `cross join` keeps the ids the outer loop, so the work is
    /// found by its incident index, not by scanning every pending row).
    fn with(ids: &str, work_join: &str) -> Self {
        Self {
            events: format!(
                "insert into incident_events (incident_id, at, kind, detail)
                  select i.id, $2, 'storm_joined', $3 from incidents i
                   where i.id in {ids}
                     and exists (select 1 from work w where w.incident_id = i.id
                                   and w.kind = 'diagnose' and w.state = 'pending'
                                   and (w.lease_owner is null or w.lease_owner = $4))"
            ),
            work: format!(
                "update work set state = 'done', lease_owner = null, lease_until = null,
                        last_error = null, updated_at = $2
                  where id in (select w.id from {work_join}
                                where w.kind = 'diagnose' and w.state = 'pending'
                                  and (w.lease_owner is null or w.lease_owner = $3))"
            ),
        }
    }
}

static SQLITE_SWEPT: LazyLock<SweptStatements> = LazyLock::new(|| {
    SweptStatements::with(
        IDS_SQLITE,
        "json_each($1) j cross join work w on w.incident_id = j.value",
    )
});
static POSTGRES_SWEPT: LazyLock<SweptStatements> = LazyLock::new(|| {
    SweptStatements::with(
        IDS_POSTGRES,
        "jsonb_array_elements_text($1::jsonb) j(v) join work w on w.incident_id = j.v::bigint",
    )
});

/// The settings a storm decision needs, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StormRules {
    /// More than this many incidents of one key in the window make a
    /// storm; 0 turns coalescing off.
    pub threshold: i64,
    pub window_ms: i64,
    /// How often an open storm's members are recounted (and so how often
    /// its message can change).
    pub update_every_ms: i64,
    /// The storm's representative diagnosis is re-run at most this often
    /// while it fires; 0 never re-runs it.
    pub rediagnose_every_ms: i64,
}

/// What the diagnose work of an incident does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Diagnose, post and escalate it as usual: not in a storm, or the
    /// storm incident itself.
    Alone,
    /// It joined the storm incident `storm` (and opened it when `opened`)
    /// with `swept` members queued behind it; their diagnose work is done.
    Member {
        storm: IncidentId,
        opened: bool,
        swept: u64,
    },
    /// Another admission of the same claim swept it into the storm
    /// `storm` and finished its diagnose work.
    Swept { storm: IncidentId },
    /// The work's lease was lost; nothing was recorded.
    LeaseLost,
}

/// What a storm check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StormCheck {
    Unchanged,
    /// Members joined or resolved: its message update is queued.
    Changed,
    /// Its last member resolved: the storm incident is resolved.
    Resolved,
    /// The storm was already resolved (or is not a storm): the check stops.
    Closed,
    LeaseLost,
}

/// A storm incident as the API and the report show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct StormView {
    pub incident_id: i64,
    pub scope: String,
    pub key: String,
    pub representative_id: i64,
    pub opened_at: Millis,
    pub resolved_at: Option<Millis>,
    /// Live counts; `members` includes those retention has since deleted.
    pub members: i64,
    pub firing: i64,
}

/// Brings an open storm's check forward to `$2` (now) when incident `$1`
/// is one of its members. Optional: the check also runs every
/// `storm.update_every`. For the resolve path, in its transaction.
pub const STORM_MEMBER_RESOLVED: &str = "update work set due_at = $2, updated_at = $2
  where kind = 'storm_check' and state = 'pending' and lease_owner is null and due_at > $2
    and incident_id = (select storm_id from incidents where id = $1)";

/// Re-arms a storm check for its lease holder: `$1` id, `$2` owner, `$3`
/// next due time, `$4` now.
const REARM: &str = "update work set due_at = $3, lease_owner = null, lease_until = null,
        attempts = 0, last_error = null, updated_at = $4
  where id = $1 and lease_owner = $2 and state = 'pending'";

/// Resolves storm incident `storm`, whose last member resolved, with the
/// effects a resolved alert has on an incident (`intake::close_incident`).
async fn resolve_storm(
    conn: &mut Conn<'_>,
    storm: i64,
    members: i64,
    now: Millis,
) -> Result<(), sqlx::Error> {
    let now_text = format_millis(now);
    conn.execute(
        "update incidents
            set status = 'resolved', resolved_at = $2, last_seen_at = $2,
                ends_at = coalesce((select max(m.ends_at) from incidents m
                                     where m.storm_id = $1), $3)
          where id = $1 and status = 'firing'",
        &[storm.into(), now.into(), now_text.as_str().into()],
    )
    .await?;
    conn.execute(
        "update storms set resolved_at = $2, members = $3, firing = 0 where incident_id = $1",
        &[storm.into(), now.into(), members.into()],
    )
    .await?;
    close_incident(
        conn,
        storm,
        now,
        "resolved",
        serde_json::json!({ "reason": "every member of the storm resolved", "members": members }),
    )
    .await
}

impl Store {
    /// Decides, in one transaction, whether `incident` joins a storm: when
    /// at least `threshold` incidents of its group (then of its alertname)
    /// opened in the window before it, it joins the open storm of that key
    /// or opens one with itself as representative. A member's diagnose
    /// work is finished in the same transaction, fenced by its lease.
    pub async fn admit_to_storm(
        &self,
        work: &ClaimedWork,
        incident: &IncidentRecord,
        rules: StormRules,
        now: Millis,
    ) -> Result<Admission, StoreError> {
        if rules.threshold <= 0 {
            return Ok(Admission::Alone);
        }
        // A lost race to open a storm rolls back and tries again: the
        // winner's storm is then visible and joined.
        for _ in 0..3 {
            if let Some(admission) = self.try_admit(work, incident, rules, now).await? {
                return Ok(admission);
            }
        }
        Err(StoreError::Corrupt(format!(
            "incident {}: could not open or join its storm",
            incident.id
        )))
    }

    async fn try_admit(
        &self,
        work: &ClaimedWork,
        incident: &IncidentRecord,
        rules: StormRules,
        now: Millis,
    ) -> Result<Option<Admission>, StoreError> {
        let id = incident.id;
        let since = incident.opened_at.saturating_sub(rules.window_ms);
        let (statements, postgres) = match self {
            Self::Sqlite(..) => (&*SQLITE_SWEPT, false),
            Self::Postgres(_) => (&*POSTGRES_SWEPT, true),
        };
        Ok(transaction!(self, |conn| {
            // Whether it is a storm itself, and whether another admission
            // of its own claim swept it already: in a storm, its diagnose
            // work finished (no longer pending under this claim's token).
            let (is_storm, swept_into, held): (i64, Option<i64>, i64) = sqlx::query_as(
                "select (select count(*) from storms where incident_id = $1),
                        (select storm_id from incidents where id = $1),
                        (select count(*) from work
                          where id = $2 and lease_owner = $3 and state = 'pending')",
            )
            .bind(id)
            .bind(work.id)
            .bind(&work.owner)
            .fetch_one(&mut *conn)
            .await?;
            if is_storm > 0 {
                return Ok(Some(Admission::Alone));
            }
            if let (Some(storm), 0) = (swept_into, held) {
                return Ok(Some(Admission::Swept {
                    storm: IncidentId(storm),
                }));
            }
            let mut joined = None;
            for (scope, key) in [
                (StormScope::Group, incident.group_key.as_str()),
                (StormScope::Alertname, incident.alertname.as_str()),
            ] {
                if key.is_empty() {
                    continue;
                }
                let before: i64 = sqlx::query_scalar(scope.count_sql())
                    .bind(key)
                    .bind(id)
                    .bind(since)
                    .bind(rules.threshold)
                    .fetch_one(&mut *conn)
                    .await?;
                if before >= rules.threshold {
                    joined = Some((scope, key));
                    break;
                }
            }
            let Some((scope, key)) = joined else {
                return Ok(Some(Admission::Alone));
            };
            let done = finish_before_incident!(self, conn, work, id, now);
            if done != 1 {
                // On PostgreSQL a sibling's sweep may have committed while
                // this one waited for the incident's lock.
                let storm: Option<i64> =
                    sqlx::query_scalar("select storm_id from incidents where id = $1")
                        .bind(id)
                        .fetch_optional(&mut *conn)
                        .await?
                        .flatten();
                return Ok(Some(storm.map_or(Admission::LeaseLost, |storm| {
                    Admission::Swept {
                        storm: IncidentId(storm),
                    }
                })));
            }
            let open: Option<i64> = sqlx::query_scalar(
                "select incident_id from storms
                  where scope = $1 and key = $2 and resolved_at is null",
            )
            .bind(scope.as_str())
            .bind(key)
            .fetch_optional(&mut *conn)
            .await?;
            let (storm, opened) = if let Some(storm) = open {
                (storm, false)
            } else {
                // The storm incident: a copy of its representative under a
                // fingerprint of its own that no alert can carry.
                let storm: i64 = sqlx::query_scalar(
                    "insert into incidents (fingerprint, starts_at, starts_ms, alertname, severity,
                         status, labels, annotations, generator_url, receiver, group_key, opened_at,
                         last_seen_at, seen_count)
                     select 'storm:' || $2 || ':' || $1, starts_at, starts_ms, alertname, severity,
                            'firing',
                            labels, annotations, generator_url, receiver, group_key, opened_at,
                            $3, 1
                       from incidents where id = $1
                     returning id",
                )
                .bind(id)
                .bind(scope.as_str())
                .bind(now)
                .fetch_one(&mut *conn)
                .await?;
                let claimed = sqlx::query(
                    "insert into storms (incident_id, scope, key, representative_id, opened_at)
                     values ($1, $2, $3, $4, $5) on conflict do nothing",
                )
                .bind(storm)
                .bind(scope.as_str())
                .bind(key)
                .bind(id)
                .bind(now)
                .execute(&mut *conn)
                .await?
                .rows_affected();
                if claimed != 1 {
                    // Another worker opened this storm first.
                    return Ok(None);
                }
                record_event!(
                    conn,
                    storm,
                    now,
                    "storm_opened",
                    serde_json::json!({
                        "scope": scope.as_str(),
                        "key": key,
                        "representative": id,
                        "threshold": rules.threshold,
                        "window_ms": rules.window_ms,
                    }),
                );
                // Its diagnosis goes ahead of the members still queued
                // (claims are in due order), and its check starts.
                sqlx::query(
                    "insert into work (kind, incident_id, due_at, created_at, updated_at)
                     values ('diagnose', $1, $2, $3, $3), ('storm_check', $1, $4, $3, $3)",
                )
                .bind(storm)
                .bind(incident.opened_at.saturating_sub(1).min(now))
                .bind(now)
                .bind(now.saturating_add(rules.update_every_ms))
                .execute(&mut *conn)
                .await?;
                (storm, true)
            };
            sqlx::query("update incidents set storm_id = $2 where id = $1")
                .bind(id)
                .bind(storm)
                .execute(&mut *conn)
                .await?;
            record_event!(
                conn,
                id,
                now,
                "storm_joined",
                serde_json::json!({ "storm": storm, "scope": scope.as_str(), "opened": opened }),
            );
            let swept: Vec<i64> = sqlx::query_scalar(scope.sweep_sql(postgres))
                .bind(storm)
                .bind(key)
                .bind(id)
                .bind(incident.opened_at)
                .bind(SWEEP_BATCH)
                .bind(rules.threshold)
                .bind(rules.window_ms)
                .bind(&work.owner)
                .fetch_all(&mut *conn)
                .await?;
            if !swept.is_empty() {
                let ids = id_list(&swept);
                let detail = serde_json::json!({
                    "storm": storm, "scope": scope.as_str(), "opened": false, "with": id,
                });
                sqlx::query(statements.events.as_str())
                    .bind(&ids)
                    .bind(now)
                    .bind(Json(detail))
                    .bind(&work.owner)
                    .execute(&mut *conn)
                    .await?;
                sqlx::query(statements.work.as_str())
                    .bind(&ids)
                    .bind(now)
                    .bind(&work.owner)
                    .execute(&mut *conn)
                    .await?;
            }
            Some(Admission::Member {
                storm: IncidentId(storm),
                opened,
                swept: swept.len() as u64,
            })
        }))
    }

    /// Recounts the storm `storm`'s members, in one transaction fenced by
    /// `work`'s lease: queues its message update when they changed,
    /// resolves it when none fires any more (as a resolved alert resolves
    /// an incident: pending work cancelled, requests expired, timers
    /// cancelled, the message updated), and re-arms the check for
    /// `next_due` while it fires.
    pub async fn check_storm(
        &self,
        work: &ClaimedWork,
        storm: IncidentId,
        now: Millis,
        next_due: Millis,
    ) -> Result<StormCheck, StoreError> {
        self.in_transaction(async |conn| {
            let row: Option<(Option<Millis>, i64, i64, String)> = conn
                .fetch_optional(
                    "select s.resolved_at, s.members, s.firing, i.status
                       from storms s join incidents i on i.id = s.incident_id
                      where s.incident_id = $1",
                    &[storm.0.into()],
                )
                .await?;
            let (members, firing): (i64, i64) = conn
                .fetch_one(
                    "select count(*) + (select expired_members from storms where incident_id = $1),
                            count(case when status = 'firing' then 1 end)
                       from incidents where storm_id = $1",
                    &[storm.0.into()],
                )
                .await?;
            let outcome = match row {
                Some((None, seen_members, seen_firing, status))
                    if status == IncidentStatus::Firing.as_str() =>
                {
                    if members > 0 && firing == 0 {
                        StormCheck::Resolved
                    } else if (members, firing) != (seen_members, seen_firing) {
                        StormCheck::Changed
                    } else {
                        StormCheck::Unchanged
                    }
                }
                _ => StormCheck::Closed,
            };
            // The lease first: the check's own row is finished (or
            // re-armed) before a resolve cancels the storm's pending work.
            let fenced = if matches!(outcome, StormCheck::Resolved | StormCheck::Closed) {
                conn.execute(
                    MARK_DONE,
                    &[work.id.into(), work.owner.as_str().into(), now.into()],
                )
                .await?
            } else {
                conn.execute(
                    REARM,
                    &[
                        work.id.into(),
                        work.owner.as_str().into(),
                        next_due.into(),
                        now.into(),
                    ],
                )
                .await?
            };
            if fenced != 1 {
                return Ok(StormCheck::LeaseLost);
            }
            match outcome {
                StormCheck::Resolved => resolve_storm(conn, storm.0, members, now).await?,
                StormCheck::Changed => {
                    conn.execute(
                        "update storms set members = $2, firing = $3 where incident_id = $1",
                        &[storm.0.into(), members.into(), firing.into()],
                    )
                    .await?;
                    conn.enqueue_notify(storm.0, now, now).await?;
                }
                _ => {}
            }
            Ok(outcome)
        })
        .await
    }

    /// The storm incident `storm` when its diagnosis is due to be re-run:
    /// it fires, has a report, and its last diagnosis ran before `before`.
    pub async fn storm_due_for_diagnosis(
        &self,
        storm: IncidentId,
        before: Millis,
    ) -> Result<Option<IncidentRecord>, StoreError> {
        let due: Option<i64> = on_pool!(self, |pool| {
            sqlx::query_scalar(
                "select s.incident_id from storms s join incidents i on i.id = s.incident_id
                  where s.incident_id = $1 and s.resolved_at is null and i.status = 'firing'
                    and i.report is not null and coalesce(s.rediagnosed_at, s.opened_at) < $2",
            )
            .bind(storm.0)
            .bind(before)
            .fetch_optional(pool)
            .await?
        });
        match due {
            Some(_) => self.get_incident(storm).await,
            None => Ok(None),
        }
    }

    /// Replaces a storm's report with a fresh diagnosis (whose actions the
    /// caller kept from the report the approvals were bound to) and queues
    /// its message update, while `work`'s lease holds.
    pub async fn store_storm_rediagnosis(
        &self,
        work: &ClaimedWork,
        storm: IncidentId,
        report: &serde_json::Value,
        summary: &str,
        now: Millis,
    ) -> Result<bool, StoreError> {
        Ok(transaction!(self, |conn| {
            let held: i64 = sqlx::query_scalar(
                "select count(*) from work where id = $1 and lease_owner = $2 and state = 'pending'",
            )
            .bind(work.id)
            .bind(&work.owner)
            .fetch_one(&mut *conn)
            .await?;
            if held != 1 {
                return Ok(false);
            }
            let updated =
                sqlx::query("update incidents set report = $2 where id = $1 and status = 'firing'")
                    .bind(storm.0)
                    .bind(Json(report))
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
            sqlx::query("update storms set rediagnosed_at = $2 where incident_id = $1")
                .bind(storm.0)
                .bind(now)
                .execute(&mut *conn)
                .await?;
            if updated == 1 {
                record_event!(
                    conn,
                    storm.0,
                    now,
                    "storm_rediagnosed",
                    serde_json::json!({ "summary": summary }),
                );
                super::enqueue_notify!(conn, storm.0, now, now);
            }
            true
        }))
    }

    /// Moves a storm's first message ahead of its members' queued
    /// diagnose work (claims go in due order): its pending, unclaimed
    /// `notify` due by `now` becomes due at `ahead`.
    pub async fn hasten_storm_message(
        &self,
        storm: IncidentId,
        ahead: Millis,
        now: Millis,
    ) -> Result<(), StoreError> {
        transaction!(self, |conn| {
            sqlx::query(
                "update work set due_at = $2
                  where incident_id = $1 and kind = 'notify' and state = 'pending'
                    and lease_owner is null and due_at <= $3 and due_at > $2
                    and exists (select 1 from storms where incident_id = $1)",
            )
            .bind(storm.0)
            .bind(ahead)
            .bind(now)
            .execute(&mut *conn)
            .await?;
        });
        Ok(())
    }

    /// The storm an incident stands for, with live member counts; `None`
    /// for an incident that is not a storm.
    pub async fn storm(&self, id: IncidentId) -> Result<Option<StormView>, StoreError> {
        Ok(on_pool!(self, |pool| {
            sqlx::query_as(
                "select s.incident_id, s.scope, s.key, s.representative_id, s.opened_at,
                        s.resolved_at,
                        (select count(*) from incidents m where m.storm_id = s.incident_id)
                            + s.expired_members as members,
                        (select count(*) from incidents m
                          where m.storm_id = s.incident_id and m.status = 'firing') as firing
                   from storms s where s.incident_id = $1",
            )
            .bind(id.0)
            .fetch_optional(pool)
            .await?
        }))
    }

    /// How many members storm `id` has now, and how many of them carry
    /// each label value (name, value, members), counted by the store: a
    /// storm of thousands is summed where it lies instead of every
    /// member's labels being loaded and parsed for each message update.
    pub async fn storm_label_counts(
        &self,
        id: IncidentId,
    ) -> Result<(i64, Vec<(String, String, i64)>), StoreError> {
        // One statement, so the count and the tallies are of one snapshot.
        let counts_sql = match self {
            Self::Sqlite(..) => {
                "select l.key, l.value, count(*),
                        (select count(*) from incidents m where m.storm_id = $1)
                   from incidents i, json_each(i.labels) l
                  where i.storm_id = $1 group by l.key, l.value"
            }
            Self::Postgres(_) => {
                "select l.key, l.value, count(*),
                        (select count(*) from incidents m where m.storm_id = $1)
                   from incidents i, jsonb_each_text(i.labels) l
                  where i.storm_id = $1 group by l.key, l.value"
            }
        };
        let rows: Vec<(String, String, i64, i64)> = on_pool!(self, |pool| {
            sqlx::query_as(counts_sql)
                .bind(id.0)
                .fetch_all(pool)
                .await?
        });
        let members = rows.first().map_or(0, |row| row.3);
        Ok((
            members,
            rows.into_iter()
                .map(|(name, value, n, _)| (name, value, n))
                .collect(),
        ))
    }
}
