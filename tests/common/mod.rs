//! Test harness: each test gets its own store (a fresh SQLite file or a
//! fresh PostgreSQL database on the local server), the real router called
//! in-process, and helpers to post webhooks and read the API.
#![allow(dead_code, reason = "each test binary uses its own subset")]

pub mod docker;
pub mod fake_alertmanager;
pub mod fake_chat;
pub mod fake_mattermost;
pub mod fake_pager;

use std::path::{Path, PathBuf};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use remedy::app::App;
use remedy::config::Settings;
use remedy::store::Store;
use serde_json::Value;
use sqlx::Connection;
use tower::ServiceExt;

pub const WEBHOOK_TOKEN: &str = "webhook-test-token";
pub const BASIC_USER: &str = "alertmanager";
pub const BASIC_PASSWORD: &str = "basic-test-password";
pub const API_TOKEN: &str = "api-test-token";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Where the tests' PostgreSQL server is; each test creates its own database.
pub fn postgres_admin_url() -> String {
    std::env::var("REMEDY_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh, empty store URL for one test.
pub async fn fresh_store_url(backend: Backend) -> String {
    let name = format!("remedy_t_{}", uuid::Uuid::now_v7().simple());
    match backend {
        Backend::Sqlite => {
            let dir = std::env::temp_dir().join("remedy-tests");
            std::fs::create_dir_all(&dir).expect("temp dir");
            let path: PathBuf = dir.join(format!("{name}.db"));
            format!("sqlite://{}", path.display())
        }
        Backend::Postgres => {
            let admin = postgres_admin_url();
            let mut conn = sqlx::PgConnection::connect(&admin)
                .await
                .expect("PostgreSQL is running for tests");
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("create database {name}")))
                .execute(&mut conn)
                .await
                .expect("create test database");
            let (base, _) = admin.rsplit_once('/').expect("admin url has a database");
            format!("{base}/{name}")
        }
    }
}

/// Drops a database [`fresh_store_url`] made, its sessions ended first:
/// for tests that make roles, which cannot be dropped while a database
/// still holds their grants.
pub async fn drop_database(url: &str) {
    let Some((_, name)) = url.rsplit_once('/') else {
        return;
    };
    let mut conn = sqlx::PgConnection::connect(&postgres_admin_url())
        .await
        .expect("PostgreSQL is running for tests");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "drop database if exists {name} with (force)"
    )))
    .execute(&mut conn)
    .await
    .expect("drop test database");
    let _ = conn.close().await;
}

/// Settings for tests: both kinds of webhook credentials and an API token.
pub fn test_settings(store_url: &str, extra: &[(&str, &str)]) -> Settings {
    test_settings_with_file(store_url, None, extra)
}

/// [`test_settings`] with a settings file layered under the environment.
pub fn test_settings_with_file(
    store_url: &str,
    file: Option<&Path>,
    extra: &[(&str, &str)],
) -> Settings {
    let mut env: Vec<(String, String)> = vec![
        ("REMEDY__STORE__URL".into(), store_url.into()),
        ("REMEDY__STORE__MAX_CONNECTIONS".into(), "4".into()),
        ("REMEDY__INTAKE__BEARER_TOKEN".into(), WEBHOOK_TOKEN.into()),
        (
            "REMEDY__INTAKE__BASIC_AUTH__USERNAME".into(),
            BASIC_USER.into(),
        ),
        (
            "REMEDY__INTAKE__BASIC_AUTH__PASSWORD".into(),
            BASIC_PASSWORD.into(),
        ),
        ("REMEDY__API__TOKEN".into(), API_TOKEN.into()),
        // No playbooks unless a test asks for them, so intake tests do not
        // diagnose against real databases.
        (
            "REMEDY__PLAYBOOKS__DIR".into(),
            empty_dir().display().to_string(),
        ),
    ];
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    Settings::load_from(file, env).expect("test settings are valid")
}

/// An empty folder (no playbooks).
pub fn empty_dir() -> PathBuf {
    let dir = std::env::temp_dir().join("remedy-tests-empty");
    std::fs::create_dir_all(&dir).expect("empty dir");
    dir
}

/// The shipped playbooks.
pub fn playbooks_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("playbooks")
}

pub struct TestApp {
    pub app: App,
    pub router: Router,
    pub store: Store,
    pub store_url: String,
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, &[]).await
}

pub async fn spawn_app_with(backend: Backend, extra: &[(&str, &str)]) -> TestApp {
    spawn_app_with_file(backend, None, extra).await
}

/// An app whose settings also come from a TOML text (lists and tables that
/// environment variables cannot express, such as approver roles).
pub async fn spawn_app_with_toml(backend: Backend, toml: &str, extra: &[(&str, &str)]) -> TestApp {
    let file = std::env::temp_dir().join(format!("remedy-test-{}.toml", uuid::Uuid::now_v7()));
    std::fs::write(&file, toml).expect("write settings");
    spawn_app_with_file(backend, Some(&file), extra).await
}

async fn spawn_app_with_file(
    backend: Backend,
    file: Option<&Path>,
    extra: &[(&str, &str)],
) -> TestApp {
    let store_url = fresh_store_url(backend).await;
    let app = App::build(test_settings_with_file(&store_url, file, extra))
        .await
        .expect("app builds");
    TestApp {
        router: app.router(),
        store: app.state.store.clone(),
        app,
        store_url,
    }
}

pub fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A firing notification for one alert with the given fingerprint.
pub fn firing(fingerprint: &str, starts_at: &str) -> String {
    one_alert("firing", fingerprint, starts_at, "0001-01-01T00:00:00Z")
}

pub fn resolved(fingerprint: &str, starts_at: &str, ends_at: &str) -> String {
    one_alert("resolved", fingerprint, starts_at, ends_at)
}

fn one_alert(status: &str, fingerprint: &str, starts_at: &str, ends_at: &str) -> String {
    serde_json::json!({
        "receiver": "remedy",
        "status": status,
        "alerts": [{
            "status": status,
            "labels": {"alertname": "DatabaseIdleInTransaction", "severity": "warning", "fp": fingerprint},
            "annotations": {"summary": "idle in transaction"},
            "startsAt": starts_at,
            "endsAt": ends_at,
            "generatorURL": "http://prometheus/graph",
            "fingerprint": fingerprint
        }],
        "groupLabels": {"alertname": "DatabaseIdleInTransaction"},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "version": "4",
        "groupKey": "{}:{alertname=\"DatabaseIdleInTransaction\"}",
        "truncatedAlerts": 0
    })
    .to_string()
}

pub struct Reply {
    pub status: StatusCode,
    pub json: Value,
}

impl TestApp {
    /// Posts a webhook with the bearer token and a JSON content type.
    pub async fn post_webhook(&self, body: impl Into<Body>) -> Reply {
        self.post_webhook_with(
            body,
            Some(&format!("Bearer {WEBHOOK_TOKEN}")),
            Some("application/json"),
        )
        .await
    }

    pub async fn post_webhook_with(
        &self,
        body: impl Into<Body>,
        authorization: Option<&str>,
        content_type: Option<&str>,
    ) -> Reply {
        let mut request = Request::post("/v1/alertmanager");
        if let Some(a) = authorization {
            request = request.header(header::AUTHORIZATION, a);
        }
        if let Some(c) = content_type {
            request = request.header(header::CONTENT_TYPE, c);
        }
        send(&self.router, request.body(body.into()).expect("request")).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        let mut request = Request::get(path);
        if let Some(t) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        send(&self.router, request.body(Body::empty()).expect("request")).await
    }

    pub async fn api(&self, path: &str) -> Value {
        let reply = self.get(path, Some(API_TOKEN)).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.json);
        reply.json
    }

    /// Rows in a table, read straight from the store.
    pub async fn count(&self, table: &str) -> i64 {
        scalar(&self.store, &format!("select count(*) from {table}")).await
    }

    /// Rows per table in the tables intake writes, to prove nothing changed.
    pub async fn snapshot(&self) -> [i64; 4] {
        [
            self.count("notifications").await,
            self.count("incidents").await,
            self.count("incident_events").await,
            self.count("work").await,
        ]
    }

    pub async fn incidents(&self, query: &str) -> Vec<Value> {
        self.api(&format!("/v1/incidents?{query}")).await["incidents"]
            .as_array()
            .expect("incidents array")
            .clone()
    }
}

/// One value read straight from either store.
pub async fn scalar<T>(store: &Store, sql: &str) -> T
where
    T: Send + Unpin,
    for<'r> (T,):
        sqlx::FromRow<'r, sqlx::sqlite::SqliteRow> + sqlx::FromRow<'r, sqlx::postgres::PgRow>,
{
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    match store {
        Store::Sqlite(p, _) => sqlx::query_scalar(sql).fetch_one(p).await.expect("query"),
        Store::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await.expect("query"),
    }
}

/// Runs one statement straight on either store.
pub async fn execute(store: &Store, sql: &str) {
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    match store {
        Store::Sqlite(p, _) => sqlx::query(sql).execute(p).await.map(|_| ()),
        Store::Postgres(p) => sqlx::query(sql).execute(p).await.map(|_| ()),
    }
    .expect("statement");
}

/// Every row of one column read straight from either store.
pub async fn column<T>(store: &Store, sql: &str) -> Vec<T>
where
    T: Send + Unpin,
    for<'r> (T,):
        sqlx::FromRow<'r, sqlx::sqlite::SqliteRow> + sqlx::FromRow<'r, sqlx::postgres::PgRow>,
{
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    match store {
        Store::Sqlite(p, _) => sqlx::query_scalar(sql).fetch_all(p).await.expect("query"),
        Store::Postgres(p) => sqlx::query_scalar(sql).fetch_all(p).await.expect("query"),
    }
}

pub async fn send(router: &Router, request: Request<Body>) -> Reply {
    let response = router
        .clone()
        .oneshot(request)
        .await
        .expect("router answers");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    Reply { status, json }
}

/// Generates one `#[tokio::test]` per backend for each named async fn that
/// takes a [`Backend`].
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name($crate::common::Backend::Sqlite).await } )*
        }
        mod postgres {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name($crate::common::Backend::Postgres).await } )*
        }
    };
}

/// A change and its undo (`undoes:`), both `/bin/echo` (in
/// `commands.allow`), for the ChatTest alert: the chat tests run them for
/// real on each platform (both `safe`: one click each, no dialog).
pub const UNDO_PLAYBOOK: &str = r#"
name: UndoChat
match: ['alertname="ChatTest"']
actions:
  - id: pin
    title: Pin {{ labels.service }}
    kind: command
    risk: safe
    approvers: [oncall]
    program: /bin/echo
    args: [pin, "{{ labels.service }}"]
  - id: unpin
    title: "Undo: unpin {{ labels.service }}"
    kind: command
    risk: safe
    approvers: [oncall]
    undoes: pin
    program: /bin/echo
    args: [unpin, "{{ labels.service }}"]
"#;
