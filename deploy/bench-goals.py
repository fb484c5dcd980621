"""#12's goals, read off `deploy/bench.sh`'s runs (one `crossgate bench --json` line each).

  python3 deploy/bench-goals.py half-rate RUNS.jsonl
      half of the median closed-loop Broker.Query rate, as a whole number of requests a second
  python3 deploy/bench-goals.py summary RUNS.jsonl RATE
      the goals these runs measure, each with its figure and whether it is met

Runs come in the order bench.sh makes them: closed-loop fetch and query alternating, then the
same at RATE, then the publishes. A goal needs both sides measured: the added CPU compares the
closed-loop query with the closed-loop fetch (medians), the latency goal each fixed-rate query
with the fixed-rate fetch run just before it (the median of those differences; a query run with
no such fetch before it is left out), so that a difference is taken between runs that saw the
same machine.

Exit 0 when every run answered every request; 1 when some failed (the figures are still
printed); with GOALS=1 also 1 when a goal is not met or not measured; 2 when the runs cannot be
read or there are none.
"""

import json
import os
import statistics
import sys

# The goals of #12 that `crossgate bench` measures.
ADDED_CPU_US = 40.0
P99_MARGIN_US = 2000.0
PUBLISH_RPS = 8000.0


def load(path):
    runs = []
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except UnicodeDecodeError as e:
        raise SystemExit(f"{path}: not text ({e})")
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        try:
            run = json.loads(line)
            kind = run["target"].split()[0]
            runs.append(
                {
                    "kind": kind,
                    "fixed": run.get("offered_rps") is not None,
                    "rps": float(run["rps"]),
                    "cpu": run.get("server_cpu_us_per_req"),
                    "p99": float(run["p99_us"]),
                    "failed": int(run.get("failed", 0)),
                }
            )
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
            raise SystemExit(f"{path}:{number}: not a `crossgate bench --json` line ({e})")
    if not runs:
        raise SystemExit(f"{path}: no runs")
    return runs


def pick(runs, kind, fixed):
    return [r for r in runs if r["kind"] == kind and r["fixed"] == fixed]


def half_rate(runs):
    queries = pick(runs, "Broker.Query", False)
    if not queries:
        raise SystemExit("no closed-loop Broker.Query run to take half of")
    half = int(statistics.median(r["rps"] for r in queries) / 2)
    if half < 1:
        raise SystemExit("the closed-loop Broker.Query runs answered nothing: no rate to halve")
    return half


def verdict(met):
    return "met" if met else "NOT met"


def summary(runs, rate):
    lines, met = [], []
    fetch, query = pick(runs, "Department.Fetch", False), pick(runs, "Broker.Query", False)
    cpu_f = [r["cpu"] for r in fetch if r["cpu"] is not None]
    cpu_q = [r["cpu"] for r in query if r["cpu"] is not None]
    if cpu_f and cpu_q:
        f, q = statistics.median(cpu_f), statistics.median(cpu_q)
        added = q - f
        met.append(added <= ADDED_CPU_US)
        lines.append(
            f"added CPU per query (closed loop): {added:.1f} us "
            f"(query {q:.1f} - fetch {f:.1f}; goal <= {ADDED_CPU_US:.0f}): {verdict(met[-1])}"
        )
    else:
        lines.append("added CPU per query: not measured (no closed-loop fetch and query runs with the server's CPU)")
    max_q = statistics.median(r["rps"] for r in query) if query else None
    pairs = [
        (before, run)
        for before, run in zip(runs, runs[1:])
        if run["kind"] == "Broker.Query" and run["fixed"]
        and before["kind"] == "Department.Fetch" and before["fixed"]
    ]
    if pairs:
        diffs = [q["p99"] - f["p99"] for f, q in pairs]
        d = statistics.median(diffs)
        share = f", {100 * rate / max_q:.0f} % of the query's maximum" if max_q else ""
        met.append(d <= P99_MARGIN_US)
        lines.append(
            f"p99 at {rate:,.0f}/s{share}: query {statistics.median(q['p99'] for _, q in pairs) / 1000:.2f} ms, "
            f"fetch {statistics.median(f['p99'] for f, _ in pairs) / 1000:.2f} ms; "
            f"difference {d / 1000:+.2f} ms (median of {', '.join(f'{x / 1000:+.2f}' for x in diffs)}; "
            f"goal <= +{P99_MARGIN_US / 1000:.0f} ms): {verdict(met[-1])}"
        )
    else:
        lines.append("p99 at the fixed rate: not measured (no fixed-rate query run after a fixed-rate fetch)")
    publish = pick(runs, "Broker.Publish", False)
    if publish:
        p = statistics.median(r["rps"] for r in publish)
        met.append(p >= PUBLISH_RPS)
        lines.append(
            f"publish to two receivers: {p:,.0f}/s (goal >= {PUBLISH_RPS:,.0f}/s): {verdict(met[-1])}"
        )
    else:
        lines.append("publish to two receivers: not measured")
    failed = sum(r["failed"] for r in runs)
    if failed:
        lines.append(f"{failed} request(s) failed: the figures above are not a clean run")
    return lines, failed, all(met) and len(met) == 3


def main(argv):
    if len(argv) == 3 and argv[1] == "half-rate":
        print(half_rate(load(argv[2])))
        return 0
    if len(argv) == 4 and argv[1] == "summary":
        try:
            rate = float(argv[3])
        except ValueError:
            raise SystemExit(f"RATE must be a number, not {argv[3]!r}")
        lines, failed, all_met = summary(load(argv[2]), rate)
        print("#12's goals measured here (throughput against nginx: ../shared/tools/perf-pipeline.sh):")
        for line in lines:
            print("  " + line)
        if failed:
            return 1
        if os.environ.get("GOALS") == "1" and not all_met:
            return 1
        return 0
    print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            sys.exit(2)
        raise
    except OSError as e:
        print(f"cannot read the runs: {e}", file=sys.stderr)
        sys.exit(2)
