#!/usr/bin/env bash
# Runs track_test (built with HAK_TRACK_VALGRIND) under memcheck.  The
# test's children make the errors; each process logs to its own file, which
# the test reads to check what memcheck reported.  The parent itself must
# be clean.
set -uo pipefail
logs=$(mktemp -d "${TEST_TMPDIR:-/tmp}/vg.XXXXXX")
export TRACK_VG_LOGDIR=$logs
valgrind -q --error-exitcode=99 --log-file="$logs/vg.%p" "$1"
rc=$?
if [ "$rc" -ne 0 ]; then
  echo "track_test under memcheck exited $rc; parent's log:"
  for f in "$logs"/vg.*; do head -c 4000 "$f"; done | head -60
fi
rm -rf "$logs"
exit "$rc"
