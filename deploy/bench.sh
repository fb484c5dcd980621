#!/usr/bin/env bash
# The README's performance figures, made with `crossgate bench` against `crossgate up`:
# education's person lookup straight to public-security's adapter (Department.Fetch) and
# through the broker (Broker.Query), closed loop and at a fixed rate, and customs' publish
# to its two receivers. Run from the project's root after `cargo build --release`.
# It starts `crossgate up` on a copy of deploy/local in a temporary folder with the
# rate limits lifted (the load is what is measured), prints one JSON line per run with the
# server's CPU per request, and stops it. ROUNDS (3) and SECS (5) set the runs; the fetch and
# query runs alternate, so that both see the same machine. RATE sets the fixed rate; by default
# it is half of the query's closed-loop maximum just measured (the median of the rounds), which
# is the load #12's latency goal names.
#
# Last it prints #12's goals that these runs measure, each with the figure and whether it is
# met: the broker's added CPU per query (closed loop, medians: query minus fetch), its p99 at
# the fixed rate against the direct call's (the median of the rounds' differences; each round
# runs both back to back), and publishes a second; these lines follow the JSON lines. Exit 0
# when every run succeeded (the goals are reported, not judged, unless GOALS=1: then exit 1
# when one is not met or not measured), 1 when requests failed or a run printed no figures,
# 2 when it cannot start. Throughput against nginx is ../shared/tools/perf-pipeline.sh's.
set -u
PROJ=$PWD
CG=${CG_BIN:-$PROJ/target/release/crossgate}
ROUNDS=${ROUNDS:-3}; SECS=${SECS:-5}; RATE=${RATE:-}
[ -x "$CG" ] || { echo "no crossgate binary at $CG; run cargo build --release" >&2; exit 2; }
[[ -z "$RATE" || "$RATE" =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "RATE is requests a second (a number), not '$RATE'" >&2; exit 2; }
W=$(mktemp -d /tmp/crossgate-bench.XXXX)
trap '[ -f "$W/up.pid" ] && kill "$(cat "$W/up.pid")" 2>/dev/null; wait 2>/dev/null' EXIT
. "$PROJ/deploy/bench-common.sh"
bench_folder "$PROJ" "$W" || exit 2
bench_record "$W/declaration.json"
cd "$W"
"$CG" up --config deploy/local > up.log 2>&1 & echo $! > up.pid
for _ in $(seq 100); do grep -q "is up" up.log 2>/dev/null && break; sleep 0.2; done
grep -q "is up" up.log || { tail -5 up.log >&2; echo "crossgate up did not start" >&2; exit 2; }
PID=$(cat up.pid)
RUNS_FILE="$W/runs.jsonl"
STATUS=0
# Each run's JSON line printed and kept for the summary; a run that failed (or printed nothing)
# makes the script's exit 1 at least.
run() {
  "$CG" bench "$@" --secs "$SECS" --warmup 1 --pid "$PID" --json | tee -a "$RUNS_FILE"
  [ "${PIPESTATUS[0]}" = 0 ] || STATUS=1
}
for _ in $(seq "$ROUNDS"); do
  run fetch --consumer education "${LOOKUP[@]}"
  run query "${LOOKUP[@]}"
done
if [ -z "$RATE" ]; then
  RATE=$(python3 "$PROJ/deploy/bench-goals.py" half-rate "$RUNS_FILE") || { echo "no closed-loop query rate to halve" >&2; exit 2; }
fi
for _ in $(seq "$ROUNDS"); do
  run fetch --consumer education "${LOOKUP[@]}" --rate "$RATE"
  run query "${LOOKUP[@]}" --rate "$RATE"
done
for _ in $(seq "$ROUNDS"); do
  run publish --type customs-declaration.v1 --record declaration.json
done
python3 "$PROJ/deploy/bench-goals.py" summary "$RUNS_FILE" "$RATE"
GOALS_STATUS=$?
[ "$GOALS_STATUS" -gt "$STATUS" ] && STATUS=$GOALS_STATUS
exit "$STATUS"
