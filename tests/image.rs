//! The container image, run: the image `.ci/run` builds (REMEDY_TEST_IMAGE,
//! default `remedy:ci`) started on the test Docker engine with host
//! networking against the local PostgreSQL, as a non-root user whose
//! HEALTHCHECK on `/readyz` turns healthy; a fixture alert posted to it
//! becomes an incident the API shows.

mod common;

use common::Backend;
use common::docker::docker;

const INTAKE_TOKEN: &str = "image-intake-token";
const API_TOKEN: &str = "image-api-token";

fn image() -> String {
    let image = std::env::var("REMEDY_TEST_IMAGE").unwrap_or_else(|_| "remedy:ci".to_owned());
    let found = docker(&["image", "inspect", "--format", "{{.Id}}", &image]);
    assert!(
        found.status.success(),
        "no image `{image}` on the test Docker engine: .ci/run builds it (docker build \
         --network host --build-arg BUILD_IMAGE=debian:bookworm-slim --build-arg \
         PREBUILT=target/docker/remedy -t remedy:ci .)"
    );
    image
}

/// A running container, removed when dropped.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.0]);
    }
}

fn inspect(container: &Container, format: &str) -> String {
    let out = docker(&["inspect", "--format", format, &container.0]);
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test]
async fn the_image_serves_as_non_root_turns_healthy_and_turns_an_alert_into_an_incident() {
    let image = image();
    let store = common::fresh_store_url(Backend::Postgres).await;
    let target = common::fresh_store_url(Backend::Postgres).await;
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let base = format!("http://127.0.0.1:{port}");
    let env = [
        format!("REMEDY__STORE__URL={store}"),
        format!("REMEDY__TARGETS__MAIN__URL={target}"),
        format!("REMEDY__SERVER__LISTEN=127.0.0.1:{port}"),
        format!("REMEDY_HEALTH_URL={base}/readyz"),
        format!("REMEDY__INTAKE__BEARER_TOKEN={INTAKE_TOKEN}"),
        format!("REMEDY__API__TOKEN={API_TOKEN}"),
        "REMEDY__PROMETHEUS__URL=".to_owned(),
        "REMEDY__ALERTMANAGER__URL=".to_owned(),
    ];
    let mut args = vec![
        "run",
        "--detach",
        "--network",
        "host",
        "--health-interval",
        "1s",
        "--health-start-period",
        "0s",
    ];
    for e in &env {
        args.extend(["--env", e.as_str()]);
    }
    args.push(&image);
    let started = docker(&args);
    assert!(
        started.status.success(),
        "docker run: {}",
        String::from_utf8_lossy(&started.stderr)
    );
    let container = Container(String::from_utf8_lossy(&started.stdout).trim().to_owned());

    assert_eq!(inspect(&container, "{{.Config.User}}"), "remedy");
    let uid = docker(&["exec", &container.0, "id", "-u"]);
    assert_eq!(String::from_utf8_lossy(&uid.stdout).trim(), "10001");
    for program in [
        &["docker", "--version"][..],
        &["docker-compose", "version"][..],
    ] {
        let mut exec = vec!["exec", container.0.as_str()];
        exec.extend(program);
        let out = docker(&exec);
        assert!(out.status.success(), "{program:?} in the image: {out:?}");
    }

    // The HEALTHCHECK probes /readyz every second; wait for its verdict.
    let mut health = String::new();
    for _ in 0..120 {
        health = inspect(&container, "{{.State.Health.Status}}");
        if health != "starting" || inspect(&container, "{{.State.Running}}") != "true" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let logs = docker(&["logs", "--tail", "20", &container.0]);
    assert_eq!(
        health,
        "healthy",
        "container logs:\n{}{}",
        String::from_utf8_lossy(&logs.stdout),
        String::from_utf8_lossy(&logs.stderr)
    );

    let client = remedy::net::client();
    let posted = client
        .post(format!("{base}/v1/alertmanager"))
        .bearer_auth(INTAKE_TOKEN)
        .header("content-type", "application/json")
        .body(common::fixture("firing_single.json"))
        .send()
        .await
        .expect("post");
    assert_eq!(posted.status(), 200, "{:?}", posted.text().await);
    let listed: serde_json::Value = client
        .get(format!("{base}/v1/incidents"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    let incidents = listed["incidents"].as_array().expect("incidents");
    assert_eq!(incidents.len(), 1, "{listed}");
    assert_eq!(
        incidents[0]["alertname"], "DatabasePoolExhaustionCritical",
        "{listed}"
    );
}
