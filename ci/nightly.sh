#!/usr/bin/env bash
# The nightly run: sanitizer matrix, Valgrind, long stress, a fuzz campaign
# (resumed from the state's corpus and merged back into it, minimized once
# a week, with a coverage report), and the benchmark, in that order.  Each
# stage's pass/fail, duration and log go to OUT/report.md and report.json.
# The night is then recorded in STATE/history.db (ci/history.py) and gated
# against the last good nights of the same machine: a slowdown or an
# RSS/fault growth is flagged only when it is statistically real (the test
# and its thresholds are in the report).  Exits non-zero on a failed stage,
# a regression or a new fuzz finding.
#   ci/nightly.sh [--quick] --out DIR [--state DIR] [--stages LIST] [--hakmem-fault NAME]
# --quick: about 40 minutes on 2 cores (measured: stress 2.5, fuzz 7-10 with
#   minimization and coverage, bench 8; the sanitizer matrix and Valgrind the
#   rest); the full night fits in 8 hours.
# --state: kept across nights (history.db, the fuzz corpus); default OUT/state.
# --stages: a comma-separated subset of sanitizers,valgrind,stress,fuzz,bench.
# --hakmem-fault NAME: the benchmark's hakmem is built with --define
#   hak_fault=NAME (src/BUILD), e.g. slow_malloc to see the gate flag it.
set -uo pipefail
cd "$(dirname "$0")/.."

quick=0 out="" state="" stages="sanitizers,valgrind,stress,fuzz,bench" fault=""
while [ $# -gt 0 ]; do
  case $1 in
    --quick) quick=1 ;;
    --out) out=$2; shift ;;
    --state) state=$2; shift ;;
    --stages) stages=$2; shift ;;
    --hakmem-fault) fault=$2; shift ;;
    *) echo "nightly: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$out" ] || { echo "usage: ci/nightly.sh [--quick] --out DIR [--state DIR] [--stages LIST] [--hakmem-fault NAME]" >&2; exit 2; }
mkdir -p "$out"
out=$(cd "$out" && pwd)
state=${state:-$out/state}
mkdir -p "$state"
state=$(cd "$state" && pwd)
if [ $quick = 1 ]; then
  # 5 runs per cell: the gate's test needs at least 5 against 5 to reject at 1 %
  stress_seconds=12 fuzz_minutes=3 bench_args="--quick --runs 5"
else
  stress_seconds=600 fuzz_minutes=240 bench_args=""
fi
want() { [[ ",$stages," == *",$1,"* ]]; }
for s in ${stages//,/ }; do
  case $s in sanitizers|valgrind|stress|fuzz|bench) ;; *) echo "nightly: unknown stage $s (sanitizers,valgrind,stress,fuzz,bench)" >&2; exit 2 ;; esac
done
# a reused --out must not carry last night's results into this one
rm -rf "$out/bench" "$out/fuzz" "$out/coverage" "$out/report.json" "$out/report.md" "$out/verdicts.json" "$out/verdicts.md"

started=$(date +%s)
stages_json="$out/.stages"
: >"$stages_json"
failed=0

progress() { echo "nightly: [$(($(date +%s) - started))s] $*" >&2; }

# how long a stage took the last night that ran it (history.db), for progress
expected() {
  [ -f "$state/history.db" ] || return 0
  python3 - "$state/history.db" "$1" "$quick" <<'PYEOF' 2>/dev/null
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
row = db.execute("SELECT s.seconds FROM stages s JOIN nights n ON n.id = s.night WHERE s.stage = ? AND n.quick = ? "
                 "ORDER BY n.id DESC LIMIT 1", (sys.argv[2], int(sys.argv[3]))).fetchone()
print(row[0] if row else "")
PYEOF
}

# stage NAME COMMAND...: runs it with its output in DIR/NAME.log, printing
# a progress line every 30 s while it runs.
stage() {
  local name=$1
  shift
  local log="$out/$name.log" t0 rc exp
  t0=$(date +%s)
  exp=$(expected "$name")
  progress "stage $name: $*${exp:+ (last time ${exp}s)}"
  ("$@") >"$log" 2>&1 &
  local pid=$!
  while kill -0 $pid 2>/dev/null; do
    sleep 5
    if [ $(( ($(date +%s) - t0) % 30 )) -lt 5 ]; then
      progress "stage $name running ($(($(date +%s) - t0)) s${exp:+ of about ${exp}}): $(tail -c 300 "$log" | tr '\n\r' '  ' | tail -c 120)"
    fi
  done
  wait $pid
  rc=$?
  local dur=$(($(date +%s) - t0))
  local status=pass
  [ $rc -eq 0 ] || { status=fail; failed=$((failed + 1)); }
  progress "stage $name: $status in ${dur}s"
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$dur" "$log" >>"$stages_json"
}

# ---- 1. sanitizer matrix --------------------------------------------------------
if want sanitizers; then
  for c in asan ubsan tsan msan; do
    stage "sanitizer-$c" bazel test --config=$c //...
  done
fi

# ---- 2. Valgrind ----------------------------------------------------------------
if want valgrind; then
  valgrind_filter=""
  [ $quick = 1 ] && valgrind_filter="--test_tag_filters=-no_valgrind,-valgrind_slow"
  stage valgrind bazel test --config=valgrind $valgrind_filter //src:all //verify:all //fuzz:all
fi

# ---- 3. long stress ---------------------------------------------------------------
stress_seed=$(date -u +%Y%m%d)
stress_run() {
  bazel build -c opt //stress:stress >/dev/null 2>&1 || return 1
  local bin rc=0
  bin=$(bazel info -c opt bazel-bin)/stress/stress
  for mode in churn bigcache batch threads fork; do
    for threads in 2 8; do
      # a fixed seed per night, logged: a failure reproduces with it
      "$bin" $mode --threads $threads --seconds $stress_seconds --seed "$stress_seed" || rc=1
    done
  done
  return $rc
}
if want stress; then
  echo "nightly: stress seed $stress_seed"
  stage stress stress_run
fi

# ---- 4. fuzz campaign ---------------------------------------------------------------
# The corpus lives in the state and accumulates: each night resumes from it
# and merges its new inputs back (campaign.py); once a week it is minimized
# (fuzz/minimize.sh); then the coverage the whole corpus reaches is reported.
fuzz_corpus=${HAKMEM_FUZZ_CORPUS:-$state/corpus}
if want fuzz; then
  mkdir -p "$fuzz_corpus"
  stage fuzz fuzz/campaign.sh --minutes $fuzz_minutes --jobs 2 --engine both --corpus "$fuzz_corpus" --out "$out/fuzz"
  stamp="$fuzz_corpus/.minimized"
  if [ ! -f "$stamp" ] || [ -n "$(find "$stamp" -mtime +6 2>/dev/null)" ]; then
    stage fuzz-minimize bash fuzz/minimize.sh "$fuzz_corpus"
  fi
  stage fuzz-coverage env HAKMEM_FUZZ_CORPUS="$fuzz_corpus" bash fuzz/coverage.sh "$out/coverage"
  # ClusterFuzzLite's build script with OSS-Fuzz's flags (ASan, UBSan, MSan,
  # coverage): what the GitHub workflows will build still builds and runs
  [ $quick = 1 ] || stage cflite-build bash .clusterfuzzlite/check.sh all coverage
fi

# ---- 5. benchmark ---------------------------------------------------------------------
bench_run() {
  local def=()
  [ -n "$fault" ] && def=(--define "hak_fault=$fault" --platform_suffix="-nightly-$fault")
  bazel run -c opt "${def[@]}" //verify:bench -- $bench_args --out "$out/bench"
}
want bench && stage bench bench_run

# ---- report, history, gate --------------------------------------------------------------
total=$(($(date +%s) - started))
commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
python3 - "$out" "$stages_json" "$total" "$quick" "$commit" "$fault" "$started" <<'PYEOF'
import json, os, sys, time
out, stages_file, total, quick, commit, fault, started = sys.argv[1:8]
total, quick = int(total), quick == "1"
stages = []
for line in open(stages_file):
    name, status, dur, log = line.rstrip("\n").split("\t")
    stages.append({"stage": name, "status": status, "seconds": int(dur), "log": log})
doc = {"quick": quick, "seconds": total, "commit": commit, "hakmem_fault": fault or None,
       "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(started))),
       "passed": all(s["status"] == "pass" for s in stages), "stages": stages}
stress_log = os.path.join(out, "stress.log")
if os.path.exists(stress_log):
    doc["stress"] = [l.strip() for l in open(stress_log) if l.startswith("stress ")]
bench = os.path.join(out, "bench", "results.json")
if os.path.exists(bench):
    doc["bench"] = json.load(open(bench))
fuzz = os.path.join(out, "fuzz", "summary.json")
if os.path.exists(fuzz):
    doc["fuzz"] = json.load(open(fuzz))
unreached = os.path.join(out, "coverage", "uncovered.txt")
if os.path.exists(unreached):
    doc["coverage"] = {"html": "coverage/html/index.html", "unreached": [l.strip() for l in open(unreached) if l.strip()]}
json.dump(doc, open(os.path.join(out, "report.json"), "w"), indent=1)
lines = ["# hakmem nightly" + (" (quick)" if quick else ""), "",
         f"{doc['started']}, commit `{commit[:12]}`" + (f", hakmem built with fault `{fault}`" if fault else "") +
         f"; {total // 60} min {total % 60} s, {'all stages passed' if doc['passed'] else 'a stage FAILED'}.", "",
         "VERDICTS", "",
         "| stage | result | duration | log |", "|---|---|---:|---|"]
for s in stages:
    lines.append(f"| {s['stage']} | {s['status']} | {s['seconds']} s | `{os.path.relpath(s['log'], out)}` |")
if doc.get("stress"):
    lines += ["", "## Stress", ""] + [f"- {l}" for l in doc["stress"]]
if os.path.exists(os.path.join(out, "fuzz", "summary.md")):
    lines += ["", "## Fuzzing", "", open(os.path.join(out, "fuzz", "summary.md")).read().split("\n", 2)[2]]
if doc.get("coverage"):
    u = doc["coverage"]["unreached"]
    lines += ["", "## Coverage", "", f"HTML: `coverage/html/index.html`; {len(u)} functions of src/ no target reaches"
              + (": " + ", ".join(f"`{x}`" for x in u[:40]) + (" ..." if len(u) > 40 else "") if u else ".")]
if os.path.exists(os.path.join(out, "bench", "report.md")):
    lines += ["", "## Benchmark", "", "![chart](bench/chart.png)", "",
              open(os.path.join(out, "bench", "report.md")).read().split("\n", 2)[2]]
open(os.path.join(out, "report.md"), "w").write("\n".join(lines) + "\n")
PYEOF
night=$(python3 ci/history.py ingest --state "$state" --night "$out") || { progress "history: ingest failed"; exit 1; }
python3 ci/history.py gate --state "$state" --night "$night" --out "$out" | tee "$out/gate.log" >&2
gate_rc=${PIPESTATUS[0]}
# the verdicts go to the top of report.md and into report.json
python3 - "$out" <<'PYEOF'
import json, os, sys
out = sys.argv[1]
md = open(os.path.join(out, "report.md")).read()
open(os.path.join(out, "report.md"), "w").write(md.replace("VERDICTS", open(os.path.join(out, "verdicts.md")).read(), 1))
doc = json.load(open(os.path.join(out, "report.json")))
doc["gate"] = json.load(open(os.path.join(out, "verdicts.json")))
json.dump(doc, open(os.path.join(out, "report.json"), "w"), indent=1)
PYEOF
progress "report: $out/report.md, $out/report.json; night $night in $state/history.db ($failed failed stage(s), gate exit $gate_rc)"
[ $failed -eq 0 ] && [ "$gate_rc" -eq 0 ]
