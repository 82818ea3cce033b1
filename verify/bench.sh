#!/usr/bin/env bash
# Preliminary benchmark (the full harness of the original's scenarios comes
# with the benchmark issue): the small-object benchmark, single thread and
# two threads with cross-thread frees, run side by side under glibc, hakmem,
# mimalloc, jemalloc and tcmalloc via LD_PRELOAD of the same binary.
# Runs are interleaved across allocators; the table shows medians, min-max
# and the ratio of each allocator's time to hakmem's.
#   bench [--quick] [--runs N] [--ops N] [--out DIR]
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
find_runfile() {
  for c in "$here/$1" "${RUNFILES_DIR:-/nonexistent}/hakmem/$1" "$0.runfiles/hakmem/$1" "$here/bench.runfiles/hakmem/$1"; do
    [ -e "$c" ] && { realpath "$c"; return; }
  done
  echo "bench: cannot find $1" >&2
  exit 1
}
BIN=$(find_runfile verify/bench_small)
HAK=$(find_runfile src/libhakmem.so)

runs=7 ops=20000000 out=""
while [ $# -gt 0 ]; do
  case $1 in
    --quick) runs=3 ops=5000000 ;;
    --runs) runs=$2; shift ;;
    --ops) ops=$2; shift ;;
    --out) out=$2; shift ;;
    *) echo "bench: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
if [ -n "$out" ]; then
  case $out in /*) ;; *) out="${BUILD_WORKING_DIRECTORY:-$PWD}/$out" ;; esac
  mkdir -p "$out"
fi

libdir=$(dirname "$(find /usr/lib -name 'libc.so.6' -path '*linux-gnu*' | head -1)")
declare -A LIB=(
  [glibc]=""
  [hakmem]="$HAK"
  [mimalloc]="$libdir/libmimalloc.so.2"
  [jemalloc]="$libdir/libjemalloc.so.2"
  [tcmalloc]="$libdir/libtcmalloc_minimal.so.4"
)
allocs=(glibc hakmem mimalloc jemalloc tcmalloc)
for a in "${allocs[@]}"; do
  if [ -n "${LIB[$a]}" ] && [ ! -e "${LIB[$a]}" ]; then
    echo "bench: $a not installed (${LIB[$a]}); run ci/setup.sh" >&2
    exit 1
  fi
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for mode in st hot xt; do
  echo "bench: $mode, $runs runs x ${#allocs[@]} allocators, $ops ops each" >&2
  for r in $(seq 1 "$runs"); do
    for a in "${allocs[@]}"; do
      if [ "$a" = hakmem ]; then
        line=$(env LD_PRELOAD="${LIB[$a]}" HAKMEM_STATS=json HAKMEM_STATS_FILE="$tmp/stats" "$BIN" "$mode" "$ops")
        # prove hakmem served the run: its small-allocation count covers it
        served=$(tail -1 "$tmp/stats" | sed 's/.*"served":{"small":\([0-9]*\).*/\1/')
        if [ "$served" -lt $((ops * 45 / 100)) ]; then
          echo "bench: hakmem served only $served small allocations: not measuring hakmem" >&2
          exit 1
        fi
      elif [ -n "${LIB[$a]}" ]; then
        line=$(env LD_PRELOAD="${LIB[$a]}" "$BIN" "$mode" "$ops")
      else
        line=$("$BIN" "$mode" "$ops")
      fi
      echo "$mode $a $(echo "$line" | awk '{print $4}')" >>"$tmp/results"
    done
    echo "bench:   run $r/$runs done" >&2
  done
done

report() {
  echo "# hakmem small-object benchmark"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $runs runs per cell (interleaved), $ops ops per run."
  echo "ns/op: one op is one malloc or one free (median, min-max over runs); ratio = time / hakmem's time."
  for mode in st hot xt; do
    echo
    case $mode in
      st) echo "## st: 1 thread, random sizes 16-1024 B, live set 10,000 (cold frees)" ;;
      hot) echo "## hot: 1 thread, 64 blocks of 16-1024 B allocated then freed (cache-resident)" ;;
      xt) echo "## xt: 2 threads, batches of 64 blocks freed by the other thread" ;;
    esac
    echo
    echo "| allocator | ns/op (median) | min-max | Mops/s | time vs hakmem |"
    echo "|---|---:|---:|---:|---:|"
    hmed=$(awk -v m=$mode '$1==m && $2=="hakmem" {print $3}' "$tmp/results" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    for a in "${allocs[@]}"; do
      awk -v m=$mode -v a=$a '$1==m && $2==a {print $3}' "$tmp/results" | sort -g |
        awk -v a=$a -v h="$hmed" '{v[NR]=$1} END {med=v[int((NR+1)/2)];
          printf "| %s | %.2f | %.2f-%.2f | %.1f | %.2fx |\n", a, med, v[1], v[NR], 1000/med, med/h}'
    done
  done
}
report | tee ${out:+"$out/report.md"}
