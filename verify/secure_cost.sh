#!/usr/bin/env bash
# bazel run -c opt //verify:secure_cost -- [RUNS]: the cost of each
# HAKMEM_SECURE level (0, 1, 2), README "Hardening".  RUNS rounds (7),
# interleaved (every level once per round, so drift hits them alike):
#   bench_small hot / st / xt      ns per op
#   scenarios small / mid / mt     ns per iteration, peak RSS
#   real programs, wall time in ms: CPython building and dropping objects
#   (PYTHONMALLOC=malloc), a C++ program of maps, strings and unique_ptrs
#   (operator new is hakmem's), sqlite3 inserting, indexing and querying
#   60,000 rows, gcc -O2 on a generated 800-line file (verify/programs.sh)
# Prints a markdown table: median (min-max) and the ratio to level 0.
set -euo pipefail
runfiles=$(realpath "${RUNFILES_DIR:-$0.runfiles}/hakmem")
LIB=$runfiles/src/libhakmem.so
BENCH=$runfiles/verify/bench_small
SCEN=$runfiles/verify/scenarios
RUNS=${1:-7}
PY=/usr/bin/python3
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# The programs' inputs (verify/programs.sh, the preload test's), built
# once without hakmem.
# shellcheck source=verify/programs.sh
. "$runfiles/verify/programs.sh"
write_churn_py "$WORK/churn.py"
write_words_cc "$WORK/words.cc"
c++ -std=c++17 -O2 "$WORK/words.cc" -o "$WORK/words"
write_gen_c "$WORK/gen.c"

# wall NAME LEVEL CMD...: one timed run, appended to the samples
wall() {
  local name=$1 level=$2
  shift 2
  local t0 t1
  rm -f "$WORK/db.sqlite" "$WORK/gen.o"
  t0=$(date +%s%N)
  (cd "$WORK" && env HAKMEM_SECURE="$level" LD_PRELOAD="$LIB" "$@" >/dev/null) ||
    { echo "secure_cost: $name failed at level $level" >&2; exit 1; }
  t1=$(date +%s%N)
  echo "$name $level $(((t1 - t0) / 1000)) 0" >>"$WORK/samples"
}

for round in $(seq 1 "$RUNS"); do
  for level in 0 1 2; do
    for mode in hot st xt; do
      echo "$mode $level $(HAKMEM_SECURE=$level LD_PRELOAD=$LIB "$BENCH" "$mode" 10000000 | awk '{print $4}') 0" \
        >>"$WORK/samples"
    done
    for sc in small mid mt; do
      HAKMEM_SECURE=$level LD_PRELOAD=$LIB "$SCEN" "$sc" |
        "$PY" -c 'import json,sys; d=json.loads(sys.stdin.read()); print(sys.argv[1], sys.argv[2], d["ns_per_iter"], d["maxrss_kib"])' \
          "$sc" "$level" >>"$WORK/samples"
    done
    wall python_churn "$level" env PYTHONMALLOC=malloc "$PY" churn.py
    wall cxx_words "$level" ./words
    wall sqlite "$level" sqlite3 db.sqlite "$SQLITE_SQL"
    wall gcc "$level" gcc -O2 -c gen.c -o gen.o
  done
done

"$PY" - "$WORK/samples" <<'EOF'
import collections, statistics, sys
t = collections.defaultdict(list)
rss = collections.defaultdict(list)
for line in open(sys.argv[1]):
    name, level, v, kib = line.split()
    t[name, level].append(float(v))
    if int(kib): rss[name, level].append(int(kib))
units = {"hot": "ns/op", "st": "ns/op", "xt": "ns/op", "small": "ns/iter", "mid": "ns/iter", "mt": "ns/iter"}
print("| benchmark | level 0 | level 1 | level 2 |\n|---|---|---|---|")
for name in ["hot", "st", "xt", "small", "mid", "mt", "python_churn", "cxx_words", "sqlite", "gcc"]:
    scale = 1 if name in units else 1e-3  # programs: us -> ms
    base = statistics.median(t[name, "0"])
    row = [f"`{name}` ({units.get(name, 'ms')})"]
    for level in "012":
        x = [v * scale for v in t[name, level]]
        med = statistics.median(x)
        cell = f"{med:.3g} ({min(x):.3g}–{max(x):.3g})"
        if level != "0":
            cell += f" {med / (base * scale):.2f}×"
        if rss[name, level]:
            cell += f", {statistics.median(rss[name, level]) / 1024:.1f} MiB"
        row.append(cell)
    print("| " + " | ".join(row) + " |")
EOF
