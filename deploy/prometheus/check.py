"""Shape checks of the shipped Prometheus rules and Grafana dashboard (CI has no
Prometheus or Grafana): every rule has a name, an expression and a severity;
every series they and the dashboard use is one crossgate exports."""
import json
import re
import sys

from ruamel.yaml import YAML

EXPORTED = {
    "grpc_server_started_total", "grpc_server_handled_total",
    "grpc_server_handling_seconds_bucket", "crossgate_decisions_total",
    "crossgate_throttled_total", "crossgate_limit_rate", "crossgate_deliveries_total",
    "crossgate_audit_append_seconds_bucket", "crossgate_audit_failures_total",
    "crossgate_step_seconds_bucket", "crossgate_outbox_items", "crossgate_audit_queue_depth",
}
FUNCTIONS = {"increase", "rate", "sum", "by", "histogram_quantile", "label_replace", "max", "delta"}


def series(expr):
    names = set(re.findall(r"\b([a-z_][a-z0-9_]*)\b(?=\s*[\[{(])", expr))
    return {n for n in names if n not in FUNCTIONS and not n.startswith(("le", "grpc_code"))}


def main(rules_file, dashboard_file):
    faults = []
    rules = YAML(typ="safe").load(open(rules_file))
    for group in rules["groups"]:
        for rule in group["rules"]:
            for key in ("alert", "expr"):
                if not rule.get(key):
                    faults.append(f"{rules_file}: a rule without {key}: {rule}")
            if rule.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                faults.append(f"{rules_file}: {rule.get('alert')}: severity critical, warning or info")
            unknown = series(rule.get("expr", "")) - EXPORTED
            if unknown:
                faults.append(f"{rules_file}: {rule.get('alert')}: unknown series {sorted(unknown)}")
    dashboard = json.load(open(dashboard_file))
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            unknown = series(target["expr"]) - EXPORTED
            if unknown:
                faults.append(f"{dashboard_file}: {panel['title']}: unknown series {sorted(unknown)}")
    for f in faults:
        print(f)
    return 1 if faults else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
