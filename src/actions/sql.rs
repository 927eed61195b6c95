//! `sql` actions: a writing statement on a named target with its values
//! bound as `$1`, `$2`… and a `statement_timeout`. Right before it runs,
//! the precondition (the same backend: pid, `backend_start`, state) is
//! checked again. A statement that cancels or terminates a backend runs as
//! one statement of remedy's own that re-checks the pid, the
//! `backend_start` its precondition pins and the protection rules together
//! (a superuser, a replication role, a configured role, or one of remedy's
//! own sessions, known by the backends its pools hold, never by
//! `application_name`), so nothing can change between check and act.

use sqlx::{Arguments, AssertSqlSafe};

use super::Outcome;
use crate::config::ExecutorSettings;
use crate::diagnose::Diagnoser;
use crate::playbook::ActionInstance;

/// Why a backend is protected; over `a` (`pg_stat_activity`) and `r`
/// (`pg_roles`). `$3` configured roles, `$4`/`$5` remedy's own sessions.
fn protected() -> String {
    format!(
        "coalesce(r.rolsuper, false) or coalesce(r.rolreplication, false)
         or a.backend_type <> 'client backend'
         or a.pid = pg_catalog.pg_backend_pid() or a.usename = any($3::text[])
         or {}",
        crate::diagnose::own::is_own(4)
    )
}

/// Cancels or terminates (`function`) the backend `$1` only if it still
/// started at `$2` and is not protected: one statement, no gap between
/// the check and the act. No row: gone, recycled or protected.
fn signal(function: &str) -> String {
    format!(
        "select pg_catalog.{function}(a.pid) as {function}
           from pg_catalog.pg_stat_activity a
           left join pg_catalog.pg_roles r on r.rolname = a.usename
          where a.pid = $1::int and a.backend_start = $2::timestamptz
            and not ({})",
        protected()
    )
}

/// After [`signal`] returned no row: was the backend there but protected?
fn explain() -> String {
    format!(
        "select {}
           from pg_catalog.pg_stat_activity a
           left join pg_catalog.pg_roles r on r.rolname = a.usename
          where a.pid = $1::int and a.backend_start = $2::timestamptz",
        protected()
    )
}

fn args(params: &[String]) -> Result<sqlx::postgres::PgArguments, String> {
    let mut args = sqlx::postgres::PgArguments::default();
    for p in params {
        args.add(p.as_str()).map_err(|e| e.to_string())?;
    }
    Ok(args)
}

pub async fn run(
    diagnoser: &Diagnoser,
    settings: &ExecutorSettings,
    action: &ActionInstance,
) -> Outcome {
    match run_inner(diagnoser, settings, action).await {
        Ok(outcome) => outcome,
        Err(e) => Outcome::new("failed", e),
    }
}

async fn run_inner(
    diagnoser: &Diagnoser,
    settings: &ExecutorSettings,
    action: &ActionInstance,
) -> Result<Outcome, String> {
    let Some(statement) = action.statement.as_deref() else {
        return Ok(Outcome::new("refused", "sql action without a statement"));
    };
    let target = action.target.as_deref().unwrap_or("main");
    let Some(pool) = diagnoser.target(target) else {
        return Ok(Outcome::new(
            "refused",
            format!("unknown target `{target}`"),
        ));
    };
    let mut conn = pool.acquire().await.map_err(|e| e.to_string())?;
    // Session settings below must not reach the diagnosis: this connection
    // is closed, not returned to the pool, whatever happens.
    conn.close_on_drop();
    let timeout_ms = settings.statement_timeout.as_millis().max(1);
    sqlx::raw_sql(AssertSqlSafe(format!(
        "set statement_timeout = {timeout_ms}"
    )))
    .execute(&mut *conn)
    .await
    .map_err(|e| e.to_string())?;

    if let Some(pre) = &action.precondition {
        let holds = sqlx::query_with(AssertSqlSafe(pre.query.clone()), args(&pre.params)?)
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| format!("precondition: {e}"))?
            .is_some();
        if !holds {
            return Ok(Outcome::new(
                "precondition_failed",
                "the precondition no longer holds (the session ended, changed state, or its pid now belongs to another backend); nothing was run",
            ));
        }
    }
    let lowered = statement.to_ascii_lowercase();
    if lowered.contains("pg_terminate_backend")
        || lowered.contains("pg_cancel_backend")
        || lowered.contains("u&")
    {
        // Only the one form whose target the protection check can see.
        let normalized: String = lowered.split_whitespace().collect::<Vec<_>>().join(" ");
        let allowed = [
            "select pg_terminate_backend($1::int)",
            "select pg_cancel_backend($1::int)",
        ];
        if !allowed.contains(&normalized.trim_end_matches(';')) {
            return Ok(Outcome::new(
                "refused",
                "a statement that cancels or terminates backends must be exactly `select pg_terminate_backend($1::int)` or `select pg_cancel_backend($1::int)`",
            ));
        }
        let function = if normalized.contains("pg_terminate_backend") {
            "pg_terminate_backend"
        } else {
            "pg_cancel_backend"
        };
        let pid = action.params.first().cloned().unwrap_or_default();
        let Some(backend_start) = action.precondition.as_ref().and_then(|pre| {
            crate::playbook::pinned_backend_start(&pre.query)
                .and_then(|n| pre.params.get(n - 1).cloned())
        }) else {
            return Ok(Outcome::new(
                "refused",
                "a statement that cancels or terminates a backend needs a precondition that pins its `backend_start = $N::timestamptz`",
            ));
        };
        let (own_pids, own_micros) = diagnoser
            .own_sessions(target)
            .map(crate::diagnose::own::OwnSessions::snapshot)
            .unwrap_or_default();
        let done: Option<String> = sqlx::query_scalar(AssertSqlSafe(format!(
            "select row_to_json(q)::text from ({}) as q",
            signal(function)
        )))
        .bind(&pid)
        .bind(&backend_start)
        .bind(&settings.protected_roles)
        .bind(&own_pids)
        .bind(&own_micros)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| e.to_string())?;
        let _ = sqlx::raw_sql("reset statement_timeout")
            .execute(&mut *conn)
            .await;
        return Ok(match done {
            Some(output) if output.contains(":false") => Outcome::new("failed", output),
            Some(output) => Outcome::new("done", output),
            None => {
                let protected: Option<bool> = sqlx::query_scalar(AssertSqlSafe(explain()))
                    .bind(&pid)
                    .bind(&backend_start)
                    .bind(&settings.protected_roles)
                    .bind(&own_pids)
                    .bind(&own_micros)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(|e| format!("protection check: {e}"))?;
                if protected == Some(true) {
                    Outcome::new(
                        "refused",
                        format!(
                            "pid {pid} is a protected session (superuser, replication, configured role or remedy's own); not touched"
                        ),
                    )
                } else {
                    Outcome::new(
                        "precondition_failed",
                        format!("pid {pid} started at {backend_start} is gone; nothing was run"),
                    )
                }
            }
        });
    }
    let output = if lowered.trim_start().starts_with("select") {
        let wrapped = format!(
            "select row_to_json(q)::text from ({}\n) as q",
            statement.trim().trim_end_matches(';')
        );
        let rows: Vec<String> =
            sqlx::query_scalar_with(AssertSqlSafe(wrapped), args(&action.params)?)
                .fetch_all(&mut *conn)
                .await
                .map_err(|e| e.to_string())?;
        if rows.is_empty() {
            return Ok(Outcome::new("failed", "the statement returned no row"));
        }
        rows.join("\n")
    } else {
        let done = sqlx::query_with(AssertSqlSafe(statement.to_owned()), args(&action.params)?)
            .execute(&mut *conn)
            .await
            .map_err(|e| e.to_string())?;
        format!("{} row(s) affected", done.rows_affected())
    };
    // The connection goes back to the pool with the default timeout.
    let _ = sqlx::raw_sql("reset statement_timeout")
        .execute(&mut *conn)
        .await;
    // A terminate or cancel that returned false did nothing.
    if output.contains(":false") {
        return Ok(Outcome::new("failed", output));
    }
    Ok(Outcome::new("done", output))
}
