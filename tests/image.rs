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

#[tokio::test]
async fn the_images_compose_path_reaches_the_engine_through_the_mounted_socket_as_non_root() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let image = image();
    let host = common::docker::docker_host();
    let socket = host.strip_prefix("unix://").unwrap_or(&host).to_owned();
    let gid = std::fs::metadata(&socket)
        .expect("socket")
        .gid()
        .to_string();
    // The compose project, mounted at the same path as on the host; its
    // folder writable by the image's user (the env_file action's backup).
    let dir = std::env::temp_dir().join(format!(
        "remedy-image-compose-{}",
        uuid::Uuid::now_v7().simple()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(
        dir.join("docker-compose.yml"),
        "version: \"2.4\"\nservices:\n  api:\n    image: debian:bookworm-slim\n    network_mode: host\n",
    )
    .expect("compose file");
    std::fs::write(dir.join(".env"), "POSTGRES_POOL_SIZE=10\n").expect(".env");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let target = common::fresh_store_url(Backend::Postgres).await;
    let d = dir.display().to_string();
    let mounts = [format!("{socket}:/var/run/docker.sock"), format!("{d}:{d}")];
    let env = [
        format!("REMEDY__TARGETS__MAIN__URL={target}"),
        format!("REMEDY__COMPOSE__APP__PROJECT_DIR={d}"),
        "REMEDY__COMPOSE__APP__PROJECT_NAME=remedyimg".to_owned(),
        format!("REMEDY__ENV_FILES__APP__PATH={d}/.env"),
        "REMEDY__INTAKE__BEARER_TOKEN=t".to_owned(),
        "REMEDY__PROMETHEUS__URL=".to_owned(),
        "REMEDY__ALERTMANAGER__URL=".to_owned(),
    ];
    let run = |with_group: bool| {
        let mut args = vec!["run", "--rm", "--network", "host"];
        for m in &mounts {
            args.extend(["--volume", m.as_str()]);
        }
        if with_group {
            args.extend(["--group-add", gid.as_str()]);
        }
        for e in &env {
            args.extend(["--env", e.as_str()]);
        }
        args.extend([image.as_str(), "doctor"]);
        let out = docker(&args);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    // `remedy doctor` in the image runs the compose playbooks' own `ps`
    // through the socket, as the image's user: it needs the socket's group.
    let text = run(true);
    assert!(
        text.contains("ok   compose app: `/usr/bin/docker-compose --project-directory"),
        "{text}"
    );
    assert!(text.contains("ok   env_file app:"), "{text}");
    let text = run(false);
    assert!(
        text.contains("FAIL compose app:"),
        "without --group-add: {text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
