//! Executions of approved actions and the append-only audit log. One
//! execution per approval (`unique (approval_id)`): an action runs at most
//! once. A run whose worker vanished is never re-run: it is marked
//! `unknown` and reported.

use serde::Serialize;
use sqlx::types::Json;

use super::{Store, StoreError, enqueue_notify, on_pool, record_event, transaction};
use crate::domain::{IncidentId, Millis};

/// One run of one approved action of one incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecutionRef {
    pub execution: i64,
    pub approval: i64,
    pub incident: IncidentId,
}

/// A budget: at most `max` runs per `window_ms`, over all actions
/// (`action` and `target` both `None`), one action id, or one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    pub scope: &'static str,
    pub action: Option<String>,
    pub target: Option<String>,
    pub max: i64,
    pub window_ms: i64,
}

/// What is about to run, for the budgets and the audit log.
#[derive(Debug, Clone, Copy)]
pub struct NewRun<'a> {
    pub approval: i64,
    pub incident: IncidentId,
    pub action_id: &'a str,
    pub target: &'a str,
    pub detail: &'a serde_json::Value,
}

/// How a claim on an approved action ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BeginExecution {
    /// A budget is spent: try again after `wait_ms`.
    RateLimited { scope: &'static str, wait_ms: i64 },
    /// This worker runs it now (execution id).
    Started(i64),
    /// It ran (or was settled) before.
    Settled,
    /// A run was interrupted (its worker crashed): marked `unknown`, not re-run.
    Interrupted,
    /// Another worker is running it until at most `until`.
    Running { until: Millis },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct ExecutionView {
    pub id: i64,
    pub approval_id: i64,
    pub state: String,
    pub output: Option<String>,
    /// effective / ineffective, once judged.
    pub verification: Option<String>,
    /// Posted in the incident's thread.
    pub reported: bool,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AuditEntry {
    pub id: i64,
    pub at: Millis,
    pub incident_id: i64,
    pub approval_id: Option<i64>,
    pub event: String,
    pub detail: Json<serde_json::Value>,
}

/// Appends to the audit log inside the caller's transaction.
macro_rules! audit {
    ($conn:expr, $incident:expr, $approval:expr, $now:expr, $event:expr, $detail:expr $(,)?) => {
        sqlx::query(
            "insert into audit_log (at, incident_id, approval_id, event, detail)
             values ($1, $2, $3, $4, $5)",
        )
        .bind($now)
        .bind($incident)
        .bind($approval)
        .bind($event)
        .bind(Json($detail))
        .execute(&mut *$conn)
        .await?
    };
}

impl Store {
    /// Approved requests of an incident that have no execution yet, or
    /// whose execution is still marked running: (approval id, seq, digest).
    pub async fn approved_actions(
        &self,
        incident: IncidentId,
    ) -> Result<Vec<(i64, i64, String)>, StoreError> {
        Ok(on_pool!(self, |pool| {
            sqlx::query_as(
                "select a.id, a.seq, a.digest from approvals a
                   left join executions e on e.approval_id = a.id
                  where a.incident_id = $1 and a.state = 'approved'
                    and (e.id is null or e.state = 'running')
                  order by a.seq",
            )
            .bind(incident.0)
            .fetch_all(pool)
            .await?
        }))
    }

    /// Claims an approved action for one run until `until`, within the
    /// budgets (checked and spent in one transaction; on PostgreSQL under a
    /// transaction-level advisory lock, so replicas cannot multiply them).
    /// A run still marked running after its time is settled as `unknown`.
    pub async fn begin_execution(
        &self,
        run: &NewRun<'_>,
        budgets: &[Budget],
        until: Millis,
        now: Millis,
    ) -> Result<BeginExecution, StoreError> {
        let serialize = match self {
            Self::Sqlite(..) => "select 1",
            Self::Postgres(_) => "select pg_advisory_xact_lock(7221001)::text, 1",
        };
        let (approval, incident, detail) = (run.approval, run.incident, run.detail);
        Ok(transaction!(self, |conn| {
            sqlx::query(serialize).execute(&mut *conn).await?;
            let existing: Option<(i64, String, Option<Millis>)> = sqlx::query_as(
                "select id, state, running_until from executions where approval_id = $1",
            )
            .bind(approval)
            .fetch_optional(&mut *conn)
            .await?;
            match existing {
                None => {
                    // Single flight per target: one run at a time on it.
                    let busy: Option<Millis> = sqlx::query_scalar(
                        "select min(running_until) from executions
                          where target = $1 and state = 'running' and running_until > $2",
                    )
                    .bind(run.target)
                    .bind(now)
                    .fetch_one(&mut *conn)
                    .await?;
                    if busy.is_some() {
                        return Ok(BeginExecution::RateLimited {
                            scope: "target busy",
                            wait_ms: 2_000,
                        });
                    }
                    for budget in budgets {
                        let since = now - budget.window_ms;
                        let (used, oldest): (i64, Option<Millis>) = sqlx::query_as(
                            "select count(*), min(started_at) from executions
                              where started_at > $1 and state <> 'dry_run'
                                and ($2 is null or action_id = $2)
                                and ($3 is null or target = $3)",
                        )
                        .bind(since)
                        .bind(budget.action.as_deref())
                        .bind(budget.target.as_deref())
                        .fetch_one(&mut *conn)
                        .await?;
                        if used >= budget.max {
                            let wait_ms =
                                oldest.map_or(budget.window_ms, |o| o + budget.window_ms - now);
                            return Ok(BeginExecution::RateLimited {
                                scope: budget.scope,
                                wait_ms: wait_ms.max(1),
                            });
                        }
                    }
                    let id: i64 = sqlx::query_scalar(
                        "insert into executions (approval_id, incident_id, action_id, target,
                             state, detail, running_until, started_at)
                         values ($1, $2, $3, $4, 'running', $5, $6, $7)
                         returning id",
                    )
                    .bind(approval)
                    .bind(incident.0)
                    .bind(run.action_id)
                    .bind(run.target)
                    .bind(Json(detail))
                    .bind(until)
                    .bind(now)
                    .fetch_one(&mut *conn)
                    .await?;
                    audit!(
                        conn,
                        incident.0,
                        Some(approval),
                        now,
                        "execution_started",
                        detail.clone()
                    );
                    BeginExecution::Started(id)
                }
                Some((id, state, running_until))
                    if state == "running" && running_until.is_some_and(|u| u <= now) =>
                {
                    sqlx::query(
                        "update executions set state = 'unknown', finished_at = $2,
                                output = 'the worker running it stopped before recording an outcome; not re-run'
                          where id = $1",
                    )
                    .bind(id)
                    .bind(now)
                    .execute(&mut *conn)
                    .await?;
                    sqlx::query("update approvals set state = 'executed' where id = $1")
                        .bind(approval)
                        .execute(&mut *conn)
                        .await?;
                    audit!(
                        conn,
                        incident.0,
                        Some(approval),
                        now,
                        "execution_unknown",
                        serde_json::json!({ "execution_id": id })
                    );
                    enqueue_notify!(conn, incident.0, now, now);
                    BeginExecution::Interrupted
                }
                Some((_, state, Some(until))) if state == "running" => {
                    BeginExecution::Running { until }
                }
                Some(_) => BeginExecution::Settled,
            }
        }))
    }

    /// Records how a run ended (`done`, `failed`, `precondition_failed`,
    /// `refused`, `dry_run`), closes its approval and queues the message
    /// update (due at `now`, the worker's clock).
    pub async fn finish_execution(
        &self,
        run: &ExecutionRef,
        state: &str,
        output: &str,
        finished_at: Millis,
        verify_at: Option<Millis>,
        now: Millis,
    ) -> Result<(), StoreError> {
        let &ExecutionRef {
            execution,
            approval,
            incident,
        } = run;
        transaction!(self, |conn| {
            sqlx::query(
                "update executions set state = $2, output = $3, finished_at = $4,
                        running_until = null
                  where id = $1 and state = 'running'",
            )
            .bind(execution)
            .bind(state)
            .bind(output)
            .bind(finished_at)
            .execute(&mut *conn)
            .await?;
            sqlx::query("update approvals set state = 'executed' where id = $1")
                .bind(approval)
                .execute(&mut *conn)
                .await?;
            audit!(
                conn,
                incident.0,
                Some(approval),
                finished_at,
                "execution_finished",
                serde_json::json!({ "execution_id": execution, "outcome": state, "output": output })
            );
            enqueue_notify!(conn, incident.0, now, now);
            if state == "done"
                && let Some(due) = verify_at
            {
                sqlx::query(
                    "insert into work (kind, incident_id, due_at, created_at, updated_at)
                     values ('verify', $1, $2, $3, $3)",
                )
                .bind(incident.0)
                .bind(due)
                .bind(now)
                .execute(&mut *conn)
                .await?;
            }
        });
        Ok(())
    }

    /// Done executions of an incident not yet judged: (id, approval id).
    pub async fn unverified(
        &self,
        incident: IncidentId,
    ) -> Result<Vec<(i64, i64, Option<String>)>, StoreError> {
        Ok(on_pool!(self, |pool| {
            sqlx::query_as(
                "select id, approval_id, output from executions
                  where incident_id = $1 and state = 'done' and verification is null order by id",
            )
            .bind(incident.0)
            .fetch_all(pool)
            .await?
        }))
    }

    /// Records whether an execution had its effect, with the evidence.
    pub async fn record_verification(
        &self,
        run: &ExecutionRef,
        verdict: &str,
        evidence: &str,
        now: Millis,
    ) -> Result<(), StoreError> {
        transaction!(self, |conn| {
            let first = sqlx::query(
                "update executions set verification = $2, reported_at = null
                  where id = $1 and verification is null",
            )
            .bind(run.execution)
            .bind(verdict)
            .execute(&mut *conn)
            .await?
            .rows_affected()
                == 1;
            if !first {
                return Ok(());
            }
            audit!(
                conn,
                run.incident.0,
                Some(run.approval),
                now,
                "verified",
                serde_json::json!({ "execution_id": run.execution, "verdict": verdict, "evidence": evidence })
            );
            record_event!(
                conn,
                run.incident.0,
                now,
                "action_verified",
                serde_json::json!({ "approval_id": run.approval, "verdict": verdict, "evidence": evidence })
            );
            enqueue_notify!(conn, run.incident.0, now, now);
        });
        Ok(())
    }

    /// Executions of an incident, for its message and the API.
    pub async fn executions(&self, incident: IncidentId) -> Result<Vec<ExecutionView>, StoreError> {
        Ok(on_pool!(self, |pool| {
            sqlx::query_as(
                "select id, approval_id, state, output, verification, reported_at is not null as reported
                   from executions where incident_id = $1 order by id",
            )
            .bind(incident.0)
            .fetch_all(pool)
            .await?
        }))
    }

    /// Records a rate-limit denial in the audit log.
    pub async fn audit_rate_limited(
        &self,
        run: &NewRun<'_>,
        scope: &str,
        wait_ms: i64,
        now: Millis,
    ) -> Result<(), StoreError> {
        transaction!(self, |conn| {
            audit!(
                conn,
                run.incident.0,
                Some(run.approval),
                now,
                "rate_limited",
                serde_json::json!({ "scope": scope, "wait_ms": wait_ms, "action": run.action_id, "target": run.target })
            );
        });
        Ok(())
    }

    /// Why an action is suspended, if it is.
    pub async fn suspension(&self, action_id: &str) -> Result<Option<String>, StoreError> {
        Ok(on_pool!(self, |pool| {
            sqlx::query_scalar("select reason from action_suspensions where action_id = $1")
                .bind(action_id)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// Suspends `action_id` when it failed `max` times within `window_ms`;
    /// returns the reason when this call suspended it.
    pub async fn suspend_if_failing(
        &self,
        action_id: &str,
        incident: IncidentId,
        max: i64,
        window_ms: i64,
        now: Millis,
    ) -> Result<Option<String>, StoreError> {
        Ok(transaction!(self, |conn| {
            let failures: i64 = sqlx::query_scalar(
                "select count(*) from executions
                  where action_id = $1 and started_at > $2
                    and (state in ('failed', 'unknown') or verification = 'ineffective')",
            )
            .bind(action_id)
            .bind(now - window_ms)
            .fetch_one(&mut *conn)
            .await?;
            if failures < max {
                return Ok(None);
            }
            let reason = format!(
                "{failures} failed runs within {}; re-enable with `remedy actions enable {action_id}`",
                humantime::format_duration(std::time::Duration::from_millis(
                    u64::try_from(window_ms).unwrap_or(0)
                ))
            );
            let inserted = sqlx::query(
                "insert into action_suspensions (action_id, suspended_at, reason)
                 values ($1, $2, $3) on conflict (action_id) do nothing",
            )
            .bind(action_id)
            .bind(now)
            .bind(&reason)
            .execute(&mut *conn)
            .await?
            .rows_affected()
                == 1;
            if inserted {
                audit!(
                    conn,
                    incident.0,
                    None::<i64>,
                    now,
                    "action_suspended",
                    serde_json::json!({ "action": action_id, "reason": reason })
                );
            }
            inserted.then_some(reason)
        }))
    }

    /// Lifts a suspension; false when the action was not suspended.
    pub async fn enable_action(&self, action_id: &str, now: Millis) -> Result<bool, StoreError> {
        Ok(transaction!(self, |conn| {
            let removed = sqlx::query("delete from action_suspensions where action_id = $1")
                .bind(action_id)
                .execute(&mut *conn)
                .await?
                .rows_affected()
                == 1;
            if removed {
                audit!(
                    conn,
                    0_i64,
                    None::<i64>,
                    now,
                    "action_enabled",
                    serde_json::json!({ "action": action_id })
                );
            }
            removed
        }))
    }

    /// Suspended actions and why.
    pub async fn suspensions(&self) -> Result<Vec<(String, Millis, String)>, StoreError> {
        Ok(on_pool!(self, |pool| {
            sqlx::query_as(
                "select action_id, suspended_at, reason from action_suspensions order by action_id",
            )
            .fetch_all(pool)
            .await?
        }))
    }

    /// Marks an execution's outcome as posted in the thread, as it was
    /// posted: with `verification` (none yet, or the verdict). A verdict
    /// recorded while the post was on its way (a paced post can take a
    /// while) leaves the execution unreported, so the verdict is posted too.
    pub async fn execution_reported(
        &self,
        execution: i64,
        verification: Option<&str>,
        now: Millis,
    ) -> Result<(), StoreError> {
        transaction!(self, |conn| {
            sqlx::query(
                "update executions set reported_at = $2
                  where id = $1 and coalesce(verification, '') = coalesce($3, '')",
            )
            .bind(execution)
            .bind(now)
            .bind(verification)
            .execute(&mut *conn)
            .await?;
        });
        Ok(())
    }

    /// The audit log, newest first; one incident's when given.
    pub async fn audit_log(
        &self,
        incident: Option<IncidentId>,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        Ok(on_pool!(self, |pool| {
            sqlx::query_as(
                "select id, at, incident_id, approval_id, event, detail from audit_log
                  where ($1 is null or incident_id = $1) order by id desc limit $2",
            )
            .bind(incident.map(|i| i.0))
            .bind(limit)
            .fetch_all(pool)
            .await?
        }))
    }
}

pub(super) use audit;
