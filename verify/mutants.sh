#!/usr/bin/env bash
# Checking the checkers: builds hakmem once per deliberate bug
# (--define hak_fault=NAME, see src/BUILD), runs the tests and the fuzzers
# against it, and prints which checker caught each fault and how fast.
# Exits non-zero if any fault escapes, or is caught only after 60 seconds.
#   verify/mutants.sh [--out DIR] [FAULT...]
set -uo pipefail
cd "$(dirname "$0")/.."
out=""
if [ "${1:-}" = "--out" ]; then out=$2; shift 2; fi
out=${out:-$(mktemp -d)}
mkdir -p "$out"
faults=("$@")
[ ${#faults[@]} -gt 0 ] || faults=($(sed -n '/^FAULTS = \[/,/^\]/s/^    "\(.*\)",$/\1/p' src/BUILD))
tests=(//src:all //fuzz:all //verify:replay_test //verify:shadow_heap_test)
fuzzers=(api_fuzzer misuse_fuzzer api_mt_fuzzer bigcache_fuzzer batch_fuzzer)
budget=60
escaped=0
rows=()

for f in "${faults[@]}"; do
  echo "mutants: $f: tests" >&2
  t0=$(date +%s.%N)
  bazel build --define hak_fault="$f" "${tests[@]}" >/dev/null 2>&1
  t1=$(date +%s.%N)
  bazel test --define hak_fault="$f" --test_output=summary "${tests[@]}" >"$out/$f.tests.log" 2>&1
  t2=$(date +%s.%N)
  failed=$(grep -E '^//[^ ]+ +FAILED' "$out/$f.tests.log" | awk '{print $1}' | sed 's|^//||' | paste -sd, -)
  test_s=$(echo "$t2 - $t1" | bc)
  echo "mutants: $f: fuzzers" >&2
  bazel build --config=libfuzzer --define hak_fault="$f" //fuzz:all >/dev/null 2>&1
  bin=$(bazel info --config=libfuzzer --define hak_fault="$f" bazel-bin 2>/dev/null)
  caught_by="" caught_s="" caught_execs="" checker=""
  left=$budget
  for z in "${fuzzers[@]}"; do
    [ "$left" -gt 0 ] || break
    work=$(mktemp -d)
    cp fuzz/corpus/$z/seed-* "$work/"
    s0=$(date +%s.%N)
    (cd "$work" && timeout $((left + 30)) "$bin/fuzz/$z" -max_total_time=$((left < 15 ? left : 15)) \
        -print_final_stats=1 . >"$out/$f.$z.log" 2>&1)
    s1=$(date +%s.%N)
    used=$(echo "$s1 - $s0" | bc)
    left=$((left - ${used%.*} - 1))
    if ls "$work"/crash-* >/dev/null 2>&1 || grep -q "deadly signal\|ERROR: AddressSanitizer\|ERROR: libFuzzer" "$out/$f.$z.log"; then
      caught_by=$z
      caught_s=$used
      caught_execs=$(grep -oE '^#[0-9]+' "$out/$f.$z.log" | tail -1 | tr -d '#')
      caught_execs=${caught_execs:-seed corpus}
      line=$(grep -m1 -E 'shadow heap:|hakmem: check:|^fuzz:|^trace:|hakmem: error|ERROR: AddressSanitizer|runtime error' "$out/$f.$z.log")
      case $line in
        *"shadow heap:"*) checker="shadow heap" ;;
        *"hakmem: check:"*|*"hak_check_heap"*) checker="hak_check_heap" ;;
        "fuzz:"*) checker="fuzzer model" ;;
        *"hakmem: error"*) checker="misuse report" ;;
        *AddressSanitizer*) checker="ASan" ;;
        *"runtime error"*) checker="UBSan" ;;
        *) checker="abort" ;;
      esac
      rm -rf "$work"
      break
    fi
    rm -rf "$work"
  done
  if [ -n "$failed" ] || [ -n "$caught_by" ]; then verdict=caught; else verdict=ESCAPED; escaped=$((escaped + 1)); fi
  # the tests count as within budget when the failing suite ran in under 60 s
  if [ "$verdict" = caught ] && [ -z "$caught_by" ] && [ "${test_s%.*}" -ge "$budget" ]; then verdict=SLOW; escaped=$((escaped + 1)); fi
  fuzz_s=-
  [ -n "$caught_s" ] && fuzz_s="$(printf '%.1f' "$caught_s") s"
  rows+=("| $f | ${failed:--} | $(printf '%.1f' "$test_s") s | ${caught_by:--} | ${checker:--} | $fuzz_s | ${caught_execs:--} | $verdict |")
done

{
  echo "| fault | tests that failed | test time | fuzzer that crashed | checker | fuzz time | fuzz execs | verdict |"
  echo "|---|---|---:|---|---|---:|---:|---|"
  printf '%s\n' "${rows[@]}"
} | tee "$out/mutants.md"
echo "mutants: logs in $out" >&2
[ "$escaped" -eq 0 ]
