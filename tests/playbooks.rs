//! The shipped playbooks as operators use them: every file loads and passes
//! `remedy check`, its unit tests pass `remedy test`, and mistakes are
//! reported with file, line, column and field.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn remedy(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_remedy"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("REMEDY__")) {
        cmd.env_remove(key);
    }
    cmd.args(args)
        .env("REMEDY__INTAKE__BEARER_TOKEN", "t")
        .env("REMEDY__PLAYBOOKS__DIR", common::playbooks_dir())
        .envs(env.iter().copied())
        .output()
        .expect("remedy runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn every_shipped_playbook_passes_check() {
    let out = remedy(&["check"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let files = std::fs::read_dir(common::playbooks_dir())
        .expect("playbooks dir")
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "yaml"))
        .count();
    assert_eq!(files, 6, "the six runbook playbooks");
    assert!(text(&out).contains("6 playbook(s) ok"), "{}", text(&out));
}

#[test]
fn check_warns_about_actions_nobody_may_approve() {
    // The defaults configure no approvers: valid, but said out loud.
    let out = remedy(&["check"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    // One line per file, naming the roles nobody holds and the actions.
    assert!(
        text(&out).contains(
            "database-long-running-queries.yaml: nobody holds approver role(s) backend-developer, dba"
        ) && text(&out).contains("nobody can approve action(s) cancel_query, terminate_blocker"),
        "{}",
        text(&out)
    );
    let dir = scratch();
    let settings = dir.join("approvers.toml");
    std::fs::write(
        &settings,
        "[approvers.dba]\nconsole_users = [\"dana\"]\n[approvers.backend-developer]\nconsole_users = [\"ben\"]\n",
    )
    .expect("write");
    let out = remedy(
        &["check", "--config", settings.to_str().expect("utf-8")],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("terminate_blocker"), "{}", text(&out));
}

#[test]
fn every_shipped_playbook_passes_its_unit_tests() {
    // No webhook credentials: a playbook author's machine or CI has none.
    let out = remedy(&["test"], &[("REMEDY__INTAKE__BEARER_TOKEN", "")]);
    assert!(out.status.success(), "{}", text(&out));
    let summary = text(&out);
    assert!(summary.contains(", 0 failed"), "{summary}");
    let tested: std::collections::BTreeSet<String> =
        std::fs::read_dir(common::playbooks_dir().join("tests"))
            .expect("tests dir")
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
    assert_eq!(tested.len(), 6, "one test file per playbook: {tested:?}");
}

#[test]
fn a_failing_playbook_test_exits_non_zero_with_a_diff() {
    let dir = scratch();
    std::fs::write(
        dir.join("wrong.yaml"),
        "playbook: DatabasePoolOverflowHigh\ncases:\n  - name: wrong expectation\n    labels: {alertname: DatabasePoolOverflowHigh}\n    steps:\n      overflow: {ok: true, value: 17}\n    expect:\n      findings:\n        - {severity: critical, contains: \"nope\"}\n",
    )
    .expect("write");
    let out = remedy(&["test", dir.to_str().expect("utf-8")], &[]);
    assert_eq!(out.status.code(), Some(1));
    let t = text(&out);
    assert!(t.contains("FAIL") && t.contains("wrong expectation"), "{t}");
    assert!(t.contains("- expected Critical containing \"nope\""), "{t}");
    assert!(
        t.contains("+ got      Warning: 17 overflow connections in use"),
        "{t}"
    );
}

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("remedy-check-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

/// Writes one playbook and runs `remedy check` on its folder.
fn check_one(yaml: &str) -> (PathBuf, String) {
    let dir = scratch();
    let file = dir.join("broken.yaml");
    std::fs::write(&file, yaml).expect("write");
    let out = remedy(
        &["check"],
        &[("REMEDY__PLAYBOOKS__DIR", dir.to_str().expect("utf-8"))],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    (file, text(&out))
}

fn assert_reports(yaml: &str, line: u32, column: u32, field: &str, message: &str) {
    let (file, out) = check_one(yaml);
    let at = format!("{}:{line}:{column}: {field}: ", Path::new(&file).display());
    assert!(out.contains(&at), "expected `{at}` in:\n{out}");
    assert!(out.contains(message), "expected `{message}` in:\n{out}");
}

const HEAD: &str = "name: Broken\nmatch: ['alertname=\"Broken\"']\ntarget: main\n";

#[test]
fn check_names_file_line_column_and_field_of_each_mistake() {
    assert_reports(
        &format!("{HEAD}steps:\n  - id: a\n    kind: sql\n    qurey: select 1\n"),
        5,
        5,
        "qurey",
        "unknown field `qurey`",
    );
    assert_reports(
        "name: Broken\nmatch: ['alertname=~\"(\"']\n",
        2,
        9,
        "match[0]",
        "invalid regular expression",
    );
    assert_reports(
        "name: Broken\nmatch: ['alertname=Broken\"']\n",
        2,
        9,
        "match[0]",
        "at character",
    );
    assert_reports(
        &format!("{HEAD}steps:\n  - {{id: a, kind: sql, target: nowhere, query: select 1}}\n"),
        5,
        5,
        "steps[0].target",
        "unknown target `nowhere`",
    );
    assert_reports(
        &format!("{HEAD}steps:\n  - {{id: a, kind: sql, query: select 1, timeout: soon}}\n"),
        5,
        5,
        ".",
        "soon",
    );
    assert_reports(
        &format!(
            "{HEAD}steps:\n  - {{id: a, kind: sql, query: select 1}}\nfindings:\n  - {{severity: info, text: \"{{{{ steps.a.rows | length \"}}\n"
        ),
        7,
        5,
        "findings[0].text",
        "template error",
    );
    assert_reports(
        &format!("{HEAD}steps:\n  - {{id: a, kind: command, program: /bin/rm, args: [-rf, /]}}\n"),
        5,
        5,
        "steps[0].program",
        "not in commands.allow",
    );
    assert_reports(
        &format!(
            "{HEAD}steps:\n  - {{id: a, kind: sql, query: \"select '{{{{ labels.x }}}}'\"}}\n"
        ),
        5,
        5,
        "steps[0].query",
        "SQL is not a template",
    );
    assert_reports(
        &format!(
            "{HEAD}steps:\n  - {{id: a, kind: http, url: \"{{{{ probes.pmss }}}}/health\"}}\n"
        ),
        5,
        5,
        "steps[0].url",
        "unknown probe `pmss` (configured: pms)",
    );
    assert_reports(
        &format!(
            "{HEAD}actions:\n  - {{id: kill, title: k, kind: command, risk: destructive, approvers: [dba], automatic: true, program: /usr/bin/docker}}\n"
        ),
        5,
        5,
        "actions[0].automatic",
        "only `risk: safe` actions may be automatic",
    );
}

#[test]
fn check_refuses_a_terminate_without_a_precondition_that_pins_backend_start() {
    let terminate = "actions:\n  - id: kill\n    title: k\n    kind: sql\n    risk: destructive\n    statement: select pg_terminate_backend($1::int)\n    params: [\"{{ labels.pid }}\"]\n";
    assert_reports(
        &format!("{HEAD}{terminate}"),
        5,
        5,
        "actions[0].precondition",
        "needs a precondition that pins it: `backend_start = $N::timestamptz`",
    );
    // A precondition on the pid alone does not pin the backend either.
    assert_reports(
        &format!(
            "{HEAD}{}    precondition: {{query: \"select 1 from pg_stat_activity where pid = $1::int\", params: [\"{{{{ labels.pid }}}}\"]}}\n",
            terminate.replace("terminate", "cancel")
        ),
        5,
        5,
        "actions[0].precondition",
        "needs a precondition that pins it",
    );
    // Pinned: only the unrelated mistake (quorum 0) is reported.
    let (_, out) = check_one(&format!(
        "{HEAD}{terminate}    quorum: 0\n    precondition: {{query: \"select 1 from pg_stat_activity where pid = $1::int and backend_start = $2::timestamptz\", params: [\"{{{{ labels.pid }}}}\", \"{{{{ labels.started }}}}\"]}}\n"
    ));
    assert!(out.contains("actions[0].quorum"), "{out}");
    assert!(!out.contains("actions[0].precondition"), "{out}");
}

#[test]
fn check_refuses_an_http_url_whose_host_a_template_writes_and_a_needless_allow_dash() {
    assert_reports(
        &format!(
            "{HEAD}steps:\n  - {{id: a, kind: http, url: \"http://{{{{ labels.instance }}}}/health\"}}\n"
        ),
        5,
        5,
        "steps[0].url",
        "must come from `{{ probes.NAME }}`",
    );
    assert_reports(
        &format!(
            "{HEAD}steps:\n  - {{id: a, kind: command, program: /usr/bin/docker, args: [{{arg: logs, allow_dash: true}}]}}\n"
        ),
        5,
        5,
        "steps[0].args[0].allow_dash",
        "only for an argument whose template inserts a value at its start",
    );
}

#[test]
fn check_refuses_unknown_compose_projects_env_files_and_keys_not_allowed() {
    assert_reports(
        &format!("{HEAD}steps:\n  - {{id: a, kind: compose, project: nope, logs: api}}\n"),
        5,
        5,
        "steps[0].project",
        "unknown compose project `nope` (configured: app)",
    );
    assert_reports(
        &format!("{HEAD}steps:\n  - {{id: a, kind: env_file, env_file: nope}}\n"),
        5,
        5,
        "steps[0].env_file",
        "unknown env file `nope` (configured: app)",
    );
    assert_reports(
        &format!(
            "{HEAD}actions:\n  - {{id: a, title: t, kind: env_file, risk: disruptive, env_file: app, project: app, service: api, set: {{DATABASE_URL: x}}}}\n"
        ),
        5,
        5,
        "actions[0].set.DATABASE_URL",
        "env_files.app does not allow `DATABASE_URL` (allowed_keys: POSTGRES_POOL_SIZE, POSTGRES_MAX_OVERFLOW)",
    );
    assert_reports(
        &format!(
            "{HEAD}actions:\n  - {{id: a, title: t, kind: compose, risk: disruptive, project: app, service: api}}\n"
        ),
        5,
        5,
        "actions[0].operation",
        "a compose action needs an operation: restart, up or recreate",
    );
}

#[test]
fn check_refuses_a_compose_project_whose_program_is_not_allowed() {
    let dir = scratch();
    std::fs::write(
        dir.join("logs.yaml"),
        format!("{HEAD}steps:\n  - {{id: a, kind: compose, project: app, logs: api}}\n"),
    )
    .expect("write");
    let out = remedy(
        &["check"],
        &[
            ("REMEDY__PLAYBOOKS__DIR", dir.to_str().expect("utf-8")),
            ("REMEDY__COMMANDS__ALLOW", "/bin/echo"),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(
            "steps[0].project: compose.app.program: `/usr/bin/docker` is not in commands.allow"
        ),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn simulate_prints_the_real_read_only_diagnosis_of_a_payload() {
    let target = common::fresh_store_url(common::Backend::Postgres).await;
    let payload =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/firing_single.json");
    let out = remedy(
        &["simulate", payload.to_str().expect("utf-8")],
        &[
            ("REMEDY__TARGETS__MAIN__URL", &target),
            ("REMEDY__PROMETHEUS__URL", "http://127.0.0.1:9"),
        ],
    );
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.starts_with("DatabasePoolExhaustionCritical: "), "{t}");
    assert!(t.contains("% of max_connections"), "{t}");
    assert!(
        t.contains("Steps that failed:") && t.contains("pool_utilization"),
        "{t}"
    );
    assert!(
        t.contains("restart_service [Disruptive, 1 approver(s)]"),
        "{t}"
    );
    let json = remedy(
        &["simulate", "--json", payload.to_str().expect("utf-8")],
        &[
            ("REMEDY__TARGETS__MAIN__URL", &target),
            ("REMEDY__PROMETHEUS__URL", "http://127.0.0.1:9"),
        ],
    );
    let reports: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    assert_eq!(reports[0]["playbook"], "DatabasePoolExhaustionCritical");
    assert!(
        reports[0]["steps"]["connections"]["ok"]
            .as_bool()
            .expect("ok")
    );
}

#[test]
fn check_names_mistakes_of_redis_explain_role_setting_and_create_index() {
    assert_reports(
        &format!("{HEAD}steps:\n  - {{id: c, kind: redis, target: sessions}}\n"),
        5,
        5,
        "steps[0].target",
        "unknown redis `sessions` (configured [redis.NAME]: cache)",
    );
    assert_reports(
        &format!("{HEAD}steps:\n  - {{id: c, kind: redis, target: cache, slowlog: 1000}}\n"),
        5,
        5,
        "steps[0].slowlog",
        "at most 128 entries",
    );
    assert_reports(
        &format!("{HEAD}steps:\n  - {{id: e, kind: explain, query: select 1}}\n"),
        5,
        5,
        "min_rows",
        "missing field `min_rows`",
    );
    assert_reports(
        &format!(
            "{HEAD}actions:\n  - {{id: t, title: t, kind: role_setting, risk: disruptive, setting: work_mem, params: [app, 1GB]}}\n"
        ),
        5,
        5,
        "actions[0].setting",
        "`work_mem` is not one of idle_in_transaction_session_timeout, statement_timeout",
    );
    assert_reports(
        &format!(
            "{HEAD}actions:\n  - {{id: t, title: t, kind: role_setting, risk: disruptive, setting: statement_timeout, params: [app]}}\n"
        ),
        5,
        5,
        "actions[0].params",
        "takes `params: [ROLE, VALUE]`",
    );
    assert_reports(
        &format!(
            "{HEAD}actions:\n  - {{id: i, title: t, kind: create_index, risk: safe, params: [public, t, a]}}\n"
        ),
        5,
        5,
        "actions[0].risk",
        "at least `disruptive`",
    );
    assert_reports(
        &format!(
            "{HEAD}actions:\n  - {{id: i, title: t, kind: create_index, risk: disruptive, statement: 'create index x on t (a)', params: [public, t, a]}}\n"
        ),
        5,
        5,
        "actions[0].statement",
        "the executor builds this statement itself",
    );
}

#[test]
fn check_refuses_an_undo_of_nothing_of_an_undo_or_over_other_rows() {
    let set = "  - {id: set, title: t, kind: role_setting, risk: disruptive, setting: statement_timeout, params: [app, '1000'], for_each: roles}\n";
    let steps = "steps:\n  - {id: roles, kind: sql, query: select 1}\n  - {id: other, kind: sql, query: select 2}\n";
    let undo = |extra: &str| {
        format!(
            "{HEAD}{steps}actions:\n{set}  - {{id: undo, title: u, kind: role_setting, risk: safe, setting: statement_timeout, params: [app, ''], {extra}}}\n"
        )
    };
    assert_reports(
        &undo("for_each: roles, undoes: sett"),
        9,
        5,
        "actions[1].undoes",
        "no action `sett` in this playbook",
    );
    assert_reports(
        &undo("for_each: roles, undoes: undo"),
        9,
        5,
        "actions[1].undoes",
        "is itself an undo (or this action)",
    );
    assert_reports(
        &undo("for_each: other, undoes: set"),
        9,
        5,
        "actions[1].undoes",
        "an undo has the `for_each` of `set`",
    );
    let twice = format!(
        "{}  - {{id: again, title: a, kind: role_setting, risk: safe, setting: statement_timeout, params: [app, ''], for_each: roles, undoes: set}}\n",
        undo("for_each: roles, undoes: set")
    );
    assert_reports(
        &twice,
        9,
        5,
        "actions[1].undoes",
        "`set` has 2 undos: one is offered, so name one",
    );
    assert_reports(
        &undo("for_each: roles, undoes: set, automatic: true"),
        9,
        5,
        "actions[1].automatic",
        "never automatic",
    );
}
