#!/usr/bin/env python3
"""Check the Grafana dashboard (and the alert rules) against what the nodes really export.

    check_dashboard.py DASHBOARD.json --metrics node.txt [--metrics exporter.txt]
                       [--rules alerts.yml] [--prometheus http://127.0.0.1:19090]

- the dashboard is well-formed JSON with a title, a uid, unique panel ids, a grid position and
  at least one PromQL target per panel;
- it covers what the runbook reads: holds, sales, queue and latency (on-sale); term, leader,
  commit and apply lag, fsync and batch sizes (cluster);
- every metric name the dashboard (and the rules, when given) refers to is in one of the
  --metrics files: real `GET /metrics` output of a node and of the node exporter;
- with --prometheus, every panel query is run by that Prometheus and must parse and execute.
Exit 1 with one line per problem.
"""
import argparse
import json
import re
import sys
import urllib.parse
import urllib.request

# Metric families the runbook's "Reading the dashboard" section relies on.
REQUIRED = {
    "holds": "ticketledger_holds_live",
    "sales": "ticketledger_seats_sold",
    "queue": "ticketledger_queue_waiting",
    "latency": "ticketledger_request_seconds_bucket",
    "term": "ticketledger_raft_term",
    "leader": "ticketledger_raft_is_leader",
    "commit lag": "ticketledger_raft_committed_index",
    "apply lag": "ticketledger_raft_apply_lag",
    "fsync": "node_disk_flush_requests_total",
    "batch sizes": "ticketledger_proposal_batch_size_bucket",
}
METRIC = re.compile(r"\b((?:ticketledger|node|kubelet)_[a-zA-Z0-9_]+)\b")
# Metrics that exist only where the rule says so (Kubernetes' kubelet), not in compose.
OPTIONAL_PREFIXES = ("kubelet_",)
MAX_PANELS = 200


def exported(paths):
    names = set()
    for p in paths:
        with open(p, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line.startswith("#") or not line:
                    continue
                names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def panel_targets(dash, problems):
    seen_ids = set()
    out = []
    panels = dash.get("panels")
    if not isinstance(panels, list) or not panels:
        problems.append("the dashboard has no panels")
        return out
    if len(panels) > MAX_PANELS:
        problems.append(f"{len(panels)} panels: more than {MAX_PANELS}")
    for p in panels:
        pid, title = p.get("id"), p.get("title", "?")
        if pid in seen_ids:
            problems.append(f"panel id {pid} ({title}) is used twice")
        seen_ids.add(pid)
        if not isinstance(p.get("gridPos"), dict):
            problems.append(f"panel {title!r} has no gridPos")
        if p.get("type") == "row":
            continue
        exprs = [t.get("expr", "") for t in p.get("targets", [])]
        if not exprs or not all(e.strip() for e in exprs):
            problems.append(f"panel {title!r} has no (or an empty) PromQL target")
        out.extend((title, e) for e in exprs)
    return out


def rule_exprs(path, problems):
    try:
        import yaml
    except ImportError:
        problems.append("python3-yaml is missing: cannot read the rules (apt-get install python3-yaml)")
        return []
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    return [(r.get("alert", r.get("record", "?")), r["expr"]) for g in doc["groups"] for r in g["rules"]]


def run_query(base, expr):
    q = expr.replace("$__rate_interval", "1m")
    url = base.rstrip("/") + "/api/v1/query?" + urllib.parse.urlencode({"query": q})
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
    except urllib.error.HTTPError as e:
        body = json.load(e)
    except Exception as e:  # noqa: BLE001 - report any transport problem as one line
        return f"unreachable: {e}"
    return None if body.get("status") == "success" else body.get("error", "failed")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dashboard")
    ap.add_argument("--metrics", action="append", required=True, help="a /metrics text file (repeatable)")
    ap.add_argument("--rules", help="Prometheus rule file whose metric names must exist too")
    ap.add_argument("--prometheus", help="run every panel query against this Prometheus")
    a = ap.parse_args()

    problems = []
    try:
        with open(a.dashboard, encoding="utf-8") as f:
            dash = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        print(f"{a.dashboard}: not well-formed JSON: {e}")
        return 1
    for key in ("title", "uid", "panels"):
        if key not in dash:
            problems.append(f"the dashboard has no {key!r}")
    targets = panel_targets(dash, problems)
    names = exported(a.metrics)

    used = {m for _, e in targets for m in METRIC.findall(e)}
    for what, metric in REQUIRED.items():
        if metric not in used:
            problems.append(f"no panel shows {what} ({metric})")
    checked = list(targets)
    if a.rules:
        checked += rule_exprs(a.rules, problems)
    for title, e in checked:
        for m in METRIC.findall(e):
            if m not in names and not m.startswith(OPTIONAL_PREFIXES):
                problems.append(f"{title!r}: {m} is not exported by any scraped target")
    queried = 0
    if a.prometheus:
        for title, e in targets:
            err = run_query(a.prometheus, e)
            queried += 1
            if err:
                problems.append(f"{title!r}: Prometheus rejects {e!r}: {err}")
    problems = list(dict.fromkeys(problems))
    for p in problems:
        print(f"problem: {p}")
    print(
        f"dashboard: {len(dash.get('panels', []))} panels, {len(targets)} queries, {len(used)} metrics "
        f"checked against {len(names)} exported; {queried} queries run by Prometheus; {len(problems)} problems"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
