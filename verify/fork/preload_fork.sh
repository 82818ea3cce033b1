#!/usr/bin/env bash
# fork_atfork (a plain glibc program with its own atfork library) under
# LD_PRELOAD=libhakmem.so; hakmem's statistics prove it served the program.
set -euo pipefail
lib=$(realpath "$1")
prog=$2
stats=$(mktemp)
HAKMEM_BIGCACHE_SLOTS=0 HAKMEM_STATS=json HAKMEM_STATS_FILE="$stats" LD_PRELOAD="$lib" "$prog"
# the children end with _exit: only the parent writes statistics
grep -q '"served":{"small":[1-9]' "$stats" || { echo "FAIL: hakmem did not serve the program"; exit 1; }
echo "fork_atfork under LD_PRELOAD: served by hakmem"
rm -f "$stats"
