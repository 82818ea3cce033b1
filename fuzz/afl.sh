#!/usr/bin/env bash
# Builds every fuzz target as an AFL++ persistent-mode binary with
# afl-clang-fast (hakmem and the checkers compiled in, ASan/UBSan on when
# AFL_USE_ASAN=1 / AFL_USE_UBSAN=1 are set, as AFL++ documents).
#   fuzz/afl.sh [OUTDIR]      (default: fuzz-out/afl-bin)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-fuzz-out/afl-bin}
mkdir -p "$out"
CC=${AFL_CC:-afl-clang-fast}
command -v "$CC" >/dev/null || { echo "afl.sh: $CC not found (ci/setup.sh installs afl++)" >&2; exit 1; }
targets=$(sed -n 's/^    "\(.*_fuzzer\)",$/\1/p' fuzz/BUILD)
common=(src/*.c verify/shadow_heap.c verify/trace.c fuzz/afl_main.c)
common=("${common[@]/src\/shim.c/}")
common=("${common[@]/src\/cxx.c/}") # the shim's C++ operators: not in a fuzz target
for t in $targets; do
  echo "afl.sh: building $t" >&2
  "$CC" -std=gnu11 -O2 -g -I. -ftls-model=initial-exec -fno-builtin -DHAK_AFL \
    $(printf '%s ' "${common[@]}" | sed 's/  */ /g') "fuzz/$t.c" -lpthread -lm -o "$out/$t" 2>&1 | grep -v "^afl-cc\|^\[+\]\|^SanitizerCoverage" >&2 || true
  [ -x "$out/$t" ] || { echo "afl.sh: $t failed to build" >&2; exit 1; }
done
echo "afl.sh: built $(echo $targets | wc -w) targets in $out" >&2
