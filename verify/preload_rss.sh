#!/usr/bin/env bash
# bazel run -c opt //verify:preload_rss -- OUT [RUNS]: peak RSS of the
# preload test's programs under glibc, mimalloc, jemalloc, tcmalloc and
# hakmem (verify/preload_test.sh --rss); writes OUT.md, OUT.json, OUT.tsv.
set -euo pipefail
runfiles="${RUNFILES_DIR:-$0.runfiles}/hakmem"
runfiles=$(realpath "$runfiles")
cd "${BUILD_WORKSPACE_DIRECTORY:-.}"
out=$(realpath -m "${1:?usage: preload_rss OUT [RUNS]}")
rm -f "$out.tsv"
exec bash "$runfiles/verify/preload_test.sh" "$runfiles/src/libhakmem.so" --rss "$out" "${2:-3}"
