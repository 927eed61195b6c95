//! Compose, for real: Debian's docker-compose 1.29 against the test Docker
//! engine (`contrib/ci/docker.sh start`; DOCKER_HOST names it). A tiny
//! project whose service reads `POSTGRES_POOL_SIZE` from its `.env`; the
//! env_file action is approved through the API, the executor edits the
//! file and recreates the service, and the value is read inside the new
//! container. A failed check, or a verification that judges the edit
//! ineffective, puts the old file and the old value back.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{Backend, Reply, TestApp, send};
use remedy::domain::now_millis;
use remedy::engine::{self, WorkerSettings};
use serde_json::{Value, json};

const COMPOSE: &str = "/usr/bin/docker-compose";

const PLAYBOOK: &str = r#"
name: ComposeTest
match: ['alertname="ComposeTest"']
steps:
  - id: pool_env
    kind: env_file
    env_file: app
  - id: queuepool
    kind: compose
    project: app
    logs: api
    since: 10m
    pattern: QueuePool
    max_lines: 20
findings:
  - when: steps.queuepool.value
    severity: warning
    text: "{{ steps.queuepool.value | int }} QueuePool lines; latest: {{ steps.queuepool.rows[-1].line }}"
actions:
  - id: raise_pool_size
    title: Raise POSTGRES_POOL_SIZE
    kind: env_file
    risk: disruptive
    approvers: [oncall]
    env_file: app
    project: app
    service: api
    set:
      POSTGRES_POOL_SIZE: "{{ (steps.pool_env.rows[0].POSTGRES_POOL_SIZE | int) * 2 }}"
    verify: labels.outcome == "better"
  - id: restart_api
    title: Restart api
    kind: compose
    risk: disruptive
    approvers: [oncall]
    project: app
    operation: restart
    service: api
"#;

/// The service prints 25 QueuePool lines with its pool size, then idles.
const COMPOSE_FILE: &str = r#"version: "2.4"
services:
  api:
    image: debian:bookworm-slim
    network_mode: host
    env_file: .env
    stop_signal: SIGKILL
    command: ["sh", "-c", "for i in $$(seq 1 25); do echo \"QueuePool limit of size $$POSTGRES_POOL_SIZE reached ($$i)\"; echo GET /health; done; exec sleep infinity"]
"#;

const ENV: &str = "# the API's pool\nPOSTGRES_POOL_SIZE=10  # default: 10\nOTHER=kept\n";

/// A compose project in its own folder, taken down when dropped.
struct Project {
    dir: PathBuf,
    name: String,
    host: String,
}

impl Project {
    fn new(compose_file: &str) -> Self {
        let host = common::docker::docker_host();
        let name = format!(
            "remedyt{}",
            &uuid::Uuid::now_v7().simple().to_string()[20..]
        );
        let dir = std::env::temp_dir().join(format!("remedy-compose-{name}"));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("docker-compose.yml"), compose_file).expect("compose file");
        std::fs::write(dir.join(".env"), ENV).expect(".env");
        let project = Self { dir, name, host };
        let up = project.compose(&["up", "-d"]);
        assert!(up.status.success(), "compose up: {}", text(&up));
        project
    }

    fn compose(&self, args: &[&str]) -> Output {
        Command::new(COMPOSE)
            .args(["-p", &self.name])
            .args(args)
            .current_dir(&self.dir)
            .env("DOCKER_HOST", &self.host)
            .output()
            .expect("docker-compose runs")
    }

    /// POSTGRES_POOL_SIZE inside the running container.
    fn pool_size(&self) -> String {
        let out = self.compose(&["exec", "-T", "api", "printenv", "POSTGRES_POOL_SIZE"]);
        assert!(out.status.success(), "exec: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn env_text(&self) -> String {
        std::fs::read_to_string(self.dir.join(".env")).expect("read .env")
    }

    fn backups(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.dir)
            .expect("dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(".env.remedy-") && n.ends_with(".bak"))
            })
            .collect()
    }

    /// The settings that name this project and its `.env`.
    fn settings(&self) -> String {
        format!(
            r#"
[people.alice]
api_token = "alice-token"
[approvers.oncall]
console_users = ["alice"]

[compose.app]
program = ["{COMPOSE}"]
project_dir = "{dir}"
files = ["docker-compose.yml"]
project_name = "{name}"
logs_since = false

[env_files.app]
path = "{dir}/.env"
allowed_keys = ["POSTGRES_POOL_SIZE"]
"#,
            dir = self.dir.display(),
            name = self.name
        )
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self.compose(&["down", "-t", "0"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

struct Setup {
    app: TestApp,
}

async fn setup(project: &Project) -> Setup {
    setup_with(project, PLAYBOOK, "").await
}

/// A set-up with its own playbook and settings added to the project's.
async fn setup_with(project: &Project, playbook: &str, settings: &str) -> Setup {
    let playbooks = project.dir.join("playbooks");
    std::fs::create_dir_all(&playbooks).expect("dir");
    std::fs::write(playbooks.join("compose-test.yaml"), playbook).expect("playbook");
    let env = [
        ("REMEDY__PLAYBOOKS__DIR", playbooks.to_str().expect("utf-8")),
        ("REMEDY__COMMANDS__ALLOW", COMPOSE),
        // compose finds the engine through DOCKER_HOST: the child keeps it.
        ("REMEDY__COMMANDS__ENV", "PATH,LANG,HOME,DOCKER_HOST"),
    ];
    let settings = format!("{}{settings}", project.settings());
    let app = common::spawn_app_with_toml(Backend::Sqlite, &settings, &env).await;
    Setup { app }
}

impl Setup {
    async fn open(&self, outcome: &str) -> i64 {
        let payload = json!({
            "receiver": "remedy", "status": "firing", "version": "4",
            "alerts": [{
                "status": "firing",
                "labels": {"alertname": "ComposeTest", "outcome": outcome},
                "annotations": {}, "startsAt": "2026-11-27T01:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": "", "fingerprint": "c0c0c0c0c0c0c0c1"
            }],
            "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
            "externalURL": "http://am", "groupKey": "{}:{}", "truncatedAlerts": 0
        });
        let reply = self.app.post_webhook(payload.to_string()).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
        self.drain(now_millis()).await;
        self.app.incidents("").await[0]["id"].as_i64().expect("id")
    }

    async fn drain(&self, now: i64) {
        for _ in 0..10 {
            let worker = WorkerSettings::new("compose-test".into());
            if engine::step(&self.app.app.engine, &worker, now)
                .await
                .expect("step")
                == 0
            {
                return;
            }
        }
        panic!("work kept coming");
    }

    async fn approve(&self, id: i64, key: &str) -> Reply {
        let request = Request::post(format!("/v1/incidents/{id}/actions/{key}/approve"))
            .header("content-type", "application/json")
            .header("authorization", "Bearer alice-token")
            .body(Body::from(json!({}).to_string()))
            .expect("request");
        send(&self.app.router, request).await
    }

    /// Approves `key` as alice and runs what it queued.
    async fn approve_and_run(&self, id: i64, key: &str) {
        let reply = self.approve(id, key).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.json);
        self.drain(now_millis()).await;
    }

    /// The details of the `action_verified` events: verdicts and evidence.
    async fn verdicts(&self) -> Vec<String> {
        common::column(
            &self.app.store,
            "select detail from incident_events where kind = 'action_verified'",
        )
        .await
    }

    async fn shown(&self, id: i64) -> Value {
        self.app.api(&format!("/v1/incidents/{id}")).await
    }

    async fn execution(&self, id: i64) -> Value {
        let shown = self.shown(id).await;
        let executions = shown["executions"].as_array().expect("executions").clone();
        assert_eq!(executions.len(), 1, "{shown}");
        executions[0].clone()
    }

    /// `executor.verify_after` (30 s) later: the diagnosis runs again and
    /// judges the run.
    async fn verify(&self) {
        self.drain(now_millis() + 31_000).await;
    }
}

fn action(shown: &Value) -> Value {
    shown["incident"]["report"]["actions"][0].clone()
}

#[tokio::test]
async fn the_compose_logs_step_keeps_the_newest_matching_lines_and_counts_them_all() {
    let project = Project::new(COMPOSE_FILE);
    let s = setup(&project).await;
    let id = s.open("better").await;
    let shown = s.shown(id).await;
    let step = &shown["incident"]["report"]["steps"]["queuepool"];
    assert_eq!(step["ok"], true, "{step}");
    assert_eq!(step["value"], 25.0, "every match is counted: {step}");
    assert_eq!(step["truncated"], 5, "{step}");
    let lines: Vec<&str> = step["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["line"].as_str())
        .collect();
    assert_eq!(lines.len(), 20);
    assert!(
        lines[0].ends_with("QueuePool limit of size 10 reached (6)"),
        "{lines:?}"
    );
    assert!(
        lines[19].ends_with("QueuePool limit of size 10 reached (25)"),
        "the newest last: {lines:?}"
    );
    assert!(lines.iter().all(|l| !l.contains("/health")), "{lines:?}");
}

#[tokio::test]
async fn an_approved_env_file_edit_reaches_the_recreated_container() {
    let project = Project::new(COMPOSE_FILE);
    assert_eq!(project.pool_size(), "10");
    let s = setup(&project).await;
    let id = s.open("better").await;
    // The approval shows the exact lines, and its digest covers them.
    let shown = s.shown(id).await;
    assert_eq!(
        action(&shown)["changes"],
        json!([{"key": "POSTGRES_POOL_SIZE", "before": "POSTGRES_POOL_SIZE=10  # default: 10", "after": "POSTGRES_POOL_SIZE=20"}]),
        "{shown}"
    );
    s.approve_and_run(id, "raise_pool_size").await;

    let execution = s.execution(id).await;
    assert_eq!(execution["state"], "done", "{execution}");
    assert_eq!(
        project.pool_size(),
        "20",
        "the new container has the new value"
    );
    assert_eq!(
        project.env_text(),
        "# the API's pool\nPOSTGRES_POOL_SIZE=20\nOTHER=kept\n",
        "only the shown line changed"
    );
    let backups = project.backups();
    assert_eq!(backups.len(), 1, "{backups:?}");
    assert_eq!(std::fs::read_to_string(&backups[0]).expect("backup"), ENV);
    let output = execution["output"].as_str().unwrap_or_default();
    assert!(
        output.contains("--force-recreate api")
            && output.contains("POSTGRES_POOL_SIZE=20 in the new container"),
        "{output}"
    );
    assert!(output.contains(&format!("-p {}", project.name)), "{output}");

    s.verify().await;
    let verified = s.execution(id).await;
    assert_eq!(verified["verification"], "effective", "{verified}");
    assert_eq!(project.pool_size(), "20", "an effective edit stays");
}

#[tokio::test]
async fn an_ineffective_verification_restores_the_old_file_and_value() {
    let project = Project::new(COMPOSE_FILE);
    let s = setup(&project).await;
    let id = s.open("worse").await;
    s.approve_and_run(id, "raise_pool_size").await;
    assert_eq!(s.execution(id).await["state"], "done");
    assert_eq!(project.pool_size(), "20");

    s.verify().await;
    let verified = s.execution(id).await;
    assert_eq!(verified["verification"], "ineffective", "{verified}");
    assert_eq!(project.env_text(), ENV, "the backup is back in place");
    assert_eq!(
        project.pool_size(),
        "10",
        "and the container was recreated with it"
    );
    let events = s.verdicts().await;
    assert!(
        events
            .iter()
            .any(|e| e.contains("restored") && e.contains(".env")),
        "{events:?}"
    );
}

#[tokio::test]
async fn a_container_that_does_not_see_the_new_value_gets_the_old_file_back() {
    // `environment:` wins over `env_file:`: the edit cannot reach the container.
    let pinned = COMPOSE_FILE.replace(
        "    env_file: .env\n",
        "    env_file: .env\n    environment:\n      POSTGRES_POOL_SIZE: \"10\"\n",
    );
    let project = Project::new(&pinned);
    let s = setup(&project).await;
    let id = s.open("better").await;
    s.approve_and_run(id, "raise_pool_size").await;

    let execution = s.execution(id).await;
    assert_eq!(execution["state"], "failed", "{execution}");
    let output = execution["output"].as_str().unwrap_or_default();
    assert!(
        output.contains("the new container has POSTGRES_POOL_SIZE=\"10\", not \"20\""),
        "{output}"
    );
    assert!(output.contains("restored"), "{output}");
    assert_eq!(project.env_text(), ENV);
    assert_eq!(project.pool_size(), "10");
}

#[tokio::test]
async fn a_file_edited_after_the_approval_was_shown_is_left_alone() {
    let project = Project::new(COMPOSE_FILE);
    let s = setup(&project).await;
    let id = s.open("better").await;
    // Someone edits the file by hand between the message and the click.
    let by_hand = ENV.replace("POSTGRES_POOL_SIZE=10", "POSTGRES_POOL_SIZE=15");
    std::fs::write(project.dir.join(".env"), &by_hand).expect("edit");
    s.approve_and_run(id, "raise_pool_size").await;

    let execution = s.execution(id).await;
    assert_eq!(execution["state"], "precondition_failed", "{execution}");
    assert!(
        execution["output"]
            .as_str()
            .unwrap_or_default()
            .contains("the file changed since the action was shown"),
        "{execution}"
    );
    assert_eq!(project.env_text(), by_hand);
    assert!(project.backups().is_empty());
    assert_eq!(project.pool_size(), "10", "nothing was recreated");
}

#[tokio::test]
async fn a_verification_whose_metric_cannot_be_read_keeps_the_edit_and_says_why() {
    // Judged on the pool metric, as the shipped playbooks are; the
    // Prometheus in the settings is down (nothing listens on its port).
    let on_the_metric = PLAYBOOK
        .replace(
            "steps:\n",
            "steps:\n  - id: pool_utilization\n    kind: promql\n    query: max(db_pool_utilization_percent)\n",
        )
        .replace(
            "verify: labels.outcome == \"better\"",
            "verify: steps.pool_utilization.value is not none and steps.pool_utilization.value < 90",
        );
    let project = Project::new(COMPOSE_FILE);
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port");
    let s = setup_with(
        &project,
        &on_the_metric,
        &format!("\n[prometheus]\nurl = \"http://{closed}\"\n"),
    )
    .await;
    let id = s.open("worse").await;
    s.approve_and_run(id, "raise_pool_size").await;
    assert_eq!(s.execution(id).await["state"], "done");
    assert_eq!(project.pool_size(), "20");

    s.verify().await;
    let verified = s.execution(id).await;
    assert_eq!(verified["verification"], "not judged", "{verified}");
    assert_eq!(
        project.pool_size(),
        "20",
        "a fix nobody could measure stays"
    );
    assert_eq!(
        project.env_text(),
        "# the API's pool\nPOSTGRES_POOL_SIZE=20\nOTHER=kept\n"
    );
    let events = s.verdicts().await;
    assert!(
        events
            .iter()
            .any(|e| e.contains("could not be judged") && e.contains("pool_utilization")),
        "{events:?}"
    );
    let suspended: Vec<String> = common::column(
        &s.app.store,
        "select kind from incident_events where kind like '%suspend%' or kind = 'escalated'",
    )
    .await;
    assert!(suspended.is_empty(), "{suspended:?}");
}

#[tokio::test]
async fn an_approved_restart_restarts_the_service_in_its_project() {
    let project = Project::new(COMPOSE_FILE);
    let started_at = || {
        let id = project.compose(&["ps", "-q", "api"]);
        let id = String::from_utf8_lossy(&id.stdout).trim().to_owned();
        let out = Command::new("/usr/bin/docker")
            .args(["inspect", "--format", "{{.State.StartedAt}}", &id])
            .env("DOCKER_HOST", &project.host)
            .output()
            .expect("docker inspect");
        (id, String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let (container, before) = started_at();
    let s = setup(&project).await;
    let id = s.open("better").await;
    s.approve_and_run(id, "restart_api").await;
    let execution = s.execution(id).await;
    assert_eq!(execution["state"], "done", "{execution}");
    let output = execution["output"].as_str().unwrap_or_default();
    assert!(
        output.contains(&format!("-p {} restart api", project.name)),
        "{output}"
    );
    let (after_container, after) = started_at();
    assert_eq!(after_container, container, "restarted, not recreated");
    assert_ne!(after, before, "the container started again");
    assert_eq!(project.env_text(), ENV, "a restart edits nothing");
}
