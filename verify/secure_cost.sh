#!/usr/bin/env bash
# bazel run -c opt //verify:secure_cost -- [RUNS]: the cost of each
# HAKMEM_SECURE level (0, 1, 2), README "Hardening".  RUNS rounds (7),
# interleaved (every level once per round, so drift hits them alike):
#   bench_small hot / st / xt      ns per op
#   scenarios small / mid / mt     ns per iteration, peak RSS
#   real programs, wall time in ms: CPython building and dropping objects
#   (PYTHONMALLOC=malloc), a C++ program of maps, strings and unique_ptrs
#   (operator new is hakmem's), sqlite3 inserting and indexing 60,000
#   rows, gcc -O2 on a generated 800-line file
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

# The programs' inputs, built once without hakmem.
cat >"$WORK/churn.py" <<'EOF'
import random
r = random.Random(5)
keep = []
for wave in range(12):
    objs = [{"id": i, "name": "n%d" % i, "tags": [str(r.random())] * (i % 5)} for i in range(40000)]
    text = [repr(o) for o in objs[::3]]
    keep.append(sum(len(t) for t in text))
    keep.append(len({o["name"]: o for o in objs if o["id"] % 7}))
    del objs, text
print(sum(keep))
EOF
cat >"$WORK/words.cc" <<'EOF'
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <vector>
int main() {
  std::map<std::string, std::vector<std::unique_ptr<long>>> m;
  for (long i = 0; i < 400000; i++) m[std::to_string(i % 7919)].push_back(std::make_unique<long>(i));
  long sum = 0;
  for (auto& [k, v] : m) sum += static_cast<long>(k.size() * v.size()) + *v.back();
  std::cout << m.size() << " " << sum << std::endl;
}
EOF
c++ -std=c++17 -O2 "$WORK/words.cc" -o "$WORK/words"
"$PY" - "$WORK/gen.c" <<'EOF'
import sys
with open(sys.argv[1], "w") as f:
    f.write("#include <stdio.h>\n")
    for i in range(400):
        f.write("static int f%d(int x) { int s = 0; for (int k = 0; k < x; k++) s += (k * %d) ^ (s >> 3); return s; }\n" % (i, i + 1))
    f.write("int main(void) { long t = 0;\n")
    for i in range(400):
        f.write("  t += f%d(%d);\n" % (i, i % 50))
    f.write('  printf("%ld\\n", t); return 0; }\n')
EOF
SQL="CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT, v REAL);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 60000)
INSERT INTO t SELECT x, printf('key%06d', (x * 7919) % 60000), x * 0.5 FROM c;
CREATE INDEX tk ON t(k);
SELECT count(*), sum(v), min(k), max(k) FROM t;"

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
    wall sqlite "$level" sqlite3 db.sqlite "$SQL"
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
