# remedy: multi-stage build, non-root runtime.
# Not built on the development machines (they have no Docker engine); the
# steps mirror what `cargo build --release` does there.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
COPY config ./config
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/remedy --create-home remedy
COPY --from=build /src/target/release/remedy /usr/local/bin/remedy
COPY config /etc/remedy/config
COPY playbooks /etc/remedy/playbooks
# The JSON Schemas the YAML files name in their first line (for editors).
COPY schemas /etc/remedy/schemas
WORKDIR /var/lib/remedy
USER remedy
ENV REMEDY__SERVER__LISTEN=0.0.0.0:9095 \
    REMEDY__STORE__URL=sqlite:///var/lib/remedy/remedy.db \
    REMEDY__LOG__FORMAT=json \
    REMEDY__PLAYBOOKS__DIR=/etc/remedy/playbooks \
    REMEDY__ESCALATION__FILE=/etc/remedy/config/escalation.yaml
VOLUME ["/var/lib/remedy"]
EXPOSE 9095
ENTRYPOINT ["/usr/local/bin/remedy"]
CMD ["serve"]
