#!/usr/bin/env bash
# Installs every Debian package hakmem needs to build, test, fuzz and benchmark.
# Idempotent: packages already present are skipped; nothing comes from outside apt.
set -euo pipefail

PACKAGES=(
  bazel-bootstrap bazel-rules-java          # Bazel 4.2.3 (WORKSPACE mode) + rules_java
  clang-14 libclang-rt-14-dev llvm-14       # compiler, sanitizer and libFuzzer runtimes
  clang                                     # /usr/bin/clang (Bazel's), clang++ (the preload test)
  afl++                                     # AFL++ (afl-clang-fast)
  valgrind                                  # memcheck / callgrind
  libmimalloc2.0 libjemalloc2 libtcmalloc-minimal4   # peer allocators for benchmarks
  python3 git gcc sqlite3 xz-utils coreutils # real programs the preload test runs
  gnuplot-nox                               # benchmark chart
  python3-yaml                              # ci/check_workflows.py (//ci:schedule_test)
  bc zip                                    # verify/mutants.sh, .clusterfuzzlite/build.sh
  chromium                                  # ci/history_test.py renders the nightly dashboard
  cron                                      # ci/install-nightly.sh where systemd is not PID 1
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "setup: all ${#PACKAGES[@]} packages present"
  exit 0
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "setup: done"
