//! `remedy doctor` against real parts: a PostgreSQL role with and without
//! the grants the shipped playbooks need (their explain step, create_index
//! and role_setting actions included), an Alertmanager-like endpoint that
//! checks its bearer token, a Prometheus query endpoint, and the Slack fake's
//! `auth.test`. Each missing piece is a failing line with its exact fix, and
//! running those fixes is enough.

mod common;

use std::process::Command;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use common::{Backend, fake_chat::FakeChat};
use sqlx::Connection;

const AM_TOKEN: &str = "doctor-am-token";

/// `GET /api/v2/status` answering 200 only with the right bearer token, and
/// `GET /api/v1/query` answering a Prometheus vector.
async fn fake_monitoring() -> String {
    let app = Router::new()
        .route(
            "/api/v2/status",
            get(|headers: HeaderMap| async move {
                let ok = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    == Some(&format!("Bearer {AM_TOKEN}"));
                if ok {
                    (StatusCode::OK, r#"{"cluster":{"status":"ready"}}"#)
                } else {
                    (StatusCode::UNAUTHORIZED, "unauthorized")
                }
            }),
        )
        .route(
            "/api/v1/query",
            get(|| async {
                r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"1"]}]}}"#
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

async fn admin(url: &str) -> sqlx::PgConnection {
    sqlx::PgConnection::connect(url).await.expect("admin")
}

/// The fixes doctor printed for `target main`, in order.
fn target_fixes(text: &str) -> Vec<String> {
    let mut fixes = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.starts_with("FAIL target main:")
            && let Some(fix) = lines.peek().and_then(|l| l.trim().strip_prefix("fix: "))
        {
            fixes.push(fix.to_owned());
        }
    }
    fixes
}

/// A compose project folder for `[compose.app]`: one tiny service; `ps`
/// needs the engine (DOCKER_HOST, as `.ci/run` exports it), not the image.
fn compose_project() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("remedy-doctor-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("project dir");
    std::fs::write(
        dir.join("docker-compose.yml"),
        "version: \"3\"\nservices:\n  api:\n    image: debian:bookworm-slim\n    network_mode: host\n",
    )
    .expect("compose file");
    std::fs::write(dir.join(".env"), "POSTGRES_POOL_SIZE=10\n").expect(".env");
    dir
}

fn doctor(
    target: &str,
    monitoring: &str,
    slack: &str,
    am_token: &str,
    slack_token: &str,
) -> (bool, String) {
    doctor_with(target, monitoring, slack, am_token, slack_token, &[])
}

fn doctor_with(
    target: &str,
    monitoring: &str,
    slack: &str,
    am_token: &str,
    slack_token: &str,
    extra: &[(&str, String)],
) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_remedy"));
    cmd.env_remove("RUST_LOG");
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("REMEDY__")) {
        cmd.env_remove(key);
    }
    let out = cmd
        .arg("doctor")
        .env("REMEDY__INTAKE__BEARER_TOKEN", "t")
        .env("REMEDY__TARGETS__MAIN__URL", target)
        .env("REMEDY__PROMETHEUS__URL", monitoring)
        .env("REMEDY__ALERTMANAGER__URL", monitoring)
        .env("REMEDY__ALERTMANAGER__BEARER_TOKEN", am_token)
        .env("REMEDY__CHAT__PLATFORM", "slack")
        .env("REMEDY__CHAT__DEFAULT_CHANNEL", "C0DOCTOR")
        .env("REMEDY__CHAT__SLACK__API_URL", format!("{slack}/slack/api"))
        .env("REMEDY__CHAT__SLACK__BOT_TOKEN", slack_token)
        .env("REMEDY__CHAT__SLACK__SIGNING_SECRET", "doctor-signing")
        .env("REMEDY__REDIS__CACHE__URL", "redis://127.0.0.1:6379/9")
        .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_names_each_missing_grant_and_refused_credential_with_its_fix() {
    let db = common::fresh_store_url(Backend::Postgres).await;
    let role = format!("remedy_doctor_{}", uuid::Uuid::now_v7().simple());
    let owner = format!("remedy_doctor_owner_{}", uuid::Uuid::now_v7().simple());
    let mut conn = admin(&db).await;
    // The application's table, owned by a role of its own (not remedy's).
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "create role {role} login; create role {owner};
         create table orders (id int, customer_id int);
         alter table orders owner to {owner}"
    )))
    .execute(&mut conn)
    .await
    .expect("create roles and table");
    let target = db.replacen("postgres@", &format!("{role}@"), 1);
    let monitoring = fake_monitoring().await;
    let slack = FakeChat::start().await;

    let docker_host = std::env::var("DOCKER_HOST").expect(
        "DOCKER_HOST names the test Docker engine: run `contrib/ci/docker.sh start` and `eval \"$(contrib/ci/docker.sh env)\"`",
    );
    let project = compose_project();
    let compose = |dir: &std::path::Path| {
        vec![
            (
                "REMEDY__COMPOSE__APP__PROGRAM",
                "/usr/bin/docker-compose".to_owned(),
            ),
            (
                "REMEDY__COMPOSE__APP__PROJECT_DIR",
                dir.display().to_string(),
            ),
            (
                "REMEDY__COMMANDS__ALLOW",
                "/usr/bin/docker-compose".to_owned(),
            ),
            ("REMEDY__COMMANDS__ENV", "PATH,HOME,DOCKER_HOST".to_owned()),
            ("DOCKER_HOST", docker_host.clone()),
            (
                "REMEDY__ENV_FILES__APP__PATH",
                dir.join(".env").display().to_string(),
            ),
        ]
    };

    // A bare role, a wrong Alertmanager token, a wrong Slack token, a
    // compose project whose folder (and env file) is not there.
    let (ok, text) = doctor_with(
        &target,
        &monitoring,
        &slack.url,
        "wrong",
        "xoxb-wrong",
        &compose(&project.join("missing")),
    );
    assert!(!ok, "{text}");
    assert!(text.contains("ok   target main: connected to"), "{text}");
    assert!(
        text.contains(&format!("fix: GRANT pg_monitor TO \"{role}\";")),
        "{text}"
    );
    assert!(
        text.contains(&format!("fix: GRANT pg_signal_backend TO \"{role}\";")),
        "{text}"
    );
    assert!(text.contains("ok   prometheus:"), "{text}");
    assert!(
        text.contains("FAIL alertmanager") && text.contains("refused remedy's credentials (401"),
        "{text}"
    );
    assert!(
        text.contains("FAIL chat slack: auth.test refused the bot token: not_authed"),
        "{text}"
    );
    assert!(text.contains("FAIL compose app:"), "{text}");
    assert!(
        text.contains("FAIL env_file app: cannot read") && text.contains("env_files.app.path"),
        "{text}"
    );
    assert!(text.contains("ok   redis cache: answers INFO"), "{text}");
    assert!(text.contains("doctor: 10 of"), "{text}");

    // The README's two predefined roles are not all the shipped playbooks
    // need: their explain step reads the application's tables, create_index
    // builds on them, role_setting alters roles. Each is named with its fix.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "grant pg_monitor to {role}; grant pg_signal_backend to {role}"
    )))
    .execute(&mut conn)
    .await
    .expect("grant");
    let (ok, text) = doctor_with(
        &target,
        &monitoring,
        &slack.url,
        AM_TOKEN,
        common::fake_chat::SLACK_TOKEN,
        &compose(&project),
    );
    assert!(!ok, "{text}");
    for failure in [
        format!(
            "FAIL target main: {role} cannot read 1 of the 1 table(s) in schema public (orders): explain steps cannot plan"
        ),
        format!(
            "FAIL target main: {role} does not have the privileges of {owner}, which owns 1 table(s) in public: create_index actions on them fail"
        ),
        format!("FAIL target main: {role} may not CREATE in schema public: create_index actions"),
        format!(
            "FAIL target main: {role} does not have CREATEROLE: role_setting actions (ALTER ROLE … SET) fail"
        ),
    ] {
        assert!(text.contains(&failure), "{failure}\n{text}");
    }
    let fixes = target_fixes(&text);
    assert_eq!(
        fixes,
        [
            format!(
                "GRANT SELECT ON ALL TABLES IN SCHEMA \"public\" TO \"{role}\"; \
                 ALTER DEFAULT PRIVILEGES FOR ROLE \"{owner}\" IN SCHEMA \"public\" GRANT SELECT ON TABLES TO \"{role}\";"
            ),
            format!("GRANT \"{owner}\" TO \"{role}\";"),
            format!("GRANT CREATE ON SCHEMA \"public\" TO \"{role}\";"),
            format!("ALTER ROLE \"{role}\" CREATEROLE;"),
        ],
        "{text}"
    );
    assert!(text.contains("doctor: 4 of"), "{text}");

    // What the fixes say, run as they are printed: nothing missing.
    for fix in &fixes {
        sqlx::raw_sql(sqlx::AssertSqlSafe(fix.clone()))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{fix}: {e}"));
    }
    let (ok, text) = doctor_with(
        &target,
        &monitoring,
        &slack.url,
        AM_TOKEN,
        common::fake_chat::SLACK_TOKEN,
        &compose(&project),
    );
    assert!(ok, "{text}");
    assert!(!text.contains("FAIL") && !text.contains("warn"), "{text}");
    assert!(
        text.contains("ok   compose app: `/usr/bin/docker-compose --project-directory"),
        "{text}"
    );
    assert!(
        text.contains("ok   env_file app:") && text.contains("writable (backup and replace)"),
        "{text}"
    );
    let probes: Vec<_> = std::fs::read_dir(&project)
        .expect("dir")
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".remedy-doctor-")
        })
        .collect();
    assert!(
        probes.is_empty(),
        "doctor leaves no file behind: {probes:?}"
    );
    assert!(
        text.contains("ok   chat slack: auth.test: bot remedy in workspace remedy-tests"),
        "{text}"
    );
    assert!(text.contains("nothing missing"), "{text}");

    // A superuser passes, with a warning that it holds far more than needed.
    let (ok, text) = doctor_with(
        &db,
        &monitoring,
        &slack.url,
        AM_TOKEN,
        common::fake_chat::SLACK_TOKEN,
        &compose(&project),
    );
    assert!(ok, "{text}");
    assert!(
        text.contains("warn target main: postgres is a superuser"),
        "{text}"
    );

    // Nothing listening: the target fails with a connection error.
    let (ok, text) = doctor(
        "postgres://remedy@127.0.0.1:9/none",
        &monitoring,
        &slack.url,
        AM_TOKEN,
        common::fake_chat::SLACK_TOKEN,
    );
    assert!(!ok, "{text}");
    assert!(text.contains("FAIL target main: cannot connect"), "{text}");

    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "drop owned by {role}, {owner}; drop role {role}; drop role {owner}"
    )))
    .execute(&mut conn)
    .await
    .expect("drop roles");
    conn.close().await.ok();
    common::drop_database(&db).await;
}
