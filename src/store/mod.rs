//! All SQL lives here, as small named functions over one [`Store`] with two
//! backends: SQLite (the embedded default, one WAL file) and PostgreSQL (for
//! several replicas). The SQL is shared wherever the dialects agree; the
//! [`transaction!`] and [`on_pool!`] macros expand one body per backend.

mod chat;
mod conn;
mod escalation;
mod execution;
mod incidents;
mod intake;
mod paging;
mod periodic;
mod reconcile;
mod retention;
mod storms;
mod watch;
mod work;

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteAutoVacuum, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, SqlSafeStr};

pub use chat::{
    ApprovalView, Approver, ChatMessage, Decision, DecisionOutcome, DecisionView, NewApproval,
};
pub use escalation::{EscalationView, FiredTimer, SilenceRules, SilenceScope, TimerView};
pub use execution::{AuditEntry, BeginExecution, Budget, ExecutionRef, ExecutionView, NewRun};
pub use incidents::{IncidentEvent, IncidentFilter, IncidentRecord, TimelineEntry};
pub use intake::{BatchOutcome, IntakeWriter, RecordError};
pub use paging::{PageOutcome, PageView, PendingPage};
pub use reconcile::{ReconcileCandidate, SilenceState};
pub use retention::{Expiring, INCIDENT_CHILDREN, STORE_TABLES};
pub use storms::{Admission, STORM_MEMBER_RESOLVED, StormCheck, StormRules, StormScope, StormView};
pub use watch::RecheckOutcome;
pub use work::{ClaimedWork, Lane, QueueStats, TargetSlot, WorkKind};

/// Failures a caller can branch on: the store is unreachable or refused the
/// transaction (retry later, answer 503), or the data is not what this
/// version of remedy expects.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(#[from] sqlx::Error),
    #[error("store migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported store url scheme `{0}` (use sqlite: or postgres:)")]
    Scheme(String),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

/// Connection settings the store needs from the configuration.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    /// SQLite only: `FULL` survives power loss, `NORMAL` (the default) survives
    /// a crash of the process.
    pub sqlite_synchronous_full: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 8,
            acquire_timeout: Duration::from_secs(5),
            sqlite_synchronous_full: false,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Store {
    Sqlite(SqlitePool, WriteLock),
    Postgres(PgPool),
}

/// Serialises this process's SQLite write transactions. SQLite allows one
/// writer at a time; without this, a second writer meets `SQLITE_BUSY` and
/// SQLite's busy handler sleeps in growing steps (up to 100 ms), which shows
/// as tail latency at intake. Waiting on a fair async mutex instead costs
/// nothing while idle. Other processes on the same file still fall back to
/// the busy timeout.
///
/// Intake goes first: background writers (the worker's many small
/// transactions) queue at a gate, so at most one of them is ever ahead of
/// the intake writer, and a busy worker cannot slow webhooks down.
#[derive(Debug, Clone, Default)]
pub struct WriteLock(std::sync::Arc<WriteLockInner>);

#[derive(Debug, Default)]
pub struct WriteLockInner {
    writer: tokio::sync::Mutex<()>,
    background: tokio::sync::Mutex<()>,
}

/// Held while writing.
pub struct Writing<'a> {
    _writer: tokio::sync::MutexGuard<'a, ()>,
    _background: Option<tokio::sync::MutexGuard<'a, ()>>,
}

impl WriteLock {
    /// For background writers: behind the gate, then the write lock.
    pub async fn acquire(&self) -> Writing<'_> {
        let background = self.0.background.lock().await;
        Writing {
            _writer: self.0.writer.lock().await,
            _background: Some(background),
        }
    }

    /// For the intake writer: straight to the write lock.
    pub async fn acquire_first(&self) -> Writing<'_> {
        Writing {
            _writer: self.0.writer.lock().await,
            _background: None,
        }
    }
}

/// Runs `$body` inside one transaction on whichever backend the store has,
/// with `$conn` bound to the transaction's connection. Returning early with
/// `?` or `return` rolls back; falling off the end commits. SQLite starts the
/// transaction `IMMEDIATE` so writers queue on the busy timeout instead of
/// failing when a reader upgrades.
macro_rules! transaction {
    ($store:expr, |$conn:ident| $body:block) => {
        match $store {
            $crate::store::Store::Sqlite(pool, lock) => {
                let _writing = lock.acquire().await;
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let $conn = &mut *tx;
                let out = $body;
                tx.commit().await?;
                out
            }
            $crate::store::Store::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                let $conn = &mut *tx;
                let out = $body;
                tx.commit().await?;
                out
            }
        }
    };
}

/// Runs `$body` with `$pool` bound to the backend's pool, for reads.
macro_rules! on_pool {
    ($store:expr, |$pool:ident| $body:block) => {
        match $store {
            $crate::store::Store::Sqlite($pool, _) => $body,
            $crate::store::Store::Postgres($pool) => $body,
        }
    };
}

/// Appends one event to an incident's timeline, inside the caller's
/// transaction (`$conn`).
macro_rules! record_event {
    ($conn:expr, $incident:expr, $now:expr, $kind:expr, $detail:expr $(,)?) => {
        sqlx::query(
            "insert into incident_events (incident_id, at, kind, detail) values ($1, $2, $3, $4)",
        )
        .bind($incident)
        .bind($now)
        .bind($kind)
        .bind(sqlx::types::Json($detail))
        .execute(&mut *$conn)
        .await?
    };
}

/// Inserts approval request `$a` ([`NewApproval`]) of incident `$incident`
/// inside the caller's transaction; evaluates to the rows inserted (0 when
/// the incident already has one of that key).
macro_rules! insert_approval {
    ($conn:expr, $incident:expr, $a:expr, $now:expr) => {
        sqlx::query(
            "insert into approvals (incident_id, seq, key, action_id, title, risk, roles,
                 quorum, digest, created_at, expires_at, state, decided_at)
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
             on conflict (incident_id, key) do nothing",
        )
        .bind($incident)
        .bind($a.seq)
        .bind(&$a.key)
        .bind(&$a.action_id)
        .bind(&$a.title)
        .bind(&$a.risk)
        .bind(sqlx::types::Json(&$a.roles))
        .bind($a.quorum)
        .bind(&$a.digest)
        .bind($now)
        .bind($a.expires_at)
        .bind(if $a.automatic { "approved" } else { "pending" })
        .bind($a.automatic.then_some($now))
        .execute(&mut *$conn)
        .await?
        .rows_affected()
    };
}

/// Finishes `$work` for its lease holder ([`work::MARK_DONE`]) inside the
/// caller's transaction, for a caller that then changes incident
/// `$incident`: on PostgreSQL the incident's row is locked first
/// ([`work::LOCK_INCIDENT`]), the order a resolve takes the two in.
/// Evaluates to the rows finished (1, or 0 when the lease is lost).
macro_rules! finish_before_incident {
    ($store:expr, $conn:expr, $work:expr, $incident:expr, $now:expr) => {{
        if matches!($store, $crate::store::Store::Postgres(_)) {
            sqlx::query($crate::store::work::LOCK_INCIDENT)
                .bind($incident)
                .execute(&mut *$conn)
                .await?;
        }
        sqlx::query($crate::store::work::MARK_DONE)
            .bind($work.id)
            .bind(&$work.owner)
            .bind($now)
            .execute(&mut *$conn)
            .await?
            .rows_affected()
    }};
}

/// Queues a `notify` (the incident's chat message brought up to date) due
/// at `$due`, inside the caller's transaction; see `chat::ENQUEUE_NOTIFY`.
macro_rules! enqueue_notify {
    ($conn:expr, $incident:expr, $due:expr, $now:expr) => {
        sqlx::query($crate::store::chat::ENQUEUE_NOTIFY)
            .bind($incident)
            .bind($due)
            .bind($now)
            .bind($crate::store::WorkKind::Notify.as_str())
            .execute(&mut *$conn)
            .await?
    };
}

pub(crate) use {
    enqueue_notify, finish_before_incident, insert_approval, on_pool, record_event, transaction,
};

const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "intake",
        include_str!("../../migrations/sqlite/0001_intake.sql"),
    ),
    (
        2,
        "chat",
        include_str!("../../migrations/sqlite/0002_chat.sql"),
    ),
    (
        3,
        "executor",
        include_str!("../../migrations/sqlite/0003_executor.sql"),
    ),
    (
        4,
        "escalation",
        include_str!("../../migrations/sqlite/0004_escalation.sql"),
    ),
    (
        5,
        "episodes",
        include_str!("../../migrations/sqlite/0005_episodes.sql"),
    ),
    (
        6,
        "storms",
        include_str!("../../migrations/sqlite/0006_storms.sql"),
    ),
    (
        7,
        "periodic",
        include_str!("../../migrations/sqlite/0007_periodic.sql"),
    ),
    (
        8,
        "lanes",
        include_str!("../../migrations/sqlite/0008_lanes.sql"),
    ),
    (
        9,
        "reconcile",
        include_str!("../../migrations/sqlite/0009_reconcile.sql"),
    ),
    (
        10,
        "retention",
        include_str!("../../migrations/sqlite/0010_retention.sql"),
    ),
    (
        11,
        "people",
        include_str!("../../migrations/sqlite/0011_people.sql"),
    ),
    (
        12,
        "paging",
        include_str!("../../migrations/sqlite/0012_paging.sql"),
    ),
    (
        13,
        "mattermost",
        include_str!("../../migrations/sqlite/0013_mattermost.sql"),
    ),
    (
        15,
        "storm_expiry",
        include_str!("../../migrations/sqlite/0015_storm_expiry.sql"),
    ),
];

const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "intake",
        include_str!("../../migrations/postgres/0001_intake.sql"),
    ),
    (
        2,
        "chat",
        include_str!("../../migrations/postgres/0002_chat.sql"),
    ),
    (
        3,
        "executor",
        include_str!("../../migrations/postgres/0003_executor.sql"),
    ),
    (
        4,
        "escalation",
        include_str!("../../migrations/postgres/0004_escalation.sql"),
    ),
    (
        5,
        "episodes",
        include_str!("../../migrations/postgres/0005_episodes.sql"),
    ),
    (
        6,
        "storms",
        include_str!("../../migrations/postgres/0006_storms.sql"),
    ),
    (
        7,
        "periodic",
        include_str!("../../migrations/postgres/0007_periodic.sql"),
    ),
    (
        8,
        "lanes",
        include_str!("../../migrations/postgres/0008_lanes.sql"),
    ),
    (
        9,
        "reconcile",
        include_str!("../../migrations/postgres/0009_reconcile.sql"),
    ),
    (
        10,
        "retention",
        include_str!("../../migrations/postgres/0010_retention.sql"),
    ),
    (
        11,
        "people",
        include_str!("../../migrations/postgres/0011_people.sql"),
    ),
    (
        12,
        "paging",
        include_str!("../../migrations/postgres/0012_paging.sql"),
    ),
    (
        13,
        "mattermost",
        include_str!("../../migrations/postgres/0013_mattermost.sql"),
    ),
    (
        15,
        "storm_expiry",
        include_str!("../../migrations/postgres/0015_storm_expiry.sql"),
    ),
];

fn migrator(migrations: &[(i64, &'static str, &'static str)]) -> Migrator {
    Migrator::with_migrations(
        migrations
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    description.into(),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

impl Store {
    /// Opens the store named by `url`: `sqlite:` (a file, created when
    /// missing, in WAL mode) or `postgres:` / `postgresql:`.
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            "sqlite" => {
                let memory = url.contains(":memory:") || url.contains("mode=memory");
                let connect = SqliteConnectOptions::from_str(url)?
                    .create_if_missing(true)
                    // Before the first table is created, so a new file frees
                    // deleted pages on `incremental_vacuum`; an older file is
                    // converted once by `migrate`.
                    .auto_vacuum(SqliteAutoVacuum::Incremental)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(if options.sqlite_synchronous_full {
                        SqliteSynchronous::Full
                    } else {
                        SqliteSynchronous::Normal
                    })
                    .busy_timeout(Duration::from_secs(5))
                    .foreign_keys(true)
                    // Each pooled connection keeps its own page cache. In WAL
                    // mode a connection drops its whole cache when another
                    // one has written since its last read, which under
                    // steady intake is nearly every read, so a large cache
                    // buys readers little; what it costs is memory: a large
                    // delete (retention) fills it on whichever connection
                    // runs it, and glibc keeps that thread's arena at its
                    // high-water mark after it is freed. 512 KiB each halved
                    // SQLite's RSS growth in the soak against 2 MiB (README,
                    // Performance, Soak). The intake writer's own connection
                    // takes more (`intake::WRITER_SETUP`): it touches every
                    // index.
                    .pragma("cache_size", "-512")
                    .pragma("temp_store", "memory")
                    .disable_statement_logging();
                if !memory {
                    enable_incremental_vacuum(&connect).await?;
                }
                let pool = SqlitePoolOptions::new()
                    // One connection is one database for `:memory:`.
                    .max_connections(if memory {
                        1
                    } else {
                        options.max_connections.max(2)
                    })
                    .acquire_timeout(options.acquire_timeout)
                    .connect_with(connect)
                    .await?;
                Ok(Self::Sqlite(pool, WriteLock::default()))
            }
            "postgres" | "postgresql" => {
                let connect = PgConnectOptions::from_str(url)?
                    .application_name("remedy")
                    .disable_statement_logging();
                let pool = PgPoolOptions::new()
                    .max_connections(options.max_connections)
                    .acquire_timeout(options.acquire_timeout)
                    .connect_with(connect)
                    .await?;
                Ok(Self::Postgres(pool))
            }
            other => Err(StoreError::Scheme(other.to_owned())),
        }
    }

    /// Applies the backend's migrations; run at start-up by every replica
    /// (sqlx takes an advisory lock on PostgreSQL, so they queue).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(pool, _) => migrator(SQLITE_MIGRATIONS).run(pool).await?,
            Self::Postgres(pool) => migrator(POSTGRES_MIGRATIONS).run(pool).await?,
        }
        Ok(())
    }

    /// Readiness: the store answers and every migration this binary knows is
    /// applied.
    pub async fn ready(&self) -> Result<bool, StoreError> {
        let expected = match self {
            Self::Sqlite(..) => SQLITE_MIGRATIONS.len(),
            Self::Postgres(_) => POSTGRES_MIGRATIONS.len(),
        };
        let applied: i64 = on_pool!(self, |pool| {
            sqlx::query_scalar("select count(*) from _sqlx_migrations where success")
                .fetch_one(pool)
                .await?
        });
        Ok(usize::try_from(applied).unwrap_or(0) >= expected)
    }

    #[must_use]
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Sqlite(..) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        on_pool!(self, |pool| { pool.close().await });
    }
}

/// Converts a SQLite file created without `auto_vacuum = incremental` (by
/// a remedy older than migration 0010) so that retention can give deleted
/// pages back to the file system. The setting only takes effect through a
/// `VACUUM`, which rewrites the whole file and cannot run inside a
/// migration's transaction, so it runs here, once per file, on a connection
/// of its own before the pool opens (pooled connections opened earlier
/// would not see the change). It needs free disk space about the size of
/// the file; a new file gets the setting before its first table instead.
async fn enable_incremental_vacuum(options: &SqliteConnectOptions) -> Result<(), StoreError> {
    const INCREMENTAL: i64 = 2;
    let mut conn = options.connect().await?;
    let mode: i64 = sqlx::query_scalar("pragma auto_vacuum")
        .fetch_one(&mut conn)
        .await?;
    if mode != INCREMENTAL {
        tracing::info!("converting the SQLite file to auto_vacuum = incremental (one VACUUM)");
        sqlx::query("pragma auto_vacuum = incremental")
            .execute(&mut conn)
            .await?;
        sqlx::query("vacuum").execute(&mut conn).await?;
    }
    conn.close().await?;
    Ok(())
}

/// Redacts the passwords of a database or HTTP URL so it can be logged:
/// the userinfo's (which may itself hold `@`) and `password` /
/// `sslpassword` query parameters.
#[must_use]
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let mut out = match base.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
                None => base.to_owned(),
            },
            None => base.to_owned(),
        },
        None => base.to_owned(),
    };
    if let Some(query) = query {
        let params: Vec<String> = query
            .split('&')
            .map(|param| match param.split_once('=') {
                Some((key, _))
                    if key.eq_ignore_ascii_case("password")
                        || key.eq_ignore_ascii_case("sslpassword") =>
                {
                    format!("{key}=***")
                }
                _ => param.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn redact_url_hides_only_the_password() {
        assert_eq!(
            redact_url("postgres://remedy:s3cret@db:5432/remedy"),
            "postgres://remedy:***@db:5432/remedy"
        );
        assert_eq!(redact_url("postgres://db/remedy"), "postgres://db/remedy");
        assert_eq!(redact_url("sqlite://remedy.db"), "sqlite://remedy.db");
    }

    #[test]
    fn redact_url_hides_passwords_with_at_signs_and_in_the_query() {
        assert_eq!(
            redact_url("postgres://remedy:p@ss@db/remedy"),
            "postgres://remedy:***@db/remedy"
        );
        assert_eq!(
            redact_url("postgres://db/remedy?user=remedy&password=s3cret&sslmode=require"),
            "postgres://db/remedy?user=remedy&password=***&sslmode=require"
        );
        assert_eq!(
            redact_url("sqlite://remedy.db?mode=rwc"),
            "sqlite://remedy.db?mode=rwc"
        );
    }
}
