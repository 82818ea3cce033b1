#!/usr/bin/env bash
# Schedules the nightly run on this machine, every day at HH:MM (local time):
#   ci/install-nightly.sh --at HH:MM --out DIR [--state DIR] [--quick] [--repo DIR]
#   ci/install-nightly.sh --print --at HH:MM --out DIR ...   (dry run: show, change nothing)
#   ci/install-nightly.sh --uninstall
# --cron: a crontab line even where systemd runs (install and uninstall).
# Each night ci/nightly-job.sh runs into DIR/<date>/, keeps the state (history
# database, fuzz corpus) in --state (default DIR/state), rebuilds DIR/dashboard
# and points DIR/latest at the night.  With systemd as the init system this is
# a service + timer pair; otherwise one crontab line marked "# hakmem-nightly".
set -euo pipefail

NAME=hakmem-nightly
MARK="# $NAME" # ends our crontab line: uninstall removes exactly that line

die() { echo "install-nightly: $*" >&2; exit 2; }
say() { echo "install-nightly: $*"; }
usage() { sed -n '2,6s/^# \{0,1\}//p' "$0"; }

at="" out="" state="" quick=0 repo="" mode=install cron_only=0
while [ $# -gt 0 ]; do
  case $1 in
    --at | --out | --state | --repo)
      [ $# -ge 2 ] || die "$1 needs a value"
      case $1 in --at) at=$2 ;; --out) out=$2 ;; --state) state=$2 ;; --repo) repo=$2 ;; esac
      shift
      ;;
    --quick) quick=1 ;;
    --cron) cron_only=1 ;;
    --print) mode=print ;;
    --uninstall) mode=uninstall ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done

# systemd only when it is PID 1 (a container may have the package but not the
# manager); user units when not root, so nothing needs sudo.
if [ "$(id -u)" -eq 0 ]; then
  unit_dir=/etc/systemd/system systemctl=(systemctl)
else
  unit_dir=${XDG_CONFIG_HOME:-$HOME/.config}/systemd/user systemctl=(systemctl --user)
fi
use_systemd() { [ $cron_only = 0 ] && [ -d /run/systemd/system ]; }

crontab_now() { crontab -l 2>/dev/null || true; } # "no crontab for USER" is empty
# the lines of crontab text $1 that are not ours
others() { [ -z "$1" ] || grep -vF -- "$MARK" <<<"$1" || true; }

uninstall() {
  local removed=0 u current
  if [ $cron_only = 0 ]; then
    for u in "$NAME.timer" "$NAME.service"; do
      [ -e "$unit_dir/$u" ] || continue
      if use_systemd && [ "$u" = "$NAME.timer" ]; then
        "${systemctl[@]}" disable --now "$u" >/dev/null 2>&1 || true # gone already is fine
      fi
      rm -f "$unit_dir/$u"
      say "removed $unit_dir/$u"
      removed=1
    done
    if [ $removed = 1 ] && use_systemd; then "${systemctl[@]}" daemon-reload; fi
  fi
  if command -v crontab >/dev/null; then
    current=$(crontab_now)
    if grep -qF -- "$MARK" <<<"$current"; then
      # keep every other line of the user's crontab as it is
      # the last line gone: no crontab at all, as before the install
      if [ -n "$(others "$current")" ]; then others "$current" | crontab -; else crontab -r; fi
      say "removed the crontab line marked '$MARK'"
      removed=1
    fi
  fi
  local where="no '$MARK' crontab line"
  [ $cron_only = 1 ] || where="no $NAME units in $unit_dir, $where"
  [ $removed = 1 ] || say "nothing to remove: $where"
}
if [ $mode = uninstall ]; then
  uninstall
  exit 0
fi

# ---- check everything before touching anything ----------------------------------
[ -n "$at" ] || die "--at HH:MM is required (e.g. --at 02:00)"
[ -n "$out" ] || die "--out DIR is required: where each night's results go"
[[ $at =~ ^([01]?[0-9]|2[0-3]):([0-5][0-9])$ ]] ||
  die "--at '$at' is not a time of day: want HH:MM, 00:00 to 23:59"
hh=$((10#${BASH_REMATCH[1]})) mm=$((10#${BASH_REMATCH[2]}))
hhmm=$(printf '%02d:%02d' $hh $mm)
repo=$(realpath -m "${repo:-$(dirname "$0")/..}")
[ -f "$repo/ci/nightly-job.sh" ] || die "--repo '$repo' has no ci/nightly-job.sh"
out=$(realpath -m "$out") # absolute: cron and systemd start in another directory
state=$(realpath -m "${state:-$out/state}")
# cron and systemd expand '%' and '$', systemd's quoting stops at '"' and '\',
# and a newline ends a crontab line: refuse such paths rather than escape them
for p in "$repo" "$out" "$state"; do
  [[ $p != *[%\$\"\\$'\n']* ]] || die "path '$p' has one of % \$ \" \\ or a newline; choose another"
done

job=("$repo/ci/nightly-job.sh" --out "$out" --state "$state")
[ $quick = 1 ] && job+=(--quick)

service_unit() {
  cat <<EOF
[Unit]
Description=hakmem nightly verification run (results in $out)

[Service]
Type=oneshot
WorkingDirectory=$repo
ExecStart=/bin/bash$(printf ' "%s"' "${job[@]}")
# a night takes hours: no start timeout, and out of the way of interactive work
TimeoutStartSec=infinity
Nice=10
EOF
}
timer_unit() {
  cat <<EOF
[Unit]
Description=Run the hakmem nightly every day at $hhmm

[Timer]
OnCalendar=*-*-* $hhmm:00
# a night missed while the machine was off runs at the next boot
Persistent=true
Unit=$NAME.service

[Install]
WantedBy=timers.target
EOF
}
# cron's own output (before the job's log is open) goes to DIR/cron.log
cron_line="$mm $hh * * * /bin/bash$(printf ' %q' "${job[@]}") >>$(printf '%q' "$out/cron.log") 2>&1 $MARK"

if [ $mode = print ]; then
  echo "# --- $unit_dir/$NAME.service"
  service_unit
  echo "# --- $unit_dir/$NAME.timer"
  timer_unit
  echo "# --- or, without systemd, this crontab line:"
  echo "$cron_line"
  exit 0
fi

mkdir -p "$out" "$state"
if use_systemd; then
  mkdir -p "$unit_dir"
  service_unit >"$unit_dir/$NAME.service"
  timer_unit >"$unit_dir/$NAME.timer"
  say "wrote $unit_dir/$NAME.service and $NAME.timer"
  "${systemctl[@]}" daemon-reload
  "${systemctl[@]}" enable --now "$NAME.timer"
  [ "$(id -u)" -eq 0 ] || say "note: user timers run while you are logged in unless 'loginctl enable-linger $USER'"
  "${systemctl[@]}" list-timers "$NAME.timer"
else
  if ! command -v crontab >/dev/null; then
    say "no crontab command: installing Debian's cron package"
    [ "$(id -u)" -eq 0 ] || die "crontab is missing and installing cron needs root (sudo apt-get install cron)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends cron >/dev/null ||
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends cron >/dev/null; }
  fi
  # replace our line if it is there (idempotent), keep the rest
  current=$(crontab_now)
  { others "$current"; echo "$cron_line"; } | crontab -
  say "installed the crontab line (runs at $hhmm every day)"
  # without an init system nobody starts the cron daemon for us
  if ! { [ -f /run/crond.pid ] && kill -0 "$(cat /run/crond.pid)" 2>/dev/null; }; then
    if [ "$(id -u)" -ne 0 ]; then
      say "warning: the cron daemon is not running and starting it needs root"
    elif service cron start >/dev/null 2>&1 || cron; then
      say "started the cron daemon"
    else
      say "warning: could not start the cron daemon: the line will not run until it is"
    fi
  fi
  say "crontab -l now:"
  crontab -l
fi
say "each night: $out/<date>/ (report.md, report.json, logs), $out/dashboard/index.html, $out/latest"
say "undo with: $(realpath "$0") --uninstall"
