"""What `deploy/bench.sh` prints of #12's goals, from runs written as `crossgate bench --json`
would write them. Run: python3 deploy/test_bench_goals.py"""

import json
import os
import subprocess
import sys
import tempfile
import unittest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench-goals.py")
FETCH = "Department.Fetch public-security person.v1"
QUERY = "Broker.Query public-security person.v1"
PUBLISH = "Broker.Publish customs-declaration.v1"


def run_line(target, rps, cpu, p99, offered=None, failed=0):
    return json.dumps(
        {
            "conns": 4, "streams": 16, "errors": {}, "failed": failed, "ok": 1000,
            "offered_rps": offered, "rps": rps, "p50_us": p99 // 2, "p90_us": p99 - 1,
            "p99_us": p99, "max_us": p99 + 1, "secs": 5.0,
            "server_cpu_us_per_req": cpu, "target": target,
        }
    )


# Closed-loop query rates whose median (13,100) is not their mean; fixed-rate pairs whose
# median difference (+1.50 ms) is neither the difference of the medians (+1.60 ms) nor the
# mean difference.
QUERY_RPS = (13100.0, 12000.0, 16000.0)
FIXED_P99 = ((3000, 4500), (4000, 4600), (2000, 9000))


def runs(query_cpu=(100.0, 104.0, 98.0), fixed_p99=FIXED_P99, publish=(3000.0, 3100.0, 2900.0),
         failed=0, skip_fixed_fetch=None):
    lines = []
    for i, cpu in enumerate(query_cpu):
        lines.append(run_line(FETCH, 21000.0, 60.0 + i, 5000))
        lines.append(run_line(QUERY, QUERY_RPS[i], cpu, 9000))
    for i, (f, q) in enumerate(fixed_p99):
        if i != skip_fixed_fetch:
            lines.append(run_line(FETCH, 6550.0, 80.0, f, offered=6550.0))
        lines.append(run_line(QUERY, 6550.0, 140.0, q, offered=6550.0, failed=failed))
    for p in publish:
        lines.append(run_line(PUBLISH, p, 400.0, 30000))
    return "\n".join(lines) + "\n"


class BenchGoals(unittest.TestCase):
    def goals(self, text, *args, env=None):
        with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
            f.write(text)
        try:
            return subprocess.run(
                [sys.executable, SCRIPT, *args[:1], f.name, *args[1:]],
                capture_output=True, text=True, env={**os.environ, **(env or {})},
            )
        finally:
            os.unlink(f.name)

    def test_the_fixed_rate_is_half_the_median_closed_loop_query_rate(self):
        out = self.goals(runs(), "half-rate")
        self.assertEqual((out.returncode, out.stdout), (0, "6550\n"))

    def test_each_goal_is_printed_with_its_figure_and_verdict(self):
        out = self.goals(runs(), "summary", "6550")
        self.assertEqual(out.returncode, 0, out.stderr)
        lines = [line.strip() for line in out.stdout.splitlines()]
        # Medians: query 100, fetch 61.
        self.assertIn(
            "added CPU per query (closed loop): 39.0 us (query 100.0 - fetch 61.0; goal <= 40): met",
            lines,
        )
        # Differences by pair: +1.5, +0.6, +7.0 ms; the median is the verdict, the
        # outlier pair is shown but does not decide.
        p99 = next(line for line in lines if "p99 at" in line)
        self.assertIn("difference +1.50 ms (median of +1.50, +0.60, +7.00; goal <= +2 ms): met", p99)
        self.assertIn("p99 at 6,550/s, 50 % of the query's maximum", p99)
        self.assertIn("publish to two receivers: 3,000/s (goal >= 8,000/s): NOT met", lines)

    def test_a_goal_missed_fails_only_when_goals_are_asked_to_be_judged(self):
        slow = runs(query_cpu=(120.0, 121.0, 119.0), publish=(8100.0, 8200.0, 8000.0))
        out = self.goals(slow, "summary", "6550")
        self.assertIn(
            "added CPU per query (closed loop): 59.0 us (query 120.0 - fetch 61.0; goal <= 40): NOT met",
            out.stdout,
        )
        self.assertIn("publish to two receivers: 8,100/s (goal >= 8,000/s): met", out.stdout)
        self.assertEqual(out.returncode, 0)
        self.assertEqual(self.goals(slow, "summary", "6550", env={"GOALS": "1"}).returncode, 1)
        all_met = runs(publish=(8100.0, 8200.0, 8000.0))
        self.assertEqual(self.goals(all_met, "summary", "6550", env={"GOALS": "1"}).returncode, 0)

    def test_a_query_run_is_compared_only_with_the_fetch_run_just_before_it(self):
        # The second round's fetch is missing: its query is left out, not paired with the
        # third round's fetch.
        out = self.goals(runs(skip_fixed_fetch=1), "summary", "6550")
        self.assertIn("(median of +1.50, +7.00;", out.stdout)

    def test_a_goal_not_measured_is_said_and_counts_as_missed_when_judged(self):
        only_queries = "".join(
            line + "\n" for line in runs(publish=()).splitlines() if "Fetch" not in line
        )
        out = self.goals(only_queries, "summary", "6550", env={"GOALS": "1"})
        self.assertEqual(out.returncode, 1)
        for said in (
            "added CPU per query: not measured",
            "p99 at the fixed rate: not measured",
            "publish to two receivers: not measured",
        ):
            self.assertIn(said, out.stdout)

    def test_no_rate_is_halved_from_queries_that_answered_nothing(self):
        dead = run_line(QUERY, 0.0, None, 0, failed=500) + "\n"
        out = self.goals(dead, "half-rate")
        self.assertEqual(out.returncode, 2)
        self.assertIn("answered nothing", out.stderr)

    def test_failed_requests_make_the_run_fail_and_say_so(self):
        out = self.goals(runs(failed=3), "summary", "6550")
        self.assertEqual(out.returncode, 1)
        self.assertIn("9 request(s) failed: the figures above are not a clean run", out.stdout)

    def test_an_unreadable_line_is_named_and_exits_2(self):
        out = self.goals(runs() + "not json\n", "summary", "6550")
        self.assertEqual(out.returncode, 2)
        self.assertIn(".jsonl:16: not a `crossgate bench --json` line", out.stderr)
        self.assertEqual(self.goals("", "half-rate").returncode, 2)
        self.assertEqual(self.goals("", "summary", "6550").returncode, 2)
        self.assertEqual(self.goals(runs(), "summary", "fast").returncode, 2)


if __name__ == "__main__":
    unittest.main()
