#!/usr/bin/env bash
# Which functions of src/ the fuzzers' corpus replay reaches:
#   fuzz/coverage.sh [OUT_DIR]
# Builds the replay binaries with clang's source-based coverage, replays
# fuzz/corpus/<target> and fuzz/regressions/<target> of every target
# (plus $HAKMEM_FUZZ_CORPUS/<target> if set), and writes OUT_DIR/report.txt
# (per file: functions, lines, regions, branches covered) and OUT_DIR/html/
# (llvm-cov show), per-target
# function and edge (branch) counts, and OUT_DIR/uncovered.txt (functions
# of src/ that no target reaches); functions unreached and not explained
# in fuzz/unreached.txt are listed at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-$(mktemp -d)}
mkdir -p "$out"
cov=(--copt=-fprofile-instr-generate --copt=-fcoverage-mapping --linkopt=-fprofile-instr-generate
     --platform_suffix=-coverage)
bazel build "${cov[@]}" //fuzz:all >"$out/build.log" 2>&1 || { echo "coverage build failed (see $out/build.log)"; exit 1; }
bin=$(bazel info "${cov[@]}" bazel-bin)
targets=$(sed -n '/^TARGETS = \[/,/^\]/s/^    "\(.*\)",$/\1/p' fuzz/BUILD)
profs=()
for t in $targets; do
  dirs=(fuzz/corpus/$t fuzz/regressions/$t)
  [ -n "${HAKMEM_FUZZ_CORPUS:-}" ] && [ -d "$HAKMEM_FUZZ_CORPUS/$t" ] && dirs+=("$HAKMEM_FUZZ_CORPUS/$t")
  LLVM_PROFILE_FILE="$out/$t.profraw" "$bin/fuzz/$t" "${dirs[@]}" >"$out/$t.log" 2>&1
  llvm-profdata-14 merge -o "$out/$t.profdata" "$out/$t.profraw"
  line=$(llvm-cov-14 report "$bin/fuzz/$t" -instr-profile="$out/$t.profdata" $(ls src/*.c) 2>/dev/null | tail -1)
  echo "$t: $(echo "$line" | awk '{print "functions " $5-$6 "/" $5 " (" $7 "), edges (branches) " $11-$12 "/" $11 " (" $13 ")"}')" | tee -a "$out/targets.txt"
  profs+=("$out/$t.profraw")
done
llvm-profdata-14 merge -o "$out/all.profdata" "${profs[@]}"
objs=()
for t in $targets; do objs+=(-object "$bin/fuzz/$t"); done
llvm-cov-14 report "${objs[@]:1}" -instr-profile="$out/all.profdata" $(ls src/*.c) >"$out/report.txt" 2>/dev/null
# the same as browsable HTML, line by line (OUT_DIR/html/index.html)
llvm-cov-14 show -format=html -output-dir="$out/html" -show-line-counts-or-regions "${objs[@]:1}" \
  -instr-profile="$out/all.profdata" $(ls src/*.c) 2>/dev/null || echo "coverage: no HTML report (llvm-cov show failed)"
llvm-cov-14 export -format=text "${objs[@]:1}" -instr-profile="$out/all.profdata" $(ls src/*.c) 2>/dev/null |
  python3 -c '
import json, sys
d = json.load(sys.stdin)
for f in d["data"][0]["functions"]:
    src = f["filenames"][0]
    if ("/src/" in src or src.startswith("src/")) and src.endswith(".c") and "/test/" not in src:
        name = f["name"].split(":")[-1]
        print(("%s %s %d" % (name, src.split("/")[-1], f["count"])))
' | awk '{c[$1" "$2]+=$3} END {for (k in c) if (c[k] == 0) print k}' | sort >"$out/uncovered.txt"
awk '$1 == "TOTAL" {print "src/: functions " $5-$6 "/" $5 " (" $7 "), edges (branches) " $11-$12 "/" $11 " (" $13 "), lines " $8-$9 "/" $8}' "$out/report.txt"
echo "functions of src/ no fuzzer reaches: $(wc -l <"$out/uncovered.txt") (list: $out/uncovered.txt)"
# every unreached function is either explained in fuzz/unreached.txt or
# listed here as unexplained
sed -n 's/^\([A-Za-z_0-9]*\) \([a-z_0-9]*\.c\):.*/\1 \2/p' fuzz/unreached.txt | sort >"$out/explained.txt"
comm -23 "$out/uncovered.txt" "$out/explained.txt" >"$out/unexplained.txt"
comm -13 "$out/uncovered.txt" "$out/explained.txt" >"$out/reached_now.txt"
echo "unreached and not explained in fuzz/unreached.txt: $(wc -l <"$out/unexplained.txt")$(sed 's/^/\n  /' "$out/unexplained.txt" | tr -d '\n' | sed 's/  /\n  /g')"
[ -s "$out/reached_now.txt" ] && echo "explained as unreached but reached now (the list can shrink): $(tr '\n' ' ' <"$out/reached_now.txt")"
exit 0
