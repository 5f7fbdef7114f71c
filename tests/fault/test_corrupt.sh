#!/bin/sh
# test_corrupt.sh - T6: a checkpoint of the real moe-train and a dataset of the real
# moe-shard, damaged from outside by tests/fault/corrupt (see there for the rule). make check
# runs 200 tensor-data flips, 30 metadata flips, 30 truncations and 60 + 20 dataset cases;
# FAULT_FULL=1 runs the 1,000 / 100 / 100 and 500 + 100.
: "${top_builddir:=.}" "${srcdir:=.}"
tmp=$(mktemp -d) || exit 99
trap 'rm -rf "$tmp"' EXIT
export OMP_NUM_THREADS=1
if [ "${FAULT_FULL:-0}" = 1 ]; then set -- 1000 100 100 500 100; else set -- ${FAULT_SET:-200 30 30 60 20}; fi
"$top_builddir/bin/moe-train" --schedule "$srcdir/schedules/tiny.ini" --data "$srcdir/data/demo/english.txt" \
  --set train.steps=4 --set train.warmup=1 --set log.every=0 --set eval.every=0 --set model.d_model=32 \
  --set model.ffn=32 --set model.seq_len=32 --set train.micro_batch=4 --set ckpt.every=2 --set ckpt.keep=2 \
  --set train.threads=1 --set run.dir="$tmp" --quiet >"$tmp/train.out" 2>&1 &&
head -c 200000 "$srcdir/data/demo/english.txt" >"$tmp/en.txt" &&
"$top_builddir/bin/moe-shard" -q -d english="$tmp/en.txt" -o "$tmp/ds" >"$tmp/shard.out" 2>&1
if [ $? -ne 0 ]; then
  sed 's/^/# /' "$tmp/train.out" "$tmp/shard.out"; echo "not ok 1 - moe-train and moe-shard made the inputs"; echo "1..1"; exit 1
fi
exec "$top_builddir/tests/fault/corrupt" "$tmp" "$@" 11
