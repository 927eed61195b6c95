//! `remedy doctor`: connects to everything the settings and the playbooks
//! name — each PostgreSQL target, each Redis, each compose project and env file a
//! playbook uses, Prometheus, every Alertmanager, the chat API (Slack
//! `auth.test`, Discord and Mattermost: the bot's own user) — and says what is missing, each with the exact fix (a grant to
//! run, a URL that does not answer, a token that is refused). `remedy
//! check` reads files; this talks to the parts.
//!
//! A target needs what the playbooks that use it do, no more: `pg_monitor`
//! to read every session in `pg_stat_activity` (without it other roles'
//! queries and states read `<insufficient privilege>`), `pg_signal_backend`
//! where an action cancels or terminates sessions, SELECT on the tables
//! where an `explain` step plans other roles' statements, the tables'
//! owners and CREATE on their schemas where a `create_index` action builds
//! on them, and CREATEROLE where a `role_setting` action alters roles. A
//! superuser has all of it, and is reported as a warning: remedy should not
//! hold more than it uses.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use crate::config::{AlertmanagerAuth, ChatPlatform, Settings};
use crate::playbook::{Playbook, model::ActionKind, model::StepSpec, signals_backends};

/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

/// One line of the doctor's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub status: Status,
    /// What was checked: `target main`, `prometheus`, `chat slack`.
    pub subject: String,
    pub message: String,
    /// The exact fix, when there is one.
    pub fix: Option<String>,
}

impl Check {
    fn ok(subject: &str, message: impl Into<String>) -> Self {
        Self {
            status: Status::Ok,
            subject: subject.to_owned(),
            message: message.into(),
            fix: None,
        }
    }

    fn warn(subject: &str, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            status: Status::Warn,
            subject: subject.to_owned(),
            message: message.into(),
            fix: Some(fix.into()),
        }
    }

    fn fail(subject: &str, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            status: Status::Fail,
            subject: subject.to_owned(),
            message: message.into(),
            fix: Some(fix.into()),
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = match self.status {
            Status::Ok => "ok  ",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        };
        write!(f, "{status} {}: {}", self.subject, self.message)?;
        if let Some(fix) = &self.fix {
            write!(f, "\n       fix: {fix}")?;
        }
        Ok(())
    }
}

/// What the playbooks need of one target.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Needs {
    /// A `sql` step reads it (sessions of every role).
    monitor: bool,
    /// An action cancels or terminates sessions on it.
    signal: bool,
    /// An `explain` step plans other roles' statements: SELECT on every
    /// table they may read (EXPLAIN checks it as the statement would).
    explain: bool,
    /// A `create_index` action: the privileges of each table's owner
    /// (only an owner may index a table) and CREATE on its schema.
    create_index: bool,
    /// A `role_setting` action: CREATEROLE (and, from PostgreSQL 16, ADMIN
    /// OPTION on each role it may change).
    role_setting: bool,
}

impl Needs {
    /// Beyond the two predefined roles: what only some playbooks use.
    fn any_ddl_or_explain(self) -> bool {
        self.explain || self.create_index || self.role_setting
    }
}

/// Whether a playbook's target field (a name or a template) may mean `name`.
fn may_name(target: Option<&str>, name: &str) -> bool {
    target.is_none_or(|t| t.contains("{{") || t == name)
}

fn needs_of(playbooks: &[Playbook], name: &str) -> Needs {
    let mut needs = Needs::default();
    for playbook in playbooks {
        let default = playbook.spec.target.as_ref().map(|t| t.value.as_str());
        for step in &playbook.spec.steps {
            let (target, explains) = match &step.value {
                StepSpec::Sql { target, .. } => (target, false),
                StepSpec::Explain { target, .. } => (target, true),
                StepSpec::Promql { .. }
                | StepSpec::Http { .. }
                | StepSpec::Redis { .. }
                | StepSpec::Command { .. }
                | StepSpec::Compose { .. }
                | StepSpec::EnvFile { .. } => continue,
            };
            if may_name(target.as_deref().or(default), name) {
                // An explain step's source query reads other roles'
                // statements, as a sql step does.
                needs.monitor = true;
                needs.explain |= explains;
            }
        }
        for action in &playbook.spec.actions {
            let action = &action.value;
            if !may_name(action.target.as_deref().or(default), name) {
                continue;
            }
            match action.kind {
                ActionKind::Sql => {
                    needs.signal |= action.statement.as_deref().is_some_and(signals_backends);
                }
                ActionKind::CreateIndex => needs.create_index = true,
                ActionKind::RoleSetting => needs.role_setting = true,
                ActionKind::Command
                | ActionKind::Http
                | ActionKind::Silence
                | ActionKind::Compose
                | ActionKind::EnvFile => {}
            }
        }
    }
    needs
}

/// Runs every check. Never fails as a whole: each problem is a line.
pub async fn run(settings: &Settings, playbooks: &[Playbook]) -> Vec<Check> {
    let mut checks = Vec::new();
    for (name, target) in &settings.targets {
        checks.extend(
            target_checks(
                name,
                target.url.expose(),
                needs_of(playbooks, name),
                &settings.executor.protected_roles,
            )
            .await,
        );
    }
    for (name, redis) in &settings.redis {
        checks.push(redis_check(name, redis.url.expose()).await);
    }
    for (name, project) in &settings.compose {
        if uses_compose(playbooks, name) {
            checks.push(compose_check(name, project, &settings.commands.child_env()).await);
        }
    }
    for (name, file) in &settings.env_files {
        if uses_env_file(playbooks, name) {
            checks.push(env_file_check(name, &file.path));
        }
    }
    let client = crate::net::client();
    checks.push(prometheus_check(&client, settings, playbooks).await);
    checks.extend(alertmanager_checks(&client, settings).await);
    checks.push(chat_check(&client, settings).await);
    checks
}

/// The role's name quoted as SQL writes it in a GRANT.
fn quoted(role: &str) -> String {
    format!("\"{}\"", role.replace('"', "\"\""))
}

async fn target_checks(
    name: &str,
    url: &str,
    needs: Needs,
    protected_roles: &[String],
) -> Vec<Check> {
    let subject = format!("target {name}");
    let options: sqlx::postgres::PgConnectOptions = match url.parse() {
        Ok(options) => options,
        Err(e) => {
            return vec![Check::fail(
                &subject,
                format!("targets.{name}.url does not parse: {e}"),
                format!(
                    "set targets.{name}.url (or REMEDY__TARGETS__{}__URL) to postgres://ROLE@HOST:PORT/DATABASE",
                    name.to_ascii_uppercase()
                ),
            )];
        }
    };
    let options = options
        .application_name("remedy-doctor")
        .options([("search_path", "pg_catalog")]);
    let connect = sqlx::ConnectOptions::connect(&options);
    let mut conn = match tokio::time::timeout(PROBE_TIMEOUT, connect).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            return vec![Check::fail(
                &subject,
                format!("cannot connect: {e}"),
                "check the host, port, database and role in the target's URL, the server's pg_hba.conf, and that the role may LOGIN",
            )];
        }
        Err(_) => {
            return vec![Check::fail(
                &subject,
                format!("no answer within {}s", PROBE_TIMEOUT.as_secs()),
                "check that PostgreSQL listens on the URL's host and port and that no firewall drops the connection",
            )];
        }
    };
    let row = sqlx::query_as::<_, RoleRow>(
        "select current_user::text as role, r.rolsuper as superuser,
                pg_has_role(current_user, 'pg_monitor', 'member') as monitor,
                pg_has_role(current_user, 'pg_signal_backend', 'member') as signal,
                r.rolcreaterole as createrole,
                current_database()::text as database, current_setting('server_version') as version,
                current_setting('server_version_num')::int as version_num
           from pg_roles r where r.rolname = current_user",
    )
    .fetch_one(&mut conn)
    .await;
    let row = match row {
        Ok(row) => row,
        Err(e) => {
            let _ = sqlx::Connection::close(conn).await;
            return vec![Check::fail(
                &subject,
                format!("connected, but reading the role's privileges failed: {e}"),
                "see the error above: remedy needs PostgreSQL 10 or later, and the role must be able to read the system catalogs (pg_roles, pg_class, pg_namespace)",
            )];
        }
    };
    let role = &row.role;
    let mut checks = vec![Check::ok(
        &subject,
        format!(
            "connected to {} as {role} (PostgreSQL {})",
            row.database, row.version
        ),
    )];
    if row.superuser {
        let _ = sqlx::Connection::close(conn).await;
        let more = if needs.any_ddl_or_explain() {
            " and what the playbooks' explain, create_index and role_setting need (README, Security: least privilege; doctor names each grant once remedy is no superuser)"
        } else {
            ""
        };
        checks.push(Check::warn(
            &subject,
            format!("{role} is a superuser: remedy needs far less"),
            format!("connect as a dedicated role (README, Security: least privilege): CREATE ROLE remedy LOGIN; GRANT pg_monitor, pg_signal_backend TO remedy;{more}"),
        ));
        return checks;
    }
    if needs.monitor && !row.monitor {
        checks.push(Check::fail(
            &subject,
            format!("{role} is not a member of pg_monitor: sql steps see other roles' sessions without their query or state"),
            format!("GRANT pg_monitor TO {};", quoted(role)),
        ));
    }
    if needs.signal && !row.signal {
        checks.push(Check::fail(
            &subject,
            format!("{role} is not a member of pg_signal_backend: approved cancel/terminate actions would fail"),
            format!("GRANT pg_signal_backend TO {};", quoted(role)),
        ));
    }
    let more = grant_checks(&mut conn, &subject, needs, &row, protected_roles).await;
    let _ = sqlx::Connection::close(conn).await;
    match more {
        Ok(more) => checks.extend(more),
        Err(e) => checks.push(Check::fail(
            &subject,
            format!("reading the catalog for the explain, create_index and role_setting needs failed: {e}"),
            "see the error above: remedy needs PostgreSQL 10 or later, and the role must be able to read the system catalogs (pg_roles, pg_class, pg_namespace)",
        )),
    }
    checks
}

/// The connected role and its server.
#[derive(sqlx::FromRow)]
struct RoleRow {
    role: String,
    superuser: bool,
    /// Member of `pg_monitor`.
    monitor: bool,
    /// Member of `pg_signal_backend`.
    signal: bool,
    createrole: bool,
    database: String,
    version: String,
    /// `server_version_num`: 160000 and up ask ADMIN OPTION of `ALTER ROLE`.
    version_num: i32,
}

/// A schema where an `explain` step could not plan what reads its tables.
#[derive(sqlx::FromRow)]
struct UnreadableSchema {
    schema: String,
    /// USAGE on the schema.
    usage: bool,
    unreadable: i64,
    tables: i64,
    /// The unreadable tables, by name.
    names: Vec<String>,
    /// Their owners.
    owners: Vec<String>,
}

/// The schemas an application's tables live in: not PostgreSQL's own, and
/// no table an extension created (those are the extension's business).
const APPLICATION_RELATIONS: &str = "n.nspname not in ('pg_catalog', 'information_schema')
       and n.nspname not like 'pg\\_toast%' and n.nspname not like 'pg\\_temp\\_%'
       and not exists (select 1 from pg_depend d
                        where d.classid = 'pg_class'::regclass and d.objid = c.oid and d.deptype = 'e')";

/// Per schema: whether the role may use it, and the tables (views,
/// materialized views, foreign tables) it may not SELECT, with their owners.
/// EXPLAIN checks the same privileges the statement would need.
fn unreadable_query() -> String {
    format!(
        "select n.nspname::text as schema,
                has_schema_privilege(n.oid, 'USAGE') as usage,
                count(*) filter (where not has_table_privilege(c.oid, 'SELECT'))::int8 as unreadable,
                count(*)::int8 as tables,
                coalesce(array_agg(c.relname::text order by c.relname)
                           filter (where not has_table_privilege(c.oid, 'SELECT')), '{{}}') as names,
                coalesce(array_agg(distinct pg_get_userbyid(c.relowner)::text)
                           filter (where not has_table_privilege(c.oid, 'SELECT')), '{{}}') as owners
           from pg_class c join pg_namespace n on n.oid = c.relnamespace
          where c.relkind in ('r', 'p', 'v', 'm', 'f') and {APPLICATION_RELATIONS}
          group by n.oid, n.nspname
         having not has_schema_privilege(n.oid, 'USAGE')
             or bool_or(not has_table_privilege(c.oid, 'SELECT'))
          order by n.nspname"
    )
}

/// The owners of indexable tables whose privileges the role does not have
/// (`USAGE`, not just `MEMBER`: a NOINHERIT membership does not make the
/// role an owner), with the schemas of their tables and whether the owner
/// is a superuser.
fn foreign_owners_query() -> String {
    format!(
        "select pg_get_userbyid(c.relowner)::text, o.rolsuper, count(*)::int8,
                array_agg(distinct n.nspname::text)
           from pg_class c join pg_namespace n on n.oid = c.relnamespace
           join pg_roles o on o.oid = c.relowner
          where c.relkind in ('r', 'p', 'm') and {APPLICATION_RELATIONS}
            and not pg_has_role(c.relowner, 'USAGE')
          group by c.relowner, o.rolsuper
          order by 1"
    )
}

/// The schemas holding indexable tables where the role may not CREATE (an
/// index is created in its table's schema).
fn no_create_query() -> String {
    format!(
        "select n.nspname::text
           from pg_class c join pg_namespace n on n.oid = c.relnamespace
          where c.relkind in ('r', 'p', 'm') and {APPLICATION_RELATIONS}
            and not has_schema_privilege(n.oid, 'CREATE')
          group by n.nspname
          order by 1"
    )
}

/// From PostgreSQL 16, `ALTER ROLE … SET` of another role needs ADMIN
/// OPTION on it besides CREATEROLE: the roles a `role_setting` action may
/// change (they may log in to this database and are neither superusers,
/// replication roles, predefined roles, remedy itself nor protected) where
/// the role has none.
const NO_ADMIN: &str = "select r.rolname::text
       from pg_roles r
      where r.rolcanlogin and not r.rolsuper and not r.rolreplication
        and r.oid >= 16384 and r.rolname <> current_user
        and r.rolname <> all($1::text[])
        and has_database_privilege(r.oid, current_database(), 'CONNECT')
        and not pg_has_role(r.oid, 'MEMBER WITH ADMIN OPTION')
      order by 1";

/// Names, at most `n` of them, then how many more.
fn some_of(names: &[String], n: usize) -> String {
    let listed = names.iter().take(n).cloned().collect::<Vec<_>>().join(", ");
    match names.len().checked_sub(n) {
        Some(more) if more > 0 => format!("{listed}, and {more} more"),
        _ => listed,
    }
}

/// The checks of what `explain`, `create_index` and `role_setting` need,
/// against the catalog of the target's database as the role sees it.
async fn grant_checks(
    conn: &mut sqlx::PgConnection,
    subject: &str,
    needs: Needs,
    granted: &RoleRow,
    protected_roles: &[String],
) -> Result<Vec<Check>, sqlx::Error> {
    let role = quoted(&granted.role);
    let mut checks = Vec::new();
    if needs.explain {
        let schemas: Vec<UnreadableSchema> =
            sqlx::query_as(sqlx::AssertSqlSafe(unreadable_query()))
                .fetch_all(&mut *conn)
                .await?;
        for UnreadableSchema {
            schema,
            usage,
            unreadable,
            tables,
            names,
            owners,
        } in schemas
        {
            let mut fix = Vec::new();
            if !usage {
                fix.push(format!(
                    "GRANT USAGE ON SCHEMA {} TO {role};",
                    quoted(&schema)
                ));
            }
            if unreadable > 0 {
                fix.push(format!(
                    "GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {role};",
                    quoted(&schema)
                ));
                // ALL TABLES is the tables there now; a table created later
                // is readable only by a default privilege of its creator.
                fix.extend(owners.iter().map(|owner| {
                    format!(
                        "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} GRANT SELECT ON TABLES TO {role};",
                        quoted(owner),
                        quoted(&schema)
                    )
                }));
            }
            let what = if usage {
                format!(
                    "{} cannot read {unreadable} of the {tables} table(s) in schema {schema} ({})",
                    granted.role,
                    some_of(&names, 3)
                )
            } else {
                format!("{} may not use schema {schema}", granted.role)
            };
            checks.push(Check::fail(
                subject,
                format!("{what}: explain steps cannot plan statements that read them, so no index is suggested for them"),
                fix.join(" "),
            ));
        }
    }
    if needs.create_index {
        let owners: Vec<(String, bool, i64, Vec<String>)> =
            sqlx::query_as(sqlx::AssertSqlSafe(foreign_owners_query()))
                .fetch_all(&mut *conn)
                .await?;
        for (owner, owner_is_superuser, tables, schemas) in owners {
            let what = format!(
                "{} does not have the privileges of {owner}, which owns {tables} table(s) in {}: create_index actions on them fail (must be owner of table)",
                granted.role,
                schemas.join(", ")
            );
            if owner_is_superuser {
                checks.push(Check::fail(
                    subject,
                    what,
                    format!(
                        "{owner} is a superuser, and remedy must not act as one: have a role without SUPERUSER own the application's tables (as a superuser: ALTER TABLE … OWNER TO app_owner;) and GRANT app_owner TO {role}; or leave create_index out of this target's playbooks and build indexes by hand"
                    ),
                ));
            } else {
                checks.push(Check::fail(
                    subject,
                    what,
                    format!("GRANT {} TO {role};", quoted(&owner)),
                ));
            }
        }
        let schemas: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(no_create_query()))
            .fetch_all(&mut *conn)
            .await?;
        for schema in schemas {
            checks.push(Check::fail(
                subject,
                format!(
                    "{} may not CREATE in schema {schema}: create_index actions on its tables fail (an index is created in its table's schema)",
                    granted.role
                ),
                format!("GRANT CREATE ON SCHEMA {} TO {role};", quoted(&schema)),
            ));
        }
    }
    if needs.role_setting {
        if !granted.createrole {
            checks.push(Check::fail(
                subject,
                format!(
                    "{} does not have CREATEROLE: role_setting actions (ALTER ROLE … SET) fail",
                    granted.role
                ),
                format!("ALTER ROLE {role} CREATEROLE;"),
            ));
        }
        if granted.version_num >= 160_000 {
            let roles: Vec<String> = sqlx::query_scalar(NO_ADMIN)
                .bind(protected_roles)
                .fetch_all(&mut *conn)
                .await?;
            if !roles.is_empty() {
                let fix: Vec<String> = roles
                    .iter()
                    .map(|r| {
                        format!(
                            "GRANT {} TO {role} WITH ADMIN OPTION, INHERIT FALSE, SET FALSE;",
                            quoted(r)
                        )
                    })
                    .collect();
                checks.push(Check::fail(
                    subject,
                    format!(
                        "{} has no ADMIN OPTION on {}: from PostgreSQL 16 role_setting actions on them fail",
                        granted.role,
                        some_of(&roles, 5)
                    ),
                    fix.join(" "),
                ));
            }
        }
    }
    Ok(checks)
}

/// `INFO` through the `redis` step's own client (read-only commands only).
async fn redis_check(name: &str, url: &str) -> Check {
    let subject = format!("redis {name}");
    let target = match crate::diagnose::redis::RedisTarget::parse(url) {
        Ok(target) => target,
        Err(e) => {
            return Check::fail(
                &subject,
                format!("redis.{name}.url: {e}"),
                format!(
                    "set redis.{name}.url_file (or REMEDY__REDIS__{}__URL) to redis://[:PASSWORD@]HOST:PORT/DB",
                    name.to_ascii_uppercase()
                ),
            );
        }
    };
    match crate::diagnose::redis::diagnose(&target, 1, PROBE_TIMEOUT).await {
        Ok(out) => Check::ok(
            &subject,
            format!(
                "answers INFO ({} keys)",
                out.rows
                    .first()
                    .and_then(|r| r.get("dbsize"))
                    .map_or_else(|| "?".to_owned(), ToString::to_string)
            ),
        ),
        Err(e) => Check::fail(
            &subject,
            e.to_string(),
            "check the host, port, password and database in the URL, and that Redis accepts remedy's address",
        ),
    }
}

/// Whether a playbook names compose project `name` in a step or an action.
fn uses_compose(playbooks: &[Playbook], name: &str) -> bool {
    playbooks.iter().any(|p| {
        p.spec
            .steps
            .iter()
            .any(|s| matches!(&s.value, StepSpec::Compose { project, .. } if project == name))
            || p.spec
                .actions
                .iter()
                .any(|a| a.value.project.as_deref() == Some(name))
    })
}

/// `ps` of the project, as the compose steps and actions will run it: the
/// program, the folder, the files and the engine must all be there.
async fn compose_check(
    name: &str,
    project: &crate::config::ComposeSettings,
    env: &[(String, std::ffi::OsString)],
) -> Check {
    let subject = format!("compose {name}");
    let call = crate::diagnose::compose::invocation(project, &["ps"]);
    let mut command = tokio::process::Command::new(&call.program);
    command
        .args(&call.args)
        .current_dir(&call.dir)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    match tokio::time::timeout(Duration::from_secs(20), command.output()).await {
        Ok(Ok(out)) if out.status.success() => {
            Check::ok(&subject, format!("`{}` works", call.display()))
        }
        Ok(Ok(out)) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let last = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no output");
            Check::fail(
                &subject,
                format!("`{}` failed: {last}", call.display()),
                format!(
                    "check compose.{name}.project_dir and .files, that the Docker engine is reachable (DOCKER_HOST in commands.env, or the socket and its group), and that remedy's user may use it"
                ),
            )
        }
        Ok(Err(e)) => Check::fail(
            &subject,
            format!("cannot run {}: {e}", call.program.display()),
            format!(
                "install it, or set compose.{name}.program to the compose command on this machine (/usr/bin/docker-compose, or /usr/bin/docker with compose), and list it in commands.allow"
            ),
        ),
        Err(_) => Check::fail(
            &subject,
            format!("`{}` did not finish within 20s", call.display()),
            "check that the Docker engine answers",
        ),
    }
}

/// Whether a playbook reads or edits env file `name`.
fn uses_env_file(playbooks: &[Playbook], name: &str) -> bool {
    playbooks.iter().any(|p| {
        p.spec
            .steps
            .iter()
            .any(|s| matches!(&s.value, StepSpec::EnvFile { env_file, .. } if env_file == name))
            || p.spec
                .actions
                .iter()
                .any(|a| a.value.env_file.as_deref() == Some(name))
    })
}

/// An env file must be readable (the steps show its values, the actions
/// their exact lines) and its folder writable: the action writes its
/// backup and the new file beside it, and renames one over the other.
/// Checked by reading the file and creating (and removing) an empty file
/// in the folder, as remedy's user.
fn env_file_check(name: &str, path: &std::path::Path) -> Check {
    let subject = format!("env_file {name}");
    if let Err(e) = std::fs::read_to_string(path) {
        return Check::fail(
            &subject,
            format!("cannot read {}: {e}", path.display()),
            format!(
                "set env_files.{name}.path to the compose project's env file (an absolute path) and let remedy's user read it"
            ),
        );
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| std::path::Path::new("."));
    let probe = dir.join(format!(".remedy-doctor-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Check::ok(
                &subject,
                format!(
                    "{} readable; {} writable (backup and replace)",
                    path.display(),
                    dir.display()
                ),
            )
        }
        Err(e) => Check::fail(
            &subject,
            format!(
                "remedy's user cannot create files in {} ({e}): the env_file action writes its backup and the new file there",
                dir.display()
            ),
            format!(
                "let remedy's user write to {} (for example the folder group-writable and remedy in its group)",
                dir.display()
            ),
        ),
    }
}

fn uses_promql(playbooks: &[Playbook]) -> bool {
    playbooks.iter().any(|p| {
        p.spec
            .steps
            .iter()
            .any(|s| matches!(s.value, StepSpec::Promql { .. }))
    })
}

/// GETs `url` and gives the status, or what went wrong.
async fn probe(request: reqwest::RequestBuilder) -> Result<reqwest::StatusCode, String> {
    match tokio::time::timeout(PROBE_TIMEOUT, request.send()).await {
        Ok(Ok(response)) => Ok(response.status()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {}s", PROBE_TIMEOUT.as_secs())),
    }
}

async fn prometheus_check(
    client: &reqwest::Client,
    settings: &Settings,
    playbooks: &[Playbook],
) -> Check {
    let url = settings.prometheus.url.trim_end_matches('/');
    if url.is_empty() {
        return if uses_promql(playbooks) {
            Check::fail(
                "prometheus",
                "not configured, and playbooks have promql steps",
                "set prometheus.url (REMEDY__PROMETHEUS__URL) to the Prometheus server, e.g. http://prometheus:9090",
            )
        } else {
            Check::ok("prometheus", "not configured (no playbook queries it)")
        };
    }
    let query = client
        .get(format!("{url}/api/v1/query"))
        .query(&[("query", "vector(1)")]);
    match probe(query).await {
        Ok(status) if status.is_success() => {
            Check::ok("prometheus", format!("{url} answers queries"))
        }
        Ok(status) => Check::fail(
            "prometheus",
            format!("{url}/api/v1/query answered {status}"),
            "point prometheus.url at the server's base URL (without /api/v1), and check any proxy in front of it",
        ),
        Err(e) => Check::fail(
            "prometheus",
            format!("{url}: {e}"),
            "check prometheus.url and that Prometheus is reachable from remedy",
        ),
    }
}

async fn alertmanager_checks(client: &reqwest::Client, settings: &Settings) -> Vec<Check> {
    let am = &settings.alertmanager;
    let mut urls: BTreeSet<String> = am
        .urls
        .iter()
        .map(|u| u.trim_end_matches('/').to_owned())
        .collect();
    if !am.url.is_empty() {
        urls.insert(am.url.trim_end_matches('/').to_owned());
    }
    if urls.is_empty() {
        return vec![Check::ok(
            "alertmanager",
            "not configured (silence actions and reconciliation are off)",
        )];
    }
    let mut checks = Vec::new();
    for url in urls {
        let mut request = client.get(format!("{url}/api/v2/status"));
        request = match am.auth() {
            AlertmanagerAuth::None => request,
            AlertmanagerAuth::Bearer(token) => request.bearer_auth(token.expose()),
            AlertmanagerAuth::Basic { username, password } => {
                request.basic_auth(username, Some(password.expose()))
            }
        };
        let subject = format!("alertmanager {url}");
        checks.push(match probe(request).await {
            Ok(status) if status.is_success() => Check::ok(&subject, "answers /api/v2/status"),
            Ok(status) if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN => {
                Check::fail(
                    &subject,
                    format!("refused remedy's credentials ({status})"),
                    "set alertmanager.bearer_token_file or alertmanager.basic_auth to what the proxy in front of Alertmanager expects",
                )
            }
            Ok(status) => Check::fail(
                &subject,
                format!("/api/v2/status answered {status}"),
                "point alertmanager.url(s) at Alertmanager's base URL (without /api/v2)",
            ),
            Err(e) => Check::fail(
                &subject,
                e,
                "check alertmanager.url(s) and that Alertmanager is reachable from remedy",
            ),
        });
    }
    checks
}

async fn chat_check(client: &reqwest::Client, settings: &Settings) -> Check {
    let chat = &settings.chat;
    match chat.platform {
        ChatPlatform::Console => Check::ok("chat console", "reports go to the log"),
        ChatPlatform::Slack => {
            let api = chat.slack.api_url.trim_end_matches('/');
            let request = client
                .post(format!("{api}/auth.test"))
                .bearer_auth(chat.slack.bot_token.expose())
                .json(&serde_json::json!({}));
            let answer = match tokio::time::timeout(PROBE_TIMEOUT, request.send()).await {
                Ok(Ok(response)) => response
                    .json::<serde_json::Value>()
                    .await
                    .map_err(|e| e.to_string()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {}s", PROBE_TIMEOUT.as_secs())),
            };
            match answer {
                Ok(body) if body["ok"] == true => Check::ok(
                    "chat slack",
                    format!(
                        "auth.test: bot {} in workspace {}",
                        body["user"].as_str().unwrap_or("?"),
                        body["team"].as_str().unwrap_or("?")
                    ),
                ),
                Ok(body) => Check::fail(
                    "chat slack",
                    format!(
                        "auth.test refused the bot token: {}",
                        body["error"].as_str().unwrap_or("unknown error")
                    ),
                    "set chat.slack.bot_token_file (or REMEDY__CHAT__SLACK__BOT_TOKEN) to the app's Bot User OAuth Token (xoxb-…)",
                ),
                Err(e) => Check::fail(
                    "chat slack",
                    format!("{api}/auth.test: {e}"),
                    "check chat.slack.api_url (https://slack.com/api) and outbound HTTPS from remedy",
                ),
            }
        }
        ChatPlatform::Mattermost => {
            let api = chat.mattermost.api_url.trim_end_matches('/');
            let request = client
                .get(format!("{api}/users/me"))
                .bearer_auth(chat.mattermost.bot_token.expose());
            match probe(request).await {
                Ok(status) if status.is_success() => {
                    Check::ok("chat mattermost", "/api/v4/users/me accepts the bot token")
                }
                Ok(status) if status == reqwest::StatusCode::UNAUTHORIZED => Check::fail(
                    "chat mattermost",
                    "/api/v4/users/me refused the bot token (401)",
                    "set chat.mattermost.bot_token_file (or REMEDY__CHAT__MATTERMOST__BOT_TOKEN) to the bot account's access token",
                ),
                Ok(status) => Check::fail(
                    "chat mattermost",
                    format!("/api/v4/users/me answered {status}"),
                    "check chat.mattermost.api_url (https://chat.example.com/api/v4)",
                ),
                Err(e) => Check::fail(
                    "chat mattermost",
                    format!("{api}/users/me: {e}"),
                    "check chat.mattermost.api_url and that the Mattermost server is reachable from remedy",
                ),
            }
        }
        ChatPlatform::Discord => {
            let api = chat.discord.api_url.trim_end_matches('/');
            let request = client.get(format!("{api}/users/@me")).header(
                "authorization",
                format!("Bot {}", chat.discord.bot_token.expose()),
            );
            match probe(request).await {
                Ok(status) if status.is_success() => {
                    Check::ok("chat discord", "/users/@me accepts the bot token")
                }
                Ok(status) if status == reqwest::StatusCode::UNAUTHORIZED => Check::fail(
                    "chat discord",
                    "/users/@me refused the bot token (401)",
                    "set chat.discord.bot_token_file (or REMEDY__CHAT__DISCORD__BOT_TOKEN) to the bot's token from the Developer Portal",
                ),
                Ok(status) => Check::fail(
                    "chat discord",
                    format!("/users/@me answered {status}"),
                    "check chat.discord.api_url (https://discord.com/api/v10)",
                ),
                Err(e) => Check::fail(
                    "chat discord",
                    format!("{api}/users/@me: {e}"),
                    "check chat.discord.api_url and outbound HTTPS from remedy",
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped(file: &str) -> Playbook {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("playbooks")
            .join(file);
        let text = std::fs::read_to_string(&path).expect("shipped playbook");
        let refs = crate::playbook::References {
            targets: ["main".to_owned()].into(),
            ..crate::playbook::References::default()
        };
        crate::playbook::load_str(&path, &text, &refs).expect("valid playbook")
    }

    #[test]
    fn the_shipped_playbooks_need_explain_create_index_and_role_setting_of_their_target() {
        let long = shipped("database-long-running-queries.yaml");
        let idle = shipped("database-idle-in-transaction.yaml");
        assert_eq!(
            needs_of(std::slice::from_ref(&long), "main"),
            Needs {
                monitor: true,
                signal: true,
                explain: true,
                create_index: true,
                role_setting: true,
            }
        );
        assert_eq!(
            needs_of(std::slice::from_ref(&idle), "main"),
            Needs {
                monitor: true,
                signal: true,
                explain: false,
                create_index: false,
                role_setting: true,
            }
        );
        // Another target is not asked for what `main`'s playbooks use.
        assert_eq!(needs_of(&[long, idle], "reporting"), Needs::default());
    }

    #[test]
    fn some_names_are_listed_and_the_rest_counted() {
        let names: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).into();
        assert_eq!(some_of(&names[..2], 3), "a, b");
        assert_eq!(some_of(&names, 3), "a, b, c, and 2 more");
    }

    #[test]
    fn a_role_name_is_quoted_as_an_identifier() {
        assert_eq!(quoted("remedy"), "\"remedy\"");
        assert_eq!(quoted("a\"b"), "\"a\"\"b\"");
    }
}
