//! Reloading the configuration of a running `remedy serve` (the built
//! binary), by SIGHUP and by `POST /-/reload`: a new incident uses the
//! edited playbook while an open incident keeps the report, and the
//! approval, it was diagnosed with; a broken file keeps the running set and
//! says so in the metrics.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const OLGA_TOKEN: &str = "olga-reload-token";

fn remedy() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_remedy"));
    cmd.env_remove("RUST_LOG");
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("REMEDY__")) {
        cmd.env_remove(key);
    }
    cmd
}

/// A playbook whose diagnosis and action say which version made them.
fn playbook(version: &str) -> String {
    format!(
        r#"name: reload-test
match: ['alertname="ReloadTest"']
steps:
  - id: probe
    kind: command
    program: /bin/echo
    args: ["measured-by-{version}"]
findings:
  - severity: info
    text: "diagnosed by {version}"
actions:
  - id: announce
    title: "Announce {version}"
    kind: command
    risk: safe
    approvers: [on-call]
    program: /bin/echo
    args: ["ran-{version}"]
"#
    )
}

fn firing(fingerprint: &str) -> String {
    json!({
        "receiver": "remedy",
        "status": "firing",
        "alerts": [{
            "status": "firing",
            "labels": {"alertname": "ReloadTest", "severity": "warning", "fp": fingerprint},
            "annotations": {},
            "startsAt": "2026-11-30T10:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus/graph",
            "fingerprint": fingerprint
        }],
        "groupLabels": {"alertname": "ReloadTest"},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "version": "4",
        "groupKey": format!("{{}}:{{fp=\"{fingerprint}\"}}"),
        "truncatedAlerts": 0
    })
    .to_string()
}

struct Server {
    child: Child,
    url: String,
    dir: PathBuf,
    client: reqwest::Client,
}

impl Server {
    async fn start() -> Self {
        let store_url = common::fresh_store_url(common::Backend::Sqlite).await;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port");
        let dir =
            std::env::temp_dir().join(format!("remedy-reload-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(dir.join("playbooks")).expect("dir");
        std::fs::write(dir.join("playbooks/reload.yaml"), playbook("v1")).expect("playbook");
        std::fs::write(
            dir.join("escalation.yaml"),
            "roles:\n  on-call: On call\ndefault:\n  initial: on-call\n  review_after: 24h\n",
        )
        .expect("matrix");
        std::fs::write(dir.join("olga.token"), OLGA_TOKEN).expect("token");
        write_settings(&dir, "");
        let child = remedy()
            .arg("serve")
            .arg("--config")
            .arg(dir.join("remedy.toml"))
            .env("REMEDY__INTAKE__BEARER_TOKEN", common::WEBHOOK_TOKEN)
            .env("REMEDY__API__TOKEN", common::API_TOKEN)
            .env("REMEDY__STORE__URL", &store_url)
            .env("REMEDY__SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .env("REMEDY__RECONCILE__ENABLED", "false")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("remedy.log")).expect("log"))
            .spawn()
            .expect("starts");
        let server = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
            client: remedy::net::client(),
        };
        // The Alertmanager-style alias answers as /healthz does.
        let deadline = Instant::now() + Duration::from_secs(30);
        while server
            .client
            .get(format!("{}/-/healthy", server.url))
            .send()
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "did not start: {}",
                std::fs::read_to_string(server.dir.join("remedy.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    fn playbook_file(&self) -> PathBuf {
        self.dir.join("playbooks/reload.yaml")
    }

    async fn fire(&self, fingerprint: &str) {
        let accepted = self
            .client
            .post(format!("{}/v1/alertmanager", self.url))
            .bearer_auth(common::WEBHOOK_TOKEN)
            .header("content-type", "application/json")
            .body(firing(fingerprint))
            .send()
            .await
            .expect("answered");
        assert!(accepted.status().is_success(), "{}", accepted.status());
    }

    async fn get(&self, path: &str) -> Value {
        self.client
            .get(format!("{}{path}", self.url))
            .bearer_auth(common::API_TOKEN)
            .send()
            .await
            .expect("answered")
            .json()
            .await
            .expect("json")
    }

    /// The incident's stored diagnosis, once there is one.
    async fn report(&self, id: i64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let shown = self.get(&format!("/v1/incidents/{id}")).await;
            let report = &shown["incident"]["report"];
            if report["actions"].as_array().is_some_and(|a| !a.is_empty()) {
                return report.clone();
            }
            assert!(
                Instant::now() < deadline,
                "incident {id} not diagnosed: {shown}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn metric(&self, name: &str) -> Option<f64> {
        let text = self
            .client
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .expect("answered")
            .text()
            .await
            .expect("text");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// Waits until a metric satisfies `ok` (a reload by signal is
    /// asynchronous: the metric is how an operator sees its outcome).
    async fn metric_until(&self, name: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(value) = self.metric(name).await.filter(|v| ok(*v)) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "{name} stayed at {:?}",
                self.metric(name).await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn hangup(&self) {
        let sent = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success());
    }

    async fn reload(&self, token: Option<&str>) -> (u16, Value) {
        let mut request = self.client.post(format!("{}/-/reload", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("answered");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or_default())
    }

    async fn stop(self) {
        let killed = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(killed.success());
        let status = tokio::task::spawn_blocking(move || {
            let mut server = self;
            server.child.wait().expect("exits")
        })
        .await
        .expect("join");
        assert!(status.success(), "{status:?}");
    }
}

/// A test that fails before [`Server::stop`] leaves no server running.
impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn write_settings(dir: &Path, extra: &str) {
    let d = dir.display();
    std::fs::write(
        dir.join("remedy.toml"),
        format!(
            "[playbooks]\ndir = \"{d}/playbooks\"\n\
             [escalation]\nfile = \"{d}/escalation.yaml\"\n\
             [commands]\nallow = [\"/bin/echo\"]\n\
             [people.olga]\napi_token_file = \"{d}/olga.token\"\n\
             [approvers.on-call]\npeople = [\"olga\"]\n{extra}"
        ),
    )
    .expect("settings");
}

fn text(v: &Value) -> String {
    v.to_string()
}

#[tokio::test]
async fn a_reload_serves_new_incidents_the_new_playbook_while_open_approvals_still_run() {
    let server = Server::start().await;
    let ready = server
        .client
        .get(format!("{}/-/ready", server.url))
        .send()
        .await
        .expect("answered");
    assert_eq!(ready.status().as_u16(), 200);
    assert_eq!(
        server.metric("remedy_config_last_reload_successful").await,
        Some(1.0)
    );
    let started = server
        .metric_until("remedy_config_last_reload_success_timestamp_seconds", |v| {
            v > 0.0
        })
        .await;

    // Incident 1 is diagnosed by version one.
    server.fire("a1").await;
    let first = server.report(1).await;
    assert!(
        text(&first).contains("ran-v1") && text(&first).contains("measured-by-v1"),
        "{first}"
    );

    // Version two, by SIGHUP.
    std::fs::write(server.playbook_file(), playbook("v2")).expect("edit");
    server.hangup();
    server
        .metric_until("remedy_config_last_reload_success_timestamp_seconds", |v| {
            v > started
        })
        .await;
    assert_eq!(
        server.metric("remedy_config_last_reload_successful").await,
        Some(1.0)
    );

    // A new incident uses the new step and action.
    server.fire("b2").await;
    let second = server.report(2).await;
    assert!(
        text(&second).contains("measured-by-v2") && text(&second).contains("ran-v2"),
        "{second}"
    );
    assert!(!text(&second).contains("v1"), "{second}");

    // The open incident keeps its report, and its approval (bound to the
    // digest of the action shown) still executes the action it showed.
    let unchanged = server.get("/v1/incidents/1").await;
    assert!(
        text(&unchanged["incident"]["report"]).contains("ran-v1"),
        "{unchanged}"
    );
    let approved = server
        .client
        .post(format!(
            "{}/v1/incidents/1/actions/announce/approve",
            server.url
        ))
        .bearer_auth(OLGA_TOKEN)
        .json(&json!({}))
        .send()
        .await
        .expect("answered");
    assert!(approved.status().is_success(), "{}", approved.status());
    let deadline = Instant::now() + Duration::from_secs(30);
    let finished = loop {
        let audit = server.get("/v1/audit?incident=1").await;
        if let Some(entry) = audit["audit"]
            .as_array()
            .expect("audit")
            .iter()
            .find(|e| e["event"] == "execution_finished")
        {
            break entry.clone();
        }
        assert!(Instant::now() < deadline, "not executed: {audit}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(finished["detail"]["outcome"], "done", "{finished}");
    assert!(
        finished["detail"]["output"]
            .as_str()
            .is_some_and(|o| o.contains("ran-v1")),
        "{finished}"
    );

    // A broken playbook by the endpoint: refused with the problem named,
    // the running set stays, and the metric says so.
    std::fs::write(
        server.playbook_file(),
        playbook("v3").replace("steps:", "stepz:"),
    )
    .expect("break");
    let (status, _) = server.reload(None).await;
    assert_eq!(status, 401);
    let (status, refused) = server.reload(Some(OLGA_TOKEN)).await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["error"], "invalid_configuration", "{refused}");
    let problems = text(&refused["problems"]);
    assert!(
        problems.contains("reload.yaml") && problems.contains("stepz"),
        "{refused}"
    );
    assert_eq!(
        server.metric("remedy_config_last_reload_successful").await,
        Some(0.0)
    );
    server.fire("c3").await;
    let third = server.report(3).await;
    assert!(text(&third).contains("ran-v2"), "{third}");

    // Mended, with a start-up-only setting changed: reloaded, and the
    // setting is reported as needing a restart.
    std::fs::write(server.playbook_file(), playbook("v4")).expect("mend");
    write_settings(&server.dir, "[store]\nmax_connections = 3\n");
    let (status, reloaded) = server.reload(Some(common::API_TOKEN)).await;
    assert_eq!(status, 200, "{reloaded}");
    assert_eq!(reloaded["playbooks"], 1, "{reloaded}");
    assert_eq!(
        reloaded["needs_restart"],
        json!(["store.max_connections"]),
        "{reloaded}"
    );
    assert_eq!(
        server.metric("remedy_config_last_reload_successful").await,
        Some(1.0)
    );

    // Broken again, by SIGHUP: the metric drops to 0, the process serves on
    // with version four.
    std::fs::write(server.playbook_file(), "name: [unclosed\n").expect("break");
    server.hangup();
    server
        .metric_until("remedy_config_last_reload_successful", |v| v == 0.0)
        .await;
    server.fire("d4").await;
    let fourth = server.report(4).await;
    assert!(text(&fourth).contains("ran-v4"), "{fourth}");
    let (url, log) = (server.url.clone(), server.dir.join("remedy.log"));
    server.stop().await;

    // One start-up line says where it listens, on what, and what it loaded.
    let log = std::fs::read_to_string(log).expect("log");
    let starting: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("remedy starting"))
        .collect();
    assert_eq!(starting.len(), 1, "{log}");
    let listen = url.trim_start_matches("http://");
    for part in [
        &format!("listen={listen}") as &str,
        "store=sqlite://",
        "platform=console",
        "playbooks=1",
        "escalation_rows=0",
    ] {
        assert!(starting[0].contains(part), "{part}: {}", starting[0]);
    }
}

/// PagerDuty's v3 signature of `body` under `secret` (HMAC-SHA256, hex).
fn pagerduty_signature(secret: &str, body: &str) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(body.as_bytes());
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

impl Server {
    /// A signed PagerDuty webhook of an event remedy ignores: 200 when the
    /// signature verifies, 401 when not, 404 when no such pager.
    async fn pagerduty(&self, secret: &str) -> u16 {
        let body = json!({"event": {"id": "E1", "event_type": "incident.triggered",
                                    "resource_type": "incident", "data": {}}})
        .to_string();
        self.client
            .post(format!("{}/v1/pagers/pd/pagerduty", self.url))
            .header("content-type", "application/json")
            .header("x-pagerduty-signature", pagerduty_signature(secret, &body))
            .body(body)
            .send()
            .await
            .expect("answered")
            .status()
            .as_u16()
    }
}

const PAGER: &str = "[paging]\ndedup_prefix = \"{prefix}\"\n\
     [pagers.pd]\nkind = \"pagerduty\"\nurl = \"http://127.0.0.1:9/\"\n\
     routing_key_file = \"{dir}/pd.key\"\nwebhook_secret_file = \"{dir}/pd.secret\"\n";

fn pager_settings(dir: &Path, prefix: &str) -> String {
    PAGER
        .replace("{prefix}", prefix)
        .replace("{dir}", &dir.display().to_string())
}

#[tokio::test]
async fn a_reload_brings_in_the_matrix_and_pagers_and_a_broken_matrix_or_settings_file_keeps_them()
{
    let server = Server::start().await;
    let dir = server.dir.clone();
    assert_eq!(server.pagerduty("first-secret").await, 404);

    // A matrix row and a PagerDuty pager added: both in force at once.
    std::fs::write(dir.join("pd.key"), "R0UTING-KEY").expect("key");
    std::fs::write(dir.join("pd.secret"), "first-secret").expect("secret");
    let matrix = "roles:\n  on-call: On call\ndefault:\n  initial: on-call\n  review_after: 24h\n\
                  policies:\n  - alert: ReloadTest\n    initial: on-call\n    escalate:\n      \
                  - to: on-call\n        after: 15m\n        page: [pd]\n";
    std::fs::write(dir.join("escalation.yaml"), matrix).expect("matrix");
    write_settings(&dir, &pager_settings(&dir, "remedy"));
    let (status, reloaded) = server.reload(Some(common::API_TOKEN)).await;
    assert_eq!(status, 200, "{reloaded}");
    assert_eq!(reloaded["escalation_rows"], 1, "{reloaded}");
    assert_eq!(reloaded["needs_restart"], json!([]), "{reloaded}");
    assert_eq!(server.pagerduty("first-secret").await, 200);
    assert_eq!(server.pagerduty("another-secret").await, 401);

    // A matrix naming a role nobody declared: refused, the row and the
    // pager stay as they were.
    std::fs::write(
        dir.join("escalation.yaml"),
        matrix.replace("- to: on-call", "- to: nobody"),
    )
    .expect("break");
    let (status, refused) = server.reload(Some(OLGA_TOKEN)).await;
    assert_eq!(status, 422, "{refused}");
    let problems = text(&refused["problems"]);
    assert!(
        problems.contains("escalation.yaml") && problems.contains("nobody"),
        "{refused}"
    );
    assert_eq!(
        server.metric("remedy_config_last_reload_successful").await,
        Some(0.0)
    );
    assert_eq!(server.pagerduty("first-secret").await, 200);

    // A settings file that is not TOML, by SIGHUP: refused the same way.
    std::fs::write(dir.join("escalation.yaml"), matrix).expect("mend");
    let before = server
        .metric_until(
            "remedy_config_last_reload_success_timestamp_seconds",
            |_| true,
        )
        .await;
    std::fs::write(dir.join("remedy.toml"), "[pagers.pd\nkind = ").expect("break");
    server.hangup();
    let log = dir.join("remedy.log");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("configuration reload failed")
    {
        assert!(Instant::now() < deadline, "no failed reload logged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        server.metric("remedy_config_last_reload_successful").await,
        Some(0.0)
    );
    assert_eq!(server.pagerduty("first-secret").await, 200);

    // The secret rotated in its file and the key prefix changed: the new
    // secret verifies at once, the old one no longer does; the prefix,
    // which pages already sent carry, waits for a restart.
    std::fs::write(dir.join("pd.secret"), "second-secret").expect("rotate");
    write_settings(&dir, &pager_settings(&dir, "other"));
    let (status, reloaded) = server.reload(Some(common::API_TOKEN)).await;
    assert_eq!(status, 200, "{reloaded}");
    assert_eq!(
        reloaded["needs_restart"],
        json!(["paging.dedup_prefix"]),
        "{reloaded}"
    );
    assert!(
        server
            .metric("remedy_config_last_reload_success_timestamp_seconds")
            .await
            .is_some_and(|t| t >= before)
    );
    assert_eq!(server.pagerduty("second-secret").await, 200);
    assert_eq!(server.pagerduty("first-secret").await, 401);
    server.stop().await;
}
