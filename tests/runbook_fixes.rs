//! The runbook's fixes as actions, on real PostgreSQL: a slow query on a
//! table of 60,000 rows is explained (never analyzed), its filtered column
//! offered as a `CREATE INDEX CONCURRENTLY` that is built and checked valid;
//! a build that fails leaves no invalid index behind; identifiers are quoted
//! by the server whatever they hold; a role's timeout is set with its
//! previous value reported, and the undo puts it back (and runs only once
//! the change is in place).
//!
//! The explain, index and role-setting tests connect remedy as a role
//! holding exactly the grants README, Security: least privilege documents
//! for those features (made in the test's own database, dropped at the
//! end), so the documented grants are shown to suffice; without the
//! explain grant, the refused EXPLAIN is reported with the grant it needs.

mod common;

use std::sync::Arc;
use std::time::Duration;

use remedy::engine::Engine;
use remedy::playbook::{ActionInstance, AlertContext, Report};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};

const WAIT: Duration = Duration::from_secs(30);

struct Target {
    /// The superuser's URL: the test's own set-up.
    url: String,
    engine: Engine,
    /// The role remedy connects as, when not the superuser.
    remedy: Option<LeastPrivilege>,
}

/// remedy's role and the application's table owner, made for one test:
/// the role starts with what every target needs (`pg_monitor`,
/// `pg_signal_backend`, as `remedy_e2e_monitor` in tests/e2e/harness.rs);
/// each test adds the documented grants of the features it uses.
struct LeastPrivilege {
    role: String,
    owner: String,
}

/// The README's grants per feature (Security: least privilege), in schema
/// `public`.
impl LeastPrivilege {
    fn explain_grants(&self) -> String {
        format!(
            "GRANT SELECT ON ALL TABLES IN SCHEMA public TO {r};
             ALTER DEFAULT PRIVILEGES FOR ROLE {o} IN SCHEMA public GRANT SELECT ON TABLES TO {r};",
            r = self.role,
            o = self.owner
        )
    }

    fn create_index_grants(&self) -> String {
        format!(
            "GRANT {o} TO {r}; GRANT CREATE ON SCHEMA public TO {r};",
            r = self.role,
            o = self.owner
        )
    }

    fn role_setting_grants(&self) -> String {
        format!("ALTER ROLE {} CREATEROLE;", self.role)
    }
}

async fn target() -> Target {
    let url = common::fresh_store_url(common::Backend::Postgres).await;
    let engine = engine(&url);
    Target {
        url,
        engine,
        remedy: None,
    }
}

/// [`target`], remedy connecting as a role of its own (see
/// [`LeastPrivilege`]) instead of the superuser.
async fn least_privilege_target() -> Target {
    let url = common::fresh_store_url(common::Backend::Postgres).await;
    let remedy = LeastPrivilege {
        role: format!("remedy_lp_{}", uuid::Uuid::now_v7().simple()),
        owner: format!("remedy_lp_owner_{}", uuid::Uuid::now_v7().simple()),
    };
    let mut admin = PgConnection::connect(&url).await.expect("connect");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "create role {role} login; grant pg_monitor, pg_signal_backend to {role};
         create role {owner}",
        role = remedy.role,
        owner = remedy.owner
    )))
    .execute(&mut admin)
    .await
    .expect("roles");
    let engine = engine(&url.replacen("postgres@", &format!("{}@", remedy.role), 1));
    Target {
        url,
        engine,
        remedy: Some(remedy),
    }
}

fn engine(url: &str) -> Engine {
    let dir = common::playbooks_dir();
    let settings = common::test_settings(
        "sqlite::memory:",
        &[
            ("REMEDY__TARGETS__MAIN__URL", url),
            ("REMEDY__PLAYBOOKS__DIR", dir.to_str().expect("utf-8 path")),
            ("REMEDY__PROMETHEUS__URL", "http://127.0.0.1:9"),
        ],
    );
    remedy::app::build_engine(&settings, None).expect("engine")
}

impl Target {
    fn role(&self) -> &LeastPrivilege {
        self.remedy.as_ref().expect("a least-privilege target")
    }

    /// Runs `grants` as the superuser.
    async fn grant(&self, grants: &str) {
        let mut conn = self.connect().await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(grants.to_owned()))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{grants}: {e}"));
    }

    /// Drops the test's database, then its roles (which it held grants of).
    async fn drop_roles(self) {
        let Some(remedy) = self.remedy else {
            return;
        };
        drop(self.engine);
        common::drop_database(&self.url).await;
        let mut admin = PgConnection::connect(&common::postgres_admin_url())
            .await
            .expect("connect");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "drop role {}; drop role {}",
            remedy.role, remedy.owner
        )))
        .execute(&mut admin)
        .await
        .expect("drop roles");
    }

    fn set_var(&mut self, alertname: &str, name: &str, value: Value) {
        let mut playbooks = (*self.engine.playbooks).clone();
        playbooks
            .iter_mut()
            .find(|p| p.spec.name == alertname)
            .expect("shipped playbook")
            .set_var(name, value);
        self.engine.playbooks = Arc::new(playbooks);
    }

    async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url).await.expect("connect")
    }

    async fn connect_as(&self, user: &str) -> PgConnection {
        let url = self.url.replacen("postgres@", &format!("{user}@"), 1);
        PgConnection::connect(&url).await.expect("connect as role")
    }

    async fn diagnose(&self, alertname: &str) -> Report {
        let alert = AlertContext {
            labels: [("alertname".to_owned(), alertname.to_owned())].into(),
            status: "firing".into(),
            ..AlertContext::default()
        };
        remedy::engine::diagnose::diagnose(&self.engine, &alert).await
    }

    async fn scalar<T>(&self, sql: &str) -> T
    where
        T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
    {
        let mut conn = self.connect().await;
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&mut conn)
            .await
            .expect("scalar")
    }
}

async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn action<'a>(report: &'a Report, id: &str) -> &'a ActionInstance {
    report
        .actions
        .iter()
        .find(|a| a.id == id)
        .unwrap_or_else(|| panic!("no action {id}: {:?} / {:?}", report.actions, report.errors))
}

const SLOW_QUERY: &str = "select count(*), pg_sleep(60) from audit_logs where tenant_id = 7";

/// The slow query, for real: a sequential scan filtering on tenant_id, held
/// open by pg_sleep once it is done, on a session of the superuser's; its
/// pid and its task, once it has run for over a second.
/// Ends a [`slow_query`] still running, then the test's roles.
async fn end_slow_query(
    t: Target,
    mut setup: sqlx::PgConnection,
    slow_pid: i32,
    running: tokio::task::JoinHandle<()>,
) {
    let _ = sqlx::query("select pg_cancel_backend($1)")
        .bind(slow_pid)
        .execute(&mut setup)
        .await;
    let _ = running.await;
    drop(setup);
    t.drop_roles().await;
}

async fn slow_query(t: &Target) -> (i32, tokio::task::JoinHandle<()>) {
    let mut slow = t.connect().await;
    let slow_pid: i32 = sqlx::query_scalar("select pg_backend_pid()")
        .fetch_one(&mut slow)
        .await
        .expect("pid");
    let running = tokio::spawn(async move {
        let _ = sqlx::raw_sql(SLOW_QUERY).execute(&mut slow).await;
    });
    wait_until("the slow query to run for over a second", async || {
        t.scalar::<bool>(&format!(
            "select exists (select 1 from pg_stat_activity where pid = {slow_pid}
               and state = 'active' and now() - query_start > interval '1.2 seconds')"
        ))
        .await
    })
    .await;
    (slow_pid, running)
}

async fn big_table(conn: &mut PgConnection) {
    sqlx::raw_sql(
        "create table audit_logs (id int, tenant_id int, note text);
         insert into audit_logs select g, g % 500, 'n' from generate_series(1, 60000) g;
         analyze audit_logs",
    )
    .execute(conn)
    .await
    .expect("table");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_query_gets_an_explained_concurrent_index_built_valid_and_then_none_with_only_the_documented_grants()
 {
    let mut t = least_privilege_target().await;
    t.set_var("DatabaseLongRunningQueries", "long_query", json!("1s"));
    let mut setup = t.connect().await;
    big_table(&mut setup).await;
    // The application's table has an owner of its own; remedy holds what
    // README documents for the explain step and create_index, no more.
    let remedy = t.role();
    t.grant(&format!(
        "alter table audit_logs owner to {}; {} {}",
        remedy.owner,
        remedy.explain_grants(),
        remedy.create_index_grants()
    ))
    .await;
    let (slow_pid, running) = slow_query(&t).await;

    let report = t.diagnose("DatabaseLongRunningQueries").await;
    let candidates = &report.steps["index_candidates"];
    assert!(candidates.ok, "{candidates:?}");
    assert_eq!(candidates.rows.len(), 1, "{candidates:?}");
    let row = &candidates.rows[0];
    assert_eq!(row["schemaname"], "public");
    assert_eq!(row["relname"], "audit_logs");
    assert_eq!(row["columns"], "tenant_id");
    assert_eq!(row["pid"], slow_pid);
    assert!(
        row["table_rows"].as_f64().expect("rows") >= 60_000.0,
        "{row:?}"
    );
    assert!(
        report.findings.iter().any(|f| f.text.starts_with(
            "Missing index: public.audit_logs (60000 rows) is read sequentially filtering on tenant_id"
        )),
        "{:?}",
        report.findings
    );
    // EXPLAIN only: the query it planned was not run a second time.
    let runs: i64 = t
        .scalar(
            "select count(*) from pg_stat_activity
              where datname = current_database() and query like 'select count(*), pg_sleep(60)%'",
        )
        .await;
    assert_eq!(runs, 1);
    let create = action(&report, "create_index");
    assert_eq!(create.params, ["public", "audit_logs", "tenant_id"]);
    assert_eq!(create.lock_timeout_ms, Some(5000));

    // CONCURRENTLY waits for every transaction older than the build (the
    // slow query's too): the runbook's order, cancel it first, then build.
    let cancel = action(&report, "cancel_query");
    assert_eq!(cancel.params, [slow_pid.to_string()]);
    sqlx::query("select pg_cancel_backend($1)")
        .bind(slow_pid)
        .execute(&mut setup)
        .await
        .expect("cancel");
    let _ = running.await;
    let outcome = remedy::actions::ddl::create_index(&t.engine.diagnoser, create).await;
    assert_eq!(outcome.state, "done", "{}", outcome.output);
    let output: Value = serde_json::from_str(&outcome.output).expect("json output");
    assert_eq!(
        output["statement"],
        "create index concurrently idx_audit_logs_tenant_id on public.audit_logs (tenant_id)"
    );
    assert_eq!(output["valid"], true);
    assert!(
        t.scalar::<bool>(
            "select indisvalid from pg_index where indexrelid = 'public.idx_audit_logs_tenant_id'::regclass"
        )
        .await
    );
    // The same query again, slow again: now it has its index, no candidate.
    let (slow_pid, running) = slow_query(&t).await;
    let again = t.diagnose("DatabaseLongRunningQueries").await;
    assert_eq!(again.steps["long_queries"].rows.len(), 1);
    assert!(
        again.steps["index_candidates"].rows.is_empty(),
        "{:?}",
        again.steps["index_candidates"]
    );
    assert!(again.actions.iter().all(|a| a.id != "create_index"));
    // A second build of the same index is refused, not attempted.
    let twice = remedy::actions::ddl::create_index(&t.engine.diagnoser, create).await;
    assert_eq!(twice.state, "refused", "{}", twice.output);

    end_slow_query(t, setup, slow_pid, running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explain_refused_for_lack_of_select_is_reported_with_the_grant_it_needs() {
    let mut t = least_privilege_target().await;
    t.set_var("DatabaseLongRunningQueries", "long_query", json!("1s"));
    let mut setup = t.connect().await;
    // The superuser's table: remedy's role has pg_monitor and
    // pg_signal_backend only, so it sees the statement but may not plan it.
    big_table(&mut setup).await;
    let (slow_pid, running) = slow_query(&t).await;

    let report = t.diagnose("DatabaseLongRunningQueries").await;
    let candidates = &report.steps["index_candidates"];
    assert!(!candidates.ok, "{candidates:?}");
    assert!(candidates.rows.is_empty(), "{candidates:?}");
    let error = candidates.error.as_deref().expect("the step's error");
    let role = t.role().role.clone();
    assert_eq!(
        error,
        format!(
            "EXPLAIN refused for lack of privilege, so 1 statement(s) were not checked for missing indexes: \
             pid {slow_pid}: `{SLOW_QUERY}`: permission denied for table audit_logs; \
             needs GRANT SELECT ON public.audit_logs TO {role};"
        )
    );
    assert!(
        report
            .to_text()
            .contains(&format!("\n  index_candidates: {error}\n")),
        "{}",
        report.to_text()
    );
    assert!(report.actions.iter().all(|a| a.id != "create_index"));

    // The documented grant, given: the same statement is planned now.
    t.grant(&t.role().explain_grants()).await;
    let again = t.diagnose("DatabaseLongRunningQueries").await;
    let candidates = &again.steps["index_candidates"];
    assert!(candidates.ok, "{candidates:?}");
    assert_eq!(candidates.rows.len(), 1, "{candidates:?}");
    assert_eq!(candidates.rows[0]["pid"], slow_pid);
    assert!(again.actions.iter().any(|a| a.id == "create_index"));

    end_slow_query(t, setup, slow_pid, running).await;
}

fn index_action(params: [&str; 3], lock_timeout_ms: u64) -> ActionInstance {
    serde_json::from_value(json!({
        "id": "create_index", "title": "t", "kind": "create_index", "risk": "disruptive",
        "approvers": [], "quorum": 1, "target": "main",
        "params": params, "lock_timeout_ms": lock_timeout_ms,
    }))
    .expect("action")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_that_times_out_on_a_lock_leaves_no_invalid_index_behind() {
    let t = target().await;
    let mut setup = t.connect().await;
    big_table(&mut setup).await;
    // An open writing transaction: CREATE INDEX CONCURRENTLY registers the
    // index, then waits for it, and gives up at its lock_timeout.
    let mut writer = t.connect().await;
    sqlx::raw_sql("begin; insert into audit_logs values (0, 0, 'w')")
        .execute(&mut writer)
        .await
        .expect("writer");
    let diagnoser = t.engine.diagnoser.clone();
    let build = tokio::spawn(async move {
        remedy::actions::ddl::create_index(
            &diagnoser,
            &index_action(["public", "audit_logs", "tenant_id"], 300),
        )
        .await
    });
    // The leftover's drop waits for the same writer; end the writer then.
    wait_until("the invalid leftover's drop to wait", async || {
        t.scalar::<bool>(
            "select exists (select 1 from pg_stat_activity
               where query like 'drop index concurrently%' and wait_event_type = 'Lock')",
        )
        .await
    })
    .await;
    assert!(
        !t.scalar::<bool>(
            "select indisvalid from pg_index where indexrelid = 'public.idx_audit_logs_tenant_id'::regclass"
        )
        .await,
        "the leftover is invalid while it waits"
    );
    sqlx::raw_sql("rollback")
        .execute(&mut writer)
        .await
        .expect("rollback");
    let outcome = build.await.expect("build task");
    assert_eq!(outcome.state, "failed", "{}", outcome.output);
    assert!(
        outcome.output.contains("lock timeout"),
        "{}",
        outcome.output
    );
    assert!(
        outcome
            .output
            .contains("the invalid index it left was dropped"),
        "{}",
        outcome.output
    );
    let left: i64 = t
        .scalar("select count(*) from pg_class where relname = 'idx_audit_logs_tenant_id'")
        .await;
    assert_eq!(left, 0);
}

#[tokio::test]
async fn hostile_table_and_column_names_are_quoted_by_the_server() {
    let t = target().await;
    let mut setup = t.connect().await;
    sqlx::raw_sql(
        r#"create table "Audit ""Logs""; drop table keep" ("Tenant Id" int, note text);
           create table keep (id int)"#,
    )
    .execute(&mut setup)
    .await
    .expect("tables");
    let table = r#"Audit "Logs"; drop table keep"#;
    let outcome = remedy::actions::ddl::create_index(
        &t.engine.diagnoser,
        &index_action(["public", table, "Tenant Id"], 1000),
    )
    .await;
    assert_eq!(outcome.state, "done", "{}", outcome.output);
    let output: Value = serde_json::from_str(&outcome.output).expect("json");
    assert_eq!(
        output["statement"],
        r#"create index concurrently "idx_Audit ""Logs""; drop table keep_Tenant Id" on public."Audit ""Logs""; drop table keep" ("Tenant Id")"#
    );
    assert!(
        t.scalar::<bool>("select to_regclass('public.keep') is not null")
            .await
    );
    // A column the table does not have is refused before anything runs.
    let missing = remedy::actions::ddl::create_index(
        &t.engine.diagnoser,
        &index_action(["public", table, "note,nope"], 1000),
    )
    .await;
    assert_eq!(missing.state, "refused", "{}", missing.output);
    assert!(missing.output.contains("`nope`"), "{}", missing.output);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaking_roles_idle_timeout_is_set_with_its_previous_value_and_undone_with_only_the_documented_grants()
 {
    let mut t = least_privilege_target().await;
    t.grant(&t.role().role_setting_grants()).await;
    t.set_var("DatabaseIdleInTransaction", "idle_threshold", json!("1s"));
    let role = format!("remedy_t_app_{}", uuid::Uuid::now_v7().simple());
    let mut admin = t.connect().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("create role {role} login")))
        .execute(&mut admin)
        .await
        .expect("role");
    let mut leak = t.connect_as(&role).await;
    sqlx::raw_sql("begin; select 1")
        .execute(&mut leak)
        .await
        .expect("leak");
    wait_until(
        "the session to idle in transaction for over a second",
        async || {
            t.scalar::<bool>(&format!(
            "select exists (select 1 from pg_stat_activity where usename = '{role}'
               and state = 'idle in transaction' and now() - state_change > interval '1.2 seconds')"
        ))
            .await
        },
    )
    .await;

    let report = t.diagnose("DatabaseIdleInTransaction").await;
    let roles = &report.steps["leaking_roles"];
    assert_eq!(roles.rows.len(), 1, "{roles:?}");
    assert_eq!(roles.rows[0]["role"], role.as_str());
    assert_eq!(roles.rows[0]["previous"], Value::Null);
    let set = action(&report, "set_idle_timeout");
    assert_eq!(set.params, [role.as_str(), "300000"]);
    assert_eq!(
        set.setting.as_deref(),
        Some("idle_in_transaction_session_timeout")
    );
    let undo = action(&report, "revert_idle_timeout");
    assert_eq!(undo.params, [role.as_str(), ""]);

    let settings = t.engine.executor.clone();
    // The undo before the change: its precondition does not hold.
    let early = remedy::actions::ddl::role_setting(&t.engine.diagnoser, &settings, undo).await;
    assert_eq!(early.state, "precondition_failed", "{}", early.output);

    let done = remedy::actions::ddl::role_setting(&t.engine.diagnoser, &settings, set).await;
    assert_eq!(done.state, "done", "{}", done.output);
    let output: Value = serde_json::from_str(&done.output).expect("json");
    assert_eq!(output["previous"], Value::Null);
    assert_eq!(output["now"], "300000");
    assert_eq!(
        output["statement"],
        format!("alter role {role} set idle_in_transaction_session_timeout = '300000'")
    );
    let stored: Vec<String> = {
        let mut conn = t.connect().await;
        sqlx::query_scalar(
            "select unnest(setconfig) from pg_db_role_setting d join pg_roles r on r.oid = d.setrole
              where r.rolname = $1 and d.setdatabase = 0",
        )
        .bind(&role)
        .fetch_all(&mut conn)
        .await
        .expect("settings")
    };
    assert_eq!(stored, ["idle_in_transaction_session_timeout=300000"]);

    let undone = remedy::actions::ddl::role_setting(&t.engine.diagnoser, &settings, undo).await;
    assert_eq!(undone.state, "done", "{}", undone.output);
    let output: Value = serde_json::from_str(&undone.output).expect("json");
    assert_eq!(output["previous"], "300000");
    assert_eq!(output["now"], Value::Null);

    // Superusers are never changed.
    let mut superuser = set.clone();
    superuser.params = vec!["postgres".into(), "1000".into()];
    let refused =
        remedy::actions::ddl::role_setting(&t.engine.diagnoser, &settings, &superuser).await;
    assert_eq!(refused.state, "refused", "{}", refused.output);

    drop(leak);
    wait_until("the role's session to end", async || {
        !t.scalar::<bool>(&format!(
            "select exists (select 1 from pg_stat_activity where usename = '{role}')"
        ))
        .await
    })
    .await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("drop role {role}")))
        .execute(&mut admin)
        .await
        .expect("drop role");
    drop(admin);
    t.drop_roles().await;
}
