#!/usr/bin/env python3
"""Generate deploy/monitoring/dashboard-configmap.yaml from deploy/monitoring/dashboard.json.

    gen_dashboard_configmap.py            rewrite the ConfigMap from the JSON
    gen_dashboard_configmap.py --check    exit 1 if the ConfigMap is not what it would write

dashboard.json is the source (import it into Grafana, edit, export it back); the ConfigMap
carries the same JSON for Grafana's dashboard sidecar, which loads ConfigMaps labelled
grafana_dashboard: "1". tests/prometheus/run_tests.sh checks the two are equal.
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
MONITORING = os.path.normpath(os.path.join(HERE, "..", "..", "deploy", "monitoring"))
DASHBOARD = os.path.join(MONITORING, "dashboard.json")
CONFIGMAP = os.path.join(MONITORING, "dashboard-configmap.yaml")

HEADER = """\
# Grafana dashboard for capturewatch, loaded by Grafana's dashboard sidecar (it watches
# ConfigMaps labelled grafana_dashboard: "1"; with kube-prometheus-stack, set
# grafana.sidecar.dashboards.searchNamespace to ALL or to this namespace).
#
# GENERATED from dashboard.json by tests/prometheus/gen_dashboard_configmap.py: edit the JSON,
# then run that script. tests/prometheus/run_tests.sh fails when the two differ.
apiVersion: v1
kind: ConfigMap
metadata:
  name: capturewatch-dashboard
  namespace: capturewatch
  labels:
    app.kubernetes.io/name: capturewatch
    app.kubernetes.io/component: monitoring
    grafana_dashboard: "1"
data:
  capturewatch.json: |
"""


def render():
    with open(DASHBOARD, encoding="utf-8") as f:
        dashboard = json.load(f)
    text = json.dumps(dashboard, indent=2, ensure_ascii=False)
    return HEADER + "".join("    " + line + "\n" for line in text.splitlines())


def main(argv):
    want = render()
    if len(argv) > 1 and argv[1] == "--check":
        with open(CONFIGMAP, encoding="utf-8") as f:
            have = f.read()
        if have != want:
            print(f"{CONFIGMAP} is not generated from {DASHBOARD}: run {argv[0]}", file=sys.stderr)
            return 1
        return 0
    with open(CONFIGMAP, "w", encoding="utf-8") as f:
        f.write(want)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
