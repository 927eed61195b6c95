//! One connection of either backend, so that a store function that runs
//! several statements in the caller's transaction is written once, as a
//! plain `async fn` with `?` and `return`: a statement is its SQL (shared by
//! both dialects) and its [`Arg`]s, bound the same way on both.

use serde_json::Value;
use sqlx::postgres::{PgArguments, PgConnection, PgRow};
use sqlx::query::Query;
use sqlx::sqlite::{Sqlite, SqliteArguments, SqliteConnection, SqliteRow};
use sqlx::types::Json;
use sqlx::{FromRow, Postgres};

use super::{Store, StoreError};
use crate::domain::Millis;

impl Store {
    /// Runs `body` in one transaction on either backend: `Ok` commits,
    /// `Err` (from `?` anywhere inside) rolls back. SQLite begins
    /// `IMMEDIATE`, behind the process's write lock, so writers queue
    /// instead of failing when a reader upgrades.
    pub(crate) async fn in_transaction<T>(
        &self,
        body: impl AsyncFnOnce(&mut Conn<'_>) -> Result<T, sqlx::Error>,
    ) -> Result<T, StoreError> {
        match self {
            Self::Sqlite(pool, lock) => {
                let _writing = lock.acquire().await;
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let out = body(&mut Conn::Sqlite(&mut tx)).await?;
                tx.commit().await?;
                Ok(out)
            }
            Self::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let out = body(&mut Conn::Postgres(&mut tx)).await?;
                tx.commit().await?;
                Ok(out)
            }
        }
    }
}

/// The connection of the caller's transaction.
pub enum Conn<'a> {
    Sqlite(&'a mut SqliteConnection),
    Postgres(&'a mut PgConnection),
}

/// A value bound to a statement.
#[derive(Debug, Clone)]
pub enum Arg<'a> {
    Int(i64),
    OptInt(Option<i64>),
    Text(&'a str),
    OptText(Option<&'a str>),
    Json(Value),
}

impl From<i64> for Arg<'_> {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}

impl From<Option<i64>> for Arg<'_> {
    fn from(v: Option<i64>) -> Self {
        Self::OptInt(v)
    }
}

impl<'a> From<&'a str> for Arg<'a> {
    fn from(v: &'a str) -> Self {
        Self::Text(v)
    }
}

impl<'a> From<&'a String> for Arg<'a> {
    fn from(v: &'a String) -> Self {
        Self::Text(v)
    }
}

impl<'a> From<Option<&'a str>> for Arg<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Self::OptText(v)
    }
}

impl From<Value> for Arg<'_> {
    fn from(v: Value) -> Self {
        Self::Json(v)
    }
}

fn bind_sqlite<'q>(
    mut query: Query<'q, Sqlite, SqliteArguments>,
    args: &'q [Arg<'q>],
) -> Query<'q, Sqlite, SqliteArguments> {
    for arg in args {
        query = match arg {
            Arg::Int(v) => query.bind(*v),
            Arg::OptInt(v) => query.bind(*v),
            Arg::Text(v) => query.bind(*v),
            Arg::OptText(v) => query.bind(*v),
            Arg::Json(v) => query.bind(Json(v)),
        };
    }
    query
}

fn bind_postgres<'q>(
    mut query: Query<'q, Postgres, PgArguments>,
    args: &'q [Arg<'q>],
) -> Query<'q, Postgres, PgArguments> {
    for arg in args {
        query = match arg {
            Arg::Int(v) => query.bind(*v),
            Arg::OptInt(v) => query.bind(*v),
            Arg::Text(v) => query.bind(*v),
            Arg::OptText(v) => query.bind(*v),
            Arg::Json(v) => query.bind(Json(v)),
        };
    }
    query
}

impl Conn<'_> {
    /// Runs a statement; returns the rows it changed.
    pub async fn execute(
        &mut self,
        sql: &'static str,
        args: &[Arg<'_>],
    ) -> Result<u64, sqlx::Error> {
        Ok(match self {
            Self::Sqlite(conn) => bind_sqlite(sqlx::query(sql), args)
                .execute(&mut **conn)
                .await?
                .rows_affected(),
            Self::Postgres(conn) => bind_postgres(sqlx::query(sql), args)
                .execute(&mut **conn)
                .await?
                .rows_affected(),
        })
    }

    /// Runs a query that returns at most one row.
    pub async fn fetch_optional<T>(
        &mut self,
        sql: &'static str,
        args: &[Arg<'_>],
    ) -> Result<Option<T>, sqlx::Error>
    where
        T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin,
    {
        match self {
            Self::Sqlite(conn) => {
                let row = bind_sqlite(sqlx::query(sql), args)
                    .fetch_optional(&mut **conn)
                    .await?;
                row.as_ref().map(T::from_row).transpose()
            }
            Self::Postgres(conn) => {
                let row = bind_postgres(sqlx::query(sql), args)
                    .fetch_optional(&mut **conn)
                    .await?;
                row.as_ref().map(T::from_row).transpose()
            }
        }
    }

    /// Runs a query and returns all its rows.
    pub async fn fetch_all<T>(
        &mut self,
        sql: &'static str,
        args: &[Arg<'_>],
    ) -> Result<Vec<T>, sqlx::Error>
    where
        T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin,
    {
        match self {
            Self::Sqlite(conn) => bind_sqlite(sqlx::query(sql), args)
                .fetch_all(&mut **conn)
                .await?
                .iter()
                .map(T::from_row)
                .collect(),
            Self::Postgres(conn) => bind_postgres(sqlx::query(sql), args)
                .fetch_all(&mut **conn)
                .await?
                .iter()
                .map(T::from_row)
                .collect(),
        }
    }

    /// Runs a query that returns one row.
    pub async fn fetch_one<T>(
        &mut self,
        sql: &'static str,
        args: &[Arg<'_>],
    ) -> Result<T, sqlx::Error>
    where
        T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin,
    {
        self.fetch_optional(sql, args)
            .await?
            .ok_or(sqlx::Error::RowNotFound)
    }

    #[must_use]
    pub fn is_postgres(&self) -> bool {
        matches!(self, Self::Postgres(_))
    }

    /// Queues a `notify` (the incident's chat message brought up to date)
    /// due at `due`; see `chat::ENQUEUE_NOTIFY`.
    pub async fn enqueue_notify(
        &mut self,
        incident: i64,
        due: Millis,
        now: Millis,
    ) -> Result<(), sqlx::Error> {
        self.execute(
            super::chat::ENQUEUE_NOTIFY,
            &[
                incident.into(),
                due.into(),
                now.into(),
                super::WorkKind::Notify.as_str().into(),
            ],
        )
        .await
        .map(drop)
    }

    /// Appends one entry to the audit log.
    pub async fn audit(
        &mut self,
        incident: i64,
        approval: Option<i64>,
        now: Millis,
        event: &str,
        detail: Value,
    ) -> Result<(), sqlx::Error> {
        self.execute(
            "insert into audit_log (at, incident_id, approval_id, event, detail)
             values ($1, $2, $3, $4, $5)",
            &[
                now.into(),
                incident.into(),
                approval.into(),
                event.into(),
                detail.into(),
            ],
        )
        .await
        .map(drop)
    }

    /// Appends one event to an incident's timeline.
    pub async fn record_event(
        &mut self,
        incident: i64,
        now: Millis,
        kind: &str,
        detail: Value,
    ) -> Result<(), sqlx::Error> {
        self.execute(
            "insert into incident_events (incident_id, at, kind, detail) values ($1, $2, $3, $4)",
            &[incident.into(), now.into(), kind.into(), detail.into()],
        )
        .await
        .map(drop)
    }
}
