#!/usr/bin/env bash
# Reproduces every figure of README's "Performance" section, in order:
#   1. cargo build --release
#   2. benches/intake.sh both        intake throughput and latency (wrk), RSS,
#      then again with REMEDY__WORKER__ENABLED=false (an intake-only process)
#   3. cargo bench --bench pipeline  alert -> Slack message, click -> executed, RSS
#   4. cargo bench --bench diagnosis one full diagnosis (DatabasePoolExhaustionCritical)
#   5. cargo bench --bench timers    escalation timer lag and memory, 10k vs 100k pending
#   6. sidebyside.sh 10s 2            intake against the minimum-work ceiling server
#      (../shared/bench/, or REMEDY_CEILING_BENCH=DIR), same wrk load, interleaved,
#      with each remedy/ceiling ratio; skipped when that directory is missing
# then prints a summary of the figures and the machine's load before and
# after (other work on the machine skews every figure: compare with care).
# About 7 minutes on the 2-core development machine, most of it in
# compiling and in the timer benchmark.
#
# Usage: benches/run.sh
# Needs: PostgreSQL on 127.0.0.1:5432 with trust auth (REMEDY_TEST_POSTGRES
# names another), and wrk (installed with apt-get when missing and root).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v wrk >/dev/null; then
  if [[ $(id -u) == 0 ]]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk; } >/dev/null 2>&1 ||
      { echo "apt-get install wrk failed" >&2; exit 1; }
  else
    echo "wrk is needed: apt-get install wrk" >&2
    exit 1
  fi
fi

log=$(mktemp -t remedy-bench-XXXXXX.log)
started=$(date +%s)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
echo "remedy benchmarks, $(date -u +%F) on $(nproc) cores; load average before: $load_before; log: $log"

step() {
  echo
  echo "### $*" | tee -a "$log"
  "$@" 2>&1 | tee -a "$log"
}

step cargo build --release
step benches/intake.sh both
step env REMEDY__WORKER__ENABLED=false benches/intake.sh both
step cargo bench --bench pipeline
step cargo bench --bench diagnosis
step cargo bench --bench timers
ceiling=${REMEDY_CEILING_BENCH:-../shared/bench}
if [[ -x $ceiling/sidebyside.sh ]]; then
  step "$ceiling/sidebyside.sh" 10s 2
else
  echo "### side-by-side skipped: no $ceiling/sidebyside.sh (set REMEDY_CEILING_BENCH)" | tee -a "$log"
fi

load_after=$(cut -d' ' -f1-3 /proc/loadavg)
echo
echo "================ summary ($(date -u +%F), $(nproc) cores, $(( $(date +%s) - started )) s) ================"
echo "-- intake (benches/intake.sh both: wrk, 16 connections, 10 s, new fingerprint per request)"
grep -E '^(### .*intake|== |requests/s|p50|requests:|idle RSS)' "$log" || true
echo "-- pipeline (cargo bench --bench pipeline)"
grep -E '^(sqlite|postgres) +(alert|quorum|remedy)' "$log" || true
echo "-- diagnosis (cargo bench --bench diagnosis)"
grep -E '^diagnosis ' "$log" || true
echo "-- escalation timers (cargo bench --bench timers)"
grep -E '^(sqlite|postgres) +pending' "$log" || true
echo "-- side by side with the ceiling server (sidebyside.sh 10s 2: requests/s, latency, RSS; ratios of the averages)"
grep -E '^(ceiling|remedy) .*requests/s|^ratio |side-by-side skipped' "$log" || true
echo "-- load average (1, 5, 15 min): before $load_before, after $load_after"
