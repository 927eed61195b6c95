//! The `explain` step: what the runbook's `validate_indexes.sh` meant. Its
//! `query` (the playbook author's, read-only, like a `sql` step) lists
//! running statements with their text in a `query` column; each distinct
//! text without `$n` parameters is planned with `EXPLAIN (FORMAT JSON,
//! VERBOSE)` — never `ANALYZE`: nothing is executed — in a READ ONLY
//! transaction of its own, as one statement of the extended protocol (a
//! text holding two statements is refused by the server). Every sequential
//! scan with a filter on a table estimated larger than `min_rows` rows,
//! whose first filtered column leads no index yet, becomes a row:
//! `schemaname`, `relname`, `columns` (the filtered columns, in order,
//! comma-separated, at most three), `filter`, `table_rows`, `pid`,
//! `query_preview`.
//!
//! EXPLAIN checks the privileges the statement itself would need: a
//! statement reading a table remedy's role may not SELECT is refused
//! (42501). That is not skipped quietly: the step is then not ok, its error
//! names each refused statement with the grant that would let it be planned
//! (README, Security: least privilege), and it keeps the rows of the
//! statements it did plan.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use sqlx::postgres::PgPool;
use sqlx::{AssertSqlSafe, Row};

use super::{StepError, StepOutput};

/// Statements planned per step, at most.
const MAX_STATEMENTS: usize = 10;
/// Columns of one index, at most.
const MAX_COLUMNS: usize = 3;

/// Runs the step. `min_rows` is the table size (estimated rows) under which
/// a sequential scan is fine.
///
/// # Errors
/// The source query's error, or [`StepError::Timeout`]; a statement that
/// cannot be planned (truncated text, a parameter, a syntax the server
/// refuses) is skipped, not an error. One refused for lack of privilege is
/// reported in the output's `error` (with `ok` false), not skipped.
pub async fn explain(
    pool: &PgPool,
    own: &super::own::OwnSessions,
    query: &str,
    params: &[String],
    min_rows: f64,
    timeout: Duration,
) -> Result<StepOutput, StepError> {
    let started = Instant::now();
    let source = super::sql::query(pool, own, query, params, timeout, MAX_STATEMENTS).await?;
    let run = async {
        let mut rows = Vec::new();
        let mut denied = Vec::new();
        let mut seen_texts = BTreeSet::new();
        let mut seen_candidates = BTreeSet::new();
        for statement in &source.rows {
            let Some(text) = statement.get("query").and_then(Value::as_str) else {
                continue;
            };
            let text = text.trim().trim_end_matches(';').trim();
            if text.is_empty() || has_parameters(text) || !seen_texts.insert(text.to_owned()) {
                continue;
            }
            let plan = match plan(pool, text, timeout).await {
                Ok(plan) => plan,
                // A statement that writes needs that write privilege to be
                // explained, which remedy is never given: skipped, as the
                // README says, not reported as a missing grant.
                Err(Unplanned::Denied(_)) if !reads_only(text) => continue,
                Err(Unplanned::Denied(message)) => {
                    let grant = grant_for(pool, &message).await;
                    denied.push(Denial {
                        pid: statement.get("pid").cloned().unwrap_or(Value::Null),
                        preview: text.chars().take(80).collect(),
                        message,
                        grant,
                    });
                    continue;
                }
                Err(Unplanned::Other) => continue,
            };
            let mut scans = Vec::new();
            seq_scans(&plan, &mut scans);
            for scan in scans {
                if !seen_candidates.insert((
                    scan.schema.clone(),
                    scan.table.clone(),
                    scan.columns.clone(),
                )) {
                    continue;
                }
                let Some(table_rows) = table_rows(pool, &scan, timeout).await else {
                    continue;
                };
                if table_rows <= min_rows {
                    continue;
                }
                let preview: String = text.chars().take(200).collect();
                rows.push(
                    json!({
                        "schemaname": scan.schema,
                        "relname": scan.table,
                        "columns": scan.columns.join(","),
                        "filter": scan.filter,
                        "table_rows": table_rows,
                        "pid": statement.get("pid").cloned().unwrap_or(Value::Null),
                        "query_preview": preview,
                    })
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
                );
            }
        }
        (rows, denied)
    };
    let (rows, denied): (Vec<Map<String, Value>>, Vec<Denial>) = tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| StepError::Timeout(timeout))?;
    Ok(StepOutput {
        ok: denied.is_empty(),
        error: denied_error(&denied),
        rows,
        value: None,
        truncated: source.truncated,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

/// Whether the text has a `$n` parameter outside quotes (a prepared
/// statement's text cannot be planned without its parameters' types).
fn has_parameters(text: &str) -> bool {
    let mut quote = None;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '$') if chars.peek().is_some_and(char::is_ascii_digit) => return true,
            _ => {}
        }
    }
    false
}

/// Why a statement has no plan.
enum Unplanned {
    /// The server refused it for lack of privilege (42501), with its message.
    Denied(String),
    /// Anything else: truncated text, a syntax or object the server does
    /// not know in remedy's session. Expected, and skipped.
    Other,
}

/// The JSON plan of `text`.
async fn plan(pool: &PgPool, text: &str, timeout: Duration) -> Result<Value, Unplanned> {
    let mut tx = pool.begin().await.map_err(|_| Unplanned::Other)?;
    let timeout_ms = timeout.as_millis().max(1);
    sqlx::raw_sql(AssertSqlSafe(format!(
        "set transaction read only; set local statement_timeout = {timeout_ms}"
    )))
    .execute(&mut *tx)
    .await
    .map_err(|_| Unplanned::Other)?;
    let planned: Result<Value, _> = sqlx::query_scalar(AssertSqlSafe(format!(
        "explain (format json, verbose) {text}"
    )))
    .persistent(false)
    .fetch_one(&mut *tx)
    .await;
    let _ = tx.rollback().await;
    planned.map_err(|e| match &e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some(INSUFFICIENT_PRIVILEGE) => {
            Unplanned::Denied(db.message().to_owned())
        }
        _ => {
            tracing::debug!(error = %e, "explain step: statement not planned");
            Unplanned::Other
        }
    })
}

/// SQLSTATE `insufficient_privilege`.
const INSUFFICIENT_PRIVILEGE: &str = "42501";

/// A statement the server would not plan for remedy's role.
struct Denial {
    pid: Value,
    preview: String,
    message: String,
    /// The grant that lets it be planned, when the message names it.
    grant: Option<String>,
}

/// Denials shown, at most; the rest are counted.
const MAX_DENIALS: usize = 3;

/// The step's error for the statements refused, `None` when none was.
fn denied_error(denied: &[Denial]) -> Option<String> {
    if denied.is_empty() {
        return None;
    }
    let mut lines: Vec<String> = denied
        .iter()
        .take(MAX_DENIALS)
        .map(|d| {
            let grant = d.grant.as_deref().map_or_else(
                || " (README, Security: least privilege)".to_owned(),
                |g| format!("; needs {g}"),
            );
            format!("pid {}: `{}`: {}{grant}", d.pid, d.preview, d.message)
        })
        .collect();
    if denied.len() > MAX_DENIALS {
        lines.push(format!("and {} more", denied.len() - MAX_DENIALS));
    }
    Some(format!(
        "EXPLAIN refused for lack of privilege, so {} statement(s) were not checked for missing indexes: {}",
        denied.len(),
        lines.join("; ")
    ))
}

/// The grant a refusal's message asks for: SELECT on the table it names
/// (each table of that name remedy's role may not read, qualified by the
/// server), or USAGE on the schema. `None` when the message says otherwise
/// (a server speaking another language, a statement that writes: remedy
/// asks for no write privilege, so those are never planned).
/// Whether a statement only reads (`SELECT`, `WITH … SELECT`, `TABLE`,
/// `VALUES`), by its first word; a `WITH` that writes is counted as a read
/// (rare in the statements an application leaves running).
fn reads_only(text: &str) -> bool {
    let first = text
        .trim_start_matches(|c: char| c.is_whitespace() || c == '(')
        .split(|c: char| c.is_whitespace() || c == '(')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    matches!(first.as_str(), "select" | "with" | "table" | "values")
}

async fn grant_for(pool: &PgPool, message: &str) -> Option<String> {
    let pattern = regex::Regex::new(
        r"^permission denied for (table|view|materialized view|foreign table|schema) (.+)$",
    )
    .ok()?;
    let captures = pattern.captures(message)?;
    let name = captures.get(2)?.as_str();
    let grants: Vec<String> = if &captures[1] == "schema" {
        sqlx::query_scalar(
            "select format('GRANT USAGE ON SCHEMA %I TO %I;', $1::text, current_user)",
        )
        .bind(name)
        .fetch_all(pool)
        .await
        .ok()?
    } else {
        sqlx::query_scalar(
            "select format('GRANT SELECT ON %I.%I TO %I;', n.nspname, c.relname, current_user)
               from pg_catalog.pg_class c
               join pg_catalog.pg_namespace n on n.oid = c.relnamespace
              where c.relname = $1 and not pg_catalog.has_table_privilege(c.oid, 'SELECT')
              order by n.nspname",
        )
        .bind(name)
        .fetch_all(pool)
        .await
        .ok()?
    };
    (!grants.is_empty()).then(|| grants.join(" "))
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Scan {
    schema: String,
    table: String,
    columns: Vec<String>,
    filter: String,
}

/// Every `Seq Scan` node with a `Filter` under `plan`, with the columns of
/// its relation the filter reads.
fn seq_scans(plan: &Value, out: &mut Vec<Scan>) {
    match plan {
        Value::Array(items) => items.iter().for_each(|i| seq_scans(i, out)),
        Value::Object(node) => {
            if node.get("Node Type").and_then(Value::as_str) == Some("Seq Scan")
                && let (Some(filter), Some(table), Some(schema)) = (
                    node.get("Filter").and_then(Value::as_str),
                    node.get("Relation Name").and_then(Value::as_str),
                    node.get("Schema").and_then(Value::as_str),
                )
            {
                let alias = node.get("Alias").and_then(Value::as_str).unwrap_or(table);
                let columns = filtered_columns(filter, alias);
                if !columns.is_empty() {
                    out.push(Scan {
                        schema: schema.to_owned(),
                        table: table.to_owned(),
                        columns,
                        filter: filter.to_owned(),
                    });
                }
            }
            for (key, value) in node {
                if key == "Plan" || key == "Plans" {
                    seq_scans(value, out);
                }
            }
        }
        _ => {}
    }
}

/// The columns `alias.col` (or `alias."Col"`) a VERBOSE filter reads, in
/// order of appearance, each once, at most [`MAX_COLUMNS`].
fn filtered_columns(filter: &str, alias: &str) -> Vec<String> {
    let quoted_alias = if alias
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$')
    {
        regex::escape(alias)
    } else {
        regex::escape(&format!("\"{}\"", alias.replace('"', "\"\"")))
    };
    let Ok(pattern) = regex::Regex::new(&format!(
        r#"(?:^|[^\w."]){quoted_alias}\.("(?:[^"]|"")+"|[a-z_][a-z0-9_$]*)"#
    )) else {
        return Vec::new();
    };
    let mut columns: Vec<String> = Vec::new();
    for capture in pattern.captures_iter(filter) {
        let raw = &capture[1];
        let column = raw
            .strip_prefix('"')
            .and_then(|r| r.strip_suffix('"'))
            .map_or_else(|| raw.to_owned(), |inner| inner.replace("\"\"", "\""));
        if !columns.contains(&column) {
            columns.push(column);
        }
        if columns.len() == MAX_COLUMNS {
            break;
        }
    }
    columns
}

/// The table's estimated rows (the larger of `reltuples` and
/// `n_live_tup`), or `None` when its first filtered column already leads
/// an index (a sequential scan then is the planner's choice, not a gap).
async fn table_rows(pool: &PgPool, scan: &Scan, timeout: Duration) -> Option<f64> {
    let row = tokio::time::timeout(
        timeout,
        sqlx::query(
            "select greatest(c.reltuples, coalesce(s.n_live_tup, 0))::float8 as table_rows,
                    exists (select 1 from pg_catalog.pg_index i
                              join pg_catalog.pg_attribute a
                                on a.attrelid = c.oid and a.attnum = i.indkey[0]
                             where i.indrelid = c.oid and a.attname = $3) as indexed
               from pg_catalog.pg_class c
               join pg_catalog.pg_namespace n on n.oid = c.relnamespace
               left join pg_catalog.pg_stat_user_tables s on s.relid = c.oid
              where n.nspname = $1 and c.relname = $2",
        )
        .bind(&scan.schema)
        .bind(&scan.table)
        .bind(scan.columns.first())
        .fetch_optional(pool),
    )
    .await
    .ok()?
    .ok()??;
    if row.get::<bool, _>("indexed") {
        return None;
    }
    Some(row.get("table_rows"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reading_statements_are_owed_a_select_grant() {
        for read in [
            "select * from orders",
            "  (SELECT 1)",
            "WITH x AS (select 1) select * from x",
            "table orders",
        ] {
            assert!(reads_only(read), "{read}");
        }
        for write in [
            "update orders set paid = true",
            "insert into orders values (1)",
            "DELETE FROM orders",
        ] {
            assert!(!reads_only(write), "{write}");
        }
    }

    #[test]
    fn a_refused_statement_is_named_with_its_grant_and_the_rest_counted() {
        assert_eq!(denied_error(&[]), None);
        let denial = |pid: i64, grant: Option<&str>| Denial {
            pid: json!(pid),
            preview: "select count(*) from audit_logs where tenant_id = 7".into(),
            message: "permission denied for table audit_logs".into(),
            grant: grant.map(str::to_owned),
        };
        let one = denied_error(&[denial(
            42,
            Some("GRANT SELECT ON public.audit_logs TO remedy;"),
        )])
        .expect("an error");
        assert_eq!(
            one,
            "EXPLAIN refused for lack of privilege, so 1 statement(s) were not checked for missing indexes: \
             pid 42: `select count(*) from audit_logs where tenant_id = 7`: permission denied for table audit_logs; \
             needs GRANT SELECT ON public.audit_logs TO remedy;"
        );
        let many: Vec<Denial> = (1..=5).map(|pid| denial(pid, None)).collect();
        let text = denied_error(&many).expect("an error");
        assert!(text.starts_with("EXPLAIN refused for lack of privilege, so 5 statement(s)"));
        assert!(
            text.contains("(README, Security: least privilege)"),
            "{text}"
        );
        assert!(text.ends_with("; and 2 more"), "{text}");
    }

    #[test]
    fn parameters_are_found_outside_quotes_only() {
        assert!(has_parameters("select * from t where id = $1"));
        assert!(!has_parameters("select '$1' from t"));
        assert!(!has_parameters("select price from t where cur = '$'"));
    }

    #[test]
    fn filtered_columns_follow_the_alias_and_unquote() {
        assert_eq!(
            filtered_columns(
                "((audit_logs.tenant_id = 7) AND (audit_logs.\"Kind\" = 'x'::text))",
                "audit_logs"
            ),
            ["tenant_id", "Kind"]
        );
        assert_eq!(
            filtered_columns(
                "((a.tenant_id = 7) AND (b.other = 1) AND (a.tenant_id > 0))",
                "a"
            ),
            ["tenant_id"]
        );
        assert!(filtered_columns("(x.y = 1)", "a").is_empty());
    }

    #[test]
    fn seq_scans_are_found_in_nested_plans() {
        let plan = json!([{"Plan": {"Node Type": "Aggregate", "Plans": [
            {"Node Type": "Seq Scan", "Relation Name": "audit_logs", "Schema": "public",
             "Alias": "audit_logs", "Filter": "(audit_logs.tenant_id = 7)"},
            {"Node Type": "Seq Scan", "Relation Name": "small", "Schema": "public", "Alias": "small"}
        ]}}]);
        let mut scans = Vec::new();
        seq_scans(&plan, &mut scans);
        assert_eq!(scans.len(), 1);
        assert_eq!(scans[0].table, "audit_logs");
        assert_eq!(scans[0].columns, ["tenant_id"]);
    }
}
