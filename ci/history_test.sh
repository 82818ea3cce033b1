#!/usr/bin/env bash
# //ci:history_test: the gate on synthetic nights and the dashboard in
# headless Chromium (ci/history_test.py).
set -euo pipefail
here=$(dirname "$0")
export HOME=${TEST_TMPDIR:-$(mktemp -d)}  # Chromium writes its profile and caches there
exec python3 "$here/history_test.py" -v
