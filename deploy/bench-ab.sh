#!/usr/bin/env bash
# Compare two builds of crossgate with `crossgate bench`, interleaved: each round starts a fresh
# `crossgate up` (limits lifted, a new log) from build A, runs the load, stops it, then the same
# for build B. On a shared 2-core machine figures drift by ±15 % between runs and far more
# between days, so one build's run against another's a minute later says little; medians of
# interleaved rounds do. Run from the project's root:
#
#   bash deploy/bench-ab.sh A_BINARY B_BINARY [publish|query|fetch|rate]
#
# (build A first, e.g. `git stash; cargo build --release; cp target/release/crossgate /tmp/a`).
# ROUNDS (4) rounds of RUNS (2) runs of SECS (5) seconds each; RATE (5000) for `rate`, which is
# the query at a fixed rate. Prints every run, then per build the medians of req/s, server CPU
# µs per request and p99. Exit 2 when it cannot start. AUDIT_STORE (e.g.
# postgres://postgres@127.0.0.1:5432/cgbench) puts both builds' audit log there instead of a
# fresh SQLite file per run. Runs then add to the same tables, so later runs (B after A in each
# round) work on larger tables: use enough rounds, and compare with the order swapped.
set -u
A=${1:-}; B=${2:-}; WHAT=${3:-publish}
ROUNDS=${ROUNDS:-4}; RUNS=${RUNS:-2}; SECS=${SECS:-5}; RATE=${RATE:-5000}
PROJ=$PWD
for bin in "$A" "$B"; do
  [ -n "$bin" ] && [ -x "$bin" ] || { echo "usage: bash deploy/bench-ab.sh A_BINARY B_BINARY [publish|query|fetch|rate]; no executable at '$bin'" >&2; exit 2; }
done
case "$WHAT" in publish|query|fetch|rate) ;; *) echo "what to run: publish, query, fetch or rate, not '$WHAT'" >&2; exit 2;; esac
[ -d "$PROJ/deploy/local" ] && [ -d "$PROJ/schemas" ] || { echo "run from the project's root" >&2; exit 2; }
W=$(mktemp -d /tmp/crossgate-ab.XXXX)
PID=
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null' EXIT
. "$PROJ/deploy/bench-common.sh"
bench_record "$W/declaration.json"
one_round() { # label binary
  local label=$1 cg=$2 run="$W/run"
  rm -rf "$run"; bench_folder "$PROJ" "$run" || exit 2
  # The store line replaced as text (a URL's & and | would mean something to sed).
  [ -n "${AUDIT_STORE:-}" ] && STORE_URL="$AUDIT_STORE" python3 -c '
import os, re, sys
f = sys.argv[1]
text = open(f).read()
open(f, "w").write(re.sub(r"(?m)^store = .*$", lambda _: "store = \"%s\"" % os.environ["STORE_URL"], text))
' "$run/deploy/local/broker.toml"
  (cd "$run" && exec "$cg" up --config deploy/local > up.log 2>&1) & PID=$!
  for _ in $(seq 100); do grep -q "is up" "$run/up.log" 2>/dev/null && break; sleep 0.2; done
  grep -q "is up" "$run/up.log" || { tail -5 "$run/up.log" >&2; echo "$label: crossgate up did not start" >&2; exit 2; }
  for _ in $(seq "$RUNS"); do
    case "$WHAT" in
      publish) args=(publish --type customs-declaration.v1 --record "$W/declaration.json") ;;
      query) args=(query "${LOOKUP[@]}") ;;
      rate) args=(query "${LOOKUP[@]}" --rate "$RATE") ;;
      fetch) args=(fetch --consumer education "${LOOKUP[@]}") ;;
    esac
    (cd "$run" && "$cg" bench "${args[@]}" --secs "$SECS" --warmup 1 --pid "$PID" --json) \
      | python3 -c 'import json,sys; d=json.load(sys.stdin); print(sys.argv[1], d["rps"], d["server_cpu_us_per_req"], d["p99_us"], d["failed"])' "$label" \
      | tee -a "$W/results.txt"
  done
  kill "$PID"; wait "$PID" 2>/dev/null; PID=
}
for _ in $(seq "$ROUNDS"); do
  one_round A "$A"
  one_round B "$B"
done
python3 - "$W/results.txt" <<'PYEOF'
import statistics as st, sys
rows = [l.split() for l in open(sys.argv[1])]
for label in ("A", "B"):
    r = [(float(a), float(b), float(c), int(d)) for l, a, b, c, d in rows if l == label]
    print(f"{label}: {len(r)} runs, req/s {st.median(x[0] for x in r):,.0f} (range {min(x[0] for x in r):,.0f}-{max(x[0] for x in r):,.0f}), "
          f"CPU {st.median(x[1] for x in r):.0f} us/req, p99 {st.median(x[2] for x in r)/1000:.1f} ms, failed {sum(x[3] for x in r)}")
PYEOF
