#!/usr/bin/env bash
# Instructions per request: the server's user-space instructions, counted by valgrind's
# callgrind, for a fixed number of requests at a fixed low rate. Unlike CPU time on this
# shared 2-core machine (±20 % from run to run), the count repeats to within about 1 % for one
# build, so a change worth 1-3 % can be measured at all. It does not see the kernel (socket
# writes, wake-ups, fsync), and it counts SHA-256 in software (valgrind hides the CPU's SHA
# instructions), so it complements `deploy/bench-ab.sh`; it does not replace it.
#
#   bash deploy/bench-ir.sh BINARY... [-- fetch|query|publish]
#
# For each binary (and each, again, RUNS times): start `crossgate up` under callgrind with
# counting off, warm up for 3 s, count only while `crossgate bench` sends RATE (100) requests
# a second for SECS (8) seconds over 4 connections x 16 streams, and print the instructions
# per answered request. Needs valgrind (Debian's package). Run from the project's root after
# `cargo build --release`. KEEP=DIR keeps each callgrind file there for callgrind_annotate.
set -u
BINS=(); WHAT=query
while [ $# -gt 0 ]; do
  case "$1" in --) WHAT=${2:-query}; break;; *) BINS+=("$1");; esac; shift
done
RATE=${RATE:-100}; SECS=${SECS:-8}; RUNS=${RUNS:-1}
PROJ=$PWD
[ ${#BINS[@]} -gt 0 ] || { echo "usage: bash deploy/bench-ir.sh BINARY... [-- fetch|query|publish]" >&2; exit 2; }
for bin in "${BINS[@]}"; do [ -x "$bin" ] || { echo "no executable at '$bin'" >&2; exit 2; }; done
case "$WHAT" in fetch|query|publish) ;; *) echo "what to run: fetch, query or publish, not '$WHAT'" >&2; exit 2;; esac
command -v valgrind >/dev/null && command -v callgrind_control >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 2; }
[ -d "$PROJ/deploy/local" ] && [ -d "$PROJ/schemas" ] || { echo "run from the project's root" >&2; exit 2; }
W=$(mktemp -d /tmp/crossgate-ir.XXXX)
UP=
trap '[ -n "$UP" ] && kill "$UP" 2>/dev/null; wait 2>/dev/null; rm -rf "$W"' EXIT
. "$PROJ/deploy/bench-common.sh"
bench_record "$W/declaration.json"
case "$WHAT" in
  fetch) ARGS=(fetch --consumer education "${LOOKUP[@]}");;
  query) ARGS=(query "${LOOKUP[@]}");;
  publish) ARGS=(publish --type customs-declaration.v1 --record "$W/declaration.json");;
esac
one() { # binary -> "binary what requests instructions instructions/request"
  local cg=$1 run="$W/run"
  rm -rf "$run"; bench_folder "$PROJ" "$run" || exit 2
  (cd "$run" && exec valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$run/callgrind.out" \
    "$cg" up --config deploy/local > up.log 2>&1) & UP=$!
  for _ in $(seq 600); do grep -q "is up" "$run/up.log" 2>/dev/null && break; sleep 0.5; done
  grep -q "is up" "$run/up.log" || { tail -5 "$run/up.log" >&2; echo "crossgate up did not start under valgrind" >&2; exit 2; }
  local bench=(bench "${ARGS[@]}" --rate "$RATE" --conns 4 --streams 16 --json)
  (cd "$run" && "$cg" "${bench[@]}" --secs 3 --warmup 1 > warm.json) || { echo "the warm-up failed" >&2; exit 2; }
  callgrind_control -i on "$UP" > /dev/null 2>&1
  (cd "$run" && "$cg" "${bench[@]}" --secs "$SECS" --warmup 0 > bench.json)
  callgrind_control -i off "$UP" > /dev/null 2>&1
  callgrind_control -d "$UP" > /dev/null 2>&1
  kill -INT "$UP" 2>/dev/null; sleep 2; kill "$UP" 2>/dev/null; wait "$UP" 2>/dev/null; UP=
  local dump; dump=$(ls "$run"/callgrind.out.* 2>/dev/null | head -1)
  [ -n "$dump" ] || { echo "callgrind wrote no counts" >&2; exit 2; }
  [ -n "${KEEP:-}" ] && mkdir -p "$KEEP" && cp "$dump" "$KEEP/$(basename "$cg").$WHAT.$(date +%s).callgrind"
  python3 - "$run/bench.json" "$dump" "$cg" "$WHAT" <<'PY'
import json, sys
bench = json.load(open(sys.argv[1]))
total = next(int(l.split()[1]) for l in open(sys.argv[2]) if l.startswith("totals:"))
ok, failed = bench["ok"], bench["failed"]
if ok == 0 or failed:
    sys.exit(f"{sys.argv[3]}: {ok} answered, {failed} failed; no count")
print(f"{sys.argv[3]} {sys.argv[4]} requests {ok} instructions {total:,} per request {total // ok:,}")
PY
}
for _ in $(seq "$RUNS"); do
  for bin in "${BINS[@]}"; do one "$bin" || exit 2; done
done
