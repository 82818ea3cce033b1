#!/usr/bin/env bash
# One scheduled night (what ci/install-nightly.sh's timer or crontab line runs):
#   ci/nightly-job.sh --out DIR [--state DIR] [--quick]
# Runs ci/nightly.sh into DIR/<date>/ with the persistent state in --state
# (default DIR/state), rebuilds DIR/dashboard from the state, points
# DIR/latest at the night, and logs all of it to DIR/<date>/nightly-job.log.
# Exits with nightly.sh's status (or 1 if only the dashboard failed).
set -euo pipefail

out="" state="" quick=()
while [ $# -gt 0 ]; do
  case $1 in
    --out) out=${2:?--out needs a value}; shift ;;
    --state) state=${2:?--state needs a value}; shift ;;
    --quick) quick=(--quick) ;;
    *) echo "nightly-job: unknown argument '$1'" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$out" ] || { echo "usage: ci/nightly-job.sh --out DIR [--state DIR] [--quick]" >&2; exit 2; }

cd "$(dirname "$0")/.."
# cron starts jobs with PATH=/usr/bin:/bin and little else
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin${PATH:+:$PATH}"
mkdir -p "$out"
out=$(cd "$out" && pwd)
state=${state:-$out/state}
mkdir -p "$state"

# A night can last 8 hours; if the previous one (or a manual run) still
# holds the lock, skip this one rather than run two on 2 cores.
exec 9>"$out/.lock"
flock -n 9 || { echo "nightly-job: $(date -u +%FT%TZ) a night is still running in $out: skipped" >&2; exit 0; }

night=$out/$(date +%F)
[ -e "$night" ] && night=$out/$(date +%F-%H%M%S) # a second run the same day
mkdir -p "$night"
# the night's log; on a terminal, the screen too (under cron, stdout is
# DIR/cron.log, which keeps only what fails before this line)
if [ -t 1 ]; then exec > >(tee -a "$night/nightly-job.log") 2>&1; else exec >>"$night/nightly-job.log" 2>&1; fi

echo "nightly-job: $(date -u +%FT%TZ) night $night, state $state, repo $(pwd) at $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
rc=0
ci/nightly.sh "${quick[@]}" --state "$state" --out "$night" || rc=$?
echo "nightly-job: nightly.sh exited $rc"

# latest first: the night's report is there even if the dashboard fails
ln -sfn "$(basename "$night")" "$out/latest"
if python3 ci/dashboard.py --state "$state" --out "$out/dashboard"; then
  echo "nightly-job: dashboard $out/dashboard/index.html"
else
  echo "nightly-job: the dashboard failed"
  [ $rc -ne 0 ] || rc=1
fi
echo "nightly-job: $(date -u +%FT%TZ) done, exit $rc"
exit $rc
