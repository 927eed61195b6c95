#!/usr/bin/env bash
# Soak benchmark (not a timed test): mixed traffic at a sustained rate
# (benches/soak.py: new alerts, duplicates, resolves, 401s, health probes,
# interaction clicks) against the release binary for SOAK_SECONDS, in four
# runs side by side: SQLite and PostgreSQL, each once with no scraper and
# once with a scrape of /metrics every 15 s. Every 10 s it samples each
# process's RSS and its store's size (SQLite: the file plus its WAL;
# PostgreSQL: every table of its database with indexes and TOAST) and the
# incidents in it. Retention windows are shortened to minutes so the store
# reaches its plateau within the run.
#
# Targets: RSS at the end within 10 % of RSS after the first minute, in
# every run; store sizes level off.
#
# PostgreSQL gives the space of deleted rows back through autovacuum. When
# the server runs with autovacuum = off (the development server does, for
# test speed), the script runs a plain VACUUM on each PostgreSQL run's
# database every minute instead, as autovacuum would, and says so.
#
# Usage: benches/soak.sh [sqlite|postgres|both] (default both)
# Env: SOAK_SECONDS (600), SOAK_BIN (a built binary; default: build --release), SOAK_RATE requests/s per run (100),
#      SOAK_SCRAPE seconds between scrapes in the scraped runs (15),
#      SOAK_OUT folder for the samples (a temporary folder),
#      SOAK_PORT first port (19195; one port per run).
# Needs: python3, sqlite3, psql; PostgreSQL on 127.0.0.1:5432 with trust
# auth (REMEDY_TEST_POSTGRES names another).
set -euo pipefail
cd "$(dirname "$0")/.."

which=${1:-both}
seconds=${SOAK_SECONDS:-600}
rate=${SOAK_RATE:-100}
scrape=${SOAK_SCRAPE:-15}
out=${SOAK_OUT:-$(mktemp -d -t remedy-soak-XXXXXX)}
pg_admin=${REMEDY_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/postgres}
token=soak-token
mkdir -p "$out" "$out/playbooks"

bin=${SOAK_BIN:-}
if [[ -z $bin ]]; then
  cargo build --release --quiet
  bin=./target/release/remedy
fi

# Retention shortened to minutes; everything else is the default. No
# playbooks: incidents are not diagnosed (that is the pipeline benchmark).
export REMEDY__INTAKE__BEARER_TOKEN=$token RUST_LOG=warn \
  REMEDY__PLAYBOOKS__DIR=$out/playbooks \
  REMEDY__RETENTION__INTERVAL=15s REMEDY__RETENTION__WORK=1m \
  REMEDY__RETENTION__DELIVERIES=1m REMEDY__RETENTION__INCIDENTS=2m \
  REMEDY__RETENTION__AUDIT=2m

dbs=()
cleanup() {
  for job in $(jobs -p); do kill "$job" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for db in "${dbs[@]}"; do psql "$pg_admin" -qc "drop database if exists $db with (force)" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT

# store_size NAME URL: bytes the store takes now.
store_size() {
  case $2 in
    sqlite://*) local f=${2#sqlite://}; echo $(( $(stat -c %s "$f") + $(stat -c %s "$f-wal" 2>/dev/null || echo 0) )) ;;
    *) psql "$2" -Atc "select coalesce(sum(pg_total_relation_size(relid)), 0) from pg_stat_user_tables" ;;
  esac
}

incidents() {
  case $2 in
    sqlite://*) sqlite3 "file:${2#sqlite://}?mode=ro" "select count(*) from incidents" 2>/dev/null || echo "?" ;;
    *) psql "$2" -Atc "select count(*) from incidents" ;;
  esac
}

vacuum=
if [[ $which != sqlite && $(psql "$pg_admin" -Atc "show autovacuum") == off ]]; then
  vacuum=60
  echo "soak: autovacuum is off on this server: VACUUM every ${vacuum}s on the PostgreSQL runs' databases"
fi

# run NAME URL PORT SCRAPE: serve, drive, sample; writes $out/NAME.tsv.
run() {
  local name=$1 url=$2 port=$3 every=$4
  REMEDY__STORE__URL=$url REMEDY__SERVER__LISTEN=127.0.0.1:$port \
    "$bin" serve >/dev/null 2>"$out/$name.log" &
  local server=$!
  trap 'kill $server 2>/dev/null || true' EXIT
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
  python3 benches/soak.py "$port" "$seconds" "$rate" "$every" "$token" >"$out/$name.load" &
  local load=$!
  printf 't_s\trss_kib\tstore_bytes\tincidents\trss_anon_kib\trss_file_kib\tthreads\n' >"$out/$name.tsv"
  local start=$SECONDS
  while kill -0 "$load" 2>/dev/null; do
    sleep 10
    if [[ -n $vacuum && $url != sqlite://* && $(( (SECONDS - start) % vacuum )) -lt 10 ]]; then
      psql "$url" -qc "vacuum" >/dev/null 2>&1 || true
    fi
    printf '%s\t%s\t%s\t%s\t%s\n' $(( SECONDS - start )) \
      "$(awk '/VmRSS/ {print $2}' "/proc/$server/status")" \
      "$(store_size "$name" "$url")" "$(incidents "$name" "$url")" \
      "$(awk '/RssAnon|RssFile|Threads/ {printf "%s%s", sep, $2; sep = "\t"}' "/proc/$server/status")" >>"$out/$name.tsv"
  done
  cat "/proc/$server/smaps_rollup" >"$out/$name.smaps" 2>/dev/null || true
  wait "$load" || true
  kill "$server"; wait "$server" 2>/dev/null || true
}

# summary NAME: RSS after the first minute and at the end; store size at
# 3 min, its largest sample after that, and at the end.
summary() {
  awk -F'\t' -v name="$1" 'NR > 1 {
      t[NR] = $1; rss[NR] = $2; size[NR] = $3; inc[NR] = $4; anon[NR] = $5; file[NR] = $6; threads[NR] = $7; n = NR
      if ($1 >= 60 && !m1) m1 = NR
      if ($1 >= 180 && !m3) m3 = NR
      if (m3 && $3 > peak) peak = $3
    }
    END {
      if (!m1) m1 = 2
      if (!m3) { m3 = 2; peak = size[2] }
      printf "%-17s RSS %5.1f MiB at %ds, %5.1f MiB at %ds (%+.1f %%); store %6.1f MiB at %ds, peak after %6.1f MiB, %6.1f MiB at end (%s incidents)\n",
        name, rss[m1] / 1024, t[m1], rss[n] / 1024, t[n], (rss[n] - rss[m1]) * 100 / rss[m1],
        size[m3] / 1048576, t[m3], peak / 1048576, size[n] / 1048576, inc[n]
      printf "%-17s of which anonymous %5.1f → %5.1f MiB, file-backed %5.1f → %5.1f MiB; threads %s → %s\n",
        "", anon[m1] / 1024, anon[n] / 1024, file[m1] / 1024, file[n] / 1024, threads[m1], threads[n]
    }' "$out/$1.tsv"
}

names=()
port=${SOAK_PORT:-19195}
for store in sqlite postgres; do
  [[ $which == both || $which == "$store" ]] || continue
  for mode in none scraped; do
    name=$store-$mode
    if [[ $store == sqlite ]]; then
      url=sqlite://$out/$name.db
    else
      db=remedy_soak_${mode}_$$
      dbs+=("$db")
      psql "$pg_admin" -qc "create database $db" >/dev/null
      url=${pg_admin%/*}/$db
    fi
    every=0
    [[ $mode == scraped ]] && every=$scrape
    run "$name" "$url" "$port" "$every" &
    names+=("$name")
    port=$((port + 1))
  done
done
echo "soak: ${#names[@]} runs side by side, ${seconds}s at ${rate} requests/s each; samples in $out"
wait $(jobs -p) 2>/dev/null || true
for name in "${names[@]}"; do
  summary "$name"
  sed 's/^/    /' "$out/$name.load"
done
