//! The processes and databases one end-to-end test starts, each behind a
//! guard that ends it when the test ends, panic or not: the `remedy` binary
//! (`remedy serve`), Debian's Alertmanager and Prometheus, a private
//! PostgreSQL server (for store outages), and per-test databases on the
//! local PostgreSQL. Every child gets a free loopback port and a private
//! folder, so tests run in parallel.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::{Connection, PgConnection};

use crate::common::{self, Backend};

pub const ALERTMANAGER: &str = "/usr/bin/prometheus-alertmanager";
pub const AMTOOL: &str = "/usr/bin/amtool";
pub const PROMETHEUS: &str = "/usr/bin/prometheus";
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The role the tests' "application" sessions use (not a superuser: remedy
/// never touches superusers' sessions).
pub const APP_ROLE: &str = "remedy_e2e_app";

/// The role remedy itself connects to its target as, in every end-to-end
/// test: what the README's least-privilege section grants (`pg_monitor`,
/// `pg_signal_backend`), not a superuser, so the shipped playbooks are
/// shown to work with exactly that.
pub const REMEDY_ROLE: &str = "remedy_e2e_monitor";

/// The target URL (a superuser's, as the tests create databases) turned
/// into the same database as [`REMEDY_ROLE`], the role created and granted
/// first when missing. A URL that does not answer is returned as it is
/// (the tests of an unreachable target).
async fn least_privilege(url: &str) -> String {
    if !url.contains("//postgres@") {
        return url.to_owned();
    }
    let Ok(Ok(mut conn)) =
        tokio::time::timeout(Duration::from_secs(5), PgConnection::connect(url)).await
    else {
        return url.to_owned();
    };
    let grant = format!(
        "do $$ begin create role {REMEDY_ROLE} login;
            exception when duplicate_object or unique_violation then null; end $$;
         grant pg_monitor, pg_signal_backend to {REMEDY_ROLE};"
    );
    // Tests starting at once may grant at once ("tuple concurrently updated").
    for _ in 0..10 {
        if sqlx::raw_sql(sqlx::AssertSqlSafe(grant.clone()))
            .execute(&mut conn)
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = conn.close().await;
    url.replacen("//postgres@", &format!("//{REMEDY_ROLE}@"), 1)
}

/// A port nobody listens on right now (the child binds it; a clash with a
/// parallel test is detected by the readiness checks, which ask for
/// something only this test's child knows, and retried).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::now_v7().simple())
}

/// Polls `probe` every 100 ms until it returns `Some`, or panics after
/// `timeout` naming what was awaited.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A private folder for one test (settings, playbooks, storage, each
/// child's log), removed when the test passes; kept and named on stderr
/// when it fails or when `REMEDY_E2E_KEEP` is set.
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(unique("remedy-e2e-"));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).expect("write scratch file");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("REMEDY_E2E_KEEP").is_some() {
            eprintln!("e2e: test files kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A child process whose output goes to a log file. Dropping it kills it
/// (SIGKILL) and reaps it; when the test is failing, the log's tail is
/// printed first.
pub struct Proc {
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, command: &mut Command, log: PathBuf) -> Self {
        let out = File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        // Settings from the developer's shell must not leak into children.
        for (key, _) in std::env::vars() {
            if key.starts_with("REMEDY") {
                command.env_remove(key);
            }
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("{name} does not start: {e}"));
        Self {
            name: name.to_owned(),
            child,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL, and wait until it is gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal by name (`INT`, `TERM`) with kill(1).
    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !self.running() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn tail(&self, lines: usize) -> String {
        let Ok(file) = File::open(&self.log) else {
            return String::new();
        };
        let all: Vec<String> = BufReader::new(file).lines().map_while(Result::ok).collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- e2e: {} (pid {}) log, last lines -----\n{}\n-----",
                self.name,
                self.pid(),
                self.tail(80)
            );
        }
        self.kill();
    }
}

/// The HTTP client tests use toward their children.
pub fn http() -> reqwest::Client {
    remedy::net::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// Starts a child on a fresh port until `ready(port)` says it is this
/// test's child (a port taken meanwhile by someone else fails the check,
/// or makes the child exit, and another port is tried).
async fn start_on_free_port<F, Fut>(
    name: &str,
    scratch: &Scratch,
    mut command: impl FnMut(u16) -> Command,
    mut ready: F,
) -> (Proc, u16)
where
    F: FnMut(u16) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for attempt in 0..3 {
        let port = free_port();
        let mut proc = Proc::spawn(
            name,
            &mut command(port),
            scratch.path(&format!("{name}-{attempt}.log")),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if ready(port).await {
                return (proc, port);
            }
            if !proc.running() || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "e2e: {name} did not become ready on port {port}:\n{}",
            proc.log()
        );
        proc.kill();
    }
    panic!("{name} could not be started");
}

// ---------------------------------------------------------------------------
// PostgreSQL: per-test databases on the local server

/// A fresh database on the local PostgreSQL for the `main` target. The
/// shipped playbooks list (and act on) sessions of their target database
/// only, so sessions of tests running in parallel on the same server
/// (other databases) stay out of this test's reports.
pub struct TargetDb {
    pub url: String,
    pub name: String,
}

impl TargetDb {
    pub async fn create() -> Self {
        let url = common::fresh_store_url(Backend::Postgres).await;
        let name = url.rsplit('/').next().expect("database name").to_owned();
        let db = Self { url, name };
        db.prepare().await;
        db
    }

    /// (Re)creates the app role.
    pub async fn prepare(&self) {
        let mut conn = self.admin().await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "do $$ begin create role {APP_ROLE} login;
                exception when duplicate_object or unique_violation then null; end $$;"
        )))
        .execute(&mut conn)
        .await
        .expect("prepare target database");
    }

    /// A small pool of superuser connections to the database, for polling.
    pub fn admin_pool(&self) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy(&self.url)
            .expect("target url")
    }

    pub async fn admin(&self) -> PgConnection {
        self.connect_as("postgres", "e2e-admin").await
    }

    pub async fn connect_as(&self, user: &str, application: &str) -> PgConnection {
        let url = self.url.replacen("postgres@", &format!("{user}@"), 1);
        let mut conn = PgConnection::connect(&url)
            .await
            .expect("connect to the target database");
        sqlx::query("select set_config('application_name', $1, false)")
            .bind(application)
            .execute(&mut conn)
            .await
            .expect("application_name");
        conn
    }

    /// A session of the application role idle in transaction: the
    /// transaction leak of the runbook.
    pub async fn leak(&self, application: &str) -> (PgConnection, i32) {
        let mut conn = self.connect_as(APP_ROLE, application).await;
        sqlx::raw_sql("begin; select 1")
            .execute(&mut conn)
            .await
            .expect("begin");
        let pid = backend_pid(&mut conn).await;
        (conn, pid)
    }

    /// Waits until each pid has been idle in transaction for `seconds`.
    pub async fn wait_idle(&self, pids: &[i32], seconds: f64) {
        let admin = &self.admin_pool();
        wait_for(
            "sessions idle in transaction long enough",
            Duration::from_secs(20),
            || async move {
                let n: i64 = sqlx::query_scalar(
                    "select count(*) from pg_catalog.pg_stat_activity
                          where pid = any($1) and state = 'idle in transaction'
                            and now() - state_change > make_interval(secs => $2)",
                )
                .bind(pids)
                .bind(seconds)
                .fetch_one(admin)
                .await
                .expect("count idle");
                (usize::try_from(n).ok() == Some(pids.len())).then_some(())
            },
        )
        .await;
    }

    /// Whether a backend with this pid still exists (anywhere on the server).
    pub async fn alive(&self, pid: i32) -> bool {
        let mut admin = self.admin().await;
        let n: i64 =
            sqlx::query_scalar("select count(*) from pg_catalog.pg_stat_activity where pid = $1")
                .bind(pid)
                .fetch_one(&mut admin)
                .await
                .expect("count");
        n == 1
    }

    /// Makes the database unreachable: it refuses new connections and every
    /// session on it (remedy's too) is ended.
    pub async fn cut_off(&self) {
        self.server_admin(&format!(
            "alter database {name} allow_connections false;
             select pg_terminate_backend(pid) from pg_catalog.pg_stat_activity
              where datname = '{name}' and pid <> pg_backend_pid();",
            name = self.name
        ))
        .await;
    }

    /// Takes connections again.
    pub async fn restore(&self) {
        self.server_admin(&format!(
            "alter database {} allow_connections true",
            self.name
        ))
        .await;
    }

    async fn server_admin(&self, sql: &str) {
        let mut conn = PgConnection::connect(&common::postgres_admin_url())
            .await
            .expect("admin connection");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

pub async fn backend_pid(conn: &mut PgConnection) -> i32 {
    sqlx::query_scalar("select pg_backend_pid()")
        .fetch_one(conn)
        .await
        .expect("pid")
}

/// remedy's store: a fresh database on the local PostgreSQL.
pub struct StoreDb {
    pub url: String,
    pub pool: sqlx::PgPool,
}

impl StoreDb {
    pub async fn create() -> Self {
        let url = common::fresh_store_url(Backend::Postgres).await;
        Self::at(url)
    }

    /// A store at `url`, connected lazily (it may not exist yet).
    pub fn at(url: String) -> Self {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy(&url)
            .expect("store url");
        Self { url, pool }
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The id of the incident whose labels include `label=value`.
    pub async fn incident_with(&self, label: &str, value: &str) -> Option<i64> {
        sqlx::query_scalar("select id from incidents where labels ->> $1 = $2 order by id limit 1")
            .bind(label)
            .bind(value)
            .fetch_optional(&self.pool)
            .await
            .expect("incident query")
    }

    pub async fn wait_incident(&self, label: &str, value: &str) -> i64 {
        wait_for(
            &format!("an incident with {label}={value}"),
            Duration::from_secs(30),
            || self.incident_with(label, value),
        )
        .await
    }

    /// Pending (or leased) work of an incident.
    pub async fn pending_work(&self, incident: i64) -> i64 {
        sqlx::query_scalar("select count(*) from work where incident_id = $1 and state = 'pending'")
            .bind(incident)
            .fetch_one(&self.pool)
            .await
            .expect("work query")
    }
}

// ---------------------------------------------------------------------------
// PostgreSQL: a private server the test can stop and start

/// A PostgreSQL 15 server of the test's own (initdb in the scratch folder,
/// a free loopback port), run as the `postgres` user when the tests run as
/// root. Stopping and starting it is an honest store outage that leaves the
/// machine's server alone.
pub struct PrivatePostgres {
    data: PathBuf,
    sockets: PathBuf,
    pub port: u16,
    proc: Option<Proc>,
    log_dir: PathBuf,
    starts: u32,
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `program` as the `postgres` user when root (initdb and postgres refuse
/// root); setpriv execs, so the child's pid is the program's own.
fn as_postgres(program: &Path) -> Command {
    if running_as_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=postgres",
            "--regid=postgres",
            "--clear-groups",
            "--reset-env",
        ])
        .arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl PrivatePostgres {
    pub async fn start(scratch: &Scratch) -> Self {
        let root = scratch.path("private-pg");
        std::fs::create_dir_all(&root).expect("pg dir");
        if running_as_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&root)
                .status()
                .expect("chown");
            assert!(status.success(), "chown to postgres");
        }
        let data = root.join("data");
        let sockets = root.clone();
        let init = as_postgres(&Path::new(PG_BIN).join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
            .output()
            .expect("initdb runs");
        assert!(
            init.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let mut pg = Self {
            data,
            sockets,
            port: 0,
            proc: None,
            log_dir: scratch.dir.clone(),
            starts: 0,
        };
        pg.run(None).await;
        pg
    }

    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    async fn ready(&self) -> bool {
        let Ok(mut conn) = PgConnection::connect(&self.admin_url()).await else {
            return false;
        };
        // Our own server: its data directory is ours.
        sqlx::query_scalar::<_, String>("select current_setting('data_directory')")
            .fetch_one(&mut conn)
            .await
            .is_ok_and(|d| Path::new(&d) == self.data)
    }

    /// Starts the server, on `port` when given (a restart keeps its port).
    async fn run(&mut self, port: Option<u16>) {
        for attempt in 0..3 {
            let port = port.unwrap_or_else(free_port);
            self.port = port;
            self.starts += 1;
            let mut proc = Proc::spawn(
                "private-postgres",
                as_postgres(&Path::new(PG_BIN).join("postgres"))
                    .arg("-D")
                    .arg(&self.data)
                    .args(["-p", &port.to_string(), "-k"])
                    .arg(&self.sockets)
                    .args([
                        "-c",
                        "listen_addresses=127.0.0.1",
                        "-c",
                        "fsync=off",
                        "-c",
                        "max_connections=50",
                    ]),
                self.log_dir
                    .join(format!("private-postgres-{}.log", self.starts)),
            );
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline && proc.running() {
                if self.ready().await {
                    self.proc = Some(proc);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            eprintln!(
                "e2e: private PostgreSQL not ready on {port} (attempt {attempt}):\n{}",
                proc.log()
            );
            proc.kill();
        }
        panic!("the private PostgreSQL did not start");
    }

    /// Creates a database on it and gives its URL.
    pub async fn create_database(&self, name: &str) -> String {
        let mut conn = PgConnection::connect(&self.admin_url())
            .await
            .expect("private admin");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("create database {name}")))
            .execute(&mut conn)
            .await
            .expect("create database");
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Fast shutdown (SIGINT): sessions are ended, the port closes.
    pub fn stop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.signal("INT");
            if !proc.wait_exit(Duration::from_secs(20)) {
                proc.kill();
            }
        }
    }

    /// Starts it again on the same port and data.
    pub async fn restart(&mut self) {
        self.run(Some(self.port)).await;
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------------------
// remedy

pub const SLACK_SECRET: &str = "e2e-slack-signing-secret";
/// The Discord application's private key; remedy gets the public half.
pub const DISCORD_KEY: [u8; 32] = [42; 32];

/// Which chat remedy reports to.
#[derive(Clone)]
pub enum ChatTo {
    Console,
    Slack(String),
    Discord(String),
    /// A fake Mattermost server's API base (`…/api/v4`).
    Mattermost(String),
}

/// What one `remedy serve` process is given.
pub struct RemedyConfig {
    pub store_url: String,
    pub playbooks: PathBuf,
    pub target_url: String,
    pub chat: ChatTo,
    pub prometheus_url: String,
    pub alertmanager_url: String,
    pub pms_url: String,
    /// Extra `REMEDY__…` variables.
    pub env: Vec<(String, String)>,
}

impl RemedyConfig {
    pub fn new(store_url: &str, playbooks: &Path, target_url: &str, chat: ChatTo) -> Self {
        Self {
            store_url: store_url.to_owned(),
            playbooks: playbooks.to_owned(),
            target_url: target_url.to_owned(),
            chat,
            // Nothing listens on the discard port: promql and http steps fail fast.
            prometheus_url: "http://127.0.0.1:9".into(),
            alertmanager_url: "http://127.0.0.1:9".into(),
            pms_url: "http://127.0.0.1:9".into(),
            env: Vec::new(),
        }
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }
}

/// The approver roles the shipped playbooks name, held by Slack and
/// Discord users of the tests.
pub const APPROVERS: &str = r#"
[approvers.backend-developer]
slack_users = ["U0DEV"]
discord_users = ["1001"]
mattermost_users = ["mmdev000000000000000000000"]

[approvers.team-lead]
slack_users = ["U0LEAD"]
discord_users = ["1002"]
mattermost_users = ["mmlead00000000000000000000"]

[approvers.dba]
slack_users = ["U0DBA1", "U0DBA2"]
discord_users = ["1003"]

[approvers.on-call-engineer]
slack_users = ["U0ONCALL"]
discord_users = ["1004"]

[approvers.devops]
slack_users = ["U0DEVOPS"]
"#;

pub const WEBHOOK_TOKEN: &str = "e2e-webhook-token";

/// A running `remedy serve`.
pub struct Remedy {
    pub proc: Proc,
    pub url: String,
    /// Its read API's bearer token.
    pub api_token: String,
}

impl Remedy {
    pub async fn start(scratch: &Scratch, config: &RemedyConfig) -> Self {
        let name = unique("remedy-");
        let api_token = unique("api-");
        let (platform, slack_api, discord_api, channel) = match &config.chat {
            ChatTo::Console => ("console", String::new(), String::new(), ""),
            ChatTo::Slack(fake) => ("slack", format!("{fake}/slack/api"), String::new(), "C0E2E"),
            ChatTo::Discord(fake) => (
                "discord",
                String::new(),
                format!("{fake}/discord/api/v10"),
                "1000000000000000001",
            ),
            ChatTo::Mattermost(_) => (
                "mattermost",
                String::new(),
                String::new(),
                "e2echannel0000000000000000",
            ),
        };
        let mattermost_api = match &config.chat {
            ChatTo::Mattermost(api) => api.clone(),
            _ => "http://127.0.0.1:9/api/v4".to_owned(),
        };
        let public_key = hex::encode(
            ed25519_dalek::SigningKey::from_bytes(&DISCORD_KEY)
                .verifying_key()
                .to_bytes(),
        );
        let settings = format!(
            r#"
[worker]
poll_interval = "200ms"

[playbooks]
dir = "{playbooks}"

[prometheus]
url = "{prometheus}"

[alertmanager]
url = "{alertmanager}"

[probes]
pms = "{pms}"

[executor]
verify_after = "1s"

[chat]
platform = "{platform}"
default_channel = "{channel}"

[chat.slack]
api_url = "{slack_api}"

[chat.discord]
api_url = "{discord_api}"
public_key = "{public_key}"

[chat.mattermost]
api_url = "{mattermost_api}"
{APPROVERS}"#,
            playbooks = config.playbooks.display(),
            prometheus = config.prometheus_url,
            alertmanager = config.alertmanager_url,
            pms = config.pms_url,
        );
        let file = scratch.write(&format!("{name}.toml"), &settings);
        let target_url = least_privilege(&config.target_url).await;
        let client = http();
        let (proc, port) = start_on_free_port(
            &name,
            scratch,
            |port| {
                let mut c = Command::new(env!("CARGO_BIN_EXE_remedy"));
                c.arg("serve")
                    .arg("--config")
                    .arg(&file)
                    .env("REMEDY__SERVER__LISTEN", format!("127.0.0.1:{port}"))
                    .env("REMEDY__STORE__URL", &config.store_url)
                    .env("REMEDY__TARGETS__MAIN__URL", &target_url)
                    .env("REMEDY__INTAKE__BEARER_TOKEN", WEBHOOK_TOKEN)
                    .env("REMEDY__API__TOKEN", &api_token)
                    .env(
                        "REMEDY__CHAT__SLACK__BOT_TOKEN",
                        common::fake_chat::SLACK_TOKEN,
                    )
                    .env("REMEDY__CHAT__SLACK__SIGNING_SECRET", SLACK_SECRET)
                    .env(
                        "REMEDY__CHAT__DISCORD__BOT_TOKEN",
                        common::fake_chat::DISCORD_TOKEN,
                    )
                    .env(
                        "REMEDY__CHAT__MATTERMOST__BOT_TOKEN",
                        common::fake_mattermost::MATTERMOST_TOKEN,
                    )
                    .env(
                        "REMEDY__CHAT__MATTERMOST__CONTEXT_SECRET",
                        common::fake_mattermost::CONTEXT_SECRET,
                    )
                    // The Mattermost server sends clicks here: this
                    // process's own port.
                    .env(
                        "REMEDY__CHAT__MATTERMOST__INTERACTIONS_URL",
                        format!("http://127.0.0.1:{port}/v1/interactions/mattermost"),
                    )
                    .env(
                        "RUST_LOG",
                        std::env::var("REMEDY_E2E_LOG").unwrap_or_else(|_| "info,sqlx=warn".into()),
                    );
                for (k, v) in &config.env {
                    c.env(k, v);
                }
                c
            },
            |port| {
                // Only this test's remedy knows this API token.
                let request = client
                    .get(format!("http://127.0.0.1:{port}/v1/incidents"))
                    .bearer_auth(&api_token)
                    .send();
                async move { request.await.is_ok_and(|r| r.status().is_success()) }
            },
        )
        .await;
        Self {
            proc,
            url: format!("http://127.0.0.1:{port}"),
            api_token,
        }
    }

    /// `GET /v1/incidents?{query}` through its API, whatever its store.
    pub async fn incidents(&self, query: &str) -> Vec<Value> {
        let reply: Value = http()
            .get(format!("{}/v1/incidents?{query}", self.url))
            .bearer_auth(&self.api_token)
            .send()
            .await
            .expect("incident list answers")
            .json()
            .await
            .expect("incident list is JSON");
        reply["incidents"]
            .as_array()
            .or_else(|| reply.as_array())
            .cloned()
            .unwrap_or_default()
    }

    pub fn webhook_url(&self) -> String {
        format!("{}/v1/alertmanager", self.url)
    }

    /// A metric from its `/metrics`, summed over the matching label sets.
    pub async fn metric_sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_sum(&format!("{}/metrics", self.url), name, labels).await
    }

    pub async fn status(&self, path: &str) -> u16 {
        http()
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .map_or(0, |r| r.status().as_u16())
    }
}

/// Sums the samples of `name` carrying every one of `labels` (others may be
/// there too) in a Prometheus text page; 0 when the page cannot be read.
pub async fn metric_sum(url: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let Ok(reply) = http().get(url).send().await else {
        return 0.0;
    };
    let text = reply.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// ---------------------------------------------------------------------------
// Alertmanager and amtool

pub struct Alertmanager {
    _proc: Proc,
    pub url: String,
}

/// An alert's identity for amtool: its labels and its start.
pub struct Alert {
    pub labels: Vec<(String, String)>,
    pub starts_at: String,
}

impl Alert {
    /// Labels of an alert that started a second ago.
    pub fn new(labels: &[(&str, &str)]) -> Self {
        let start = time::OffsetDateTime::now_utc() - time::Duration::seconds(1);
        Self {
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            starts_at: rfc3339(start),
        }
    }
}

pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.replace_nanosecond(0)
        .expect("whole seconds")
        .format(&time::format_description::well_known::Rfc3339)
        .expect("RFC 3339")
}

impl Alertmanager {
    /// An Alertmanager whose one route sends every group, after 1 s, to
    /// each of `webhooks` (one receiver, one webhook_config per URL) with
    /// the bearer token remedy expects. No clustering.
    pub async fn start(scratch: &Scratch, webhooks: &[String]) -> Self {
        let receiver = unique("e2e-");
        let configs: String = webhooks
            .iter()
            .map(|url| {
                format!(
                    "      - url: {url}\n        send_resolved: true\n        max_alerts: 0\n        http_config:\n          authorization:\n            credentials: {WEBHOOK_TOKEN}\n"
                )
            })
            .collect();
        let config = format!(
            "route:\n  receiver: {receiver}\n  group_by: [alertname, instance]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: {receiver}\n    webhook_configs:\n{configs}"
        );
        let file = scratch.write(&format!("{receiver}.yml"), &config);
        let storage = scratch.path(&format!("{receiver}-data"));
        let client = http();
        let (proc, port) = start_on_free_port(
            "alertmanager",
            scratch,
            |port| {
                let mut c = Command::new(ALERTMANAGER);
                c.arg(format!("--config.file={}", file.display()))
                    .arg(format!("--storage.path={}", storage.display()))
                    .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                    .arg("--cluster.listen-address=")
                    .arg("--log.level=info");
                c
            },
            |port| {
                let request = client
                    .get(format!("http://127.0.0.1:{port}/api/v2/status"))
                    .send();
                let receiver = receiver.clone();
                async move {
                    match request.await {
                        Ok(r) if r.status().is_success() => {
                            r.json::<Value>().await.is_ok_and(|s| {
                                s["config"]["original"]
                                    .as_str()
                                    .is_some_and(|c| c.contains(&receiver))
                            })
                        }
                        _ => false,
                    }
                }
            },
        )
        .await;
        Self {
            _proc: proc,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    async fn amtool_add(&self, alert: &Alert, end: Option<&str>) {
        let mut command = tokio::process::Command::new(AMTOOL);
        command
            .arg(format!("--alertmanager.url={}", self.url))
            .args(["alert", "add"])
            .args(alert.labels.iter().map(|(k, v)| format!("{k}={v}")))
            .arg(format!("--start={}", alert.starts_at))
            .arg("--annotation=summary=raised by the e2e test");
        if let Some(end) = end {
            command.arg(format!("--end={end}"));
        }
        let out = command.output().await.expect("amtool runs");
        assert!(
            out.status.success(),
            "amtool alert add: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Posts the alert to `/api/v2/alerts` as one Prometheus replica does,
    /// with its own `startsAt` (and `endsAt` once it resolved).
    pub async fn post_as_prometheus(&self, alert: &Alert, ends_at: Option<&str>) {
        let labels: serde_json::Map<String, Value> = alert
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        let mut body = serde_json::json!({
            "labels": labels,
            "annotations": {"summary": "raised by the e2e test"},
            "startsAt": alert.starts_at,
            "generatorURL": "http://prometheus.e2e/graph",
        });
        if let Some(end) = ends_at {
            body["endsAt"] = Value::String(end.to_owned());
        }
        let reply = http()
            .post(format!("{}/api/v2/alerts", self.url))
            .json(&serde_json::json!([body]))
            .send()
            .await
            .expect("Alertmanager answers");
        assert!(
            reply.status().is_success(),
            "POST /api/v2/alerts: {}",
            reply.status()
        );
    }

    /// The usual manual resolve: `amtool alert add LABELS --end=NOW`, with
    /// no `--start` (Alertmanager then takes `endsAt` as `startsAt`).
    pub async fn resolve_by_hand(&self, alert: &Alert) {
        let end = rfc3339(time::OffsetDateTime::now_utc() - time::Duration::seconds(1));
        let out = tokio::process::Command::new(AMTOOL)
            .arg(format!("--alertmanager.url={}", self.url))
            .args(["alert", "add"])
            .args(alert.labels.iter().map(|(k, v)| format!("{k}={v}")))
            .arg(format!("--end={end}"))
            .output()
            .await
            .expect("amtool runs");
        assert!(
            out.status.success(),
            "amtool alert add --end: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Fires the alert (amtool alert add).
    pub async fn fire(&self, alert: &Alert) {
        self.amtool_add(alert, None).await;
    }

    /// Resolves it: the same alert again, ended a second ago.
    pub async fn resolve(&self, alert: &Alert) {
        let end = rfc3339(time::OffsetDateTime::now_utc() - time::Duration::seconds(1));
        self.amtool_add(alert, Some(&end)).await;
    }

    /// A metric from its `/metrics`, summed over the matching label sets.
    pub async fn metric_sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_sum(&format!("{}/metrics", self.url), name, labels).await
    }
}

// ---------------------------------------------------------------------------
// Prometheus

pub struct Prometheus {
    proc: Proc,
    config: PathBuf,
    pub url: String,
}

impl Prometheus {
    /// Scrapes `target` (host:port) every second.
    pub async fn start(scratch: &Scratch, target: &str) -> Self {
        Self::start_with_rules(scratch, target, None).await
    }

    /// Scrapes `target` every second and, with `rules`, evaluates that rule
    /// file every second (as written: its `for` durations are not changed).
    /// Alerts go nowhere until [`Self::send_alerts_to`].
    pub async fn start_with_rules(scratch: &Scratch, target: &str, rules: Option<&Path>) -> Self {
        let job = unique("e2e-");
        let mut config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
        );
        if let Some(rules) = rules {
            config.push_str(&format!("rule_files:\n  - '{}'\n", rules.display()));
        }
        let file = scratch.write(&format!("{job}.yml"), &config);
        let storage = scratch.path(&format!("{job}-tsdb"));
        let client = http();
        let (proc, port) = start_on_free_port(
            "prometheus",
            scratch,
            |port| {
                let mut c = Command::new(PROMETHEUS);
                c.arg(format!("--config.file={}", file.display()))
                    .arg(format!("--storage.tsdb.path={}", storage.display()))
                    .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                    .arg("--log.level=warn");
                c
            },
            |port| {
                let request = client
                    .get(format!("http://127.0.0.1:{port}/api/v1/status/config"))
                    .send();
                let job = job.clone();
                async move {
                    match request.await {
                        Ok(r) if r.status().is_success() => {
                            r.json::<Value>().await.is_ok_and(|s| {
                                s["data"]["yaml"].as_str().is_some_and(|y| y.contains(&job))
                            })
                        }
                        _ => false,
                    }
                }
            },
        )
        .await;
        Self {
            proc,
            config: file,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Adds the Alertmanager at `url` to the configuration, reloads it
    /// (SIGHUP), and waits until Prometheus lists it as active.
    pub async fn send_alerts_to(&self, url: &str) {
        let host = url.trim_start_matches("http://");
        let mut config = std::fs::read_to_string(&self.config).expect("prometheus config");
        config.push_str(&format!(
            "alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['{host}']\n"
        ));
        std::fs::write(&self.config, config).expect("write prometheus config");
        self.proc.signal("HUP");
        let api = format!("{}/api/v1/alertmanagers", self.url);
        wait_for(
            "Prometheus to use the Alertmanager",
            Duration::from_secs(30),
            || {
                let api = api.clone();
                let host = host.to_owned();
                async move {
                    let body: Value = http().get(&api).send().await.ok()?.json().await.ok()?;
                    body["data"]["activeAlertmanagers"]
                        .as_array()?
                        .iter()
                        .any(|a| a["url"].as_str().is_some_and(|u| u.contains(&host)))
                        .then_some(())
                }
            },
        )
        .await;
    }

    /// An instant query's result vector.
    pub async fn query(&self, promql: &str) -> Vec<Value> {
        let Ok(reply) = http()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", promql)])
            .send()
            .await
        else {
            return Vec::new();
        };
        let body: Value = reply.json().await.unwrap_or_default();
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------
// Playbooks

/// The shipped playbooks, copied with their time thresholds scaled from
/// minutes to seconds (the SQL, findings and actions are unchanged), plus
/// any extra playbooks a test adds.
pub fn scaled_playbooks(scratch: &Scratch, extra: &[(&str, &str)]) -> PathBuf {
    // (file, var, value): each line must exist, so a change to the shipped
    // playbooks that moves a threshold fails here rather than silently.
    const SCALE: &[(&str, &str, &str)] = &[
        ("database-idle-in-transaction.yaml", "idle_threshold", "1s"),
        ("database-idle-in-transaction.yaml", "kill_threshold", "2s"),
        ("database-long-running-queries.yaml", "long_query", "1s"),
        (
            "database-pool-exhaustion-critical.yaml",
            "idle_threshold",
            "1s",
        ),
        (
            "database-pool-exhaustion-critical.yaml",
            "kill_threshold",
            "2s",
        ),
        ("database-pool-exhaustion-critical.yaml", "long_query", "1s"),
    ];
    let dir = scratch.path("playbooks");
    std::fs::create_dir_all(&dir).expect("playbooks dir");
    let shipped = common::playbooks_dir();
    for entry in std::fs::read_dir(&shipped).expect("shipped playbooks") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let file = path.file_name().and_then(|f| f.to_str()).expect("name");
        let mut text = std::fs::read_to_string(&path).expect("read playbook");
        for (_, var, value) in SCALE.iter().filter(|(f, _, _)| *f == file) {
            let prefix = format!("  {var}: ");
            let mut found = false;
            text = text
                .lines()
                .map(|line| {
                    if !found && line.starts_with(&prefix) {
                        found = true;
                        format!("{prefix}{value}")
                    } else {
                        line.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            assert!(found, "{file} has no var {var}");
        }
        std::fs::write(dir.join(file), text).expect("write playbook");
    }
    for (name, text) in extra {
        std::fs::write(dir.join(name), text).expect("write extra playbook");
    }
    dir
}
