#!/usr/bin/env bash
# Whose CPU a request costs: the broker and the adapters as processes of their own (the broker,
# public-security's adapter for the query, border inspection's and commerce's for customs'
# publish, each adapter with its reference system in its process), loaded with `crossgate bench`
# and each process's CPU per request reported apart (`--pid` once per process). `crossgate up`
# runs them all in one process, which deploy/bench.sh measures as a whole; this splits it.
# Run from the project's root after `cargo build --release`:
#
#   bash deploy/bench-split.sh
#
# ROUNDS (3) rounds of a query, a publish and a direct fetch, SECS (5) seconds each, on a copy of
# deploy/local in a temporary folder with the rate limits lifted. Prints one line per run (req/s,
# CPU per request of each process, p99), then the medians. Exit 0 when every run succeeded, 1
# when requests failed or a run printed no figures, 2 when it cannot start.
set -u
PROJ=$PWD
CG=${CG_BIN:-$PROJ/target/release/crossgate}
ROUNDS=${ROUNDS:-3}; SECS=${SECS:-5}
[ -x "$CG" ] || { echo "no crossgate binary at $CG; run cargo build --release" >&2; exit 2; }
[ -d "$PROJ/deploy/local" ] && [ -d "$PROJ/schemas" ] || { echo "run from the project's root" >&2; exit 2; }
W=$(mktemp -d /tmp/crossgate-split.XXXX)
PIDS=()
trap '[ ${#PIDS[@]} -gt 0 ] && kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null' EXIT
. "$PROJ/deploy/bench-common.sh"
bench_folder "$PROJ" "$W" || exit 2
bench_record "$W/declaration.json"
cd "$W"
"$CG" certs dev --config deploy/local > certs.log 2>&1 || { cat certs.log >&2; echo "cannot make certificates" >&2; exit 2; }
# started NAME LOG -- COMMAND...: run it, wait for its "listening" line.
started() {
  local name=$1 log=$2; shift 3
  "$@" > "$log" 2>&1 & PIDS+=($!)
  for _ in $(seq 100); do
    grep -q "listening on" "$log" 2>/dev/null && return 0
    kill -0 "${PIDS[-1]}" 2>/dev/null || break
    sleep 0.2
  done
  tail -5 "$log" >&2; echo "$name did not start" >&2; exit 2
}
started broker broker.log -- "$CG" broker --config deploy/local
BROKER=${PIDS[-1]}
for d in public-security border-inspection commerce; do
  started "$d's adapter" "$d.log" -- "$CG" adapter --department "$d" --config deploy/local
done
PS=${PIDS[1]}; BI=${PIDS[2]}; CO=${PIDS[3]}
STATUS=0
# run LABEL "NAME=PID ..." -- BENCH ARGS: one run, its line printed and kept.
run() {
  local label=$1 names=$2; shift 3
  local out
  out=$("$CG" bench "$@" --secs "$SECS" --warmup 1 --json) || STATUS=1
  printf '%s\t%s\n' "$names" "$out" >> runs.tsv
  LABEL=$label NAMES=$names python3 -c '
import json, os, sys
try:
    d = json.loads(sys.stdin.read())
except ValueError:
    print(os.environ["LABEL"], "printed no figures"); sys.exit(1)
names = [n.split("=") for n in os.environ["NAMES"].split()]
parts = d["server_cpu_us_per_req_by_pid"] or {pid: d["server_cpu_us_per_req"] for _, pid in names}
each = ", ".join("%s %.1f" % (n, parts[pid]) for n, pid in names)
print("%-8s %9.1f req/s  CPU us/req %.1f (%s)  p99 %.2f ms  failed %d" % (
    os.environ["LABEL"], d["rps"], d["server_cpu_us_per_req"], each, d["p99_us"] / 1000, d["failed"]))
sys.exit(1 if d["failed"] or not d["ok"] else 0)
' <<< "$out" || STATUS=1
}
for _ in $(seq "$ROUNDS"); do
  run query "broker=$BROKER public-security=$PS" -- query "${LOOKUP[@]}" --pid "$BROKER" --pid "$PS"
  run publish "broker=$BROKER border-inspection=$BI commerce=$CO" -- publish \
    --type customs-declaration.v1 --record "$W/declaration.json" --pid "$BROKER" --pid "$BI" --pid "$CO"
  run fetch "public-security=$PS" -- fetch --consumer education "${LOOKUP[@]}" --pid "$PS"
done
echo "medians of $ROUNDS rounds:"
python3 - runs.tsv <<'PY'
import json, statistics, sys
runs = []
for line in open(sys.argv[1]):
    names, _, out = line.rstrip("\n").partition("\t")
    try:
        runs.append(([n.split("=") for n in names.split()], json.loads(out)))
    except ValueError:
        pass
for target in sorted({r["target"] for _, r in runs}):
    of = [(n, r) for n, r in runs if r["target"] == target]
    med = statistics.median
    parts = {}
    for names, r in of:
        by_pid = r["server_cpu_us_per_req_by_pid"] or {}
        for name, pid in names:
            if pid in by_pid:
                parts.setdefault(name, []).append(by_pid[pid])
    split = ", ".join("%s %.1f" % (n, med(v)) for n, v in parts.items())
    print("  %s: %.0f req/s, CPU %.1f us/req%s" % (target, med([r["rps"] for _, r in of]),
          med([r["server_cpu_us_per_req"] or 0 for _, r in of]), " (%s)" % split if split else ""))
PY
exit $STATUS
