#!/usr/bin/env bash
# The mutation script must never report a catch that did not happen: a
# mutant that does not compile must be BROKEN and one that changes nothing
# must ESCAPE, and either must make the script fail.  Run by .ci/run.
set -uo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
bash verify/mutants.sh --checkers tests --out "$out" broken_build noop >"$out/selftest.log" 2>&1
rc=$?
fail=0
[ "$rc" -ne 0 ] || { echo "FAIL: mutants.sh exited 0 with a broken and a no-op mutant"; fail=1; }
grep -q '^| broken_build | BROKEN |' "$out/mutants.md" 2>/dev/null ||
  { echo "FAIL: the non-compiling mutant was not reported BROKEN"; fail=1; }
grep -q '^| noop | ESCAPED |' "$out/mutants.md" 2>/dev/null ||
  { echo "FAIL: the no-op mutant was not reported ESCAPED"; fail=1; }
if [ "$fail" -ne 0 ]; then cat "$out/selftest.log"; exit 1; fi
cat "$out/mutants.md"
echo "mutants self-test: passed (exit $rc as it must be)"
rm -rf "$out"
