#!/usr/bin/env bash
# A program we did not instrument, on libhakmem.so (built for memcheck) by
# LD_PRELOAD, under valgrind: its overflow, use after free and
# uninitialized read are reported, and the blocks are hakmem's.
set -uo pipefail
lib=$(realpath "$1")
prog=$2
log=$(mktemp)
# nouserintercepts: memcheck must not put its own malloc in front of hakmem's
LD_PRELOAD=$lib valgrind --soname-synonyms=somalloc=nouserintercepts --log-file="$log" "$prog" >/dev/null
fail=0
for want in "Invalid write of size 1" "0 bytes after a block of size 24 alloc'd" "Invalid read of size 1" \
            "free'd" "Conditional jump or move depends on uninitialised value" "libhakmem_valgrind.so"; do
  grep -qF "$want" "$log" || { echo "FAIL: memcheck's report lacks: $want"; fail=1; }
done
if [ "$fail" -ne 0 ]; then head -80 "$log"; fi
rm -f "$log"
[ "$fail" -eq 0 ] && echo "memcheck reported all three errors of the program on hakmem's blocks"
exit "$fail"
