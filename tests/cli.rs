//! The binary as operators run it: `check`, `incidents`, and a clean stop on
//! SIGTERM.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn remedy() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_remedy"));
    cmd.env_remove("RUST_LOG");
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("REMEDY__")) {
        cmd.env_remove(key);
    }
    cmd
}

#[test]
fn check_accepts_valid_settings_and_rejects_typos_with_the_setting_named() {
    let ok = remedy()
        .arg("check")
        .env("REMEDY__INTAKE__BEARER_TOKEN", "t")
        .output()
        .expect("runs");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let dir = std::env::temp_dir().join(format!("remedy-cli-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("remedy.toml");
    std::fs::write(&file, "[intake]\nbearer_token = \"t\"\nqueue_capacty = 5\n").expect("write");
    let bad = remedy()
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .expect("runs");
    assert_eq!(bad.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("queue_capacty"), "{stderr}");

    let no_auth = remedy().arg("check").output().expect("runs");
    assert_eq!(no_auth.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&no_auth.stderr).contains("intake.allow_unauthenticated"));
}

#[test]
fn secrets_do_not_appear_in_errors_or_logs() {
    let out = remedy()
        .args(["incidents", "list"])
        .env("REMEDY__INTAKE__BEARER_TOKEN", "very-secret-token")
        .env(
            "REMEDY__STORE__URL",
            "postgres://remedy:hunter2pw@127.0.0.1:1/remedy",
        )
        .env("REMEDY__STORE__ACQUIRE_TIMEOUT", "1s")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("remedy:***@127.0.0.1"), "{text}");
    assert!(
        !text.contains("hunter2pw") && !text.contains("very-secret-token"),
        "{text}"
    );
}

#[tokio::test]
async fn incidents_list_and_show_read_the_store() {
    let app = common::spawn_app(common::Backend::Sqlite).await;
    app.post_webhook(common::fixture("firing_single.json"))
        .await;
    let list = remedy()
        .args(["incidents", "list"])
        .env("REMEDY__INTAKE__BEARER_TOKEN", "t")
        .env("REMEDY__STORE__URL", &app.store_url)
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.status.success(),
        "{}",
        String::from_utf8_lossy(&list.stderr)
    );
    assert!(
        stdout.contains("DatabasePoolExhaustionCritical") && stdout.contains("4c3f5dd55641e094"),
        "{stdout}"
    );
    let show = remedy()
        .args(["incidents", "show", "1"])
        .env("REMEDY__INTAKE__BEARER_TOKEN", "t")
        .env("REMEDY__STORE__URL", &app.store_url)
        .output()
        .expect("runs");
    let shown: serde_json::Value = serde_json::from_slice(&show.stdout).expect("json");
    assert_eq!(shown["incident"]["fingerprint"], "4c3f5dd55641e094");
    assert_eq!(shown["timeline"][0]["kind"], "opened");
}

#[tokio::test]
async fn incidents_keep_marks_an_incident_and_audit_export_archives_since_a_time() {
    let app = common::spawn_app(common::Backend::Sqlite).await;
    app.post_webhook(common::fixture("firing_single.json"))
        .await;
    let run = |args: &[&str]| {
        remedy()
            .args(args)
            .env("REMEDY__STORE__URL", &app.store_url)
            .output()
            .expect("runs")
    };
    let kept = run(&["incidents", "keep", "1"]);
    assert!(
        kept.status.success(),
        "{}",
        String::from_utf8_lossy(&kept.stderr)
    );
    assert_eq!(
        app.store
            .incident_kept(remedy::domain::IncidentId(1))
            .await
            .expect("read"),
        Some(true)
    );
    let released = run(&["incidents", "keep", "1", "--release"]);
    assert!(released.status.success());
    assert_eq!(
        app.store
            .incident_kept(remedy::domain::IncidentId(1))
            .await
            .expect("read"),
        Some(false)
    );
    assert_eq!(run(&["incidents", "keep", "99"]).status.code(), Some(1));

    for (at, event) in [(1_000_i64, "ancient"), (1_900_000_000_000, "recent")] {
        common::execute(
            &app.store,
            &format!(
                "insert into audit_log (at, incident_id, approval_id, event, detail)
                 values ({at}, 1, null, '{event}', '{{}}')"
            ),
        )
        .await;
    }
    let export = run(&["audit", "export", "--since", "2000-01-01T00:00:00Z"]);
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&export.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["event"], "recent");
    let all = run(&["audit", "export", "--since", "100000d"]);
    assert_eq!(String::from_utf8_lossy(&all.stdout).lines().count(), 2);
    assert_eq!(
        run(&["audit", "export", "--since", "yesterday"])
            .status
            .code(),
        Some(1)
    );
}

#[tokio::test]
async fn sigterm_finishes_and_exits_cleanly() {
    let (mut child, port) = serve(&[], Stdio::piped()).await;
    let client = remedy::net::client();
    let accepted = client
        .post(format!("http://127.0.0.1:{port}/v1/alertmanager"))
        .bearer_auth(common::WEBHOOK_TOKEN)
        .header("content-type", "application/json")
        .body(common::fixture("firing_single.json"))
        .send()
        .await
        .expect("answered");
    assert!(accepted.status().is_success());
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let output = tokio::task::spawn_blocking(move || {
        let status = child.wait().expect("exits");
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().expect("stderr"), &mut stderr)
            .expect("read");
        (status, stderr)
    })
    .await
    .expect("join");
    assert!(
        output.0.success(),
        "exit status {:?}: {}",
        output.0,
        output.1
    );
    assert!(output.1.contains("remedy stopped"), "{}", output.1);
}

#[test]
fn a_command_step_sees_only_the_allow_listed_environment_never_remedys_secrets() {
    let dir = std::env::temp_dir().join(format!("remedy-env-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(dir.join("playbooks")).expect("dir");
    std::fs::write(
        dir.join("playbooks/env.yaml"),
        r#"
name: Env
match: ['alertname="DatabasePoolExhaustionCritical"']
steps:
  - {id: env, kind: command, program: /usr/bin/env}
findings:
  - {severity: info, text: "environment", evidence: env}
"#,
    )
    .expect("write playbook");
    let out = remedy()
        .args(["simulate", "--json"])
        .arg(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/firing_single.json"),
        )
        .env("REMEDY__INTAKE__BEARER_TOKEN", "very-secret-token")
        .env("REMEDY__API__TOKEN", "another-secret")
        .env("REMEDY__PLAYBOOKS__DIR", dir.join("playbooks"))
        .env("REMEDY__COMMANDS__ALLOW", "/usr/bin/env")
        .env("REMEDY__COMMANDS__ENV", "PATH,REMEDY_TEST_VISIBLE")
        .env("REMEDY_TEST_VISIBLE", "yes")
        .env("REMEDY_TEST_HIDDEN", "no")
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let mut names: Vec<String> = reports[0]["steps"]["env"]["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["line"].as_str())
        .map(|line| line.split('=').next().unwrap_or_default().to_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["PATH", "REMEDY_TEST_VISIBLE"], "{reports}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("very-secret-token") && !text.contains("another-secret"),
        "{text}"
    );
}

/// `remedy ack` against `remedy serve` acts as the person whose token it
/// reads (REMEDY_TOKEN or --token-file); without one it does nothing, and
/// the shared read-only `api.token` cannot act. `remedy silence` shows
/// the matchers and asks before it silences.
#[tokio::test]
async fn the_cli_acts_with_a_personal_token_and_never_without_one() {
    let store_url = common::fresh_store_url(common::Backend::Sqlite).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let dir = std::env::temp_dir().join(format!("remedy-cli-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("remedy.toml");
    std::fs::write(
        &config,
        "[people.olga]\napi_token_file = \"olga.token\"\n\
         [people.mallory]\napi_token = \"mallory-token\"\n\
         [approvers.on-call-engineer]\npeople = [\"olga\"]\n"
            .replace("olga.token", &dir.join("olga.token").display().to_string()),
    )
    .expect("config");
    std::fs::write(dir.join("olga.token"), "olga-token\n").expect("token");
    let url = format!("http://127.0.0.1:{port}");
    let mut child = remedy()
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env("REMEDY__INTAKE__BEARER_TOKEN", common::WEBHOOK_TOKEN)
        .env("REMEDY__API__TOKEN", common::API_TOKEN)
        .env("REMEDY__STORE__URL", &store_url)
        .env("REMEDY__SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("REMEDY__PLAYBOOKS__DEADLINE", "1s")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starts");
    let client = remedy::net::client();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.get(format!("{url}/healthz")).send().await.is_err() {
        assert!(Instant::now() < deadline, "did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let accepted = client
        .post(format!("{url}/v1/alertmanager"))
        .bearer_auth(common::WEBHOOK_TOKEN)
        .header("content-type", "application/json")
        .body(common::fixture("firing_single.json"))
        .send()
        .await
        .expect("answered");
    assert!(accepted.status().is_success());
    let ack = |token: Option<&str>, file: Option<&std::path::Path>| {
        let mut cmd = remedy();
        cmd.args(["ack", "1", "--url", &url])
            .env("REMEDY__INTAKE__BEARER_TOKEN", "t")
            .env_remove("REMEDY_TOKEN");
        if let Some(t) = token {
            cmd.env("REMEDY_TOKEN", t);
        }
        if let Some(f) = file {
            cmd.arg("--token-file").arg(f);
        }
        cmd.output().expect("runs")
    };
    let none = ack(None, None);
    assert_eq!(none.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("REMEDY_TOKEN"),
        "{}",
        String::from_utf8_lossy(&none.stderr)
    );
    let shared = ack(Some(common::API_TOKEN), None);
    assert_eq!(shared.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&shared.stdout).contains("read-only"));
    assert_eq!(ack(Some("mallory-token"), None).status.code(), Some(1));
    // Olga holds the on-call role: once the escalation exists, her ack lands.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = ack(None, Some(&dir.join("olga.token")));
        if out.status.success() {
            let body: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
            assert_eq!(body["state"], "acknowledged", "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let shown: serde_json::Value = client
        .get(format!("{url}/v1/incidents/1"))
        .bearer_auth(common::API_TOKEN)
        .send()
        .await
        .expect("answered")
        .json()
        .await
        .expect("json");
    let acked = shown["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .find(|e| e["kind"] == "acknowledged")
        .expect("acknowledged event")
        .clone();
    assert_eq!(acked["detail"]["person"], "olga", "{acked}");
    assert_eq!(acked["detail"]["channel"], "console", "{acked}");
    // `remedy silence` prints the exact matchers and the length, and
    // silences only after a `y`.
    let silence = |answer: &str| {
        let mut child = remedy()
            .args(["silence", "1", "1h", "--url", &url, "--token-file"])
            .arg(dir.join("olga.token"))
            .env("REMEDY__INTAKE__BEARER_TOKEN", "t")
            .env_remove("REMEDY_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("runs");
        std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), answer.as_bytes())
            .expect("answer");
        child.wait_with_output().expect("exits")
    };
    let declined = silence("n\n");
    assert_eq!(declined.status.code(), Some(1));
    let shown = String::from_utf8_lossy(&declined.stderr).into_owned();
    assert!(
        shown.contains("Silence for 1h every alert matching all of:")
            && shown.contains(r#"instance="127.0.0.1:5432""#)
            && shown.contains(r#"alertname="DatabasePoolExhaustionCritical""#)
            && shown.contains("not silenced"),
        "{shown}"
    );
    let confirmed = silence("y\n");
    assert!(
        confirmed.status.success(),
        "{}",
        String::from_utf8_lossy(&confirmed.stdout)
    );
    let body: serde_json::Value = serde_json::from_slice(&confirmed.stdout).expect("json");
    assert_eq!(body["result"], "recorded", "{body}");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
}

#[test]
fn check_warns_about_unheld_roles_once_per_file_naming_them() {
    let out = remedy()
        .arg("check")
        .env("REMEDY__INTAKE__BEARER_TOKEN", "t")
        .output()
        .expect("runs");
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    // The shipped settings give no role members: one line for each playbook
    // with actions, one for the matrix; none repeats a file.
    let files: Vec<&str> = warnings
        .iter()
        .filter_map(|w| w.strip_prefix("warning: ")?.split(':').next())
        .collect();
    let mut distinct = files.clone();
    distinct.dedup();
    assert_eq!(files, distinct, "{stderr}");
    assert_eq!(warnings.len(), 6, "{stderr}");
    let critical = warnings
        .iter()
        .find(|w| w.contains("database-pool-exhaustion-critical.yaml"))
        .expect("a line for the critical playbook");
    assert!(
        critical.contains("on-call-engineer, team-lead")
            && critical.contains("terminate_leaks, restart_service"),
        "{critical}"
    );
    let matrix = warnings
        .iter()
        .find(|w| w.contains("escalation.yaml"))
        .expect("a line for the matrix");
    assert!(
        matrix.contains("team-lead") && matrix.contains("cto"),
        "{matrix}"
    );
}

/// `remedy serve` on a fresh SQLite store and a free port, with `extra`
/// in its environment and no allocator settings of the test's own; returns
/// once it answers `/healthz`.
async fn serve(extra: &[(&str, &str)], stderr: Stdio) -> (std::process::Child, u16) {
    let store_url = common::fresh_store_url(common::Backend::Sqlite).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let mut cmd = remedy();
    for key in [
        "MALLOC_ARENA_MAX",
        "MALLOC_TRIM_THRESHOLD_",
        "MALLOC_MMAP_THRESHOLD_",
    ] {
        cmd.env_remove(key);
    }
    let child = cmd
        .arg("serve")
        .env("REMEDY__INTAKE__BEARER_TOKEN", common::WEBHOOK_TOKEN)
        .env("REMEDY__STORE__URL", &store_url)
        .env("REMEDY__SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .envs(extra.iter().copied())
        .stderr(stderr)
        .spawn()
        .expect("starts");
    let client = remedy::net::client();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (child, port)
}

/// The environment of `remedy serve` started with `extra` in its own.
async fn served_environment(extra: &[(&str, &str)]) -> String {
    let (mut child, _) = serve(extra, Stdio::null()).await;
    // The same process id: the second start replaced the first.
    let environ = std::fs::read(format!("/proc/{}/environ", child.id())).expect("environ");
    child.kill().expect("kill");
    child.wait().expect("exits");
    String::from_utf8_lossy(&environ).replace('\0', "\n")
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[tokio::test]
async fn serve_runs_with_glibcs_allocator_settings_unless_the_operator_chose_them() {
    let own = served_environment(&[]).await;
    for setting in [
        "MALLOC_ARENA_MAX=2",
        "MALLOC_TRIM_THRESHOLD_=131072",
        "MALLOC_MMAP_THRESHOLD_=131072",
    ] {
        assert!(own.lines().any(|l| l == setting), "{setting} missing");
    }
    assert!(
        own.lines()
            .any(|l| l.starts_with("REMEDY__SERVER__LISTEN=127.0.0.1:")),
        "the rest of the environment is kept"
    );
    let operators = served_environment(&[("MALLOC_ARENA_MAX", "8")]).await;
    assert!(operators.lines().any(|l| l == "MALLOC_ARENA_MAX=8"));
    assert!(
        !operators
            .lines()
            .any(|l| l.starts_with("MALLOC_TRIM_THRESHOLD_")),
        "no second start when the operator set the arenas"
    );
}
