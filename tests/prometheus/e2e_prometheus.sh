#!/usr/bin/env bash
# End to end with a real Prometheus server: the capture-gap alert fires for the lab's UID-1337 app.
#
#   tests/prometheus/e2e_prometheus.sh /path/to/capturewatch
#
# As root (the lab loads BPF and creates network namespaces and cgroups). Starts
#   - `capturewatch lab --duration 40 --interval-ms 500 --metrics-address 127.0.0.1:<port>`:
#     a simulated gateway pod whose app running as UID 1337 bypasses the sidecar and is reset
#     by the strict-mTLS upstream;
#   - the Debian prometheus server on 127.0.0.1:<port>, with a config written here: it scrapes
#     the agent every 2 s as job="capturewatch", evaluates the rule groups of
#     deploy/monitoring/prometheusrule.yaml every 2 s, stores in a temp dir;
# then asserts through Prometheus's HTTP API that
#   - the target is up and a live scrape of the agent passes `promtool check metrics`;
#   - CaptureWatchBypassedConnections fires for namespace="lab", pod="envoy-gateway";
#   - CaptureWatchBypassRejected fires for it too (the upstream resets the plaintext);
#   - the recording rule namespace_workload:capturewatch_capture_ratio:ratio_rate5m for the lab
#     is below 1 (and above 0: the UID-1000 app is captured);
#   - CaptureWatchEventsLost does not fire;
#   - every dashboard query whose metrics the lab exports returns data;
# and that the lab ends with status 0. The server and the lab are stopped and the temp dir
# (config, rules, TSDB) removed on every exit path.
#
# The negative case (the alert stays silent for an all-captured run) is not run here: the lab
# has no all-captured mode yet. It is covered by the promtool unit tests
# (tests/prometheus/alerts_test.yml, "all captured and healthy - every alert stays silent"),
# which run_tests.sh runs. The lab's series have no workload label; nothing here depends on it.
#
# Needs: prometheus (Debian package: prometheus and promtool), python3 with PyYAML
# (python3-yaml). Environment: PROMETHEUS, PROMTOOL, PYTHON override the tools; E2E_KEEP=1 keeps
# the temp dir for inspection.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
LAB_DURATION=40
DEADLINE=$((LAB_DURATION + 15))   # seconds to wait for the assertions

die() { echo "e2e_prometheus: FAIL: $*" >&2; exit 1; }
say() { echo "e2e_prometheus: $*"; }

[ $# -eq 1 ] || { echo "usage: $0 /path/to/capturewatch" >&2; exit 2; }
BIN=$1
[ -x "$BIN" ] || die "$BIN is not an executable"
[ "$(id -u)" -eq 0 ] || die "needs root (the lab loads BPF programs and creates network namespaces)"

PROMETHEUS=${PROMETHEUS:-prometheus}
PROMTOOL=${PROMTOOL:-promtool}
PY=
for candidate in ${PYTHON:-} /usr/bin/python3 python3; do
  if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import yaml' >/dev/null 2>&1; then
    PY=$candidate
    break
  fi
done
command -v "$PROMETHEUS" >/dev/null 2>&1 || die "prometheus not found: install the Debian package prometheus"
command -v "$PROMTOOL" >/dev/null 2>&1 || die "promtool not found: install the Debian package prometheus"
[ -n "$PY" ] || die "no python3 with PyYAML: install the Debian package python3-yaml"
API=("$PY" "$HERE/prom_api.py")

TMP=$(mktemp -d "${TMPDIR:-/tmp}/cw-e2e-prometheus.XXXXXX") || die "cannot create a temp dir"
PROM_PID=
LAB_PID=

# stop PID SIGNAL GRACE_S: signal a process we started, wait for it, SIGKILL it after GRACE_S.
stop() {
  local pid=$1 sig=$2 grace=$3 i
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
  kill "-$sig" "$pid" 2>/dev/null
  for ((i = 0; i < grace * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  return 0
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  # The lab removes its namespaces, cgroups and BPF programs on SIGTERM/SIGINT (SIGTERM: a
  # background job of a script may have SIGINT ignored).
  [ -n "$LAB_PID" ] && stop "$LAB_PID" TERM 20
  [ -n "$PROM_PID" ] && stop "$PROM_PID" TERM 10
  if [ "$rc" -ne 0 ]; then
    for f in lab.log prometheus.log; do
      [ -s "$TMP/$f" ] || continue
      echo "---- last lines of $f ----"
      tail -n 25 "$TMP/$f"
    done
  fi
  if [ "${E2E_KEEP:-0}" = 1 ]; then
    say "kept $TMP"
  else
    rm -rf "$TMP"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Two free loopback ports (held open together so they differ): AGENT_PORT, PROM_PORT.
pick_ports() {
  read -r AGENT_PORT PROM_PORT < <("$PY" -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])
for x in s: x.close()
') || die "cannot find free ports"
  PROM=http://127.0.0.1:$PROM_PORT
  AGENT=http://127.0.0.1:$AGENT_PORT
}
pick_ports

# The rules exactly as shipped: the groups of the PrometheusRule.
"$PY" "$HERE/extract_rules.py" "$ROOT/deploy/monitoring/prometheusrule.yaml" "$TMP/rules.yml" \
  || die "cannot extract the rule groups"
"$PROMTOOL" check rules "$TMP/rules.yml" >"$TMP/check-rules.log" 2>&1 \
  || { cat "$TMP/check-rules.log"; die "promtool check rules"; }

cat >"$TMP/prometheus.yml" <<EOF
global:
  scrape_interval: 2s
  scrape_timeout: 1s
  evaluation_interval: 2s
rule_files:
  - $TMP/rules.yml
scrape_configs:
  - job_name: capturewatch
    static_configs:
      - targets: ["127.0.0.1:$AGENT_PORT"]
EOF

"$PROMETHEUS" --config.file="$TMP/prometheus.yml" \
  --storage.tsdb.path="$TMP/data" \
  --web.listen-address="127.0.0.1:$PROM_PORT" \
  --web.console.templates="$TMP/consoles" --web.console.libraries="$TMP/console_libraries" \
  --log.level=warn >"$TMP/prometheus.log" 2>&1 &
PROM_PID=$!
"${API[@]}" ready "$PROM" 30 || die "prometheus did not become ready on $PROM"
say "prometheus $("$PROMETHEUS" --version 2>&1 | head -n1 | awk '{print $3}') ready on $PROM"

"$BIN" lab --duration "$LAB_DURATION" --interval-ms 500 \
  --metrics-address "127.0.0.1:$AGENT_PORT" --log-level info >"$TMP/lab.log" 2>&1 &
LAB_PID=$!
say "lab started (pid $LAB_PID), metrics on $AGENT"

# --- wait for everything to be true at once, while the lab runs -------------------------------
ok_up= ok_metrics= ok_bypass= ok_rejected= ok_ratio=
bypass_json= rejected_json= ratio=
start=$SECONDS
while [ $((SECONDS - start)) -lt "$DEADLINE" ]; do
  kill -0 "$LAB_PID" 2>/dev/null || break

  if [ -z "$ok_metrics" ] && "${API[@]}" get "$AGENT/metrics" >"$TMP/scrape.txt" 2>/dev/null \
      && grep -q '^capturewatch_connections_total' "$TMP/scrape.txt"; then
    if "$PROMTOOL" check metrics <"$TMP/scrape.txt" >"$TMP/check-metrics.log" 2>&1; then
      ok_metrics=1
    else
      cat "$TMP/check-metrics.log"
      die "a live scrape of the agent fails promtool check metrics"
    fi
  fi

  [ -n "$ok_up" ] || { [ "$("${API[@]}" query "$PROM" 'up{job="capturewatch"}' | cut -f1)" = 1 ] && ok_up=1; }

  if [ -z "$ok_bypass" ]; then
    out=$("${API[@]}" alert "$PROM" CaptureWatchBypassedConnections namespace=lab pod=envoy-gateway)
    [ "$(head -n1 <<<"$out")" = firing ] && { ok_bypass=1; bypass_json=$(tail -n1 <<<"$out"); }
  fi
  if [ -z "$ok_rejected" ]; then
    out=$("${API[@]}" alert "$PROM" CaptureWatchBypassRejected namespace=lab pod=envoy-gateway)
    [ "$(head -n1 <<<"$out")" = firing ] && { ok_rejected=1; rejected_json=$(tail -n1 <<<"$out"); }
  fi
  if [ -z "$ok_ratio" ]; then
    ratio=$("${API[@]}" query "$PROM" \
      'namespace_workload:capturewatch_capture_ratio:ratio_rate5m{namespace="lab"}' | cut -f1 | head -n1)
    [ -n "$ratio" ] && "$PY" -c "import sys; sys.exit(0 if 0 < float('$ratio') < 1 else 1)" && ok_ratio=1
  fi

  [ -n "$ok_up" ] && [ -n "$ok_metrics" ] && [ -n "$ok_bypass" ] && [ -n "$ok_rejected" ] \
    && [ -n "$ok_ratio" ] && break
  sleep 1
done
elapsed=$((SECONDS - start))

[ -n "$ok_up" ] || die "Prometheus never scraped the agent (up{job=\"capturewatch\"} != 1)"
[ -n "$ok_metrics" ] || die "no scrape of $AGENT/metrics with capturewatch_connections_total"
[ -n "$ok_bypass" ] || die "CaptureWatchBypassedConnections did not fire for lab/envoy-gateway within ${elapsed}s"
[ -n "$ok_rejected" ] || die "CaptureWatchBypassRejected did not fire for lab/envoy-gateway within ${elapsed}s"
[ -n "$ok_ratio" ] || die "capture ratio of namespace lab is '${ratio:-absent}', want 0 < ratio < 1"
say "PASS target up; live scrape passes promtool check metrics"
say "PASS CaptureWatchBypassedConnections firing after ${elapsed}s: $bypass_json"
say "PASS CaptureWatchBypassRejected firing: $rejected_json"
say "PASS namespace_workload:capturewatch_capture_ratio:ratio_rate5m{namespace=\"lab\"} = $ratio"

# The bypass alert names a reason (unknown until the explainer names it; owner-uid after).
reason=$("$PY" -c 'import json,sys; print(json.loads(sys.argv[1])["labels"].get("reason", ""))' "$bypass_json")
[ -n "$reason" ] || die "the bypass alert has no reason label"
say "PASS the bypass alert names reason=$reason"

# Nothing was lost in the kernel: the EventsLost alert is silent.
state=$("${API[@]}" alert "$PROM" CaptureWatchEventsLost | head -n1)
[ "$state" = none ] || die "CaptureWatchEventsLost is $state"
say "PASS CaptureWatchEventsLost silent"

# The dashboard works with the metrics as the agent really names them: every query whose metrics
# have samples returns data (the others are listed: the lab does not export every series).
"${API[@]}" get "$AGENT/metrics" >"$TMP/scrape.txt" 2>/dev/null || die "cannot scrape $AGENT/metrics"
"${API[@]}" dashboard "$PROM" "$TMP/scrape.txt" || die "dashboard queries without data (above)"
say "PASS dashboard queries answer"

# The lab ends by itself and cleans up.
for ((i = 0; i < (LAB_DURATION + 30) * 10; i++)); do
  kill -0 "$LAB_PID" 2>/dev/null || break
  sleep 0.1
done
kill -0 "$LAB_PID" 2>/dev/null && die "the lab did not end within $((LAB_DURATION + 30)) s"
wait "$LAB_PID"
lab_rc=$?
LAB_PID=
[ "$lab_rc" -eq 0 ] || die "the lab exited with status $lab_rc"
say "PASS the lab ended with status 0"
# --- the negative case: a pod whose capture is complete raises no gap alert ----------------------
stop "$PROM_PID" TERM 10
PROM_PID=
pick_ports
sed -e "s|127.0.0.1:[0-9]*\"\]|127.0.0.1:$AGENT_PORT\"]|" "$TMP/prometheus.yml" >"$TMP/prometheus2.yml"
"$PROMETHEUS" --config.file="$TMP/prometheus2.yml" \
  --storage.tsdb.path="$TMP/data2" \
  --web.listen-address="127.0.0.1:$PROM_PORT" \
  --web.console.templates="$TMP/consoles" --web.console.libraries="$TMP/console_libraries" \
  --log.level=warn >"$TMP/prometheus.log" 2>&1 &
PROM_PID=$!
"${API[@]}" ready "$PROM" 30 || die "the second prometheus did not become ready on $PROM"
"$BIN" lab --all-captured --duration 25 --interval-ms 500 \
  --metrics-address "127.0.0.1:$AGENT_PORT" --log-level info >"$TMP/lab.log" 2>&1 &
LAB_PID=$!
say "all-captured lab started (pid $LAB_PID), metrics on $AGENT"
ratio= seen_full=
start=$SECONDS
while [ $((SECONDS - start)) -lt 40 ]; do
  kill -0 "$LAB_PID" 2>/dev/null || break
  ratio=$("${API[@]}" query "$PROM" \
    'namespace_workload:capturewatch_capture_ratio:ratio_rate5m{namespace="lab"}' | cut -f1 | head -n1)
  if [ "$ratio" = 1 ] && [ -z "$seen_full" ]; then seen_full=$SECONDS; fi
  # Several evaluation rounds with complete capture: any gap alert would be pending by now.
  [ -n "$seen_full" ] && [ $((SECONDS - seen_full)) -ge 12 ] && break
  sleep 1
done
[ -n "$seen_full" ] || die "all-captured run: capture ratio is '${ratio:-absent}', want 1"
for alert in CaptureWatchBypassedConnections CaptureWatchBypassRejected CaptureWatchCaptureRatioLow; do
  state=$("${API[@]}" alert "$PROM" "$alert" | head -n1)
  [ "$state" = none ] || die "all-captured run: $alert is $state"
done
say "PASS all-captured run: ratio 1, no gap alert pending or firing"
stop "$LAB_PID" TERM 20
LAB_PID=
say "all assertions passed"
