#!/usr/bin/env bash
# Minimizes an accumulated corpus in place:  fuzz/minimize.sh CORPUS_DIR
# For every target with a folder CORPUS_DIR/<target>, libFuzzer's -merge=1
# keeps a small set of inputs that reaches the same coverage (the committed
# seeds counted, so inputs reaching nothing more than they do go); the folder is
# replaced only when the merge succeeded.  ci/nightly.sh runs it once a week
# (CORPUS_DIR/.minimized is the stamp).
set -euo pipefail
cd "$(dirname "$0")/.."
corpus=${1:?usage: fuzz/minimize.sh CORPUS_DIR}
[ -d "$corpus" ] || { echo "minimize: no folder $corpus" >&2; exit 2; }
bazel build --config=libfuzzer //fuzz:all >/dev/null 2>&1 || { echo "minimize: the libFuzzer build failed" >&2; exit 1; }
bin=$(bazel info --config=libfuzzer bazel-bin)
targets=$(sed -n '/^TARGETS = \[/,/^\]/s/^    "\(.*\)",$/\1/p' fuzz/BUILD)
for t in $targets; do
  [ -d "$corpus/$t" ] || continue
  before=$(find "$corpus/$t" -type f | wc -l)
  new=$(mktemp -d)
  # the committed seeds start the merged folder, so an input is kept only
  # if it reaches what they do not; they are taken out again afterwards
  # (they live in git)
  cp fuzz/corpus/"$t"/seed-* "$new"/ 2>/dev/null || true
  if "$bin/fuzz/$t" -merge=1 -timeout=20 -rss_limit_mb=4096 "$new" "$corpus/$t" >"$new.log" 2>&1; then
    rm -f "$new"/seed-*
    rm -rf "$corpus/$t" && mv "$new" "$corpus/$t"
    echo "minimize: $t: $before -> $(find "$corpus/$t" -type f | wc -l) inputs"
  else
    echo "minimize: $t: merge failed (corpus kept): $(tail -3 "$new.log" | tr '\n' ' ')" >&2
    rm -rf "$new"
    rm -f "$new.log"
    exit 1
  fi
  rm -f "$new.log"
done
touch "$corpus/.minimized"
