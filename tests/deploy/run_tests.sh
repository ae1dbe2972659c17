#!/usr/bin/env bash
# Tests of the Kubernetes manifests (deploy/) and the image recipe (deploy/Dockerfile).
#
#   tests/deploy/run_tests.sh [CAPTUREWATCH_BINARY]
#
# - `kubectl kustomize deploy/` and `deploy/monitoring` render;
# - every rendered object is valid against the Kubernetes schemas, offline: the npm packages
#   kubernetes-models and @kubernetes-models/prometheus-operator (types, required fields, enums),
#   plus a check that every field name exists in the schema (the API server's strict field
#   validation would refuse unknown fields; the packages' validators let them through);
# - the rendered DaemonSet's security settings, the RBAC rules and the Service are exactly as
#   intended (validate.mjs security), and the checks catch deliberate bugs in them (mutants);
# - the ServiceMonitor of deploy/monitoring selects the Service and its port;
# - deploy/Dockerfile: every package exists in Debian bookworm; the build stage installs the
#   build dependencies of scripts/dev; the runtime stage provides every shared library the
#   built binary links (CAPTUREWATCH_BINARY, default build/capturewatch) and every program the
#   agent runs. No image is built: there is no container engine here.
#
# Needs kubectl (already on these machines; not Debian's kubernetes-client), node and npm, and a
# Debian 12 host (apt-cache, dpkg). Installs the npm packages pinned in tests/deploy/package-lock.json
# into tests/deploy/node_modules (git-ignored) with `npm ci` when they are missing or stale: the
# first run needs the npm registry. No privileges. Prints PASS/FAIL per check and a closing line
# "N passed, M failed"; exits 1 on any failure.
#
# Environment: KUBECTL, NODE, NPM override the tools used.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BINARY=${1:-$ROOT/build/capturewatch}
KUBECTL=${KUBECTL:-kubectl}
NODE=${NODE:-node}
NPM=${NPM:-npm}

# shellcheck source=../lib/checks.sh
source "$HERE/../lib/checks.sh" deploy

# --- tools --------------------------------------------------------------------------------------
log="$TMP/tools"
: >"$log"
command -v "$KUBECTL" >/dev/null 2>&1 || echo "kubectl not found (it is preinstalled on these machines; do not install Debian's kubernetes-client)" >>"$log"
command -v "$NODE" >/dev/null 2>&1 || echo "node not found: install the Debian package nodejs" >>"$log"
command -v "$NPM" >/dev/null 2>&1 || echo "npm not found: install the Debian package npm" >>"$log"
command -v apt-cache >/dev/null 2>&1 && command -v dpkg >/dev/null 2>&1 || echo "apt-cache/dpkg not found: run on Debian 12" >>"$log"
if [ -s "$log" ]; then
  fail "tools (kubectl, node, npm, apt-cache)" "$log"
  finish
fi
pass "tools: kubectl $("$KUBECTL" version --client 2>/dev/null | head -n1 | sed 's/^Client Version: //'), node $("$NODE" --version)"

# The validators, pinned by package-lock.json, installed when missing or stale.
install_models() {
  if ! cmp -s "$HERE/package-lock.json" "$HERE/node_modules/.package-lock.stamp" 2>/dev/null; then
    (cd "$HERE" && "$NPM" ci --no-audit --no-fund --loglevel=error) || return 1
    cp "$HERE/package-lock.json" "$HERE/node_modules/.package-lock.stamp"
  fi
  (cd "$HERE" && "$NODE" -e 'import("kubernetes-models/apps/v1/DaemonSet").then(() => import("@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor")).then(() => import("yaml"))')
}
if ! check "npm packages (kubernetes-models, @kubernetes-models/prometheus-operator, yaml) from package-lock.json" install_models; then
  finish
fi
VALIDATE=("$NODE" "$HERE/validate.mjs")

# --- (a) the manifests render --------------------------------------------------------------------
BASE=$TMP/base.yaml
MON=$TMP/monitoring.yaml
check "kubectl kustomize deploy/" bash -c '"$1" kustomize "$2/deploy" >"$3"' _ "$KUBECTL" "$ROOT" "$BASE"
check "kubectl kustomize deploy/monitoring" bash -c '"$1" kustomize "$2/deploy/monitoring" >"$3"' _ "$KUBECTL" "$ROOT" "$MON"
# The base leaves the prometheus-operator objects out (they need its CRDs).
check "deploy/ renders no prometheus-operator object" bash -c '! grep -q "^apiVersion: monitoring.coreos.com/" "$1"' _ "$BASE"

# --- (b) schemas, offline ------------------------------------------------------------------------
check "deploy/: every object valid against the Kubernetes schemas (kubernetes-models), no unknown field" \
  "${VALIDATE[@]}" schema "$BASE"
check "deploy/monitoring: every object valid (kubernetes-models, @kubernetes-models/prometheus-operator), no unknown field" \
  "${VALIDATE[@]}" schema "$MON"

# --- (c) security settings and wiring ------------------------------------------------------------
check "DaemonSet: not privileged, drop ALL + exactly SYS_ADMIN NET_ADMIN SYS_PTRACE, read-only root, no escalation, probes, resources, NODE_NAME, tolerations, read-only host paths; RBAC get/list/watch pods; Service" \
  "${VALIDATE[@]}" security "$BASE"
check "ServiceMonitor -> Service capturewatch port metrics -> agent pods" "${VALIDATE[@]}" wiring "$BASE" "$MON"

# The checks must catch deliberate bugs.
for m in $("${VALIDATE[@]}" mutate list); do
  if "${VALIDATE[@]}" mutate "$m" "$BASE" "$TMP/mutant-$m.yaml" >"$TMP/mutate.log" 2>&1; then
    case "$m" in
      schema-*) must_fail "schema check catches: $m" "${VALIDATE[@]}" schema "$TMP/mutant-$m.yaml" ;;
      *) must_fail "security check catches: $m" "${VALIDATE[@]}" security "$TMP/mutant-$m.yaml" ;;
    esac
  else
    fail "mutate $m" "$TMP/mutate.log"
  fi
done

# The capability list the privileged test (tests/bpf/privileges_bpf_test.cpp) reads is the one
# deploy/daemonset.yaml declares and the rendered manifest carries.
caps_agree() {
  local rendered declared
  rendered=$(awk '/^ +add:$/{a=1; next} a && /^ +- /{print $2; next} {a=0}' "$BASE")
  declared=$(awk '/^ +add:$/{a=1; next} a && /^ +- /{print $2; next} a && /^ +#/{next} {a=0}' "$ROOT/deploy/daemonset.yaml")
  echo "rendered: $rendered" | tr '\n' ' '; echo
  echo "declared: $declared" | tr '\n' ' '; echo
  [ -n "$rendered" ] && [ "$rendered" = "$declared" ]
}
check "the capabilities kustomize renders are the ones daemonset.yaml declares" caps_agree

# --- (d) deploy/Dockerfile -----------------------------------------------------------------------
DOCKERFILE=$ROOT/deploy/Dockerfile

# The packages of the apt-get install in stage N (1 = build, 2 = runtime).
stage_packages() {
  awk -v want="$1" '
    /^FROM / { stage++ }
    stage == want && /apt-get install/ { on = 1 }
    stage == want && on {
      line = $0; sub(/#.*/, "", line)
      n = split(line, w, /[ \t\\]+/)
      for (i = 1; i <= n; i++) if (w[i] ~ /^[a-z0-9][a-z0-9.+-]+$/ && w[i] != "apt-get" && w[i] != "install" && w[i] != "rm") print w[i]
      if ($0 ~ /&& rm /) on = 0
      if ($0 !~ /\\$/) on = 0
    }' "$DOCKERFILE" | grep -vxE 'DEBIAN_FRONTEND=noninteractive|-y|--no-install-recommends' | sort -u
}
stage_packages 1 >"$TMP/build-packages"
stage_packages 2 >"$TMP/runtime-packages"

dockerfile_shape() {
  local froms
  froms=$(grep -c '^FROM ' "$DOCKERFILE")
  [ "$froms" -eq 2 ] || { echo "want two stages, found $froms"; return 1; }
  grep -q '^FROM debian:bookworm-slim AS build$' "$DOCKERFILE" || { echo "build stage: want FROM debian:bookworm-slim AS build"; return 1; }
  grep -q '^FROM debian:bookworm-slim$' "$DOCKERFILE" || { echo "runtime stage: want FROM debian:bookworm-slim"; return 1; }
  grep -q '^COPY --from=build /out/capturewatch /usr/local/bin/capturewatch$' "$DOCKERFILE" || { echo "the binary must land in /usr/local/bin/capturewatch"; return 1; }
  grep -q '^ENTRYPOINT \["/usr/local/bin/capturewatch"\]$' "$DOCKERFILE" || { echo "ENTRYPOINT"; return 1; }
  [ -s "$TMP/build-packages" ] && [ -s "$TMP/runtime-packages" ] || { echo "no apt-get install found in a stage"; return 1; }
  if grep -E -- '-dev$|^(build-essential|cmake|clang|llvm|bpftool|gcc|g\+\+)$' "$TMP/runtime-packages"; then
    echo "build tools in the runtime stage"; return 1
  fi
  echo "build: $(tr '\n' ' ' <"$TMP/build-packages")"
  echo "runtime: $(tr '\n' ' ' <"$TMP/runtime-packages")"
}
check "Dockerfile: two bookworm stages, binary at /usr/local/bin/capturewatch, no build tools at run time" dockerfile_shape

in_bookworm() {
  . /etc/os-release
  [ "${VERSION_CODENAME:-}" = bookworm ] || { echo "this host is ${PRETTY_NAME:-unknown}, not Debian 12 (bookworm): cannot check"; return 1; }
  local missing=0 p
  # One apt-cache call: "name:" lines, then "  Candidate: version" ("(none)" when not available).
  apt-cache policy $(cat "$TMP/build-packages" "$TMP/runtime-packages") 2>/dev/null |
    awk '/^[^ ].*:$/ {p = substr($0, 1, length($0) - 1)} /^  Candidate:/ && $2 != "(none)" {print p}' |
    sort -u >"$TMP/available"
  for p in $(cat "$TMP/build-packages" "$TMP/runtime-packages"); do
    grep -qx "$p" "$TMP/available" || { echo "not in bookworm: $p"; missing=1; }
  done
  return $missing
}
check "Dockerfile: every package exists in Debian bookworm (apt-cache policy)" in_bookworm

same_build_deps() {
  local dev
  dev=$(bash -c 'source <(sed -n "/^PACKAGES=(/,/^)/p" "$1"); printf "%s\n" "${PACKAGES[@]}"' _ "$ROOT/scripts/dev" |
        grep -E -- '-dev$|^(build-essential|cmake|ninja-build|pkg-config|clang|llvm|bpftool)$' | sort -u)
  [ -n "$dev" ] || { echo "no PACKAGES in scripts/dev"; return 1; }
  local only_dev only_docker
  only_dev=$(comm -23 <(echo "$dev") "$TMP/build-packages")
  only_docker=$(comm -13 <(echo "$dev") "$TMP/build-packages")
  [ -z "$only_dev" ] || echo "scripts/dev builds with, the Dockerfile's build stage lacks: $only_dev"
  [ -z "$only_docker" ] || echo "the Dockerfile's build stage installs, scripts/dev does not: $only_docker"
  [ -z "$only_dev" ] && [ -z "$only_docker" ]
}
check "Dockerfile build stage installs the build dependencies of scripts/dev, no more" same_build_deps

package_of() {  # the Debian package owning a file (tries the path as given and resolved)
  local f=$1 p
  for cand in "$f" "$(readlink -f "$f")" "/usr$f" "${f#/usr}"; do
    p=$(dpkg -S "$cand" 2>/dev/null | head -n1 | cut -d: -f1) && [ -n "$p" ] && { echo "$p"; return 0; }
  done
  return 1
}

# Part of every Debian image (apt needs them), so not listed.
BASE_IMAGE_PACKAGES="libc6 libgcc-s1 libstdc++6"

runtime_libraries() {
  [ -x "$BINARY" ] || { echo "$BINARY not found: build first (ninja -C build capturewatch) or pass the binary"; return 1; }
  local lib path pkg bad=0
  for lib in $(readelf -d "$BINARY" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
    path=$(ldd "$BINARY" | awk -v l="$lib" '$1 == l {print $3}')
    pkg=$(package_of "$path") || { echo "$lib ($path): no Debian package owns it"; bad=1; continue; }
    pkg=${pkg%%:*}
    if grep -qx "$pkg" "$TMP/runtime-packages" || [[ " $BASE_IMAGE_PACKAGES " == *" $pkg "* ]]; then
      echo "$lib <- $pkg"
    else
      echo "$lib <- $pkg: NOT in the runtime stage"; bad=1
    fi
  done
  return $bad
}
check "Dockerfile runtime stage provides every library $(basename "$BINARY") links (readelf NEEDED -> dpkg -S)" runtime_libraries

# The programs the agent runs (agent/pod_rules.cpp: nsenter, the iptables save commands, ip) and
# the DaemonSet's command (nsenter).
runtime_programs() {
  local prog path pkg bad=0
  for prog in nsenter iptables-nft-save ip6tables-nft-save iptables-legacy-save ip6tables-legacy-save ip; do
    path=$(command -v "$prog") || { echo "$prog: not on this host, cannot check"; bad=1; continue; }
    pkg=$(package_of "$path") || { echo "$prog ($path): no Debian package owns it"; bad=1; continue; }
    if grep -qx "$pkg" "$TMP/runtime-packages"; then echo "$prog <- $pkg"; else echo "$prog <- $pkg: NOT in the runtime stage"; bad=1; fi
  done
  return $bad
}
check "Dockerfile runtime stage provides every program the agent runs" runtime_programs

finish
