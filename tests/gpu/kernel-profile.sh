#!/bin/sh
# tests/gpu/kernel-profile.sh - kernel-by-kernel time of one bench-s.ini training step.
#
#   sh tests/gpu/kernel-profile.sh OUTDIR
#
# Runs moe-train (built in this tree with --with-cuda) for three steps of
# schedules/bench-s.ini on one GPU under Nsight Compute, timing every kernel alone
# (gpu__time_duration; the clocks and caches left as they are), and writes OUTDIR/ncu.csv.gz
# (every launch) and OUTDIR/kernel-profile.txt: the third step's kernels, summed by name,
# largest first (tests/gpu/kernel_profile.py). The op-by-op profile (MOEKIT_PROFILE=1)
# says which op; this says which kernel inside it.
set -u
out=${1:?usage: kernel-profile.sh OUTDIR}
top=${top_builddir:-$PWD}
src=${top_srcdir:-$top}
tmp=$(mktemp -d)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=4 NCCL_NVLS_ENABLE=0
"$top/bin/moe-shard" -q -o "$tmp/data" -d code="$src/data/demo/code.txt" \
  -d english="$src/data/demo/english.txt" || exit 1
ncu --clock-control none --cache-control none --metrics gpu__time_duration.sum --csv --page raw --print-units base \
  --log-file "$tmp/ncu.csv" \
  "$top/bin/moe-train" --schedule "$src/schedules/bench-s.ini" --set data.path="$tmp/data" \
  --set train.steps=3 --set train.warmup=1 --set log.every=1 --set ckpt.every=0 --set eval.every=0 \
  --set train.backend=cuda --set parallel.ep=1 --set run.dir="$tmp/run" >"$out/kernel-profile-train.txt" 2>&1 ||
  { tail -20 "$out/kernel-profile-train.txt"; exit 1; }
gzip -c "$tmp/ncu.csv" >"$out/ncu.csv.gz"
python3 "$src/tests/gpu/kernel_profile.py" "$tmp/ncu.csv" >"$out/kernel-profile.txt"
cat "$out/kernel-profile.txt"
