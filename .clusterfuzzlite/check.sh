#!/usr/bin/env bash
# Proves .clusterfuzzlite/build.sh here, without Docker, the way
# ClusterFuzzLite's build_fuzzers and run_fuzzers would use it:
#
#   .clusterfuzzlite/check.sh [address|undefined|memory|coverage|all]...
#
# (default: all = address undefined memory).  For each sanitizer:
#  1. the environment of gcr.io/oss-fuzz-base/base-builder for libFuzzer
#     (CFLAGS of base-clang, SANITIZER_FLAGS_<sanitizer>, COVERAGE_FLAGS,
#     composed as base-builder's `compile` composes them), and nothing else
#     (env -i): build.sh is copied to $SRC/build.sh, the tree is $SRC/hakmem,
#     and `bash -eux $SRC/build.sh` runs from there, as `compile` runs it;
#  2. every target of fuzz/BUILD must be in $OUT with its seed corpus;
#  3. the checks of base-runner's bad_build_check: the binary is x86-64, it
#     calls the sanitizer's runtime and no other's, it has coverage
#     instrumentation (>= 100 edges) and runs 4 inputs from nothing;
#  4. the run: the seed corpus unzipped, then CHECK_SECONDS (default 10)
#     seconds of fuzzing with base-runner's ASAN/UBSAN/MSAN_OPTIONS and
#     FUZZER_ARGS.  coverage: the seed corpus through the profiling build,
#     merged and summarized with llvm-profdata/llvm-cov.
# Fails (exit 1) if a build fails, a check fails or a target crashes; a
# crash's input and log are kept (the path is printed).  Prints a table:
# target x sanitizer -> built, checks, ran, executions, result.  Works in
# /tmp/cflite-check-<sanitizer>.*, removed unless CHECK_KEEP=1 or a target
# crashed.  Needs what ci/setup.sh installs (clang-14, libclang-rt-14-dev,
# llvm-14, zip, python3; binutils with gcc).
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
secs=${CHECK_SECONDS:-10}

want=()
for a in "${@:-all}"; do
  case $a in
    all) want+=(address undefined memory) ;;
    address | undefined | memory | coverage) want+=("$a") ;;
    *)
      echo "usage: $0 [address|undefined|memory|coverage|all]..." >&2
      exit 2
      ;;
  esac
done

targets=$(sed -n '/^TARGETS = \[/,/^\]/s/^    "\(.*\)",$/\1/p' "$repo/fuzz/BUILD")
[ -n "$targets" ] || { echo "check.sh: no TARGETS in fuzz/BUILD" >&2; exit 1; }

# ---- base-clang / base-builder (infra/base-images in google/oss-fuzz) -------
# (the SANITIZER_FLAGS_* and COVERAGE_FLAGS_* are read by name, as `compile`
# reads them)
BASE_CFLAGS="-O1 -fno-omit-frame-pointer -gline-tables-only \
-Wno-error=incompatible-function-pointer-types -Wno-error=int-conversion \
-Wno-error=deprecated-declarations -Wno-error=implicit-function-declaration \
-Wno-error=implicit-int -Wno-error=vla-cxx-extension \
-DFUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION"
CXXFLAGS_EXTRA="-stdlib=libc++"
# shellcheck disable=SC2034
{
  SANITIZER_FLAGS_address="-fsanitize=address -fsanitize-address-use-after-scope"
  # unsigned-integer-overflow is instrumented but recoverable and silenced
  # (UBSAN_OPTIONS=silence_unsigned_overflow=1): a coverage signal only, not
  # a finding (google/oss-fuzz#910); float-divide-by-zero left the set in
  # google/oss-fuzz#11567.
  SANITIZER_FLAGS_undefined="-fsanitize=array-bounds,bool,builtin,enum,function,integer-divide-by-zero,null,object-size,return,returns-nonnull-attribute,shift,signed-integer-overflow,unsigned-integer-overflow,unreachable,vla-bound,vptr -fno-sanitize-recover=array-bounds,bool,builtin,enum,function,integer-divide-by-zero,null,object-size,return,returns-nonnull-attribute,shift,signed-integer-overflow,unreachable,vla-bound,vptr"
  SANITIZER_FLAGS_memory="-fsanitize=memory -fsanitize-memory-track-origins"
  SANITIZER_FLAGS_coverage=""
  COVERAGE_FLAGS="-fsanitize=fuzzer-no-link"
  COVERAGE_FLAGS_coverage="-fprofile-instr-generate -fcoverage-mapping -pthread -Wl,--no-as-needed -Wl,-ldl -Wl,-lm -Wno-unused-command-line-argument"
}

# ---- base-runner: what run_fuzzers runs the targets with --------------------
RUN_ASAN_OPTIONS="alloc_dealloc_mismatch=0:allocator_may_return_null=1:allocator_release_to_os_interval_ms=500:check_malloc_usable_size=0:detect_container_overflow=1:detect_odr_violation=0:detect_leaks=1:detect_stack_use_after_return=1:fast_unwind_on_fatal=0:handle_abort=1:handle_segv=1:handle_sigill=1:max_uar_stack_size_log=16:print_scariness=1:quarantine_size_mb=10:strict_memcmp=1:strip_path_prefix=/workspace/:symbolize=1:use_sigaltstack=1:dedup_token_length=3"
RUN_MSAN_OPTIONS="print_stats=1:strip_path_prefix=/workspace/:symbolize=1:dedup_token_length=3"
RUN_UBSAN_OPTIONS="print_stacktrace=1:print_summary=1:silence_unsigned_overflow=1:strip_path_prefix=/workspace/:symbolize=1:dedup_token_length=3"
FUZZER_ARGS="-rss_limit_mb=2560 -timeout=25"
read -r -a fuzzer_args <<<"$FUZZER_ARGS" # run_fuzzer splits it so

# bad_build_check's thresholds (calls into each sanitizer's runtime)
MIN_EDGES=100
ASAN_MIN=1000 MSAN_MIN=1000 UBSAN_MIN=169 UBSAN_MAX_OTHER=200 MSAN_MAX_OTHER=3

# the coverage tools, unversioned (Debian's llvm) or llvm-14's
profdata=$(command -v llvm-profdata || command -v llvm-profdata-14 || echo llvm-profdata)
llvmcov=$(command -v llvm-cov || command -v llvm-cov-14 || echo llvm-cov)

rows=()
status=0
keep=()

fail() { # sanitizer, message
  echo "!!! [$1] $2"
  status=1
}

# The environment `compile` hands build.sh, as env -i arguments.
builder_env() { # sanitizer, src, out, work
  local san=$1 flags_var="SANITIZER_FLAGS_$1" cov_var="COVERAGE_FLAGS_$1"
  local sanitizer_flags=${!flags_var} coverage_flags=$COVERAGE_FLAGS
  [ -n "${!cov_var+x}" ] && coverage_flags=${!cov_var}
  local cflags="$BASE_CFLAGS $sanitizer_flags $coverage_flags"
  printf '%s\0' "PATH=$PATH" "HOME=${HOME:-/root}" \
    CC=clang CXX=clang++ CCC=clang++ \
    "CFLAGS=$cflags" "CXXFLAGS=$cflags $CXXFLAGS_EXTRA" "CXXFLAGS_EXTRA=$CXXFLAGS_EXTRA" \
    "SANITIZER=$san" "SANITIZER_FLAGS=$sanitizer_flags" "COVERAGE_FLAGS=$coverage_flags" \
    FUZZING_ENGINE=libfuzzer FUZZING_LANGUAGE=c ARCHITECTURE=x86_64 \
    LIB_FUZZING_ENGINE=-fsanitize=fuzzer LIB_FUZZING_ENGINE_DEPRECATED=/usr/lib/libFuzzingEngine.a \
    UBSAN_OPTIONS=silence_unsigned_overflow=1 DFSAN_OPTIONS=warn_unimplemented=0 \
    "SRC=$2" "OUT=$3" "WORK=$4"
}

runner() { # command...: run with base-runner's sanitizer options
  env ASAN_OPTIONS="$RUN_ASAN_OPTIONS" MSAN_OPTIONS="$RUN_MSAN_OPTIONS" UBSAN_OPTIONS="$RUN_UBSAN_OPTIONS" \
    timeout -s KILL $((secs + 300)) "$@"
}

# bad_build_check's check_mixed_sanitizers: calls into each runtime.
sanitizer_calls() { # binary -> "asan msan ubsan"
  local dis
  dis=$(mktemp)
  objdump -d "$1" >"$dis"
  local a m u
  a=$(grep -cE 'call(q)?\s+[0-9a-f]+\s+<__asan' "$dis")
  m=$(grep -cE 'call(q)?\s+[0-9a-f]+\s+<__msan' "$dis")
  u=$(grep -cE 'call(q)?\s+[0-9a-f]+\s+<__ubsan' "$dis")
  rm -f "$dis"
  echo "$a $m $u"
}

mixed_check() { # sanitizer, asan, msan, ubsan -> message or empty
  local s=$1 a=$2 m=$3 u=$4
  case $s in
    address)
      ((a >= ASAN_MIN)) || { echo "not compiled with ASan ($a asan calls)"; return; }
      ((m <= MSAN_MAX_OTHER)) || { echo "ASan build has MSan ($m calls)"; return; }
      ((u <= UBSAN_MAX_OTHER)) || { echo "ASan build has UBSan ($u calls)"; return; } ;;
    undefined)
      ((a == 0)) || { echo "UBSan build has ASan ($a calls)"; return; }
      ((m <= MSAN_MAX_OTHER)) || { echo "UBSan build has MSan ($m calls)"; return; }
      ((u >= UBSAN_MIN)) || { echo "not compiled with UBSan ($u ubsan calls)"; return; } ;;
    memory)
      ((a == 0)) || { echo "MSan build has ASan ($a calls)"; return; }
      ((m >= MSAN_MIN)) || { echo "not compiled with MSan ($m msan calls)"; return; }
      ((u <= UBSAN_MAX_OTHER)) || { echo "MSan build has UBSan ($u calls)"; return; } ;;
  esac
}

for san in "${want[@]}"; do
  tmp=$(mktemp -d "/tmp/cflite-check-$san.XXXXXX")
  mkdir -p "$tmp/src" "$tmp/out" "$tmp/work"
  ln -s "$repo" "$tmp/src/hakmem"                    # COPY . $SRC/hakmem
  cp "$repo/.clusterfuzzlite/build.sh" "$tmp/src/build.sh" # COPY .clusterfuzzlite/build.sh $SRC/
  mapfile -d '' envs < <(builder_env "$san" "$tmp/src" "$tmp/out" "$tmp/work")
  echo "=== $san: build ($(printf '%s\n' "${envs[@]}" | sed -n 's/^CFLAGS=//p'))"
  start=$SECONDS
  (cd "$tmp/src/hakmem" && env -i "${envs[@]}" bash -eux "$tmp/src/build.sh") >"$tmp/build.log" 2>&1
  brc=$?
  echo "=== $san: build.sh exit $brc in $((SECONDS - start)) s (log: $tmp/build.log)"
  if [ "$brc" -ne 0 ]; then
    grep -v '^+ ' "$tmp/build.log" | grep -E -B2 -A3 "error:|Error" | head -30 # not bash -x's command lines
    tail -3 "$tmp/build.log"
    fail "$san" "build.sh failed"
    keep+=("$tmp")
    for t in $targets; do rows+=("$t|$san|FAILED|-|-|-|-|-|-|BUILD FAILED"); done
    continue
  fi
  crashed=0
  for t in $targets; do
    bin=$tmp/out/$t
    built=no checks=- ran=- execs=- speed=- rss=- cov=- result=ok
    if [ ! -x "$bin" ] || [ ! -f "$tmp/out/${t}_seed_corpus.zip" ]; then
      fail "$san" "$t: no binary or no seed corpus in \$OUT"
      rows+=("$t|$san|MISSING|-|-|-|-|-|-|NOT BUILT")
      continue
    fi
    built=yes
    seeds=$tmp/seeds/$t corpus=$tmp/corpus/$t art=$tmp/artifacts/$t
    mkdir -p "$seeds" "$corpus" "$art"
    python3 -m zipfile -e "$tmp/out/${t}_seed_corpus.zip" "$seeds" # (no unzip needed)
    nseeds=$(find "$seeds" -type f | wc -l)
    dict=()
    [ -f "$tmp/out/$t.dict" ] && dict=(-dict="$tmp/out/$t.dict")
    log=$tmp/$t.log

    if [ "$san" = coverage ]; then
      # run_fuzzers' coverage mode: the corpus through the profiling build
      mkdir -p "$tmp/prof"
      (cd "$art" && LLVM_PROFILE_FILE="$tmp/prof/$t.%p.profraw" runner "$bin" "${fuzzer_args[@]}" -runs=0 \
        "${dict[@]}" "$seeds") >"$log" 2>&1
      rc=$?
      ran="$nseeds seeds"
      execs=$(sed -n 's/^#\([0-9]*\).*INITED.*/\1/p' "$log" | tail -1)
      if "$profdata" merge -sparse "$tmp/prof/$t".*.profraw -o "$tmp/prof/$t.profdata" 2>>"$log"; then
        checks=profile
        cov=$("$llvmcov" report "$bin" -instr-profile="$tmp/prof/$t.profdata" "$repo/src" 2>/dev/null |
          awk '$1 == "TOTAL" { print "src lines " $10 }')
      else
        checks=NO-PROFILE
        fail "$san" "$t: no profile written"
        result=FAILED
      fi
      if [ "$rc" -ne 0 ]; then
        result="CRASH (exit $rc)"
        crashed=1
        fail "$san" "$t: exit $rc on its seed corpus (log: $log)"
      fi
      rows+=("$t|$san|$built|$checks|$ran|${execs:--}|-|-|${cov:--}|$result")
      continue
    fi

    # bad_build_check
    checks=ok
    readelf -h "$bin" | grep -q "Advanced Micro Devices X86-64" || checks="not x86-64"
    read -r na nm nu < <(sanitizer_calls "$bin")
    msg=$(mixed_check "$san" "$na" "$nm" "$nu")
    [ -n "$msg" ] && checks=$msg
    (cd "$art" && runner "$bin" -seed=1337 -runs=4) >"$log.startup" 2>&1
    edges=$(grep -oP 'INFO: Loaded [0-9]+ modules?\s+\(\K[0-9]+' "$log.startup" | head -1)
    if ! grep -q "Done 4 runs" "$log.startup"; then
      checks="startup crash or exit"
    elif [ -z "$edges" ] || ((edges < MIN_EDGES)); then
      checks="partial coverage instrumentation (${edges:-0} edges)"
    fi
    echo "  $t: calls into asan $na, msan $nm, ubsan $nu; ${edges:-0} edges; 4 runs from nothing: $(grep -q "Done 4 runs" "$log.startup" && echo ok || echo FAILED)"
    if [ "$checks" != ok ]; then
      fail "$san" "$t: BAD BUILD: $checks (asan $na, msan $nm, ubsan $nu calls; log: $log.startup)"
    else
      checks="ok ($edges edges)"
    fi

    # the run: seeds, then fuzzing, as run_fuzzers runs a target
    (cd "$art" && runner "$bin" "${fuzzer_args[@]}" -max_total_time="$secs" -print_final_stats=1 \
      -artifact_prefix="$art/" "${dict[@]}" "$corpus" "$seeds") >"$log" 2>&1
    rc=$?
    grep -q "INITED" "$log" && ran="$nseeds seeds+${secs}s"
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log")
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | tr -d ' ')
    if [ "$rc" -ne 0 ]; then
      result="CRASH (exit $rc)"
      crashed=1
      fail "$san" "$t: exit $rc (log: $log; artifacts: $art)"
      grep -E "ERROR|SUMMARY|runtime error|==[0-9]+==|^fuzz:|shadow heap|hakmem: |Test unit written" "$log" | head -15
    fi
    rows+=("$t|$san|$built|$checks|$ran|${execs:--}|${speed:--}|${rss:--}|${cov:--}|$result")
  done
  if [ "$crashed" -ne 0 ] || [ "${CHECK_KEEP:-0}" = 1 ]; then
    keep+=("$tmp")
  else
    rm -rf "$tmp"
  fi
done

echo
fmt='%-18s %-10s %-6s %-16s %-15s %-8s %-7s %-7s %-16s %s\n'
# shellcheck disable=SC2059
printf "$fmt" target sanitizer built checks ran execs exec/s rss_mb coverage result
printf '%s\n' "${rows[@]}" | sort -t'|' -k1,1 -s | while IFS='|' read -r t s b c r e sp rs cv res; do
  # shellcheck disable=SC2059
  printf "$fmt" "$t" "$s" "$b" "$c" "$r" "$e" "$sp" "$rs" "$cv" "$res"
done
[ ${#keep[@]} -gt 0 ] && echo "kept: ${keep[*]}"
if [ "$status" -ne 0 ]; then
  echo "check.sh: FAILED"
else
  echo "check.sh: ${want[*]}: every target built, passed the checks and ran without a crash"
fi
exit "$status"
