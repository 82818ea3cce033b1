# The real programs' inputs, shared by verify/preload_test.sh (output
# compared under hakmem and glibc, peak RSS) and verify/secure_cost.sh (time
# at each HAKMEM_SECURE level).  Sourced; each function writes one file.

# CPython, allocation-heavy: objects built and dropped in waves
# (run with PYTHONMALLOC=malloc).
write_churn_py() {
  cat >"$1" <<'PYEOF'
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
PYEOF
}

# An 800-line C file for gcc -O2: 400 small functions and their calls.
write_gen_c() {
  /usr/bin/python3 - "$1" <<'PYEOF'
import sys
with open(sys.argv[1], "w") as f:
    f.write("#include <stdio.h>\n")
    for i in range(400):
        f.write("static int f%d(int x) { int s = 0; for (int k = 0; k < x; k++) s += (k * %d) ^ (s >> 3); return s; }\n" % (i, i + 1))
    f.write("int main(void) { long t = 0;\n")
    for i in range(400):
        f.write("  t += f%d(%d);\n" % (i, i % 50))
    f.write('  printf("%ld\\n", t); return 0; }\n')
PYEOF
}

# C++: a map of strings to vectors of unique_ptrs (operator new and delete
# are hakmem's own: src/cxx.c).
write_words_cc() {
  cat >"$1" <<'CCEOF'
#include <iostream>
#include <map>
#include <memory>
#include <string>
#include <vector>
int main() {
  std::map<std::string, std::vector<std::unique_ptr<long>>> m;
  for (long i = 0; i < 200000; i++) m[std::to_string(i % 7919)].push_back(std::make_unique<long>(i));
  long sum = 0;
  for (auto& [k, v] : m) sum += static_cast<long>(k.size() * v.size()) + *v.back();
  std::cout << m.size() << " " << sum << std::endl;
}
CCEOF
}

# sqlite3: 60,000 rows inserted, indexed and queried.
SQLITE_SQL="
CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT, v REAL);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 60000)
INSERT INTO t SELECT x, printf('key%06d', (x * 7919) % 60000), x * 0.5 FROM c;
CREATE INDEX tk ON t(k);
SELECT count(*), sum(v), min(k), max(k) FROM t;
SELECT k, v FROM t ORDER BY k DESC LIMIT 3;
SELECT substr(k, 1, 5) AS p, count(*) FROM t GROUP BY p ORDER BY p LIMIT 5;
"
