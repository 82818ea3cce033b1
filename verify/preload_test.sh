#!/usr/bin/env bash
# LD_PRELOADs libhakmem.so into real programs (python3 with every object
# through malloc, an allocation-heavy CPython workload, git, sort, gcc,
# clang++ and the C++ program it builds,
# sqlite3, xz -T2), compares each output with a run without it, and proves
# from hakmem's own statistics that hakmem served the allocations (a silent
# fall-back to glibc fails the test).
#
#   verify/preload_test.sh LIB                 the test
#   verify/preload_test.sh LIB --rss OUT [N]   the same programs, N runs (3)
#       under glibc, mimalloc, jemalloc, tcmalloc and hakmem, interleaved:
#       OUT.md gets each program's peak RSS (largest process, median,
#       min-max) per allocator and hakmem / mimalloc, OUT.json the samples
#       (bazel run -c opt //verify:preload_rss -- OUT)
set -euo pipefail

LIB=$(realpath "$1")
RSS_OUT="" RSS_RUNS=3
if [ "${2:-}" = "--rss" ]; then
  RSS_OUT=$(realpath -m "$3")
  RSS_RUNS=${4:-3}
fi
WORK=$(mktemp -d "${TEST_TMPDIR:-/tmp}/preload.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
PY=/usr/bin/python3
failures=0
# shellcheck source=verify/programs.sh
. "$(dirname "$0")/programs.sh"

fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

# run NAME MIN_SMALL CMD...: runs CMD in $WORK/NAME.glibc and $WORK/NAME.hak
# (the same relative files), compares stdout+stderr and the files CMD wrote,
# then checks hakmem's per-process statistics.
rss_peers() {
  local d n
  for n in libmimalloc.so.2 libjemalloc.so.2 libtcmalloc_minimal.so.4; do
    for d in /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu /usr/lib64 /usr/lib; do
      [ -e "$d/$n" ] && { echo "${n%%.so*}=$d/$n"; break; }
    done
  done
}

# rss NAME CMD...: the peak RSS (largest process of the tree, from wait4)
# of CMD under every allocator, RSS_RUNS rounds, appended to $RSS_OUT.tsv
rss() {
  local name=$1 round alloc lib dir
  shift
  for round in $(seq 1 "$RSS_RUNS"); do
    for alloc in glibc $(rss_peers) hakmem="$LIB"; do
      lib=${alloc#*=}
      [ "$alloc" = glibc ] && lib=""
      dir="$WORK/rss.$name"
      rm -rf "$dir" && mkdir -p "$dir"
      [ -d "$WORK/input" ] && cp -r "$WORK/input/." "$dir/"
      local kib
      kib=$(cd "$dir" && HOME="$dir" "$PY" -c '
import os, sys
pid = os.fork()
if pid == 0:
    lib = sys.argv[1]
    if lib: os.environ["LD_PRELOAD"] = lib
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1); os.dup2(devnull, 2)
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, ru = os.wait4(pid, 0)
if status != 0: sys.exit(f"exit status {status}")
print(ru.ru_maxrss)' "$lib" "$@") || fail "$name under ${alloc%%=*} failed"
      printf '%s\t%s\t%s\n' "$name" "${alloc%%=*}" "$kib" >>"$RSS_OUT.tsv"
    done
  done
  echo "rss: $name done"
}

run() {
  local name=$1 min_small=$2
  shift 2
  if [ -n "$RSS_OUT" ]; then
    rss "$name" "$@"
    return
  fi
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
mode = os.environ.get("HAKMEM_MODE", "evolving")  # the default
if any(l["learn"]["mode"] != mode for l in lines):
    sys.exit(f"{name}: hakmem ran in another mode than {mode}")
secure = int(os.environ.get("HAKMEM_SECURE", "0"))
if any(l["secure"] != secure for l in lines):
    sys.exit(f"{name}: hakmem ran at another HAKMEM_SECURE level than {secure}")
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

# ---- CPython, allocation-heavy: objects built and dropped in waves --------
write_churn_py "$WORK/churn.py"
run python_churn 100000 env PYTHONMALLOC=malloc "$PY" "$WORK/churn.py"

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
write_gen_c "$WORK/input/gen.c"
run gcc 10000 sh -c 'gcc -O2 -c gen.c -o gen.o && gcc gen.o -o gen && ./gen && rm gen'

# ---- a C++ compile with clang++, and the C++ program it built ----------------
# (operator new and delete are hakmem's own: src/cxx.c)
rm -rf "$WORK/input" && mkdir -p "$WORK/input"
write_words_cc "$WORK/input/words.cc"
run cxx 100000 sh -c 'clang++ -std=c++17 -O1 words.cc -o words && ./words && rm words'

# ---- sqlite3 ----------------------------------------------------------------
rm -rf "$WORK/input"
run sqlite 10000 sqlite3 db.sqlite "$SQLITE_SQL"

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
if [ -n "$RSS_OUT" ]; then
  "$PY" - "$RSS_OUT" <<'PYEOF'
import collections, json, math, statistics, sys
out = sys.argv[1]
samples = collections.defaultdict(lambda: collections.defaultdict(list))
for line in open(out + ".tsv"):
    name, alloc, kib = line.split()
    samples[name][alloc].append(int(kib))
allocs = ["glibc", "libmimalloc", "libjemalloc", "libtcmalloc_minimal", "hakmem"]
allocs = [a for a in allocs if any(a in s for s in samples.values())]
med = {n: {a: statistics.median(v) for a, v in s.items()} for n, s in samples.items()}
lines = ["# Peak RSS of real programs (largest process; median of %d runs, min-max)" % len(next(iter(next(iter(samples.values())).values()))), "",
         "| program | " + " | ".join(a.replace("libtcmalloc_minimal", "tcmalloc").replace("libmimalloc", "mimalloc")
                                     .replace("libjemalloc", "jemalloc") for a in allocs) + " | hakmem / mimalloc |",
         "|---|" + "---:|" * (len(allocs) + 1)]
ratios = []
for n, s in samples.items():
    cells = [f"{med[n][a] / 1024:.1f} MiB ({min(s[a]) / 1024:.1f}-{max(s[a]) / 1024:.1f})" for a in allocs]
    r = med[n]["hakmem"] / med[n]["libmimalloc"] if "libmimalloc" in med[n] else float("nan")
    ratios.append(r)
    lines.append(f"| {n} | " + " | ".join(cells) + f" | {r:.2f}x |")
geo = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
lines += ["", f"Geometric mean of hakmem / mimalloc: {geo:.2f}x"]
open(out + ".md", "w").write("\n".join(lines) + "\n")
json.dump({n: dict(s) for n, s in samples.items()}, open(out + ".json", "w"), indent=1)
print("\n".join(lines))
PYEOF
  exit 0
fi
echo "all programs produced identical output under hakmem"
