#!/usr/bin/env bash
# Bytes per incident, for sizing the store: sends N incident lifecycles
# (firing, two repeats, resolved; default policy escalation, console
# report, no playbook matched) through the webhook, lets the worker finish,
# and divides the store's growth by N, on SQLite (file + WAL after a
# checkpoint) and PostgreSQL (every table with indexes and TOAST).
#
# Usage: benches/store_size.sh [N] (default 2000)
# Env: SIZE_BIN (a built binary; default: cargo build --release).
# Needs: python3, sqlite3, psql; PostgreSQL on 127.0.0.1:5432 (trust).
set -euo pipefail
cd "$(dirname "$0")/.."

n=${1:-2000}
pg_admin=${REMEDY_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/postgres}
bin=${SIZE_BIN:-}
if [[ -z $bin ]]; then
  cargo build --release --quiet
  bin=./target/release/remedy
fi
work=$(mktemp -d -t remedy-size-XXXXXX)
mkdir -p "$work/playbooks"
db=remedy_size_$$
port=19295
server=
trap 'kill $server 2>/dev/null || true; psql "$pg_admin" -qc "drop database if exists $db with (force)" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
export REMEDY__INTAKE__BEARER_TOKEN=size-token RUST_LOG=warn REMEDY__PLAYBOOKS__DIR=$work/playbooks

size() {
  case $1 in
    sqlite://*)
      local f=${1#sqlite://}
      sqlite3 "$f" "pragma wal_checkpoint(truncate)" >/dev/null
      echo $(( $(stat -c %s "$f") + $(stat -c %s "$f-wal" 2>/dev/null || echo 0) )) ;;
    *) psql "$1" -Atc "select coalesce(sum(pg_total_relation_size(relid)), 0) from pg_stat_user_tables" ;;
  esac
}

measure() {
  local name=$1 url=$2
  REMEDY__STORE__URL=$url REMEDY__SERVER__LISTEN=127.0.0.1:$port "$bin" serve >/dev/null 2>"$work/$name.log" &
  server=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
  sleep 2
  local before after
  before=$(size "$url")
  python3 - "$port" "$n" <<'EOF'
import http.client, json, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
conn = http.client.HTTPConnection("127.0.0.1", port)
def send(fp, status, starts, ends):
    body = json.dumps({"receiver": "remedy", "status": status, "alerts": [{"status": status,
        "labels": {"alertname": "SizeTest", "severity": "warning", "instance": "db-%d" % (int(fp, 16) % 97)},
        "annotations": {"summary": "store size test alert"}, "startsAt": starts, "endsAt": ends,
        "generatorURL": "http://prometheus/graph", "fingerprint": fp}],
        "groupLabels": {"alertname": "SizeTest"}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093", "version": "4",
        "groupKey": '{}:{alertname="SizeTest"}', "truncatedAlerts": 0})
    for _ in range(50):  # 503 is retried, as Alertmanager does
        conn.request("POST", "/v1/alertmanager", body, {"Authorization": "Bearer size-token", "Content-Type": "application/json"})
        r = conn.getresponse(); r.read()
        if r.status != 503:
            break
        time.sleep(0.2)
    assert r.status == 200, r.status
for i in range(n):
    fp, starts = "%016x" % (0x5a0000 + i), "2026-11-30T00:%02d:%02dZ" % (i // 60 % 60, i % 60)
    send(fp, "firing", starts, "0001-01-01T00:00:00Z")
    for _ in range(2):
        send(fp, "firing", starts, "0001-01-01T00:00:00Z")  # a repeat: a duplicate delivery
    send(fp, "resolved", starts, "2026-11-30T02:00:00Z")
EOF
  # Let the worker finish the reports and their updates.
  sleep 15
  after=$(size "$url")
  kill "$server"; wait "$server" 2>/dev/null || true
  echo "$name: $n incidents, $(( (after - before) / n )) bytes per incident ($(( before / 1024 )) KiB empty, $(( after / 1024 )) KiB after)"
}

measure sqlite "sqlite://$work/size.db"
psql "$pg_admin" -qc "create database $db" >/dev/null
measure postgres "${pg_admin%/*}/$db"
