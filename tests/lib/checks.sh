# Shared by the shell test runners (tests/prometheus/run_tests.sh, tests/deploy/run_tests.sh):
# PASS/FAIL/SKIP per check, each failing check's output, and a closing line "N passed, M failed".
#
#   source tests/lib/checks.sh NAME    creates $TMP (removed on exit) named after NAME
#   check NAME COMMAND...              passes when COMMAND exits 0
#   must_fail NAME COMMAND...          passes when COMMAND exits non-zero (a deliberately broken input)
#   skip NAME WHY                      a check that cannot run here, said so
#   finish                             prints what failed and exits 1 if anything did
passed=0
failed=0
skipped=0
failures=()

TMP=$(mktemp -d "${TMPDIR:-/tmp}/cw-$1-tests.XXXXXX") || { echo "cannot create a temp dir" >&2; exit 1; }
trap 'rm -rf "$TMP"' EXIT

pass() { passed=$((passed + 1)); echo "PASS  $1"; }
fail() {
  failed=$((failed + 1)); failures+=("$1"); echo "FAIL  $1"
  [ -s "$2" ] && sed 's/^/      /' "$2"
  return 0
}
skip() { skipped=$((skipped + 1)); echo "SKIP  $1: $2"; }

check() {
  local name=$1; shift
  local log="$TMP/log.$((passed + failed + skipped))"
  if "$@" >"$log" 2>&1; then pass "$name"; else fail "$name" "$log"; fi
}

must_fail() {
  local name=$1; shift
  local log="$TMP/log.$((passed + failed + skipped))"
  if "$@" >"$log" 2>&1; then
    echo "the command succeeded, so the checks do not catch this bug" >>"$log"
    fail "$name" "$log"
  else
    pass "$name"
  fi
}

finish() {
  [ "$skipped" -eq 0 ] || echo "($skipped skipped)"
  if [ "$failed" -ne 0 ]; then
    echo "failed:"
    printf '  %s\n' "${failures[@]}"
  fi
  echo "$passed passed, $failed failed"
  [ "$failed" -eq 0 ]
  exit $?
}
