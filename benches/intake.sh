#!/usr/bin/env bash
# Intake benchmark: drives POST /v1/alertmanager at concurrency 16 for 10 s
# with a new fingerprint per request (wrk + benches/intake.lua), against the
# release binary on SQLite and on the local PostgreSQL, and prints
# requests/s, p50, p99, idle RSS and peak RSS.
#
# Usage: benches/intake.sh [sqlite|postgres|both] (default both)
# Needs: wrk (apt-get install wrk), PostgreSQL on 127.0.0.1:5432 for postgres.
set -euo pipefail
cd "$(dirname "$0")/.."

which=${1:-both}
duration=${BENCH_DURATION:-10s}
connections=${BENCH_CONNECTIONS:-16}
port=${BENCH_PORT:-19095}
pg_admin=${REMEDY_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/postgres}
export REMEDY_BENCH_TOKEN=bench-token

command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }
cargo build --release --quiet
work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT

run() {
  local name=$1 url=$2
  REMEDY__STORE__URL=$url REMEDY__INTAKE__BEARER_TOKEN=$REMEDY_BENCH_TOKEN \
  REMEDY__SERVER__LISTEN=127.0.0.1:$port RUST_LOG=warn \
    ./target/release/remedy serve >"$work/$name.out" 2>"$work/$name.log" &
  server=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
  sleep 1
  local idle
  idle=$(awk '/VmRSS/ {print $2}' /proc/$server/status)
  echo "== $name: $connections connections, $duration, new fingerprint per request"
  wrk -t 2 -c "$connections" -d "$duration" -s benches/intake.lua "http://127.0.0.1:$port" | grep -E "requests/s|p50|requests:"
  echo "idle RSS: $((idle / 1024)) MiB  peak RSS: $(( $(awk '/VmHWM/ {print $2}' /proc/$server/status) / 1024 )) MiB"
  kill $server; wait $server 2>/dev/null || true
}

if [[ $which == sqlite || $which == both ]]; then
  run sqlite "sqlite://$work/bench.db"
fi
if [[ $which == postgres || $which == both ]]; then
  db=remedy_bench_$$
  psql "$pg_admin" -qc "create database $db" >/dev/null
  run postgres "${pg_admin%/*}/$db"
  psql "$pg_admin" -qc "drop database $db with (force)" >/dev/null
fi
