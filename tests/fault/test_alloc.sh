#!/bin/sh
# test_alloc.sh - T5: runs tests/fault/alloc_loop (the allocation-failure loop over the
# readers) on a byte dataset and a BPE ranks file made by the real moe-shard, and a JSONL file.
: "${top_builddir:=.}" "${srcdir:=.}"
tmp=$(mktemp -d) || exit 99
trap 'rm -rf "$tmp"' EXIT
export OMP_NUM_THREADS=1
head -c 60000 "$srcdir/data/demo/english.txt" >"$tmp/en.txt"
head -c 30000 "$srcdir/data/demo/code.txt" >"$tmp/code.txt"
printf '{"text": "first \\u00e9 document"}\n{"text": "second one", "id": 2}\n{"text": "x\\ty\\"z"}\n' >"$tmp/corpus.jsonl"
if ! "$top_builddir/bin/moe-shard" -q -d english="$tmp/en.txt" -d code="$tmp/code.txt" -o "$tmp/ds" >"$tmp/shard.out" 2>&1 ||
   ! "$top_builddir/bin/moe-shard" -q -d english="$tmp/en.txt" --bpe-train 300 -o "$tmp/bpe" >>"$tmp/shard.out" 2>&1; then
  sed 's/^/# /' "$tmp/shard.out"; echo "not ok 1 - moe-shard made the inputs"; echo "1..1"; exit 1
fi
# alloc_loop starts no MPI, so LeakSanitizer stays on for it in sanitizer builds
ASAN_OPTIONS=$(echo "${ASAN_OPTIONS:-}" | sed 's/detect_leaks=0//'); export ASAN_OPTIONS
exec "$top_builddir/tests/fault/alloc_loop" "$tmp"
