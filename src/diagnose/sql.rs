//! `sql` steps: a playbook's query on a named PostgreSQL target, inside a
//! READ ONLY transaction with `statement_timeout`, values from the alert
//! bound as `$1`, `$2`… text parameters. Rows come back as JSON objects
//! (`row_to_json`), so every PostgreSQL type reads naturally in templates.
//! The transaction's `remedy.own_pids` setting lists the pids of remedy's
//! own live sessions on the target (see [`super::own`]), so playbooks can
//! leave them out: `a.pid <> all(current_setting('remedy.own_pids')::int[])`.

use std::time::{Duration, Instant};

use sqlx::postgres::PgPool;
use sqlx::{Arguments, AssertSqlSafe};

use super::{StepError, StepOutput};

/// Runs `query` (written by the playbook's author, never built from alert
/// data) with `params` bound, keeping at most `max_rows` rows.
pub async fn query(
    pool: &PgPool,
    own: &super::own::OwnSessions,
    query: &str,
    params: &[String],
    timeout: Duration,
    max_rows: usize,
) -> Result<StepOutput, StepError> {
    let started = Instant::now();
    let run = async {
        let mut tx = pool.begin().await.map_err(failed)?;
        let timeout_ms = timeout.as_millis().max(1);
        sqlx::raw_sql(AssertSqlSafe(format!(
            "set transaction read only; set local statement_timeout = {timeout_ms}"
        )))
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
        let (pids, micros) = own.snapshot();
        sqlx::query(AssertSqlSafe(format!(
            "select pg_catalog.set_config('remedy.own_pids', coalesce(
                 (select array_agg(a.pid order by a.pid) from pg_catalog.pg_stat_activity a
                   where {}), '{{}}')::text, true)",
            super::own::is_own(1)
        )))
        .bind(pids)
        .bind(micros)
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
        // The author's query is wrapped, not edited: one JSON text per row,
        // one row more than the cap to know whether rows were dropped.
        let limit_param = params.len() + 1;
        let wrapped = format!(
            "select row_to_json(q)::text from ({}\n) as q limit ${limit_param}",
            query.trim().trim_end_matches(';')
        );
        let mut args = sqlx::postgres::PgArguments::default();
        for p in params {
            args.add(p.as_str())
                .map_err(|e| StepError::Failed(e.to_string()))?;
        }
        args.add(
            i64::try_from(max_rows)
                .unwrap_or(i64::MAX)
                .saturating_add(1),
        )
        .map_err(|e| StepError::Failed(e.to_string()))?;
        let rows: Vec<String> = sqlx::query_scalar_with(AssertSqlSafe(wrapped), args)
            .fetch_all(&mut *tx)
            .await
            .map_err(failed)?;
        tx.rollback().await.map_err(failed)?;
        Ok::<_, StepError>(rows)
    };
    let rows = tokio::time::timeout(timeout + Duration::from_millis(500), run)
        .await
        .map_err(|_| StepError::Timeout(timeout))??;
    let truncated = rows.len().saturating_sub(max_rows);
    let rows = rows
        .into_iter()
        .take(max_rows)
        .map(|text| match serde_json::from_str(&text) {
            Ok(serde_json::Value::Object(map)) => Ok(map),
            _ => Err(StepError::Failed("row is not a JSON object".into())),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(StepOutput {
        ok: true,
        error: None,
        value: None,
        truncated: u64::try_from(truncated).unwrap_or(u64::MAX),
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        rows,
    })
}

fn failed(e: sqlx::Error) -> StepError {
    match e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("57014") => {
            StepError::Failed(format!("cancelled by statement_timeout: {}", db.message()))
        }
        sqlx::Error::Database(db) => StepError::Failed(format!(
            "{} ({})",
            db.message(),
            db.code().unwrap_or_default()
        )),
        other => StepError::Failed(other.to_string()),
    }
}
