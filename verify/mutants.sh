#!/usr/bin/env bash
# Checking the checkers.  Builds hakmem once per deliberate bug (a mutant:
# --define hak_fault=NAME, listed in src/BUILD's FAULTS), runs the checkers
# against it in order of cost and records the first one that catches it:
#
#   tests    bazel test of the unit, conformance, stress and replay tests
#   verify   the same under --config=verify (the checker at assertion points)
#   tsan     the stress tests, mt_test, lifecycle_test and the MT fuzzers' replays under TSan
#   fuzz     every libFuzzer target, -seed=1 and a fixed number of runs each
#            (about 20 s each at the speeds below; --fuzz-scale multiplies),
#            from fuzz/corpus/<target> (plus --corpus DIR/<target>)
#   preload  real programs under LD_PRELOAD (//verify:preload_test)
#
# Each mutant builds into its own output tree (--platform_suffix), so no
# checker ever runs a binary of another mutant.  A mutant that does not
# build is BROKEN.  The unmutated tree runs first and must pass every
# checker, or the script stops (exit 2): a checker that fails on good code
# would "catch" everything.  Output: DIR/mutants.md and DIR/mutants.json,
# one row per fault: verdict (CAUGHT / ESCAPED / BROKEN), first checker,
# what failed, seconds, fuzz executions.  Exit 0 only if every mutant is
# CAUGHT.
#
#   verify/mutants.sh [--out DIR] [--checkers a,b,..] [--fuzz-scale X]
#                     [--corpus DIR] [FAULT...]
set -uo pipefail
cd "$(dirname "$0")/.."

out="" checkers="tests,verify,tsan,fuzz,preload" fuzz_scale=1 corpus_extra=""
while [ $# -gt 0 ]; do
  case $1 in
    --out) out=$2; shift 2 ;;
    --checkers) checkers=$2; shift 2 ;;
    --fuzz-scale) fuzz_scale=$2; shift 2 ;;
    --corpus) corpus_extra=$2; shift 2 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    -*) echo "mutants: unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
out=${out:-$(mktemp -d)}
mkdir -p "$out"
faults=("$@")
[ ${#faults[@]} -gt 0 ] || faults=($(sed -n '/^FAULTS = \[/,/^\]/s/^    "\(.*\)",.*$/\1/p' src/BUILD))
IFS=, read -r -a order <<<"$checkers"

# everything but the real programs (the preload checker runs those last)
TESTS=(//src/... //fuzz/... //stress/... //verify/... -//verify:preload_test -//verify:preload_evolving_test)
TSAN_TESTS=(//stress/... //src:mt_test //src:lifecycle_test //fuzz:api_mt_fuzzer_replay //fuzz:misuse_fuzzer_replay)
FUZZERS=(api_fuzzer misuse_fuzzer api_mt_fuzzer bigcache_fuzzer batch_fuzzer size_class_fuzzer learn_fuzzer options_fuzzer)
# executions per target, about 20-30 s each at the exec/s the smoke run
# measures (fuzz/smoke.sh): every target gets a fair share of time
declare -A RUNS=([api_fuzzer]=1500 [misuse_fuzzer]=4000 [api_mt_fuzzer]=600 [bigcache_fuzzer]=1000
                 [batch_fuzzer]=800 [size_class_fuzzer]=20000 [learn_fuzzer]=100000 [options_fuzzer]=100000)

now() { date +%s.%N; }
secs() { printf '%.1f' "$(echo "$2 - $1" | bc)"; }

# Sets: result (pass | caught | broken), what (failing targets or fuzzer),
# execs (fuzz executions until the catch).  $1 fault, $2 checker, $3 log.
run_checker() {
  local f=$1 c=$2 log=$3
  local common=(--define "hak_fault=$f" --platform_suffix="-hakf-$f")
  result=pass what="" execs=""
  local targets=() cfg=()
  case $c in
    tests) targets=("${TESTS[@]}") ;;
    verify) targets=("${TESTS[@]}"); cfg=(--config=verify) ;;
    tsan) targets=("${TSAN_TESTS[@]}"); cfg=(--config=tsan) ;;
    preload) targets=(//verify:preload_test) ;;
    fuzz) run_fuzzers "$f" "$log"; return ;;
    *) echo "mutants: unknown checker $c" >&2; exit 2 ;;
  esac
  # build first: a build failure is BROKEN, never a catch
  if ! bazel build "${cfg[@]}" "${common[@]}" -- "${targets[@]}" >"$log" 2>&1; then
    result=broken what="build failed"
    return
  fi
  bazel test "${cfg[@]}" "${common[@]}" --test_output=errors -- "${targets[@]}" >>"$log" 2>&1
  local rc=$?
  what=$(grep -E '^//[^ ]+ +(\(cached\) )?(FAILED|TIMEOUT|FLAKY|INCOMPLETE|NO STATUS)' "$log" |
         awk '{print $1}' | sed 's|^//||' | paste -sd' ' -)
  if [ "$rc" -eq 0 ]; then result=pass
  elif [ -n "$what" ]; then result=caught
  else result=broken what="bazel exit $rc without a failing test"
  fi
}

run_fuzzers() {
  local f=$1 log=$2
  local common=(--config=libfuzzer --define "hak_fault=$f" --platform_suffix="-hakf-$f")
  if ! bazel build "${common[@]}" //fuzz:all >"$log" 2>&1; then
    result=broken what="fuzzer build failed"
    return
  fi
  local bin
  bin=$(bazel info "${common[@]}" bazel-bin 2>/dev/null)
  result=pass what="" execs=""
  for z in "${FUZZERS[@]}"; do
    local runs
    runs=$(echo "${RUNS[$z]} * $fuzz_scale / 1" | bc)
    local work dirs=(fuzz/corpus/$z)
    work=$(mktemp -d)
    [ -n "$corpus_extra" ] && [ -d "$corpus_extra/$z" ] && dirs+=("$corpus_extra/$z")
    local dict=()
    [ -f "fuzz/corpus/$z/$z.dict" ] && dict=(-dict="fuzz/corpus/$z/$z.dict")
    echo "== $z -seed=1 -runs=$runs" >>"$log"
    # the working corpus comes first: new inputs go there, never into git
    # progress lines are many: the log keeps the last 300 (the crash and stats)
    timeout 600 "$bin/fuzz/$z" -seed=1 -runs="$runs" -timeout=20 -rss_limit_mb=4096 \
        -print_final_stats=1 -artifact_prefix="$work/" "${dict[@]}" "$work" "${dirs[@]}" 2>&1 |
      tail -n 300 >>"$log"
    local rc=${PIPESTATUS[0]}
    rm -rf "$work"
    if [ "$rc" -ne 0 ]; then
      result=caught what=$z
      execs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#')
      execs=${execs:-0}
      return
    fi
  done
}

# The unmutated tree first: every checker must pass on it.
echo "mutants: unmutated tree: ${order[*]}" >&2
for c in "${order[@]}"; do
  run_checker none "$c" "$out/none.$c.log"
  if [ "$result" != pass ]; then
    echo "mutants: the unmutated tree fails checker $c ($result: $what); see $out/none.$c.log" >&2
    exit 2
  fi
done

rows=() json=() bad=0
for f in "${faults[@]}"; do
  verdict=ESCAPED checker=- detail=- took=0 fexecs=-
  t0=$(now)
  for c in "${order[@]}"; do
    echo "mutants: $f: $c" >&2
    run_checker "$f" "$c" "$out/$f.$c.log"
    if [ "$result" = broken ]; then verdict=BROKEN checker=$c detail=$what; break; fi
    if [ "$result" = caught ]; then verdict=CAUGHT checker=$c detail=$what fexecs=${execs:--}; break; fi
  done
  took=$(secs "$t0" "$(now)")
  [ "$verdict" = CAUGHT ] || bad=$((bad + 1))
  rows+=("| $f | $verdict | $checker | $detail | $took s | $fexecs |")
  json+=("{\"fault\":\"$f\",\"verdict\":\"$verdict\",\"checker\":\"$checker\",\"detail\":\"$detail\",\"seconds\":$took,\"fuzz_execs\":\"$fexecs\"}")
done

{
  echo "| fault | verdict | first checker | what failed | time | fuzz execs |"
  echo "|---|---|---|---|---:|---:|"
  printf '%s\n' "${rows[@]}"
} | tee "$out/mutants.md"
(IFS=,; echo "[${json[*]}]") >"$out/mutants.json"
echo "mutants: ${#faults[@]} mutants, $bad not caught; logs in $out" >&2
[ "$bad" -eq 0 ]
