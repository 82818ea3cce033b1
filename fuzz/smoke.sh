#!/usr/bin/env bash
# A short libFuzzer run of every target (CI): fuzz/smoke.sh [SECONDS]
# Builds the targets with --config=libfuzzer, runs each SECONDS seconds
# (default 20) from its committed corpus into a scratch directory, and
# fails if any target finds a crash, a leak, a timeout or an OOM.  Prints
# one line per target: executions, exec/s, coverage.
set -uo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
targets=$(sed -n '/^TARGETS = \[/,/^\]/s/^    "\(.*\)",$/\1/p' fuzz/BUILD)
bazel build --config=libfuzzer //fuzz:all >/dev/null 2>&1 || {
  echo "//fuzz:smoke FAILED TO BUILD"
  bazel build --config=libfuzzer //fuzz:all 2>&1 | grep -E "error" | head -20
  exit 1
}
bin=$(bazel info --config=libfuzzer bazel-bin 2>/dev/null)
fail=0
for t in $targets; do
  work=$(mktemp -d)
  dict=()
  [ -f "fuzz/corpus/$t/$t.dict" ] && dict=(-dict="fuzz/corpus/$t/$t.dict")
  "$bin/fuzz/$t" -max_total_time="$secs" -timeout=20 -rss_limit_mb=4096 -print_final_stats=1 \
    -artifact_prefix="$work/" "${dict[@]}" "$work" "fuzz/corpus/$t" >"$work/log" 2>&1
  rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/log")
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$work/log")
  cov=$(grep -oE 'cov: [0-9]+' "$work/log" | tail -1)
  if [ "$rc" -ne 0 ]; then
    echo "//fuzz:${t}_smoke FAILED (exit $rc)"
    grep -E "ERROR|==[0-9]+==|^fuzz:|shadow heap|hakmem: (error|check)" "$work/log" | head -10
    ls "$work" | grep -E "crash-|leak-|timeout-|oom-" | head -3
    fail=1
  else
    echo "//fuzz:${t}_smoke PASSED in ${secs}s (${execs:-?} execs, ${speed:-?} exec/s, ${cov:-cov: ?})"
  fi
  rm -rf "$work"
done
exit "$fail"
