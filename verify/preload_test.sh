#!/usr/bin/env bash
# LD_PRELOADs libhakmem.so into real programs (python3 with every object
# through malloc, git, sort, gcc, sqlite3, xz -T2), compares each output
# with a run without it, and proves from hakmem's own statistics that hakmem
# served the allocations (a silent fall-back to glibc fails the test).
set -euo pipefail

LIB=$(realpath "$1")
WORK=$(mktemp -d "${TEST_TMPDIR:-/tmp}/preload.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
PY=/usr/bin/python3
failures=0

fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

# run NAME MIN_SMALL CMD...: runs CMD in $WORK/NAME.glibc and $WORK/NAME.hak
# (the same relative files), compares stdout+stderr and the files CMD wrote,
# then checks hakmem's per-process statistics.
run() {
  local name=$1 min_small=$2
  shift 2
  for side in glibc hak; do
    local dir="$WORK/$name.$side"
    mkdir -p "$dir"
    [ -d "$WORK/input" ] && cp -r "$WORK/input/." "$dir/"
    if [ $side = hak ]; then
      (cd "$dir" && env LD_PRELOAD="$LIB" HAKMEM_STATS=json HAKMEM_STATS_FILE="$WORK/$name.stats" \
        HOME="$dir" "$@" >"$WORK/$name.$side.out" 2>&1) || fail "$name exited $? with hakmem"
    else
      (cd "$dir" && env HOME="$dir" "$@" >"$WORK/$name.$side.out" 2>&1) || fail "$name exited $? without hakmem"
    fi
  done
  if ! diff -q "$WORK/$name.glibc.out" "$WORK/$name.hak.out" >/dev/null; then
    fail "$name: output differs"
    diff "$WORK/$name.glibc.out" "$WORK/$name.hak.out" | head -20 || true
  fi
  # files written (git's index holds timestamps and inode numbers: skipped)
  if ! diff -r -q -x index "$WORK/$name.glibc" "$WORK/$name.hak" >/dev/null; then
    fail "$name: files written differ"
    diff -r -q -x index "$WORK/$name.glibc" "$WORK/$name.hak" | head -10 || true
  fi
  if grep -q "hakmem: error" "$WORK/$name.hak.out"; then fail "$name: hakmem reported an error"; fi
  # Every process appended one JSON line; hakmem must have served them.
  "$PY" - "$WORK/$name.stats" "$min_small" "$name" <<'PYEOF' || fail "$name: statistics"
import json, sys
path, min_small, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
try:
    lines = [json.loads(l) for l in open(path)]
except FileNotFoundError:
    sys.exit(f"{name}: no statistics written: hakmem did not run")
small = sum(l["served"]["small"] for l in lines)
large = sum(l["served"]["large"] for l in lines)
huge = sum(l["served"]["huge"] for l in lines)
errs = sum(l["errors"]["double_free"] + l["errors"]["invalid_free"] for l in lines)
print(f"{name}: {len(lines)} processes, served small={small} large={large} huge={huge}")
if small < min_small:
    sys.exit(f"{name}: hakmem served only {small} small allocations (< {min_small})")
if errs:
    sys.exit(f"{name}: {errs} errors reported")
import os
mode = os.environ.get("HAKMEM_MODE", "baseline")
if any(l["learn"]["mode"] != mode for l in lines):
    sys.exit(f"{name}: hakmem ran in another mode than {mode}")
PYEOF
}

# ---- python3, every object through malloc, with threads ----------------
cat >"$WORK/prog.py" <<'PYEOF'
import json, threading, hashlib, collections
def work(seed, out):
    d = {}
    for i in range(60000):
        d[f"k{seed}-{i}"] = [i, str(i) * (i % 7), {"x": i % 13}]
    s = json.dumps(d, sort_keys=True)
    out[seed] = hashlib.sha256(s.encode()).hexdigest()
out = {}
ts = [threading.Thread(target=work, args=(k, out)) for k in range(4)]
[t.start() for t in ts]
[t.join() for t in ts]
c = collections.Counter(w for w in open(__file__).read().split())
print(sorted(out.items()), c.most_common(5))
PYEOF
run python 100000 env PYTHONMALLOC=malloc "$PY" "$WORK/prog.py"

# ---- git on a scratch repository -----------------------------------------
cat >"$WORK/git.sh" <<'SHEOF'
set -e
export GIT_AUTHOR_NAME=t GIT_AUTHOR_EMAIL=t@example.com GIT_COMMITTER_NAME=t GIT_COMMITTER_EMAIL=t@example.com
export GIT_AUTHOR_DATE="2026-01-01T00:00:00Z" GIT_COMMITTER_DATE="2026-01-01T00:00:00Z"
git init -q -b main repo && cd repo
for c in 1 2 3 4 5 6; do
  for f in $(seq 1 40); do seq $((f * c)) $((f * c + 300)) > "file$f.txt"; done
  git add -A && git commit -q -m "commit $c"
done
git log --stat --format='%H %s' | tail -n 30
git diff HEAD~3 --stat | tail -n 3
git gc -q --aggressive
git fsck --no-progress 2>&1
git rev-list --all --objects | wc -l
SHEOF
run git 5000 bash "$WORK/git.sh"

# ---- sort of a large file ---------------------------------------------------
mkdir -p "$WORK/input"
"$PY" -c "
import random
r = random.Random(7)
with open('$WORK/input/big.txt', 'w') as f:
    for i in range(400000):
        f.write('%08x %s\n' % (r.getrandbits(32), 'x' * r.randint(0, 40)))
"
run sort 10 sh -c 'sort --parallel=2 -S 64M big.txt | md5sum; sort -n -k1,1 -t" " big.txt | tail -n 3; rm big.txt'

# ---- a C compile with gcc ------------------------------------------------
rm -rf "$WORK/input" && mkdir -p "$WORK/input"
"$PY" -c "
with open('$WORK/input/gen.c', 'w') as f:
    f.write('#include <stdio.h>\n')
    for i in range(400):
        f.write('static int f%d(int x) { int s = 0; for (int k = 0; k < x; k++) s += (k * %d) ^ (s >> 3); return s; }\n' % (i, i + 1))
    f.write('int main(void) { long t = 0;\n')
    for i in range(400):
        f.write('  t += f%d(%d);\n' % (i, i % 50))
    f.write('  printf(\"%ld\\\\n\", t); return 0; }\n')
"
run gcc 10000 sh -c 'gcc -O2 -c gen.c -o gen.o && gcc gen.o -o gen && ./gen && rm gen'

# ---- sqlite3 ----------------------------------------------------------------
rm -rf "$WORK/input"
run sqlite 10000 sqlite3 db.sqlite "
CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT, v REAL);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 60000)
INSERT INTO t SELECT x, printf('key%06d', (x * 7919) % 60000), x * 0.5 FROM c;
CREATE INDEX tk ON t(k);
SELECT count(*), sum(v), min(k), max(k) FROM t;
SELECT k, v FROM t ORDER BY k DESC LIMIT 3;
SELECT substr(k, 1, 5) AS p, count(*) FROM t GROUP BY p ORDER BY p LIMIT 5;
"

# ---- multithreaded compressor ---------------------------------------------
mkdir -p "$WORK/input"
"$PY" -c "
import random
r = random.Random(3)
words = ['alpha', 'beta', 'gamma', 'delta', 'hakmem', 'segment', 'page', 'block']
with open('$WORK/input/data.txt', 'w') as f:
    for i in range(300000):
        f.write(' '.join(r.choice(words) for _ in range(8)) + '\n')
"
run xz 20 sh -c 'xz -T2 -6 --block-size=1MiB -k data.txt && xz -dc data.txt.xz | md5sum && md5sum data.txt.xz && rm data.txt data.txt.xz'

if [ "$failures" -ne 0 ]; then
  echo "$failures failure(s)"
  exit 1
fi
echo "all programs produced identical output under hakmem"
