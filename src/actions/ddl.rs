//! Two schema changes the runbook asks for, as actions whose statement the
//! executor builds itself: values from the diagnosis (a role, a table, its
//! columns) reach PostgreSQL only as bound parameters, and the statement is
//! written by the server with `format('%I', …)` / `%L`, never spliced here.
//!
//! * `role_setting`: `ALTER ROLE … SET idle_in_transaction_session_timeout`
//!   (or another of [`ROLE_SETTINGS`]) = value, or `RESET` for an empty
//!   value. The role's previous value is read first and reported, so a
//!   revert action can put it back. Superusers, replication roles and
//!   `executor.protected_roles` are refused.
//! * `create_index`: `CREATE INDEX CONCURRENTLY` on the filtered columns of
//!   a table, outside any transaction, without `statement_timeout` (the
//!   build takes as long as the table needs; its progress is in
//!   `pg_stat_progress_create_index`) but with `lock_timeout`, checked valid
//!   in `pg_index.indisvalid` afterwards; an invalid leftover of a failed
//!   build is dropped (`DROP INDEX CONCURRENTLY`).

use sqlx::{AssertSqlSafe, Row};

use super::Outcome;
use crate::config::ExecutorSettings;
use crate::diagnose::Diagnoser;
use crate::playbook::ActionInstance;

/// The settings a `role_setting` action may change: the runbook's two
/// timeouts and their two neighbours.
pub const ROLE_SETTINGS: &[&str] = &[
    "idle_in_transaction_session_timeout",
    "statement_timeout",
    "lock_timeout",
    "idle_session_timeout",
];

/// `lock_timeout` of an index build unless the action sets one.
const DEFAULT_LOCK_TIMEOUT_MS: u64 = 5_000;
/// `lock_timeout` of dropping an invalid leftover, at least.
const DROP_LOCK_TIMEOUT_MS: u64 = 30_000;

fn failed(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => {
            format!("{} ({})", db.message(), db.code().unwrap_or_default())
        }
        other => other.to_string(),
    }
}

async fn connection(
    diagnoser: &Diagnoser,
    action: &ActionInstance,
) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>, Outcome> {
    let target = action.target.as_deref().unwrap_or("main");
    let Some(pool) = diagnoser.target(target) else {
        return Err(Outcome::new(
            "refused",
            format!("unknown target `{target}`"),
        ));
    };
    let mut conn = pool
        .acquire()
        .await
        .map_err(|e| Outcome::new("failed", failed(&e)))?;
    // The session settings below never reach another user of the pool.
    conn.close_on_drop();
    Ok(conn)
}

/// Whether the action's precondition (if any) still returns a row.
async fn precondition_holds(
    conn: &mut sqlx::PgConnection,
    action: &ActionInstance,
) -> Result<bool, String> {
    let Some(pre) = &action.precondition else {
        return Ok(true);
    };
    let mut query = sqlx::query(AssertSqlSafe(pre.query.clone()));
    for p in &pre.params {
        query = query.bind(p);
    }
    query
        .fetch_optional(conn)
        .await
        .map(|row| row.is_some())
        .map_err(|e| format!("precondition: {}", failed(&e)))
}

const PRECONDITION_FAILED: &str = "the precondition no longer holds (the setting is not the one this action expects); nothing was run";

/// The role's value of `setting` set by `ALTER ROLE … SET` (for every
/// database), `None` when it has none.
const CURRENT: &str = "select (select split_part(c, '=', 2)
           from pg_catalog.pg_db_role_setting d, unnest(d.setconfig) as c
          where d.setrole = r.oid and d.setdatabase = 0
            and split_part(c, '=', 1) = $2 limit 1)
   from pg_catalog.pg_roles r where r.rolname = $1";

pub async fn role_setting(
    diagnoser: &Diagnoser,
    settings: &ExecutorSettings,
    action: &ActionInstance,
) -> Outcome {
    let setting = action.setting.as_deref().unwrap_or_default();
    if !ROLE_SETTINGS.contains(&setting) {
        return Outcome::new(
            "refused",
            format!("`{setting}` is not one of {}", ROLE_SETTINGS.join(", ")),
        );
    }
    let [role, value] = action.params.as_slice() else {
        return Outcome::new("refused", "a role_setting action takes a role and a value");
    };
    let mut conn = match connection(diagnoser, action).await {
        Ok(conn) => conn,
        Err(outcome) => return outcome,
    };
    let run = async {
        let timeout_ms = settings.statement_timeout.as_millis().max(1);
        sqlx::raw_sql(AssertSqlSafe(format!(
            "set statement_timeout = {timeout_ms}"
        )))
        .execute(&mut *conn)
        .await
        .map_err(|e| failed(&e))?;
        if !precondition_holds(&mut conn, action).await? {
            return Ok(Outcome::new("precondition_failed", PRECONDITION_FAILED));
        }
        let found = sqlx::query(
            "select coalesce(r.rolsuper, false) or coalesce(r.rolreplication, false)
                    or r.rolname = any($2::text[]) as protected
               from pg_catalog.pg_roles r where r.rolname = $1",
        )
        .bind(role)
        .bind(&settings.protected_roles)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| failed(&e))?;
        let Some(found) = found else {
            return Ok(Outcome::new("refused", format!("no role `{role}`")));
        };
        if found.get::<bool, _>("protected") {
            return Ok(Outcome::new(
                "refused",
                format!(
                    "role `{role}` is protected (superuser, replication or executor.protected_roles); not changed"
                ),
            ));
        }
        let previous: Option<String> = sqlx::query_scalar(CURRENT)
            .bind(role)
            .bind(setting)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| failed(&e))?;
        let statement: String = sqlx::query_scalar(
            "select case when $3 = '' then format('alter role %I reset %I', $1, $2)
                         else format('alter role %I set %I = %L', $1, $2, $3) end",
        )
        .bind(role)
        .bind(setting)
        .bind(value)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| failed(&e))?;
        sqlx::query(AssertSqlSafe(statement.clone()))
            .persistent(false)
            .execute(&mut *conn)
            .await
            .map_err(|e| format!("{statement}: {}", failed(&e)))?;
        let now: Option<String> = sqlx::query_scalar(CURRENT)
            .bind(role)
            .bind(setting)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| failed(&e))?;
        Ok::<_, String>(Outcome::new(
            "done",
            serde_json::json!({
                "statement": statement,
                "role": role,
                "setting": setting,
                "previous": previous,
                "now": now,
            })
            .to_string(),
        ))
    };
    run.await.unwrap_or_else(|e| Outcome::new("failed", e))
}

/// Resolves the table and its columns on the server and writes the
/// statements: `qualified` table, index `name` (`idx_TABLE_COL…`, at most
/// 63 bytes), `create` and `drop` (of that index). No row: no such table;
/// `missing` lists the columns it does not have.
const PLAN: &str = "with wanted as (
       select btrim(col) as col, o
         from unnest(string_to_array($3, ',')) with ordinality as u(col, o)
        where btrim(col) <> ''
     ), rel as (
       select c.oid, c.relname, n.nspname
         from pg_catalog.pg_class c
         join pg_catalog.pg_namespace n on n.oid = c.relnamespace
        where n.nspname = $1 and c.relname = $2 and c.relkind in ('r', 'p', 'm')
     ), cols as (
       select w.col, w.o, a.attname
         from wanted w cross join rel
         left join pg_catalog.pg_attribute a
           on a.attrelid = rel.oid and a.attname = w.col and a.attnum > 0 and not a.attisdropped
     ), named as (
       select left(format('idx_%s_%s', rel.relname,
                          (select string_agg(col, '_' order by o) from cols)), 63) as name
         from rel
     )
     select format('%I.%I', rel.nspname, rel.relname) as qualified,
            named.name,
            (select count(*) from wanted)::int as wanted,
            coalesce((select string_agg(col, ', ' order by o) from cols where attname is null), '') as missing,
            format('create index concurrently %I on %I.%I (%s)', named.name, rel.nspname, rel.relname,
                   (select string_agg(format('%I', attname), ', ' order by o)
                      from cols where attname is not null)) as create,
            format('drop index concurrently if exists %I.%I', rel.nspname, named.name) as drop
       from rel, named";

/// The index `$2` in schema `$1`: whether it is valid; no row when absent.
const VALID: &str = "select i.indisvalid
       from pg_catalog.pg_index i
       join pg_catalog.pg_class c on c.oid = i.indexrelid
       join pg_catalog.pg_namespace n on n.oid = c.relnamespace
      where n.nspname = $1 and c.relname = $2";

pub async fn create_index(diagnoser: &Diagnoser, action: &ActionInstance) -> Outcome {
    let [schema, table, columns] = action.params.as_slice() else {
        return Outcome::new(
            "refused",
            "a create_index action takes a schema, a table and its columns",
        );
    };
    let mut conn = match connection(diagnoser, action).await {
        Ok(conn) => conn,
        Err(outcome) => return outcome,
    };
    let lock_ms = action
        .lock_timeout_ms
        .unwrap_or(DEFAULT_LOCK_TIMEOUT_MS)
        .max(1);
    let run = async {
        sqlx::raw_sql(AssertSqlSafe(format!(
            "set statement_timeout = 0; set lock_timeout = {lock_ms}"
        )))
        .execute(&mut *conn)
        .await
        .map_err(|e| failed(&e))?;
        if !precondition_holds(&mut conn, action).await? {
            return Ok(Outcome::new("precondition_failed", PRECONDITION_FAILED));
        }
        let plan = sqlx::query(PLAN)
            .bind(schema)
            .bind(table)
            .bind(columns)
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| failed(&e))?;
        let Some(plan) = plan else {
            return Ok(Outcome::new(
                "refused",
                format!("no table `{schema}`.`{table}` on the target"),
            ));
        };
        let missing: String = plan.get("missing");
        if plan.get::<i32, _>("wanted") == 0 || !missing.is_empty() {
            return Ok(Outcome::new(
                "refused",
                format!("`{schema}`.`{table}` has no column(s) `{missing}`; nothing was built"),
            ));
        }
        let name: String = plan.get("name");
        let create: String = plan.get("create");
        let drop: String = plan.get("drop");
        let existing: Option<bool> = sqlx::query_scalar(VALID)
            .bind(schema)
            .bind(&name)
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| failed(&e))?;
        if let Some(valid) = existing {
            return Ok(Outcome::new(
                "refused",
                format!(
                    "an index `{name}` already exists ({}); nothing was built",
                    if valid {
                        "valid"
                    } else {
                        "invalid: drop it first"
                    }
                ),
            ));
        }
        // One statement, extended protocol, no transaction around it: what
        // CREATE INDEX CONCURRENTLY needs.
        let built = sqlx::query(AssertSqlSafe(create.clone()))
            .persistent(false)
            .execute(&mut *conn)
            .await;
        let valid: Option<bool> = sqlx::query_scalar(VALID)
            .bind(schema)
            .bind(&name)
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| failed(&e))?;
        match (built, valid) {
            (Ok(_), Some(true)) => {
                let size: Option<String> = sqlx::query_scalar(
                    "select pg_catalog.pg_size_pretty(pg_catalog.pg_relation_size(format('%I.%I', $1::text, $2::text)::regclass))",
                )
                .bind(schema)
                .bind(&name)
                .fetch_optional(&mut *conn)
                .await
                .ok()
                .flatten();
                Ok(Outcome::new(
                    "done",
                    serde_json::json!({
                        "statement": create,
                        "index": name,
                        "valid": true,
                        "size": size,
                    })
                    .to_string(),
                ))
            }
            (built, valid) => {
                let why = match &built {
                    Err(e) => failed(e),
                    Ok(_) => "the build finished but the index is not valid".to_owned(),
                };
                let cleanup = if valid == Some(false) {
                    // The drop waits for the same transactions the build
                    // did: longer, but bounded.
                    let drop_lock_ms = lock_ms.saturating_mul(6).max(DROP_LOCK_TIMEOUT_MS);
                    let _ =
                        sqlx::raw_sql(AssertSqlSafe(format!("set lock_timeout = {drop_lock_ms}")))
                            .execute(&mut *conn)
                            .await;
                    match sqlx::query(AssertSqlSafe(drop.clone()))
                        .persistent(false)
                        .execute(&mut *conn)
                        .await
                    {
                        Ok(_) => format!("; the invalid index it left was dropped ({drop})"),
                        Err(e) => format!(
                            "; the invalid index it left could not be dropped ({drop}: {}): drop it by hand",
                            failed(&e)
                        ),
                    }
                } else {
                    String::new()
                };
                Ok(Outcome::new("failed", format!("{create}: {why}{cleanup}")))
            }
        }
    };
    run.await
        .unwrap_or_else(|e: String| Outcome::new("failed", e))
}
