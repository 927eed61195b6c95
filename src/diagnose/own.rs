//! remedy's own sessions on a target, known by the backends its pools
//! hold: every new target connection records its `(pid, backend_start)`
//! here (the pool's `after_connect`), so a session that merely sets
//! `application_name = 'remedy'` is not mistaken for remedy's, and a
//! recycled pid (another `backend_start`) is never taken for one either.
//! Diagnosis sees the live set as `current_setting('remedy.own_pids')`;
//! the executor's cancel/terminate statement refuses its members.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

/// `backend_start` as whole microseconds since the epoch: exact, and the
/// same text-free value in every session whatever its `TimeZone`.
const MICROS: &str = "(extract(epoch from a.backend_start) * 1000000)::int8";

/// True for a row `a` of `pg_stat_activity` that is one of remedy's own
/// sessions; `$N` is the pids and `$N+1` the `backend_start` micros of
/// [`OwnSessions::snapshot`].
#[must_use]
pub fn is_own(first_param: usize) -> String {
    let second = first_param + 1;
    format!(
        "exists (select 1 from unnest(${first_param}::int4[], ${second}::int8[]) as o(pid, micros)
                  where o.pid = a.pid and o.micros = {MICROS})"
    )
}

/// The backends of one target's pool.
#[derive(Debug, Clone, Default)]
pub struct OwnSessions(Arc<Mutex<BTreeSet<(i32, i64)>>>);

impl OwnSessions {
    /// Every recorded backend, as `(pids, backend_start micros)` for binding.
    ///
    /// # Panics
    /// Only if a thread panicked while holding the set's lock.
    #[must_use]
    pub fn snapshot(&self) -> (Vec<i32>, Vec<i64>) {
        self.0
            .lock()
            .expect("own-session set lock is never poisoned")
            .iter()
            .copied()
            .unzip()
    }

    /// Records the connection's own backend (the pool's `after_connect`).
    /// Entries whose backend ended are dropped once the set outgrows
    /// `limit`: a closed connection leaves no hook to remove it by, and a
    /// stale entry matches nothing, since its `backend_start` is unique.
    ///
    /// # Errors
    /// The query's error; the pool then drops the connection.
    pub async fn record(
        &self,
        conn: &mut sqlx::PgConnection,
        limit: usize,
    ) -> Result<(), sqlx::Error> {
        let me: (i32, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select a.pid, {MICROS} from pg_catalog.pg_stat_activity a
              where a.pid = pg_catalog.pg_backend_pid()"
        )))
        .fetch_one(&mut *conn)
        .await?;
        let (pids, micros) = {
            let mut set = self
                .0
                .lock()
                .expect("own-session set lock is never poisoned");
            set.insert(me);
            if set.len() <= limit {
                return Ok(());
            }
            set.iter().copied().unzip::<_, _, Vec<i32>, Vec<i64>>()
        };
        let live: Vec<(i32, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select a.pid, {MICROS} from pg_catalog.pg_stat_activity a where {}",
            is_own(1)
        )))
        .bind(pids)
        .bind(micros)
        .fetch_all(&mut *conn)
        .await?;
        let live: BTreeSet<(i32, i64)> = live.into_iter().collect();
        self.0
            .lock()
            .expect("own-session set lock is never poisoned")
            .retain(|entry| live.contains(entry) || *entry == me);
        Ok(())
    }
}
