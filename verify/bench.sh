#!/usr/bin/env bash
# bazel run -c opt //verify:bench -- [--quick] [--runs N] [--scenarios a,b]
#                                     [--allocators x,y] [--out DIR]
# Locates the scenario binary and libhakmem.so in the runfiles, then runs
# the harness (verify/bench.py).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
find_runfile() {
  for c in "${RUNFILES_DIR:-/nonexistent}/hakmem/$1" "$0.runfiles/hakmem/$1" "$here/bench.runfiles/hakmem/$1" "$here/$(basename "$1")"; do
    [ -e "$c" ] && { realpath "$c"; return; }
  done
  echo "bench: cannot find $1 (run it with bazel run -c opt //verify:bench)" >&2
  exit 1
}
exec python3 "$(find_runfile verify/bench.py)" \
  --binary "$(find_runfile verify/scenarios)" \
  --hakmem "$(find_runfile src/libhakmem.so)" "$@"
