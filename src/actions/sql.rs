//! `sql` actions: a writing statement on a named target with its values
//! bound as `$1`, `$2`… and a `statement_timeout`. Right before it runs,
//! the precondition (the same backend: pid, `backend_start`, state) is
//! checked again, and a statement that cancels or terminates a backend is
//! refused when that backend is protected: a superuser, a replication role,
//! a configured role, or remedy itself.

use sqlx::{Arguments, AssertSqlSafe};

use super::Outcome;
use crate::config::ExecutorSettings;
use crate::diagnose::Diagnoser;
use crate::playbook::ActionInstance;

/// Sessions never to cancel or terminate. `$1` pid, `$2` configured roles.
const PROTECTED: &str = "select coalesce(r.rolsuper, false) or coalesce(r.rolreplication, false)
        or a.backend_type <> 'client backend' or a.application_name = 'remedy'
        or a.pid = pg_catalog.pg_backend_pid() or a.usename = any($2::text[])
   from pg_catalog.pg_stat_activity a left join pg_catalog.pg_roles r on r.rolname = a.usename
  where a.pid = $1::int";

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
        let pid = action.params.first().cloned().unwrap_or_default();
        let protected: Option<bool> = sqlx::query_scalar(PROTECTED)
            .bind(&pid)
            .bind(&settings.protected_roles)
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| format!("protection check: {e}"))?;
        match protected {
            Some(true) => {
                return Ok(Outcome::new(
                    "refused",
                    format!(
                        "pid {pid} is a protected session (superuser, replication, configured role or remedy itself); not touched"
                    ),
                ));
            }
            None => {
                return Ok(Outcome::new(
                    "precondition_failed",
                    format!("pid {pid} is gone; nothing was run"),
                ));
            }
            Some(false) => {}
        }
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
