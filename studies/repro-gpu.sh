#!/bin/sh
# studies/repro-gpu.sh - the GPU-scale runs of the reproduction study (docs/reproduction.md):
# schedules/repro/gpu-micro.ini and gpu-global.ini, which differ only in lbl.mode, each on
# one GPU (both at once on a 2-GPU host, one after the other on one GPU).
#
#   sh studies/repro-gpu.sh [OUTDIR]        # from a tree built with ./configure --with-cuda
#
# REPRO_TIMEOUT=S stops each run after S seconds (the step rows and evaluation passes written
# until then stay readable); REPRO_SET adds settings (e.g. "--set ckpt.every=0").
# Shards data/demo/*.txt exactly as studies/repro-cpu.sh does, trains both runs, and copies
# each run's log.tsv, routing.h5, stdout and final checkpoint's /config into OUTDIR (default
# runs/repro/gpu), so moe-report can be run where cairo is (the lent GPU hosts have none):
#   ./analysis/moe-report OUTDIR/micro OUTDIR/global -o OUTDIR/report
set -u
out=${1:-runs/repro/gpu}
DATA=${REPRO_DATA:-runs/repro/dataset}
mkdir -p "$out"
if [ ! -f "$DATA/manifest.json" ]; then
  mkdir -p "$(dirname "$DATA")"
  set --
  for f in data/demo/*.txt; do set -- "$@" --domain "$(basename "$f" .txt)=$f"; done
  ./bin/moe-shard -q "$@" -o "$DATA" || exit 1
fi
ngpu=$(nvidia-smi -L 2>/dev/null | wc -l)
[ "$ngpu" -ge 1 ] || { echo "repro-gpu: no GPU" >&2; exit 1; }
run() { # mode gpu
  CUDA_VISIBLE_DEVICES=$2 timeout "${REPRO_TIMEOUT:-0}" ./bin/moe-train --schedule "schedules/repro/gpu-$1.ini" \
    --set data.path="$DATA" --set run.dir="$out/$1" ${REPRO_SET:-} >"$out/$1.out" 2>&1
  echo "repro-gpu: $1 exit $?: $(grep '^done' "$out/$1.out")"
}
t0=$(date +%s)
if [ "$ngpu" -ge 2 ]; then
  run micro 0 & run global 1 & wait
else
  run micro 0; run global 0
fi
echo "repro-gpu: both runs in $(( $(date +%s) - t0 )) s"
for m in micro global; do rm -rf "$out/$m/ckpt/"*.tmp* 2>/dev/null; done
# One archive of the small files (the device tool brings back a limited number of files).
tar -C "$out" -czf "$out/repro-gpu.tar.gz" micro.out global.out micro/log.tsv micro/routing.h5 \
  global/log.tsv global/routing.h5 2>/dev/null && echo "repro-gpu: $out/repro-gpu.tar.gz"
