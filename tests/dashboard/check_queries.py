"""Checks docs/grafana-relay.json against a live Prometheus that scrapes a relay.

Every panel has targets; every PromQL expression (and template-variable query), with Grafana's
variables filled in, must return data from Prometheus's HTTP API; every switchboard_relay_* name
the dashboard uses must be in the relay's /metrics. Usage: check_queries.py DASHBOARD PROM_URL
METRICS_URL RATE_INTERVAL. Exits non-zero with the failing expressions listed.
"""

import json
import re
import sys
import urllib.parse
import urllib.request


def get_json(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def fill(expr, rate_interval):
    expr = expr.replace("$__rate_interval", rate_interval)
    return re.sub(r"\$(job|instance)\b", ".+", expr)


def main():
    dashboard_path, prom, metrics_url, rate_interval = sys.argv[1:5]
    with open(dashboard_path) as f:
        dash = json.load(f)
    with urllib.request.urlopen(metrics_url, timeout=10) as r:
        exposition = r.read().decode()
    exposed = set(re.findall(r"^(switchboard_relay_\w+)", exposition, re.M))

    failures = []
    exprs = []
    for panel in dash["panels"]:
        if panel["type"] == "row":
            continue
        targets = panel.get("targets") or []
        if not targets or "datasource" not in panel:
            failures.append(f"panel {panel['title']!r} has no datasource or targets")
        exprs += [(panel["title"], t["expr"]) for t in targets]
    for var in dash["templating"]["list"]:
        m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", var["definition"])
        if not m:
            failures.append(f"variable {var['name']}: unsupported query {var['definition']!r}")
            continue
        exprs.append((f"variable {var['name']}", f"count by ({m.group(2)}) ({m.group(1)})"))

    for title, expr in exprs:
        for name in re.findall(r"switchboard_relay_\w+", expr):
            if name not in exposed:
                failures.append(f"{title}: {name} is not in the relay's /metrics")
        q = fill(expr, rate_interval)
        url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": q})
        try:
            answer = get_json(url)
        except Exception as e:  # an HTTP 400 means the expression does not parse
            failures.append(f"{title}: {q}: {e}")
            continue
        result = answer.get("data", {}).get("result", [])
        if answer.get("status") != "success" or not result:
            failures.append(f"{title}: {q}: no data ({answer})")
        else:
            print(f"ok  {title}: {len(result)} series, e.g. {result[0]['value'][1]}")

    if failures:
        print("\n".join(["FAILED:"] + failures), file=sys.stderr)
        sys.exit(1)
    print(f"all {len(exprs)} dashboard expressions return data")


main()
