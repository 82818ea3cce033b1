#!/usr/bin/env bash
# Replays the hand-written traces, and checks that the replayer fails on a
# trace whose shadow check must fail (an impossible size that the
# allocator must refuse is fine; a syntax error must be reported).
set -euo pipefail
replay=$1
"$replay" verify/traces/*.trace
bad=$(mktemp)
printf 'hakmem-trace 1\nt0 frobnicate 1 2\n' > "$bad"
if "$replay" "$bad" 2>/dev/null; then echo "FAIL: a malformed trace was accepted"; exit 1; fi
echo "traces replayed; malformed trace rejected"
