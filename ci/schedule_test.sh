#!/usr/bin/env bash
# //ci:schedule_test: the three ways of scheduling the nightly, checked here.
#  1. every workflow under .github/workflows parses, has on: and jobs:, and
#     names only repo paths that exist (and the checker does catch one that
#     does not);
#  2. ci/install-nightly.sh --print shows a valid OnCalendar and crontab line;
#  3. bad input fails with a message;
#  4. install + uninstall of the crontab line keeps the user's other lines,
#     on a fake crontab.
# Nothing on the machine changes: crontab, systemctl, apt-get, service, cron
# and sudo are fakes on PATH that record any call.
# `check && ok ... || fail ...` is safe: ok only echoes
# shellcheck disable=SC2015,SC2016
set -euo pipefail

tmp=${TEST_TMPDIR:-$(mktemp -d)}
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
ok() { echo "ok: $*"; }

# ---- the source tree: the runfiles are links into it ------------------------------
[ -f ci/check_workflows.py ] || cd "$(dirname "$0")/.." # run by hand
root=$(dirname "$(dirname "$(readlink -f ci/check_workflows.py)")")
[ -f "$root/WORKSPACE" ] || { echo "FAIL: no source tree found from ci/check_workflows.py ($root)"; exit 1; }
ls .github/workflows/*.y*ml >/dev/null 2>&1 || fail "no workflow in the test's data: does //:workflows' glob see .github?"
for f in "$root"/.github/workflows/*.y*ml; do
  [ -e ".github/workflows/${f##*/}" ] || fail "${f##*/} is not in //:workflows (extend its glob)"
done

# ---- 1. the workflows --------------------------------------------------------------
if out=$(python3 ci/check_workflows.py --root "$root" 2>&1); then ok "$out"; else fail "workflows: $out"; fi

# the checker must fail on a missing script, a missing on:, and bad YAML
mkdir -p "$tmp/bad"
cat >"$tmp/bad/missing.yml" <<'EOF'
on: push
jobs:
  j:
    runs-on: ubuntu-latest
    steps:
      - run: bash ci/setup.sh && bash ci/no-such-script.sh
EOF
printf 'jobs:\n  j:\n    runs-on: x\n    steps:\n      - run: "true"\n' >"$tmp/bad/no_on.yml"
printf 'on: push\njobs:\n  j:\n    steps:\n      - run: echo a: b\n' >"$tmp/bad/bad_yaml.yml"
for bad in missing:ci/no-such-script.sh no_on:'no `on:`' bad_yaml:'does not parse'; do
  file=${bad%%:*} want=${bad#*:}
  if out=$(python3 ci/check_workflows.py --root "$root" "$tmp/bad/$file.yml" 2>&1); then
    fail "the checker passed $file.yml: $out"
  elif grep -qF -- "$want" <<<"$out"; then ok "the checker rejects $file.yml ($want)"
  else fail "the checker rejected $file.yml without naming '$want': $out"; fi
done

# ---- fakes: nothing below may reach the machine's scheduler or packages ------------
fake=$tmp/fakebin calls=$tmp/calls
mkdir -p "$fake" "$tmp/home"
: >"$calls"
for c in systemctl apt-get service cron sudo; do
  printf '#!/bin/sh\necho "%s $*" >>"%s"\n' "$c" "$calls" >"$fake/$c"
done
# crontab keeps its table in a file: -l prints it, - replaces it
cat >"$fake/crontab" <<EOF
#!/bin/sh
echo "crontab \$*" >>"$calls"
case "\$1" in
  -l) [ -f "$tmp/crontab" ] || { echo "no crontab for test" >&2; exit 1; }; cat "$tmp/crontab" ;;
  -) cat >"$tmp/crontab" ;;
  *) exit 1 ;;
esac
EOF
chmod +x "$fake"/*
export PATH="$fake:$PATH" HOME=$tmp/home XDG_CONFIG_HOME=$tmp/home/.config
installer=ci/install-nightly.sh
nights=$tmp/nights

# ---- 2. --print ----------------------------------------------------------------------
check_print() { # HH:MM, OnCalendar time, crontab fields, extra arguments
  local at=$1 cal=$2 cron=$3 out
  shift 3
  if ! out=$("$installer" --print --at "$at" --out "$nights" "$@" 2>&1); then
    fail "--print --at $at $*: exit non-zero: $out"
    return
  fi
  grep -qxF "OnCalendar=*-*-* $cal" <<<"$out" && ok "--at $at: OnCalendar=*-*-* $cal" ||
    fail "--at $at: no 'OnCalendar=*-*-* $cal' in: $out"
  if command -v systemd-analyze >/dev/null; then
    systemd-analyze calendar "*-*-* $cal" 2>&1 | grep -qF "Normalized form: *-*-* $cal" &&
      ok "systemd-analyze calendar accepts *-*-* $cal" || fail "systemd-analyze calendar rejects *-*-* $cal"
  fi
  local line
  line=$(grep -E '# hakmem-nightly$' <<<"$out" || true)
  [[ $line == "$cron * * * "*"/ci/nightly-job.sh --out $nights --state $nights/state"*"# hakmem-nightly" ]] &&
    ok "--at $at: crontab line '$cron * * * ...'" || fail "--at $at: crontab line wrong: '$line'"
  for want in "$@"; do
    grep -qF -- "$want" <<<"$line" || fail "--at $at: $want is not passed on: '$line'"
  done
}
check_print 02:00 02:00:00 "0 2"
check_print 7:05 07:05:00 "5 7" --quick
check_print 23:59 23:59:00 "59 23"
[ ! -e "$nights" ] || fail "--print created $nights"

# the generated units, as systemd reads them (where systemd-analyze is installed)
if command -v systemd-analyze >/dev/null; then
  mkdir -p "$tmp/units"
  "$installer" --print --at 02:00 --out "$nights" |
    awk -v d="$tmp/units" '/^# --- or/ {f = ""; next} /^# --- / {n = $3; sub(/.*\//, "", n); f = d "/" n; next} f {print > f}'
  if out=$(cd "$tmp/units" && systemd-analyze verify ./hakmem-nightly.timer ./hakmem-nightly.service 2>&1); then
    ok "systemd-analyze verify: the units are clean"
  else
    fail "systemd-analyze verify: $out"
  fi
fi

# ---- 3. bad input ----------------------------------------------------------------------
bad_input() { # the message to expect, then the arguments
  local want=$1 out
  shift
  if out=$("$installer" "$@" 2>&1); then
    fail "'$*' succeeded: $out"
  elif grep -qF -- "$want" <<<"$out"; then ok "'$*' fails: $out"
  else fail "'$*' fails without saying '$want': $out"; fi
}
bad_input "'25:00' is not a time of day" --print --at 25:00 --out "$nights"
bad_input "'abc' is not a time of day" --print --at abc --out "$nights"
bad_input "'12:60' is not a time of day" --print --at 12:60 --out "$nights"
bad_input "--out DIR is required" --print --at 02:00
bad_input "--out DIR is required" --at 02:00
bad_input "--at HH:MM is required" --out "$nights"
bad_input "--at needs a value" --at
bad_input "unknown argument '--tomorrow'" --tomorrow
bad_input "has one of %" --print --at 02:00 --out "$tmp/100%"
[ ! -s "$calls" ] || fail "--print or bad input called: $(cat "$calls")"

# ---- 4. install and uninstall, on the fake crontab -----------------------------------
printf 'MAILTO=someone\n30 4 * * * echo not ours\n' >"$tmp/crontab"
mine=$(cat "$tmp/crontab")
"$installer" --cron --at 02:00 --out "$nights" >"$tmp/install.log" 2>&1 || fail "install: $(cat "$tmp/install.log")"
"$installer" --cron --at 03:30 --out "$nights" >>"$tmp/install.log" 2>&1 || fail "reinstall: $(cat "$tmp/install.log")"
[ "$(grep -c '# hakmem-nightly$' "$tmp/crontab")" = 1 ] && grep -q '^30 3 \* \* \* ' "$tmp/crontab" &&
  ok "install twice: one line, the last time" || fail "install twice: $(cat "$tmp/crontab")"
grep -qxF "$(head -1 <<<"$mine")" "$tmp/crontab" && grep -qxF "$(tail -1 <<<"$mine")" "$tmp/crontab" ||
  fail "install lost the user's lines: $(cat "$tmp/crontab")"
[ -d "$nights/state" ] || fail "install did not create $nights/state"
"$installer" --cron --uninstall >"$tmp/uninstall.log" 2>&1 || fail "uninstall: $(cat "$tmp/uninstall.log")"
[ "$(cat "$tmp/crontab")" = "$mine" ] && ok "uninstall leaves the user's crontab as it was" ||
  fail "uninstall left: $(cat "$tmp/crontab")"
out=$("$installer" --cron --uninstall 2>&1) && grep -q "nothing to remove" <<<"$out" &&
  ok "uninstall again: $out" || fail "second uninstall: $out"
if grep -vE '^(crontab|service|cron) ' "$calls"; then fail "install/uninstall called the above"; fi

[ $fails = 0 ] || { echo "$fails failed"; exit 1; }
echo "all passed"
