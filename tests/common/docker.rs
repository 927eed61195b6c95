//! The test Docker engine (`contrib/ci/docker.sh start`, a private dockerd
//! whose socket DOCKER_HOST names): tests that need it fail with a message
//! saying how to start it, never skip.

/// DOCKER_HOST, once its socket answers.
pub fn docker_host() -> String {
    let Ok(host) = std::env::var("DOCKER_HOST") else {
        panic!(
            "DOCKER_HOST is not set: these tests need the test Docker engine; run \
             `contrib/ci/docker.sh start && contrib/ci/docker.sh base` and \
             `eval $(contrib/ci/docker.sh env)` first (.ci/run does)"
        );
    };
    let socket = host.strip_prefix("unix://").unwrap_or(&host);
    if let Err(e) = std::os::unix::net::UnixStream::connect(socket) {
        panic!(
            "the Docker engine at {host} is not reachable ({e}); start it with \
             `contrib/ci/docker.sh start && contrib/ci/docker.sh base`"
        );
    }
    host
}

/// `docker ARGS` against the test engine (Debian's client, not whichever
/// `docker` comes first on PATH).
pub fn docker(args: &[&str]) -> std::process::Output {
    std::process::Command::new("/usr/bin/docker")
        .args(args)
        .env("DOCKER_HOST", docker_host())
        .output()
        .expect("/usr/bin/docker runs")
}
