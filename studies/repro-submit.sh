#!/bin/bash
# studies/repro-submit.sh - the CPU reproduction study on a Slurm cluster: one moe-submit
# chain (shard -> train -> report) per schedule of schedules/repro/cpu-*.ini and seed, with
# the same seeds and run directories as studies/repro-cpu.sh (the dataset is sharded here
# first when it is missing, so that the shard jobs are skipped). Extra arguments go to every
# moe-submit (e.g. --dry-run, --partition P, --account A, --time 00:30:00).
#
#   studies/repro-submit.sh --dry-run          # print the sbatch commands, submit nothing
#   studies/repro-submit.sh --partition cpu    # submit; then, when all jobs have finished:
#   REPORT_ONLY=1 studies/repro-cpu.sh         # the side-by-side reports and results.md
#
# Each chain trains on 1 rank (the schedules' batch split: micro_batch x grad_accum = 64).
# With more ranks per job (--ntasks-per-node N) also pass --set train.grad_accum=GA/N so
# that the global batch stays 64 sequences.
set -euo pipefail
cd "$(dirname "$0")/.."
SEEDS=${SEEDS:-"1234 4321"}
RUNS=${RUNS:-"global-exact global micro-b1 micro-b4 micro-b16"}
OUT=${OUT:-runs/repro/cpu}
DATA=runs/repro/dataset
if [ ! -f "$DATA/manifest.json" ]; then # shard once here (0.5 s), not in ten racing jobs
  dom=()
  for f in data/demo/*.txt; do dom+=(--domain "$(basename "$f" .txt)=$f"); done
  mkdir -p "$(dirname "$DATA")"
  ./bin/moe-shard "${dom[@]}" -o "$DATA"
fi
for seed in $SEEDS; do
  for name in $RUNS; do
    echo "# $name, seed $seed"
    ./bin/moe-submit "schedules/repro/cpu-$name.ini" \
      --set "train.seed=$seed" --set "run.dir=$OUT/$name-s$seed" "$@"
  done
done
