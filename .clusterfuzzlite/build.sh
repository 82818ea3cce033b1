#!/bin/bash -eu
# The one OSS-Fuzz / ClusterFuzzLite build script for hakmem (fuzz/oss-fuzz
# uses this file too).  Builds every fuzz target listed in fuzz/BUILD with
# the engine's $CC/$CFLAGS, links it with $LIB_FUZZING_ENGINE through $CXX
# into $OUT/<target>, and writes $OUT/<target>_seed_corpus.zip (the
# committed corpus and the regression inputs) and $OUT/<target>.dict.
#
# Runs inside the base-builder image (the source is $SRC/hakmem, this
# script is $SRC/build.sh) or from a checkout:
#   .clusterfuzzlite/build.sh            # plain libFuzzer + ASan defaults
#   .clusterfuzzlite/check.sh address    # the flags OSS-Fuzz uses, then runs
# It compiles what Bazel's //fuzz:<target> compiles (src/ without the malloc
# shim, verify/shadow_heap.c and verify/trace.c, the harness) with the same
# language flags, but without -Werror: the image's clang is newer than ours.

# The source tree: next to this script in a checkout, $SRC/hakmem in the
# image (where the script has been copied to $SRC), else the working
# directory (the image's WORKDIR).
is_tree() { [ -f "$1/src/hakmem.h" ] && [ -f "$1/fuzz/BUILD" ]; }
here=$(cd "$(dirname "$0")" && pwd)
if is_tree "$here/.."; then
  SRC_DIR=$(cd "$here/.." && pwd)
elif [ -n "${SRC:-}" ] && is_tree "$SRC/hakmem"; then
  SRC_DIR=$SRC/hakmem
elif is_tree "$PWD"; then
  SRC_DIR=$PWD
else
  echo "build.sh: no hakmem tree (looked in $here/.., \$SRC/hakmem, $PWD)" >&2
  exit 1
fi
cd "$SRC_DIR"

: "${CC:=clang}" "${CXX:=clang++}" "${CFLAGS:=-O1 -fno-omit-frame-pointer -gline-tables-only -fsanitize=address,fuzzer-no-link}"
: "${LIB_FUZZING_ENGINE:=-fsanitize=fuzzer}" "${OUT:=$SRC_DIR/fuzz-out/oss}"
mkdir -p "$OUT"
WORK=${WORK:-$(mktemp -d)}
obj_dir=$WORK/hakmem-obj
rm -rf "$obj_dir"
mkdir -p "$obj_dir"

# Bazel's language flags (copts.bzl), without the warnings.  The library:
# HAK_COPTS; the checker and the harnesses: HAK_TEST_COPTS (-fno-builtin).
std_flags=(-std=gnu11 -I. -ftls-model=initial-exec)
lib_flags=(-fno-builtin-malloc -fno-builtin-free -fno-builtin-calloc -fno-builtin-realloc)
test_flags=(-fno-builtin)
# The checker is not what is fuzzed: no coverage feedback from it (as
# //verify:trace under --config=libfuzzer).
checker_flags=()
if [[ " $CFLAGS " == *fuzzer-no-link* ]]; then
  # shellcheck disable=SC2054  # one flag, its value a comma-separated list
  checker_flags=(-fno-sanitize-coverage=inline-8bit-counters,indirect-calls,trace-cmp,pc-table)
fi

# Target names from fuzz/BUILD's TARGETS list (as fuzz/smoke.sh reads it).
targets=$(sed -n '/^TARGETS = \[/,/^\]/s/^    "\(.*\)",$/\1/p' fuzz/BUILD)
[ -n "$targets" ] || { echo "build.sh: no TARGETS in fuzz/BUILD" >&2; exit 1; }

objs=()
for f in src/*.c; do
  [ "$f" = src/shim.c ] && continue # the malloc symbols: a fuzzer must not replace malloc
  o="$obj_dir/$(echo "$f" | tr / _).o"
  # shellcheck disable=SC2086  # CFLAGS is a list of words
  $CC $CFLAGS "${std_flags[@]}" "${lib_flags[@]}" -c "$f" -o "$o"
  objs+=("$o")
done
for f in verify/shadow_heap.c verify/trace.c; do
  o="$obj_dir/$(echo "$f" | tr / _).o"
  # shellcheck disable=SC2086
  $CC $CFLAGS "${std_flags[@]}" "${test_flags[@]}" "${checker_flags[@]}" -c "$f" -o "$o"
  objs+=("$o")
done

for t in $targets; do
  # shellcheck disable=SC2086
  $CC $CFLAGS "${std_flags[@]}" "${test_flags[@]}" -c "fuzz/$t.c" -o "$obj_dir/$t.o"
  # Linked by $CXX, as OSS-Fuzz requires even for C (the engine is C++).
  # shellcheck disable=SC2086
  $CXX $CFLAGS "$obj_dir/$t.o" "${objs[@]}" $LIB_FUZZING_ENGINE -lpthread -lm -o "$OUT/$t"
  # Seed corpus: the committed corpus and the regressions (inputs that once
  # crashed hakmem, replayed by //fuzz:<target>_replay).
  rm -f "$OUT/${t}_seed_corpus.zip"
  seeds=()
  for d in "fuzz/corpus/$t" "fuzz/regressions/$t"; do
    [ -d "$d" ] || continue
    for s in "$d"/*; do
      [ -f "$s" ] && [ "$s" != "fuzz/corpus/$t/$t.dict" ] && seeds+=("$s")
    done
  done
  # -j drops the directories; a regression named like a corpus file would
  # collide, so zip refuses it (no regression is named seed-*).
  [ ${#seeds[@]} -gt 0 ] && zip -q -j "$OUT/${t}_seed_corpus.zip" "${seeds[@]}"
  if [ -f "fuzz/corpus/$t/$t.dict" ]; then cp "fuzz/corpus/$t/$t.dict" "$OUT/$t.dict"; fi
done
echo "build.sh: built $(echo "$targets" | wc -w) targets into $OUT"
