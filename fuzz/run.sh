#!/usr/bin/env bash
# Coverage-guided fuzzing of remedy's input parsers with cargo-fuzz (nightly).
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]
#
# SECONDS_PER_TARGET defaults to 60; TARGETs default to all of them.
# JOBS=2 runs two targets at a time (default 1; the build is shared).
#
# Each target starts from a scratch corpus, fuzz/corpus/<target>/ (not
# committed), seeded with fuzz/seeds/<target>/ and fuzz/regressions/<target>/,
# with the dictionary fuzz/dicts/<target>.dict when there is one.
# Crashing inputs (crash-, oom-, timeout-, leak-) are copied into
# fuzz/regressions/<target>/, which tests/fuzz_regressions.rs replays on
# stable. Logs go to fuzz/logs/<target>.log. Exits 1 if any target failed.
set -uo pipefail

all=(webhook slack_interaction discord_interaction mattermost_interaction playbook matcher)
secs=${1:-60}
[[ $# -gt 0 ]] && shift
if ! [[ $secs =~ ^[0-9]+$ ]] || ((secs == 0)); then
    echo "usage: $0 [SECONDS_PER_TARGET] [TARGET...]" >&2
    exit 2
fi
if (($#)); then targets=("$@"); else targets=("${all[@]}"); fi
jobs=${JOBS:-1}

cd "$(dirname "$0")/.." || exit 2

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked || exit 2
fi

# One build for all targets (release, AddressSanitizer: cargo fuzz's defaults);
# `cargo fuzz run` below then finds it up to date.
cargo +nightly fuzz build || exit 2

mkdir -p fuzz/logs

run_one() {
    local t=$1
    local corpus=fuzz/corpus/$t artifacts=fuzz/artifacts/$t log=fuzz/logs/$t.log
    mkdir -p "$corpus" "$artifacts"
    rm -f "$artifacts"/* fuzz/logs/"$t".status
    cp fuzz/seeds/"$t"/* "$corpus"/
    if [[ -d fuzz/regressions/$t ]] && compgen -G "fuzz/regressions/$t/*" >/dev/null; then
        cp fuzz/regressions/"$t"/* "$corpus"/
    fi
    local opts=(-max_total_time="$secs" -timeout=10 -print_final_stats=1)
    [[ -f fuzz/dicts/$t.dict ]] && opts+=(-dict="fuzz/dicts/$t.dict")
    local start=$SECONDS
    cargo +nightly fuzz run "$t" "$corpus" -- "${opts[@]}" >"$log" 2>&1
    local rc=$? found=()
    for f in "$artifacts"/crash-* "$artifacts"/oom-* "$artifacts"/timeout-* "$artifacts"/leak-*; do
        [[ -e $f ]] && found+=("$f")
    done
    if ((${#found[@]})); then
        mkdir -p fuzz/regressions/"$t"
        cp "${found[@]}" fuzz/regressions/"$t"/
    fi
    local execs rate
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    local summary="$t: ${execs:-?} executions in $((SECONDS - start)) s (${rate:-?} exec/s), exit $rc"
    if ((rc != 0 || ${#found[@]})); then
        summary+=", FAILED: ${#found[@]} input(s) copied to fuzz/regressions/$t/ (see $log)"
        echo fail >fuzz/logs/"$t".status
    else
        echo ok >fuzz/logs/"$t".status
    fi
    echo "$summary"
}

for t in "${targets[@]}"; do
    if [[ ! -d fuzz/seeds/$t ]]; then
        echo "unknown target $t (no fuzz/seeds/$t)" >&2
        exit 2
    fi
    while (($(jobs -rp | wc -l) >= jobs)); do wait -n; done
    run_one "$t" &
done
wait

status=0
for t in "${targets[@]}"; do
    [[ $(cat fuzz/logs/"$t".status 2>/dev/null) == ok ]] || status=1
done
exit "$status"
