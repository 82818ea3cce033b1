#!/bin/bash -eu
# OSS-Fuzz / ClusterFuzzLite build script: every hakmem fuzz target, built
# with the engine's $CC/$CFLAGS and linked with $LIB_FUZZING_ENGINE into
# $OUT, with its seed corpus (zip) and dictionary.
SRC_DIR=${SRC:-$(cd "$(dirname "$0")/../.." && pwd)}
[ -d "$SRC_DIR/src" ] || SRC_DIR=$SRC/hakmem
cd "$SRC_DIR"
: "${CC:=clang}" "${CFLAGS:=}" "${LIB_FUZZING_ENGINE:=-fsanitize=fuzzer}" "${OUT:=$PWD/fuzz-out/oss}"
mkdir -p "$OUT"
WORK=${WORK:-$(mktemp -d)}
lib_srcs=$(ls src/*.c | grep -v shim.c)
objs=()
for f in $lib_srcs verify/shadow_heap.c verify/trace.c; do
  o="$WORK/$(echo "$f" | tr / _).o"
  $CC $CFLAGS -std=gnu11 -I. -ftls-model=initial-exec -fno-builtin -c "$f" -o "$o"
  objs+=("$o")
done
targets=$(sed -n 's/^    "\(.*_fuzzer\)",$/\1/p' fuzz/BUILD)
for t in $targets; do
  $CC $CFLAGS -std=gnu11 -I. -fno-builtin -c "fuzz/$t.c" -o "$WORK/$t.o"
  # link with the C++ driver when the engine needs it ($CXX), else $CC
  ${CXX:-$CC} $CFLAGS "$WORK/$t.o" "${objs[@]}" $LIB_FUZZING_ENGINE -lpthread -lm -o "$OUT/$t"
  (cd "fuzz/corpus/$t" && zip -q -j "$OUT/${t}_seed_corpus.zip" seed-* 2>/dev/null || true)
  [ -f "fuzz/corpus/$t/$t.dict" ] && cp "fuzz/corpus/$t/$t.dict" "$OUT/$t.dict"
done
echo "built $(echo $targets | wc -w) targets into $OUT"
