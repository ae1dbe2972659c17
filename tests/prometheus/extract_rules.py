#!/usr/bin/env python3
"""Write the rule groups of a PrometheusRule CR as a plain Prometheus rule file.

    extract_rules.py PROMETHEUSRULE.yaml OUT.yml

promtool and the Prometheus server read `groups:` files, not the CR; this is the
file the tests check and the end-to-end test loads into a real server.
"""
import sys

import yaml


def extract(path):
    with open(path, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    if len(docs) != 1:
        raise SystemExit(f"{path}: expected one YAML document, found {len(docs)}")
    cr = docs[0]
    if cr.get("apiVersion") != "monitoring.coreos.com/v1" or cr.get("kind") != "PrometheusRule":
        raise SystemExit(f"{path}: not a monitoring.coreos.com/v1 PrometheusRule "
                         f"(apiVersion={cr.get('apiVersion')!r}, kind={cr.get('kind')!r})")
    groups = (cr.get("spec") or {}).get("groups")
    if not groups:
        raise SystemExit(f"{path}: spec.groups is empty")
    return {"groups": groups}


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the PromQL) as literal blocks, so the file reads like the CR."""


def _str(dumper, value):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def main(argv):
    if len(argv) != 3:
        raise SystemExit("usage: extract_rules.py PROMETHEUSRULE.yaml OUT.yml")
    rules = extract(argv[1])
    with open(argv[2], "w", encoding="utf-8") as f:
        yaml.dump(rules, f, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000)


if __name__ == "__main__":
    main(sys.argv)
