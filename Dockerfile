# remedy: multi-stage build, non-root runtime with a Docker client and
# docker-compose for the shipped playbooks' compose steps and actions.
#
# Users: `docker build -t remedy .` compiles a release binary in the Rust
# image (the default BUILD_IMAGE), then copies it into Debian bookworm.
#
# CI (.ci/run) has no image registry: it builds on the host and passes the
# binary in, with the Debian base as the build stage:
#   docker build --network host --build-arg BUILD_IMAGE=debian:bookworm-slim \
#     --build-arg PREBUILT=target/docker/remedy -t remedy:ci .
ARG BUILD_IMAGE=rust:1.95-bookworm
FROM ${BUILD_IMAGE} AS build
WORKDIR /src
# .dockerignore lets in only the sources, config, playbooks and
# target/docker/ (the CI's prebuilt binary).
COPY . .
ARG PREBUILT=""
# Everything the runtime copies, under /out, in one layer.
RUN set -eu; \
    if [ -n "$PREBUILT" ]; then \
      install -D -m 0755 "$PREBUILT" /out/usr/local/bin/remedy; \
    else \
      cargo build --release --locked; \
      install -D -m 0755 target/release/remedy /out/usr/local/bin/remedy; \
    fi; \
    mkdir -p /out/etc/remedy; \
    cp -r config /out/etc/remedy/config; \
    cp -r playbooks /out/etc/remedy/playbooks; \
    cp -r schemas /out/etc/remedy/schemas; \
    # Only the Docker client out of Debian's docker.io (which also holds the
    # daemon, containerd and runc, none of which run here).
    apt-get update -qq; \
    cd /tmp; apt-get download -qq docker.io; \
    dpkg-deb -x docker.io_*.deb /tmp/docker.io; \
    install -D -m 0755 /tmp/docker.io/usr/bin/docker /out/usr/bin/docker; \
    rm -rf /tmp/docker.io /tmp/docker.io_*.deb /var/lib/apt/lists/*

FROM debian:bookworm-slim
# The Docker client (from the build stage) and docker-compose 1.29 (the v2
# plugin is not in Debian; --no-install-recommends leaves out the daemon it
# recommends); curl for the HEALTHCHECK. The engine is
# the host's, through its socket mounted at /var/run/docker.sock: see the
# README's Container section (the user needs `--group-add` the socket's group,
# and access to that socket is root on the host).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl docker-compose \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/remedy --create-home remedy
COPY --from=build /out/ /
WORKDIR /var/lib/remedy
USER remedy
# The compose project the shipped playbooks name ([compose.app]) uses
# docker-compose 1.29 here; mount the project folder at the same path as on
# the host (compose resolves relative paths in it) and set
# REMEDY__COMPOSE__APP__PROJECT_DIR, __FILES, __PROJECT_NAME and
# REMEDY__ENV_FILES__APP__PATH to it.
ENV REMEDY__SERVER__LISTEN=0.0.0.0:9095 \
    REMEDY__STORE__URL=sqlite:///var/lib/remedy/remedy.db \
    REMEDY__LOG__FORMAT=json \
    REMEDY__PLAYBOOKS__DIR=/etc/remedy/playbooks \
    REMEDY__ESCALATION__FILE=/etc/remedy/config/escalation.yaml \
    REMEDY__COMMANDS__ALLOW=/usr/bin/docker,/usr/bin/docker-compose \
    REMEDY__COMMANDS__ENV=PATH,LANG,HOME,DOCKER_HOST \
    REMEDY__COMPOSE__APP__PROGRAM=/usr/bin/docker-compose \
    REMEDY__COMPOSE__APP__LOGS_SINCE=false \
    REMEDY_HEALTH_URL=http://127.0.0.1:9095/readyz \
    MALLOC_ARENA_MAX=2 \
    MALLOC_TRIM_THRESHOLD_=131072 \
    MALLOC_MMAP_THRESHOLD_=131072
VOLUME ["/var/lib/remedy"]
EXPOSE 9095
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD curl -fsS --max-time 4 "$REMEDY_HEALTH_URL" >/dev/null || exit 1
ENTRYPOINT ["/usr/local/bin/remedy"]
CMD ["serve"]
