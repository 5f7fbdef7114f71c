#!/bin/bash
# studies/repro-cpu.sh - the CPU reproduction study of docs/reproduction.md, in one command.
#
# Global-batch against micro-batch load-balancing loss ("Demons in the Detail", Qiu et al.,
# 2025, arXiv 2501.11873) with moekit's own programs:
#   1. moe-shard: the five-domain demo corpus (data/demo/*.txt) -> runs/repro/dataset, with a
#      held-out split per domain (skipped when the dataset exists);
#   2. moe-train: every schedule of schedules/repro/cpu-*.ini for each seed (--set train.seed,
#      --set run.dir), JOBS runs at a time, each on NP ranks x THREADS threads;
#   3. moe-report: the runs of each seed side by side (final evaluation pass), and the
#      micro-b1 / global pair of the first seed for the figures;
#   4. studies/repro_table.py: the results tables (per-domain perplexity, specialization
#      metrics, mean and spread over the seeds) from moe-report's CSVs -> OUT/results.md.
#
# Run from the repository root after building moekit:   studies/repro-cpu.sh
# About 15 minutes on 2 free cores with the defaults. Environment knobs:
#   SEEDS="1234 4321"  seeds (train.seed), one run of every schedule per seed
#   RUNS="..."         schedule names (default: global-exact global micro-b1 micro-b4 micro-b16)
#   JOBS=2             runs trained at the same time
#   NP=1 THREADS=1     MPI ranks per run (NP > 1 uses mpirun) and CPU threads per rank
#   STEPS=N            override train.steps (eval.every = N/4, ckpt.every = N); for smoke tests
#   OUT=runs/repro/cpu where the runs, reports and results.md go
#   REPORT_ONLY=1      skip steps 1-2: report and tabulate runs already in OUT (e.g. after
#                      studies/repro-submit.sh on a Slurm cluster)
set -euo pipefail
cd "$(dirname "$0")/.."

SEEDS=${SEEDS:-"1234 4321"}
RUNS=${RUNS:-"global-exact global micro-b1 micro-b4 micro-b16"}
JOBS=${JOBS:-2}
NP=${NP:-1}
THREADS=${THREADS:-1}
OUT=${OUT:-runs/repro/cpu}
DATA=runs/repro/dataset
STEPS=${STEPS:-}
REPORT_ONLY=${REPORT_ONLY:-0}

for p in bin/moe-shard bin/moe-train analysis/moe-report; do
  [ -x "$p" ] || { echo "repro-cpu: $p is not built (./autogen.sh && ./configure && make)" >&2; exit 1; }
done
command -v python3 >/dev/null || { echo "repro-cpu: python3 is needed for the results table" >&2; exit 1; }

t0=$(date +%s)
echo "repro-cpu: $(date -u '+%F %T') UTC; seeds: $SEEDS; runs: $RUNS; $JOBS at a time, $NP rank(s) x $THREADS thread(s)"

# 1. data
if [ "$REPORT_ONLY" = 1 ]; then
  echo "repro-cpu: REPORT_ONLY=1: reporting the runs in $OUT"
elif [ ! -f "$DATA/manifest.json" ]; then
  echo "repro-cpu: sharding data/demo/*.txt into $DATA"
  mkdir -p "$(dirname "$DATA")"
  set --
  for f in data/demo/*.txt; do set -- "$@" --domain "$(basename "$f" .txt)=$f"; done
  ./bin/moe-shard "$@" -o "$DATA"
fi

# 2. training
export OMP_NUM_THREADS=$THREADS
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
mkdir -p "$OUT"
extra=()
if [ -n "$STEPS" ]; then
  ev=$(( STEPS / 4 > 0 ? STEPS / 4 : 1 ))
  wu=$(( STEPS / 20 ))
  extra=(--set "train.steps=$STEPS" --set "train.warmup=$wu" --set "eval.every=$ev" --set "ckpt.every=$STEPS"
         --set "log.every=$(( STEPS / 60 > 0 ? STEPS / 60 : 1 ))")
fi

train_one() { # name seed
  local name=$1 seed=$2 dir="$OUT/$1-s$2" t1 rc=0
  rm -rf "$dir"
  t1=$(date +%s)
  local cmd=(./bin/moe-train --schedule "schedules/repro/cpu-$name.ini" --set "train.seed=$seed"
             --set "run.dir=$dir" --set "train.threads=$THREADS" "${extra[@]}")
  if [ "$NP" -gt 1 ]; then # same global batch on NP ranks: grad_accum / NP micro-steps per rank
    local ga
    ga=$(sed -n 's/^grad_accum *= *\([0-9]*\).*/\1/p' "schedules/repro/cpu-$name.ini")
    [ $(( ga % NP )) = 0 ] || { echo "repro-cpu: NP=$NP does not divide grad_accum $ga of $name" >&2; return 2; }
    cmd=(mpirun -n "$NP" --bind-to none "${cmd[@]}" --set "train.grad_accum=$(( ga / NP ))")
  fi
  "${cmd[@]}" > "$OUT/$name-s$seed.log" 2>&1 || rc=$?
  echo "$rc" > "$OUT/$name-s$seed.rc"
  echo "repro-cpu: $name seed $seed: exit $rc after $(( $(date +%s) - t1 )) s; $(tail -n 1 "$OUT/$name-s$seed.log")"
  return $rc
}

if [ "$REPORT_ONLY" != 1 ]; then
  rm -f "$OUT"/*.rc
  for seed in $SEEDS; do
    for name in $RUNS; do
      [ -f "schedules/repro/cpu-$name.ini" ] || { echo "repro-cpu: no schedules/repro/cpu-$name.ini" >&2; exit 1; }
      while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
      train_one "$name" "$seed" &
    done
  done
  wait || true
  for seed in $SEEDS; do
    for name in $RUNS; do
      [ "$(cat "$OUT/$name-s$seed.rc" 2>/dev/null)" = 0 ] ||
        { echo "repro-cpu: run $name seed $seed failed; see $OUT/$name-s$seed.log" >&2; exit 1; }
    done
  done
fi
t_train=$(( $(date +%s) - t0 ))

# 3. reports: the final evaluation pass of each run (held-out tokens of every domain)
reports=()
for seed in $SEEDS; do
  dirs=()
  for name in $RUNS; do dirs+=("$OUT/$name-s$seed"); done
  ./analysis/moe-report "${dirs[@]}" -o "$OUT/report-s$seed" --window last:1 > "$OUT/report-s$seed.log"
  reports+=("$OUT/report-s$seed")
done
first=${SEEDS%% *}
if [[ " $RUNS " == *" micro-b1 "* && " $RUNS " == *" global "* ]]; then
  ./analysis/moe-report "$OUT/micro-b1-s$first" "$OUT/global-s$first" -o "$OUT/report-pair" \
    --window last:1 > "$OUT/report-pair.log"
fi

# 4. tables
python3 studies/repro_table.py --order "micro-b1 micro-b4 micro-b16 global global-exact $RUNS" --out "$OUT/results.md" "${reports[@]}" > /dev/null
t_all=$(( $(date +%s) - t0 ))
if [ "$REPORT_ONLY" != 1 ]; then
  {
    echo
    echo "Wall time: ${t_all} s in all (training ${t_train} s); seeds $SEEDS; $JOBS runs at a time, $NP rank(s) x $THREADS thread(s) each; $(nproc --all) cores; $(./bin/moe-train --version 2>&1 | head -n 1)."
  } >> "$OUT/results.md"
fi
cat "$OUT/results.md"
echo "repro-cpu: done in ${t_all} s (training ${t_train} s); results in $OUT/results.md, reports in $OUT/report-s*/"
