#!/usr/bin/env python3
"""Small client of the Prometheus HTTP API for e2e_prometheus.sh (standard library only).

    prom_api.py ready BASE_URL TIMEOUT_S          wait until BASE_URL/-/ready answers 200
    prom_api.py alert BASE_URL NAME [LABEL=VALUE...]
                                                  print "firing", "pending" or "none" for the
                                                  alert NAME whose labels include the given ones,
                                                  then its labels and annotations as JSON
    prom_api.py query BASE_URL EXPR               one line per sample: VALUE<TAB>LABELS-JSON
    prom_api.py get URL                           print the body (e.g. an agent's /metrics)
    prom_api.py dashboard BASE_URL SCRAPE_FILE    run every query of deploy/monitoring/dashboard.json;
                                                  fail for one that returns nothing although every
                                                  metric it uses has samples in SCRAPE_FILE (or is
                                                  a recording rule with a value)
"""
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request


def get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode("utf-8", "replace")


def api(base, path, **params):
    url = base.rstrip("/") + path
    if params:
        url += "?" + urllib.parse.urlencode(params)
    _, body = get(url)
    doc = json.loads(body)
    if doc.get("status") != "success":
        raise SystemExit(f"{url}: {doc}")
    return doc["data"]


def main(argv):
    cmd = argv[1] if len(argv) > 1 else ""
    if cmd == "ready":
        deadline = time.time() + float(argv[3])
        while time.time() < deadline:
            try:
                if get(argv[2].rstrip("/") + "/-/ready", timeout=2)[0] == 200:
                    return 0
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        print(f"{argv[2]} not ready after {argv[3]} s", file=sys.stderr)
        return 1
    if cmd == "alert":
        want = dict(a.split("=", 1) for a in argv[4:])
        best = None
        for a in api(argv[2], "/api/v1/alerts")["alerts"]:
            labels = a.get("labels", {})
            if labels.get("alertname") != argv[3]:
                continue
            if any(labels.get(k) != v for k, v in want.items()):
                continue
            if best is None or a.get("state") == "firing":
                best = a
        if best is None:
            print("none")
        else:
            print(best.get("state"))
            print(json.dumps({"labels": best.get("labels"), "annotations": best.get("annotations")},
                             sort_keys=True))
        return 0
    if cmd == "query":
        data = api(argv[2], "/api/v1/query", query=argv[3])
        if data["resultType"] != "vector":
            raise SystemExit(f"query {argv[3]!r}: result type {data['resultType']}, want vector")
        for s in data["result"]:
            print(f"{s['value'][1]}\t{json.dumps(s['metric'], sort_keys=True)}")
        return 0
    if cmd == "get":
        status, body = get(argv[2])
        sys.stdout.write(body)
        return 0 if status == 200 else 1
    if cmd == "dashboard":
        return dashboard(argv[2], argv[3])
    print(__doc__, file=sys.stderr)
    return 2


def dashboard(base, scrape_file):
    import os
    import re
    sys.dont_write_bytecode = True  # no __pycache__ in the source tree
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import checks  # the dashboard's queries, with Grafana's variables replaced

    with open(scrape_file, encoding="utf-8") as f:
        exported = {m.group(1) for m in re.finditer(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", f.read(), re.M)}
    failed = ran = 0
    for where, expr, names in checks.dashboard_queries():
        missing = []
        for n in names:
            if ":" in n:  # a recording rule: has it a value now?
                if not api(base, "/api/v1/query", query=n)["result"]:
                    missing.append(n)
            elif n not in exported:
                missing.append(n)
        if missing:
            print(f"  not checked (no samples of {', '.join(missing)} in the lab): {where}")
            continue
        ran += 1
        if not api(base, "/api/v1/query", query=expr)["result"]:
            failed += 1
            print(f"  FAIL {where}: no data from {expr!r}")
    print(f"  {ran} dashboard queries returned data" + (f", {failed} returned nothing" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
