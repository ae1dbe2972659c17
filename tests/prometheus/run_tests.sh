#!/usr/bin/env bash
# Tests of capturewatch's in-cluster monitoring artifacts (deploy/monitoring, docs/runbook.md).
#
#   tests/prometheus/run_tests.sh
#
# Needs promtool (Debian package prometheus) and python3 with PyYAML (python3-yaml); kubectl
# is used when present (the kustomize render check is skipped, and says so, without it).
# Installs nothing. No privileges, no network, no server: CTest-able. Prints PASS/FAIL per
# check, what failed, and a closing line "N passed, M failed"; exits 1 on any failure.
#
# Environment: PROMTOOL, PYTHON, KUBECTL override the tools used.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
MONITORING=$ROOT/deploy/monitoring

# shellcheck source=../lib/checks.sh
source "$HERE/../lib/checks.sh" prometheus

# --- tools ------------------------------------------------------------------------------------
PROMTOOL=${PROMTOOL:-promtool}
KUBECTL=${KUBECTL:-kubectl}
PY=
for candidate in ${PYTHON:-} /usr/bin/python3 python3; do
  if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import yaml' >/dev/null 2>&1; then
    PY=$candidate
    break
  fi
done

log="$TMP/tools"
: >"$log"
command -v "$PROMTOOL" >/dev/null 2>&1 || echo "promtool not found: install the Debian package prometheus" >>"$log"
[ -n "$PY" ] || echo "no python3 with PyYAML found: install the Debian package python3-yaml" >>"$log"
if [ -s "$log" ]; then
  fail "tools (promtool, python3 + yaml)" "$log"
  finish
fi
pass "tools: $("$PROMTOOL" --version 2>&1 | head -n1), $("$PY" --version 2>&1)"

CHECKS=("$PY" "$HERE/checks.py")

check "scanner self-test (PromQL metric names)" "${CHECKS[@]}" selftest

# --- (a) the PrometheusRule's groups are valid rules ---------------------------------------------
RULES=$TMP/rules/capturewatch-rules.yml
mkdir -p "$TMP/rules"
if check "extract rule groups from prometheusrule.yaml" \
    "$PY" "$HERE/extract_rules.py" "$MONITORING/prometheusrule.yaml" "$RULES"; then
  check "promtool check rules (lint all)" "$PROMTOOL" check rules --lint=all --lint-fatal "$RULES"

  # --- (b) unit tests: each alert fires when it should, all are silent when capture is complete --
  shopt -s nullglob
  tests=("$HERE"/*_test.yml)
  shopt -u nullglob
  if [ ${#tests[@]} -eq 0 ]; then
    echo "no tests/prometheus/*_test.yml" >"$TMP/notests"
    fail "promtool test rules" "$TMP/notests"
  else
    cp "${tests[@]}" "$TMP/rules/"
    for t in "${tests[@]}"; do
      check "promtool test rules $(basename "$t")" "$PROMTOOL" test rules "$TMP/rules/$(basename "$t")"
    done
    check "every alert: severity, summary, description with its labels, runbook_url, a firing and a silent test; contract metrics only" \
      "${CHECKS[@]}" rules-meta "${tests[@]}"

    # The unit tests must catch deliberate bugs in the rules.
    for m in $("$PY" "$HERE/checks.py" mutate list); do
      dir="$TMP/mutant-$m"
      mkdir -p "$dir"
      cp "${tests[@]}" "$dir/"
      if "$PY" "$HERE/checks.py" mutate "$m" "$RULES" "$dir/capturewatch-rules.yml" >"$dir/log" 2>&1; then
        must_fail "unit tests catch a broken rule: $m" \
          bash -c 'cd "$1" && shift && for t in "$@"; do "'"$PROMTOOL"'" test rules "$t" || exit 1; done' \
          _ "$dir" $(for t in "${tests[@]}"; do basename "$t"; done)
      else
        fail "mutate $m" "$dir/log"
      fi
    done
  fi
fi

# --- (c) dashboard: structure, every expression parses, contract metrics only --------------------
check "dashboard.json: structure, expressions parse (promtool), contract metrics and labels only" \
  "${CHECKS[@]}" dashboard --promtool "$PROMTOOL"

# --- (d) runbook anchors --------------------------------------------------------------------------
check "every runbook_url anchor is a heading of docs/runbook.md; every reason has a section" \
  "${CHECKS[@]}" runbook

# --- (e) the ConfigMap carries dashboard.json -----------------------------------------------------
check "dashboard-configmap.yaml embeds exactly dashboard.json" "${CHECKS[@]}" configmap
check "dashboard-configmap.yaml is what gen_dashboard_configmap.py writes" \
  "$PY" "$HERE/gen_dashboard_configmap.py" --check

# --- the rest of the wiring ---------------------------------------------------------------------
check "ServiceMonitor: job capturewatch, agent labels kept, node added" "${CHECKS[@]}" servicemonitor
check "every contract metric is registered by the agent (agent/)" "${CHECKS[@]}" agent

if command -v "$KUBECTL" >/dev/null 2>&1; then
  render_check() {
    "$KUBECTL" kustomize "$MONITORING" >"$TMP/rendered.yaml" || return 1
    "$PY" - "$TMP/rendered.yaml" <<'EOF'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
kinds = sorted((d["kind"], d["metadata"]["namespace"], d["metadata"]["name"]) for d in docs)
want = [("ConfigMap", "capturewatch", "capturewatch-dashboard"),
        ("PrometheusRule", "capturewatch", "capturewatch"),
        ("ServiceMonitor", "capturewatch", "capturewatch")]
if kinds != want:
    sys.exit(f"kubectl kustomize deploy/monitoring renders {kinds}, want {want}")
EOF
  }
  check "kubectl kustomize deploy/monitoring renders the three resources" render_check
else
  skip "kubectl kustomize deploy/monitoring" "kubectl not found"
fi

finish
