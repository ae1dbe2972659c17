#!/usr/bin/env python3
"""Static checks of capturewatch's monitoring artifacts (run by run_tests.sh).

    checks.py rules-meta    every alert has severity, summary, description naming its labels,
                            runbook_url; a firing and a silent unit test; rule expressions use
                            only contract metrics, labels and label values
    checks.py runbook       every runbook_url anchor is a heading of docs/runbook.md, and the
                            runbook covers every bypass reason and the PERMISSIVE warning
    checks.py dashboard     the dashboard's structure, and every PromQL expression in it parses
                            (promtool) and uses only contract metrics or recording rules
    checks.py configmap     the ConfigMap embeds exactly dashboard.json
    checks.py agent         every contract metric is registered by the agent (agent/metrics.cpp)
    checks.py servicemonitor  the ServiceMonitor scrapes the agent's Service as job
                            capturewatch, keeps the agent's labels and adds node
    checks.py mutate NAME IN OUT   write the rule file IN with one deliberate bug (run_tests.sh
                            checks that the unit tests catch each one)
    checks.py selftest      the PromQL scanner below on known expressions

Each prints what failed and exits 1 on failure, 0 on success.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import unicodedata

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
MONITORING = os.path.join(ROOT, "deploy", "monitoring")
PROMETHEUSRULE = os.path.join(MONITORING, "prometheusrule.yaml")
DASHBOARD = os.path.join(MONITORING, "dashboard.json")
CONFIGMAP = os.path.join(MONITORING, "dashboard-configmap.yaml")
RUNBOOK = os.path.join(ROOT, "docs", "runbook.md")
CONTRACT = os.path.join(HERE, "metrics_contract.yml")
AGENT_SRC = os.path.join(ROOT, "agent")
RUNBOOK_BASE = "https://github.com/capturewatch/capturewatch/blob/main/docs/runbook.md"
SEVERITIES = {"critical", "warning", "info"}


class Failures:
    def __init__(self, name):
        self.name = name
        self.items = []

    def add(self, msg):
        self.items.append(msg)

    def finish(self):
        for m in self.items:
            print(f"  {self.name}: {m}")
        return 1 if self.items else 0


# ---------------------------------------------------------------------------------------------
# A small PromQL scanner: enough to list the metric names an expression selects, with the
# label matchers of each selector, and the labels of its grouping clauses. Parsing (syntax) is
# promtool's job; this only has to find names in expressions promtool accepts.

KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "atan2", "inf", "nan",
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile",
}
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
LABEL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
NUMBER = re.compile(r"(0[xX][0-9a-fA-F]+|[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?[A-Za-z0-9_.]*)")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')


def tokens(expr):
    """(kind, text) with kind in ident, number, string, op; comments and spaces dropped."""
    i, n = 0, len(expr)
    out = []
    while i < n:
        c = expr[i]
        if c.isspace():
            i += 1
        elif c == "#":
            j = expr.find("\n", i)
            i = n if j < 0 else j
        elif c in "\"'`":
            m = STRING.match(expr, i)
            if not m:
                raise ValueError(f"unterminated string at {i}: {expr[i:i+20]!r}")
            out.append(("string", m.group(0)))
            i = m.end()
        elif c.isdigit() or (c == "." and i + 1 < n and expr[i + 1].isdigit()):
            m = NUMBER.match(expr, i)
            out.append(("number", m.group(0)))
            i = m.end()
        elif IDENT.match(expr, i):
            m = IDENT.match(expr, i)
            out.append(("ident", m.group(0)))
            i = m.end()
        else:
            two = expr[i:i + 2]
            if two in ("==", "!=", "=~", "!~", "<=", ">="):
                out.append(("op", two))
                i += 2
            else:
                out.append(("op", c))
                i += 1
    return out


def unquote(s):
    """The value of a PromQL string literal (Go escapes; raw for backquotes)."""
    if s[0] == "`":
        return s[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), s[1:-1])


def scan(expr):
    """Returns (selectors, grouping_labels, problems).

    selectors: list of (metric_name, [(label, op, value)]) for every vector selector;
    grouping_labels: set of labels named in by/without/on/ignoring/group_* clauses.
    """
    toks = tokens(expr)
    selectors, grouping, problems = [], set(), []
    i, n = 0, len(toks)
    bracket = 0
    while i < n:
        kind, text = toks[i]
        if kind == "op" and text == "[":
            bracket += 1
        elif kind == "op" and text == "]":
            bracket -= 1
        elif bracket:
            pass  # durations and subquery steps
        elif kind == "ident" and text.lower() in GROUPING:
            if i + 1 < n and toks[i + 1] == ("op", "("):
                j = i + 2
                while j < n and toks[j] != ("op", ")"):
                    if toks[j][0] == "ident":
                        grouping.add(toks[j][1])
                    j += 1
                i = j
        elif kind == "ident" and text.lower() in KEYWORDS:
            pass
        elif kind == "ident" and i + 1 < n and toks[i + 1] == ("op", "("):
            pass  # function call
        elif kind == "ident" or (kind == "op" and text == "{"):
            name = text if kind == "ident" else None
            matchers = []
            j = i + 1 if kind == "ident" else i
            if j < n and toks[j] == ("op", "{"):
                j += 1
                while j < n and toks[j] != ("op", "}"):
                    if toks[j][0] == "ident" and j + 2 < n and toks[j + 1][0] == "op" \
                            and toks[j + 2][0] == "string":
                        matchers.append((toks[j][1], toks[j + 1][1], unquote(toks[j + 2][1])))
                        j += 3
                    else:
                        j += 1
                i = j
            for label, op, value in matchers:
                if label == "__name__":
                    problems.append(f"selects metrics by __name__ ({op}{value!r}): name them")
            if name is None and not any(l == "__name__" for l, _, _ in matchers):
                problems.append("a selector without a metric name")
            if name is not None:
                selectors.append((name, matchers))
        i += 1
    return selectors, grouping, problems


def selftest():
    f = Failures("selftest")
    cases = [
        ('sum by (namespace, pod) (rate(foo_total{a="b",verdict=~"x|y"}[5m])) / on (x) '
         'group_left (y) bar:baz offset 5m', {"foo_total", "bar:baz"}, {"namespace", "pod", "x", "y"}),
        ('max_over_time(up{job="j"}[10m:1m]) > bool 0 or vector(1)', {"up"}, set()),
        ('label_replace(m, "dst", "$1", "src", "(.*)") and ignoring(instance) n',
         {"m", "n"}, {"instance"}),
        ('topk(3, sum without (reason) (increase(a{b!~"c"}[1h])) ) unless b @ start()',
         {"a", "b"}, {"reason"}),
        ('histogram_quantile(0.9, sum by (le) (rate(x_bucket[5m]))) * 1e-3 + 0x1f - .5',
         {"x_bucket"}, {"le"}),
        ('# comment with metric_name\nfoo # trailing', {"foo"}, set()),
    ]
    for expr, names, groups in cases:
        sel, grp, problems = scan(expr)
        got = {s[0] for s in sel}
        if got != names or grp != groups or problems:
            f.add(f"{expr!r}: names {sorted(got)} (want {sorted(names)}), grouping {sorted(grp)} "
                  f"(want {sorted(groups)}), problems {problems}")
    sel, _, _ = scan('foo{verdict="bypassed", reason=~"owner-uid|owner-gid"}')
    if sel != [("foo", [("verdict", "=", "bypassed"), ("reason", "=~", "owner-uid|owner-gid")])]:
        f.add(f"matchers: {sel}")
    _, _, problems = scan('{__name__=~"capturewatch_.*"}')
    if not problems:
        f.add("a __name__ selector is not reported")
    return f.finish()


# ---------------------------------------------------------------------------------------------

def load_yaml(path):
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def load_rules():
    cr = load_yaml(PROMETHEUSRULE)
    return cr["spec"]["groups"]


def load_contract():
    c = load_yaml(CONTRACT)
    return c["metrics"], c.get("external") or {}, set(c["target_labels"])


def recording_rules(groups):
    return {r["record"] for g in groups for r in g["rules"] if "record" in r}


def check_expr_names(where, expr, allowed, target_labels, recorded, f):
    """Metric names, matcher labels and enumerated label values against the contract."""
    try:
        sel, grouping, problems = scan(expr)
    except ValueError as e:
        f.add(f"{where}: cannot scan: {e}")
        return set(), set()
    for p in problems:
        f.add(f"{where}: {p}")
    if not sel:
        f.add(f"{where}: selects no metric")
    all_labels = set(target_labels)
    for spec in allowed.values():
        all_labels |= set((spec.get("labels") or {}).keys())
    for name, matchers in sel:
        if name in recorded:
            labels = None  # recording rules: labels of the contract metrics
        elif name in allowed:
            labels = allowed[name].get("labels") or {}
        else:
            f.add(f"{where}: metric {name!r} is neither in the metric contract nor a recording rule")
            continue
        for label, op, value in matchers:
            if labels is None:
                if label not in all_labels:
                    f.add(f"{where}: {name}: label {label!r} is no label of the contract")
                continue
            if label not in labels and label not in target_labels:
                f.add(f"{where}: {name} has no label {label!r} (it has {sorted(labels)} "
                      f"+ {sorted(target_labels)})")
                continue
            values = labels.get(label)
            if values is None or op in ("!=", "!~") or "$" in value:
                continue
            alternatives = value.split("|") if op == "=~" else [value]
            if op == "=~" and any(re.search(r"[\\.*+?()\[\]{}^$]", a) for a in alternatives):
                continue  # a real regex: not checked
            for a in alternatives:
                if a not in values:
                    f.add(f"{where}: {name}{{{label}{op}{value!r}}}: {a!r} is not one of {values}")
    return {s[0] for s in sel}, grouping


# ---------------------------------------------------------------------------------------------

def test_cases(test_files):
    """alertname -> {"firing": n, "silent": n} over the promtool unit test files."""
    cases = {}
    for path in test_files:
        doc = load_yaml(path)
        for t in doc.get("tests") or []:
            for a in t.get("alert_rule_test") or []:
                c = cases.setdefault(a["alertname"], {"firing": 0, "silent": 0})
                c["firing" if a.get("exp_alerts") else "silent"] += 1
    return cases


def rules_meta(test_files):
    f = Failures("rules-meta")
    groups = load_rules()
    metrics, external, target_labels = load_contract()
    allowed = dict(metrics)
    allowed.update(external)
    recorded = recording_rules(groups)
    cases = test_cases(test_files)
    seen = set()
    for g in groups:
        for r in g["rules"]:
            name = r.get("alert") or r.get("record")
            where = f"{g['name']}/{name}"
            if "record" in r:
                if not re.fullmatch(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", r["record"]):
                    f.add(f"{where}: recording rule name is not level:metric:operations")
                check_expr_names(where, r["expr"], allowed, target_labels, recorded, f)
                continue
            if name in seen:
                f.add(f"{where}: duplicate alert name")
            seen.add(name)
            if not name.startswith("CaptureWatch"):
                f.add(f"{where}: alert names start with CaptureWatch")
            labels = r.get("labels") or {}
            ann = r.get("annotations") or {}
            if labels.get("severity") not in SEVERITIES:
                f.add(f"{where}: severity label {labels.get('severity')!r} not in {sorted(SEVERITIES)}")
            for key in ("summary", "description", "runbook_url"):
                if not str(ann.get(key, "")).strip():
                    f.add(f"{where}: annotation {key} missing")
            url = str(ann.get("runbook_url", ""))
            if not url.startswith(RUNBOOK_BASE + "#"):
                f.add(f"{where}: runbook_url {url!r} does not start with {RUNBOOK_BASE}#")
            _, grouping = check_expr_names(where, r["expr"], allowed, target_labels, recorded, f)
            text = str(ann.get("summary", "")) + str(ann.get("description", ""))
            for label in ("namespace", "pod", "workload", "reason", "node", "table", "instance"):
                if label in grouping and f"$labels.{label}" not in text:
                    f.add(f"{where}: the alert has label {label!r} but its summary/description "
                          f"do not name it ({{{{ $labels.{label} }}}})")
            c = cases.get(name, {"firing": 0, "silent": 0})
            if c["firing"] == 0:
                f.add(f"{where}: no unit test where it fires (alert_rule_test with exp_alerts)")
            if c["silent"] == 0:
                f.add(f"{where}: no unit test where it stays silent (exp_alerts: [])")
    for name in cases:
        if name not in seen:
            f.add(f"unit tests name alert {name!r}, which the PrometheusRule does not define")
    return f.finish()


# ---------------------------------------------------------------------------------------------

def github_anchors(markdown):
    """The anchors GitHub generates for the headings of a Markdown file."""
    anchors, counts = set(), {}
    in_fence = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
            continue
        m = re.match(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if in_fence or not m:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(2))  # links: their text
        slug = []
        for ch in text.lower():
            if ch in " -_" or unicodedata.category(ch)[0] in "LN":
                slug.append("-" if ch == " " else ch)
        slug = "".join(slug)
        n = counts.get(slug, 0)
        counts[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def runbook():
    f = Failures("runbook")
    with open(RUNBOOK, encoding="utf-8") as fh:
        text = fh.read()
    anchors = github_anchors(text)
    for g in load_rules():
        for r in g["rules"]:
            if "alert" not in r:
                continue
            url = str((r.get("annotations") or {}).get("runbook_url", ""))
            anchor = url.split("#", 1)[1] if "#" in url else ""
            if not anchor:
                f.add(f"{r['alert']}: runbook_url {url!r} has no anchor")
            elif anchor not in anchors:
                f.add(f"{r['alert']}: runbook_url anchor #{anchor} is no heading of docs/runbook.md")
            if r["alert"].lower() not in anchors:
                f.add(f"{r['alert']}: docs/runbook.md has no heading '## {r['alert']}'")
    # Links inside the runbook to its own headings.
    for target in re.findall(r"\]\(#([^)]+)\)", text):
        if target not in anchors:
            f.add(f"docs/runbook.md links to #{target}, which is no heading")
    metrics, _, _ = load_contract()
    for reason in metrics["capturewatch_connections_total"]["labels"]["reason"]:
        if reason and f"reason-{reason}" not in anchors:
            f.add(f"docs/runbook.md has no section '### Reason: {reason}'")
    for must in ("PERMISSIVE", "STRICT", "capturewatch explain", "/gaps", "runAsUser",
                 "excludeOutboundPorts", "excludeOutboundIPRanges", "includeOutboundIPRanges",
                 "includeOutboundPorts", "excludeInterfaces", "interceptionMode"):
        if must not in text:
            f.add(f"docs/runbook.md does not mention {must!r}")
    return f.finish()


# ---------------------------------------------------------------------------------------------

INTERVALS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h", "__range_s": "3600",
             "__range_ms": "3600000", "__interval_ms": "60000"}


def substitute(expr, variables):
    """Grafana variables -> values promtool can parse."""
    def repl(m):
        name = m.group(1) or m.group(2) or m.group(3)
        name = name.split(":")[0]
        if name in INTERVALS:
            return INTERVALS[name]
        if name in variables:
            return ".*"
        raise KeyError(name)
    return re.sub(r"\$\{([A-Za-z0-9_:]+)\}|\[\[([A-Za-z0-9_:]+)\]\]|\$([A-Za-z0-9_]+)", repl, expr)


def walk_panels(panels):
    for p in panels:
        yield p
        yield from walk_panels(p.get("panels") or [])


def dashboard_queries():
    """(where, PromQL with Grafana's variables replaced, metric names) of every panel query."""
    with open(DASHBOARD, encoding="utf-8") as fh:
        d = json.load(fh)
    tvars = {v["name"] for v in (d.get("templating") or {}).get("list", [])}
    out = []
    for p in walk_panels(d.get("panels") or []):
        for t in p.get("targets") or []:
            if str(t.get("expr", "")).strip():
                expr = substitute(t["expr"], tvars)
                out.append((f"panel {p.get('title')!r} query {t.get('refId')}", expr,
                            sorted({s[0] for s in scan(expr)[0]})))
    return out


def dashboard(promtool):
    f = Failures("dashboard")
    with open(DASHBOARD, encoding="utf-8") as fh:
        d = json.load(fh)
    groups = load_rules()
    metrics, _, target_labels = load_contract()
    recorded = recording_rules(groups)

    # Structure.
    if not d.get("uid") or not d.get("title"):
        f.add("uid and title are required")
    if d.get("id") is not None:
        f.add("id must be null (Grafana assigns it)")
    if int(d.get("schemaVersion", 0)) < 36:
        f.add(f"schemaVersion {d.get('schemaVersion')} is older than Grafana 9 (36)")
    tvars = {v["name"]: v for v in (d.get("templating") or {}).get("list", [])}
    ds = tvars.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        f.add("templating needs a variable 'datasource' of type datasource, query prometheus")
    for name in ("namespace", "workload"):
        v = tvars.get(name)
        if not v or v.get("type") != "query" or "label_values(" not in str(v.get("query")):
            f.add(f"templating needs a query variable {name!r} from label_values(...)")
    want_ds = {"type": "prometheus", "uid": "${datasource}"}

    exprs = []  # (where, expr with Grafana variables)
    for name, v in tvars.items():
        if v.get("type") != "query":
            continue
        if v.get("datasource") != want_ds:
            f.add(f"variable {name}: datasource must be {want_ds}")
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.fullmatch(r"\s*label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*", q or "", re.S)
        if not m:
            f.add(f"variable {name}: query {q!r} is not label_values(selector, label)")
            continue
        exprs.append((f"variable {name}", m.group(1)))
        sel, _, _ = scan(substitute(m.group(1), tvars))
        for metric, _ in sel:
            labels = (metrics.get(metric) or {}).get("labels") or {}
            if m.group(2) not in labels and m.group(2) not in target_labels:
                f.add(f"variable {name}: {metric} has no label {m.group(2)!r}")

    ids = set()
    titles = set()
    for p in walk_panels(d.get("panels") or []):
        title = p.get("title", "")
        if p.get("id") in ids:
            f.add(f"panel {title!r}: duplicate id {p.get('id')}")
        ids.add(p.get("id"))
        if "gridPos" not in p:
            f.add(f"panel {title!r}: no gridPos")
        if p.get("type") == "row":
            continue
        titles.add(title)
        if p.get("datasource") != want_ds:
            f.add(f"panel {title!r}: datasource must be {want_ds}")
        if not p.get("targets"):
            f.add(f"panel {title!r}: no queries")
        for t in p.get("targets") or []:
            if t.get("datasource") != want_ds:
                f.add(f"panel {title!r} query {t.get('refId')}: datasource must be {want_ds}")
            if not str(t.get("expr", "")).strip():
                f.add(f"panel {title!r} query {t.get('refId')}: empty expr")
                continue
            exprs.append((f"panel {title!r} query {t.get('refId')}", t["expr"]))

    # What the dashboard must show (issue 5): each by the metric it needs.
    used = set()
    parsed = []
    for where, expr in exprs:
        try:
            concrete = substitute(expr, tvars)
        except KeyError as e:
            f.add(f"{where}: unknown variable ${e.args[0]}")
            continue
        parsed.append((where, concrete))
        names, _ = check_expr_names(where, concrete, metrics, target_labels, recorded, f)
        used |= names
    for need, why in (
            ("namespace_workload:capturewatch_capture_ratio:ratio_rate5m", "capture ratio per workload over time"),
            ("namespace_workload_reason:capturewatch_bypassed_connections:rate5m", "bypasses by reason"),
            ("capturewatch_bypass_rejected_total", "rejected bypasses"),
            ("capturewatch_watched_targets", "watched pods"),
            ("capturewatch_pods_without_sidecar", "pods without sidecar"),
            ("capturewatch_events_lost_total", "agent health: events lost"),
            ("capturewatch_events_dropped_total", "agent health: events dropped"),
            ("capturewatch_ready", "agent health: ready"),
            ("capturewatch_kubernetes_watch_up", "agent health: API watch"),
            ("capturewatch_build_info", "agent health: build info")):
        if need not in used:
            f.add(f"no panel uses {need} ({why})")

    # Every expression parses: one recording rule per expression, in one group per expression
    # so that promtool's message names the panel.
    rules = {"groups": [{"name": where, "rules": [{"record": "dashboard:expr:check", "expr": e}]}
                        for where, e in parsed]}
    with tempfile.TemporaryDirectory(prefix="cw-dashboard-") as tmp:
        path = os.path.join(tmp, "dashboard-exprs.yml")
        with open(path, "w", encoding="utf-8") as fh:
            yaml.safe_dump(rules, fh, sort_keys=False)
        res = subprocess.run([promtool, "check", "rules", "--lint=none", path],
                             capture_output=True, text=True)
        if res.returncode != 0:
            f.add("promtool cannot parse some expressions:\n" + (res.stdout + res.stderr).strip())
    print(f"  dashboard: {len(parsed)} expressions in {len(titles)} panels")
    return f.finish()


# ---------------------------------------------------------------------------------------------

def configmap():
    f = Failures("configmap")
    cm = load_yaml(CONFIGMAP)
    with open(DASHBOARD, encoding="utf-8") as fh:
        dash = json.load(fh)
    if cm.get("apiVersion") != "v1" or cm.get("kind") != "ConfigMap":
        f.add("dashboard-configmap.yaml is not a v1 ConfigMap")
    labels = (cm.get("metadata") or {}).get("labels") or {}
    if labels.get("grafana_dashboard") != "1":
        f.add('the ConfigMap needs the label grafana_dashboard: "1" (a string)')
    data = cm.get("data") or {}
    if list(data) != ["capturewatch.json"]:
        f.add(f"the ConfigMap's data must hold exactly capturewatch.json, has {list(data)}")
    else:
        try:
            embedded = json.loads(data["capturewatch.json"])
        except ValueError as e:
            f.add(f"capturewatch.json in the ConfigMap is not JSON: {e}")
        else:
            if embedded != dash:
                f.add("the ConfigMap's capturewatch.json differs from dashboard.json: "
                      "run tests/prometheus/gen_dashboard_configmap.py")
    # kubectl apply (client side) keeps the object in an annotation limited to 256 KiB.
    size = os.path.getsize(CONFIGMAP)
    if size > 200 * 1024:
        f.add(f"the ConfigMap is {size} bytes: too close to kubectl apply's 256 KiB annotation limit")
    return f.finish()


def agent():
    f = Failures("agent")
    metrics, _, _ = load_contract()
    sources = ""
    for dirpath, _, files in os.walk(AGENT_SRC):
        for name in files:
            if name.endswith((".cpp", ".h")):
                with open(os.path.join(dirpath, name), encoding="utf-8", errors="replace") as fh:
                    sources += fh.read()
    if not sources:
        f.add(f"no agent sources under {AGENT_SRC}")
    for name in metrics:
        if f'"{name}"' not in sources:
            f.add(f"contract metric {name} is not registered by the agent (no \"{name}\" in agent/)")
    return f.finish()


def servicemonitor():
    f = Failures("servicemonitor")
    sm = load_yaml(os.path.join(MONITORING, "servicemonitor.yaml"))
    if sm.get("apiVersion") != "monitoring.coreos.com/v1" or sm.get("kind") != "ServiceMonitor":
        f.add("servicemonitor.yaml is not a monitoring.coreos.com/v1 ServiceMonitor")
        return f.finish()
    meta, spec = sm.get("metadata") or {}, sm.get("spec") or {}
    if meta.get("namespace") != "capturewatch":
        f.add("the ServiceMonitor belongs in namespace capturewatch")
    if (spec.get("namespaceSelector") or {}).get("matchNames") != ["capturewatch"]:
        f.add("namespaceSelector must match the capturewatch namespace")
    if (spec.get("selector") or {}).get("matchLabels") != {"app.kubernetes.io/name": "capturewatch"}:
        f.add("selector must be matchLabels app.kubernetes.io/name: capturewatch (the Service's label)")
    if spec.get("jobLabel"):
        f.add("jobLabel set: the job must stay the Service's name, capturewatch")
    eps = spec.get("endpoints") or []
    if len(eps) != 1:
        f.add(f"one endpoint expected, found {len(eps)}")
        return f.finish()
    ep = eps[0]
    if ep.get("port") != "metrics" or ep.get("path", "/metrics") != "/metrics":
        f.add("the endpoint must scrape port 'metrics' at /metrics")
    if ep.get("honorLabels") is not True:
        f.add("honorLabels must be true: the agent's namespace/pod labels name the watched pod")
    relabel = ep.get("relabelings") or []
    if not any(r.get("sourceLabels") == ["__meta_kubernetes_pod_node_name"] and
               r.get("targetLabel") == "node" for r in relabel):
        f.add("no relabeling sets node from __meta_kubernetes_pod_node_name")
    dropped = [r for r in relabel if r.get("action") == "labeldrop"]
    for label in ("namespace", "pod"):
        if not any(re.fullmatch(r.get("regex", ""), label) for r in dropped):
            f.add(f"the target label {label!r} (the agent's own pod) must be dropped")
    return f.finish()


def _rule(groups, name):
    for g in groups:
        for r in g["rules"]:
            if r.get("alert") == name or r.get("record") == name:
                return r
    raise KeyError(name)


def _first_arm(expr):
    return expr.split("\nor\n")[0]


MUTATIONS = {
    # Without the new-series arm a single bypass (a series born at 1) is never seen.
    "bypass-without-new-series": lambda g: _rule(g, "CaptureWatchBypassedConnections").update(
        expr=_first_arm(_rule(g, "CaptureWatchBypassedConnections")["expr"])),
    "rejected-without-new-series": lambda g: _rule(g, "CaptureWatchBypassRejected").update(
        expr=_first_arm(_rule(g, "CaptureWatchBypassRejected")["expr"])),
    # Without the "or 0 *" arm a workload with nothing captured has no ratio at all.
    "ratio-without-zero-arm": lambda g: _rule(
        g, "namespace_workload:capturewatch_capture_ratio:ratio_rate5m").update(
        expr='sum by (namespace, workload) (rate(capturewatch_connections_total{verdict="captured"}[5m]))'
             ' / sum by (namespace, workload) (rate(capturewatch_connections_total'
             '{verdict=~"captured|bypassed"}[5m]))'),
    # Alerts that always fire must break the "silent" tests.
    "bypass-always": lambda g: _rule(g, "CaptureWatchBypassedConnections").update(
        expr='sum by (namespace, workload, pod, reason, node) (capturewatch_connections_total) >= 0'),
    "ratio-threshold-1": lambda g: _rule(g, "CaptureWatchCaptureRatioLow").update(
        expr="namespace_workload:capturewatch_capture_ratio:ratio_rate5m <= 1"),
    "events-lost-always": lambda g: _rule(g, "CaptureWatchEventsLost").update(
        expr="sum by (instance, node) (capturewatch_events_lost_total) >= 0"),
    "absent-never": lambda g: _rule(g, "CaptureWatchAgentAbsent").update(expr="vector(1) < 0"),
    "without-sidecar-never": lambda g: _rule(g, "CaptureWatchPodWithoutSidecar").update(
        expr="max by (namespace, workload, pod, node) (capturewatch_pods_without_sidecar) > 1"),
}


def mutate(name, src, dst):
    doc = load_yaml(src)
    MUTATIONS[name](doc["groups"])
    with open(dst, "w", encoding="utf-8") as fh:
        yaml.safe_dump(doc, fh, sort_keys=False, width=1000)
    return 0


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("rules-meta")
    p.add_argument("tests", nargs="+", help="promtool unit test files")
    sub.add_parser("runbook")
    p = sub.add_parser("dashboard")
    p.add_argument("--promtool", default="promtool")
    sub.add_parser("configmap")
    sub.add_parser("agent")
    sub.add_parser("servicemonitor")
    p = sub.add_parser("mutate")
    p.add_argument("name", choices=sorted(MUTATIONS) + ["list"])
    p.add_argument("src", nargs="?")
    p.add_argument("dst", nargs="?")
    sub.add_parser("selftest")
    args = ap.parse_args(argv[1:])
    if args.cmd == "rules-meta":
        return rules_meta(args.tests)
    if args.cmd == "runbook":
        return runbook()
    if args.cmd == "dashboard":
        return dashboard(args.promtool)
    if args.cmd == "configmap":
        return configmap()
    if args.cmd == "agent":
        return agent()
    if args.cmd == "servicemonitor":
        return servicemonitor()
    if args.cmd == "mutate":
        if args.name == "list":
            print("\n".join(sorted(MUTATIONS)))
            return 0
        return mutate(args.name, args.src, args.dst)
    return selftest()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
