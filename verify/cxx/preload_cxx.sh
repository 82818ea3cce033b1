#!/usr/bin/env bash
# C++ under LD_PRELOAD of hakmem (src/cxx.c), the cases a static link cannot
# show: a program that replaces operator new/delete keeps them for every form
# (replace_new.cc), and a C host that loads libstdc++ only with a C++ plugin
# (RTLD_LOCAL and RTLD_GLOBAL) gets bad_alloc and the new_handler in it.
#   preload_cxx.sh LIB REPLACE_NEW DL_HOST PLUGIN
set -uo pipefail
lib=$(realpath "$1") replace=$2 host=$3 plugin=$(realpath "$4")
fail=0
check() { # name, command...
  local name=$1 out rc
  shift
  out=$(LD_PRELOAD="$lib" "$@" 2>&1)
  rc=$?
  echo "$name: $out"
  [ $rc -eq 0 ] || { echo "FAIL: $name (exit $rc)"; fail=1; }
}
check replace_new "$replace"
check plugin_local "$host" "$plugin" local
check plugin_global "$host" "$plugin" global
exit $fail
