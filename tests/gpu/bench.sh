#!/bin/sh
# tests/gpu/bench.sh - schedules/bench-s.ini throughput on this machine's GPUs, and the
# PyTorch baseline of the same model and step (tests/gpu/torch_moe_bench.py).
#
#   sh tests/gpu/bench.sh OUTFILE [STEPS]
#
# Runs moe-train (built in this tree with --with-cuda) on the demo corpus, byte-level
# (throughput does not depend on the tokens), and writes a Markdown table to OUTFILE:
# 1 GPU micro and global LBL, 2 GPUs dp = 2 micro and global (and ep = 2) when two GPUs
# are visible, GPU 0's clocks during the first run, and op-by-op profiles of one GPU
# (MOEKIT_PROFILE=timeline, then MOEKIT_PROFILE=1). tok/s is the rate
# of the last logged window (steps after the first 10), MFU against 989 TFLOP/s.
set -u
outfile=${1:?usage: bench.sh OUTFILE [STEPS]}
steps=${2:-40}
top=${top_builddir:-$PWD}
src=${top_srcdir:-$top}
tmp=${BENCH_TMP:-$(mktemp -d)}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=4 NCCL_NVLS_ENABLE=0
ngpu=$(nvidia-smi -L 2>/dev/null | wc -l)
[ -d "$tmp/data" ] || "$top/bin/moe-shard" -q -o "$tmp/data" -d code="$src/data/demo/code.txt" \
  -d english="$src/data/demo/english.txt" -d german="$src/data/demo/german.txt" \
  -d math="$src/data/demo/math.txt" -d structured="$src/data/demo/structured.txt" || exit 1
common="--set data.path=$tmp/data --set train.steps=$steps --set train.warmup=5 --set log.every=10 --set ckpt.every=0 --set eval.every=0 --set train.backend=cuda"
record() { # label ranks output-file exit-status: one table row from moe-train's last step line
  last=$(grep '^step' "$3" | tail -1)
  tps=$(echo "$last" | sed -n 's/.*| \([0-9]*\) tok\/s.*/\1/p')
  mfu=$(echo "$last" | sed -n 's/.*MFU \([0-9.]*\)%.*/\1/p')
  a2a=$(sed -n 's/^expert all-to-all: \([0-9.]*\) ms per step.*(\([0-9.]*\)%.*/\1 ms (\2%)/p' "$3")
  if [ "$4" -ne 0 ] || [ -z "$tps" ]; then
    echo "| $1 | $2 | failed (exit $4): $(tail -1 "$3" | tr '|' '/') | | | |" >>"$outfile"
    tail -5 "$3" >&2
  else
    echo "| $1 | $2 | $tps | $((tps / $2)) | $mfu% | ${a2a:--} |" >>"$outfile"
  fi
  echo "$1: $last" >&2
}
bench() { # label ranks args...
  label=$1; np=$2; shift 2
  dir="$tmp/run-$(echo "$label" | tr -c 'a-z0-9' _)"
  if [ "$np" -eq 1 ]; then
    "$top/bin/moe-train" --schedule "$src/schedules/bench-s.ini" $common --set run.dir="$dir" "$@" >"$dir.out" 2>&1
  else
    mpirun -n "$np" --bind-to none "$top/bin/moe-train" --schedule "$src/schedules/bench-s.ini" $common \
      --set run.dir="$dir" "$@" >"$dir.out" 2>&1
  fi
  record "$label" "$np" "$dir.out" $?
}
{
  echo "### schedules/bench-s.ini, $(date -u +%Y-%m-%d), $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1) x $ngpu"
  echo
  echo "moe-train, $steps steps of 16 x 1024 tokens per GPU, bf16 GEMMs (fp32 storage), byte-level demo corpus;"
  echo "tok/s of the last logged window (steps $((steps - 9))-$steps); MFU = tok/s x $(printf '%s' "Megatron FLOPs/token") / (GPUs x 989 TFLOP/s)."
  echo
  echo "| run | GPUs | tokens/s | tokens/s per GPU | MFU | expert all-to-all |"
  echo "|---|---|---|---|---|---|"
} >>"$outfile"
# GPU 0's clocks, power and throttle reasons, sampled through the first run: whether the
# queue's time per step (the timeline profile below) is idle time or slower clocks.
smi_fields=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,utilization.gpu
smi_pid=
for reason in clocks_event_reasons.active clocks_throttle_reasons.active; do
  nvidia-smi --query-gpu=$smi_fields,$reason --format=csv,noheader,nounits -i 0 >/dev/null 2>&1 || continue
  nvidia-smi --query-gpu=$smi_fields,$reason --format=csv,noheader,nounits -i 0 -lms 200 >"$tmp/smi.csv" 2>/dev/null &
  smi_pid=$!
  break
done
bench "1 GPU, lbl micro" 1 --set parallel.ep=1 --set lbl.mode=micro
[ -n "$smi_pid" ] && kill "$smi_pid" 2>/dev/null && wait "$smi_pid" 2>/dev/null
# MOEKIT_BENCH_AB="VAR=VALUE[,VAR=VALUE...] ...": the first run again with each setting,
# then without, in turn, so a change is measured against the build it replaces on the same
# host (runs of one build spread by about 2%). MOEKIT_BENCH_AB_GPUS=N makes these runs
# data-parallel over N GPUs (lbl micro), with a plain one-GPU run first for the ratio.
abn=${MOEKIT_BENCH_AB_GPUS:-1}
[ "$abn" -le "$ngpu" ] || abn=1
ablabel="1 GPU"; [ "$abn" -gt 1 ] && ablabel="$abn GPUs dp=$abn"
# (this one with NCCL's start-up report, for the channels, so CTAs, its collectives use)
[ -n "${MOEKIT_BENCH_AB:-}" ] && [ "$abn" -gt 1 ] && (export NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,TUNING
  bench "$ablabel, lbl micro (first)" $abn --set parallel.ep=1 --set lbl.mode=micro)
for ab in ${MOEKIT_BENCH_AB:-}; do
  (for kv in $(echo "$ab" | tr ',' ' '); do export "$kv"; done
   bench "$ablabel, lbl micro, $ab" $abn --set parallel.ep=1 --set lbl.mode=micro)
  bench "$ablabel, lbl micro (again)" $abn --set parallel.ep=1 --set lbl.mode=micro
done
# MOEKIT_BENCH_UNFUSED=1: the same run without the backend's fused bf16 ops (expert GEMMs
# as one cuBLAS call per expert, the output layer as matmul + cross_entropy: the path before
# mk_grouped_gemm.cu), for comparison on the same host.
[ "${MOEKIT_BENCH_UNFUSED:-0}" = 1 ] && (export MOEKIT_CUDA_FUSED=0
  bench "1 GPU, lbl micro, unfused (MOEKIT_CUDA_FUSED=0)" 1 --set parallel.ep=1 --set lbl.mode=micro)
# MOEKIT_BENCH_SBATCH_ONLY=1: one GPU as the reference, then only the launches through
# jobs/train.sbatch below.
[ "${MOEKIT_BENCH_SBATCH_ONLY:-0}" = 1 ] || bench "1 GPU, lbl global" 1 --set parallel.ep=1 --set lbl.mode=global
for np in 2 4 8; do
  [ "${MOEKIT_BENCH_SBATCH_ONLY:-0}" = 1 ] && break
  [ "$ngpu" -ge $np ] || break
  bench "$np GPUs dp=$np, lbl micro" $np --set parallel.ep=1 --set lbl.mode=micro
  bench "$np GPUs dp=$np, lbl global" $np --set parallel.ep=1 --set lbl.mode=global
  bench "$np GPUs ep=2, lbl global" $np --set parallel.ep=2 --set lbl.mode=global
  [ $np -gt 2 ] && bench "$np GPUs ep=$np, lbl global" $np --set parallel.ep=$np --set lbl.mode=global
done
# The cluster path, rehearsed on one host: jobs/train.sbatch itself (its argv building,
# signal forwarding and exit handling) with an srun that starts the ranks with mpirun,
# since there is no Slurm here. The same ranks and settings as the largest mpirun runs.
sbatch_bench() { # label ranks settings...
  label=$1; np=$2; shift 2
  dir="$tmp/sb-$(echo "$label" | tr -c 'a-z0-9' _)"
  mkdir -p "$tmp/fakebin"
  cat >"$tmp/fakebin/srun" <<'SRUN'
#!/bin/sh
# srun stand-in: drop srun's own options, start the ranks with mpirun
while [ $# -gt 0 ]; do case $1 in --*) shift ;; *) break ;; esac; done
exec mpirun -n "$SLURM_NTASKS" --bind-to none "$@"
SRUN
  chmod +x "$tmp/fakebin/srun"
  sets="data.path=$tmp/data train.steps=$steps train.warmup=5 log.every=10 ckpt.every=0 eval.every=0 train.backend=cuda run.dir=$dir"
  for kv in "$@"; do sets="$sets $kv"; done
  PATH="$tmp/fakebin:$PATH" SLURM_JOB_ID=1 SLURM_NTASKS=$np SLURM_JOB_NUM_NODES=1 \
    MOEKIT_SCHEDULE="$src/schedules/bench-s.ini" MOEKIT_BIN="$top/bin" MOEKIT_SET="$sets" \
    sh "$src/jobs/train.sbatch" >"$dir.out" 2>&1
  record "$label" "$np" "$dir.out" $?
  echo "$label: $(grep '^train.sbatch' "$dir.out" | head -1)" >&2
}
if [ "$ngpu" -ge 4 ] && [ "${MOEKIT_BENCH_SBATCH:-1}" != 0 ]; then
  np=$ngpu; [ "$np" -gt 8 ] && np=8
  sbatch_bench "$np GPUs dp=$np, lbl micro, via jobs/train.sbatch" $np parallel.ep=1 lbl.mode=micro
  sbatch_bench "$np GPUs dp=$np, lbl global, via jobs/train.sbatch" $np parallel.ep=1 lbl.mode=global
  sbatch_bench "$np GPUs ep=$np, lbl global, via jobs/train.sbatch" $np parallel.ep=$np lbl.mode=global
fi
echo >>"$outfile"
nccl_ch=$(grep -h 'coll channels' "$tmp"/run-*.out 2>/dev/null | sed 's/^.*NCCL INFO //' | sort -u | head -2)
[ -n "$nccl_ch" ] && printf 'NCCL (rank start-up report): %s\n\n' "$nccl_ch" >>"$outfile"
# Busy samples only (utilization >= 90%): the steady state of training, not start-up.
[ -s "$tmp/smi.csv" ] && awk -F', *' '$6 >= 90 {
    n++; clk[n] = $2; pw += $4; if ($4 > pmax) pmax = $4; if ($5 > tmax) tmax = $5; r[$7]++
    if (min == "" || $2 < min) min = $2; if ($2 > max) max = $2; mem = $3 }
  END {
    if (!n) { print "GPU 0 during the first run: no busy samples\n"; exit }
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (clk[j] < clk[i]) { t = clk[i]; clk[i] = clk[j]; clk[j] = t }
    printf "GPU 0 during the first run (nvidia-smi every 0.2 s, %d samples at >= 90%% utilization): SM clock %d / %d / %d MHz (min / median / max), memory %d MHz, power %.0f W mean, %.0f W max, %d C max; clock event reasons:", n, min, clk[int((n + 1) / 2)], max, mem, pw / n, pmax, tmax
    for (k in r) printf " %s (%d samples)", k, r[k]
    print "\n"
  }' "$tmp/smi.csv" >>"$outfile"
# The same steps on the device's own clock, nothing synchronised (MOEKIT_PROFILE=timeline):
# where the queue idles between ops, and how long each op takes in a plain step.
# MOEKIT_BENCH_PROFILE=dp: the timeline of rank 0 of dp = 2 as well (the idle time before
# the update is the wait for the gradient sums; ops the sums run beside take longer);
# MOEKIT_BENCH_PROFILE=ep: that of ep = 2 (the idle time before the ops is the host's
# routing work and the all-to-alls); dp,ep: both. These leave out the synchronised profile
# of one GPU that the default (1) ends with.
for par in dp ep; do
  case ",${MOEKIT_BENCH_PROFILE:-1}," in *",$par,"*) ;; *) continue ;; esac
  [ "$ngpu" -ge 2 ] || continue
  ep=1; [ $par = ep ] && ep=2
  MOEKIT_PROFILE=timeline mpirun -n 2 --bind-to none "$top/bin/moe-train" --schedule "$src/schedules/bench-s.ini" \
    $common --set train.steps=12 --set parallel.ep=$ep --set run.dir="$tmp/timeline-$par" >"$tmp/timeline-$par.out" 2>&1
  {
    echo "Op-by-op timeline, rank 0 of 2 GPUs $par=2, 12 steps (device timestamps around each op, nothing synchronised):"
    echo
    echo '```'
    grep '^profile:' "$tmp/timeline-$par.out" | head -40
    grep '^expert all-to-all' "$tmp/timeline-$par.out" | tail -1
    grep '^step' "$tmp/timeline-$par.out" | tail -1
    echo '```'
    echo
  } >>"$outfile"
done
[ "${MOEKIT_BENCH_PROFILE:-1}" = 0 ] || {
  MOEKIT_PROFILE=timeline "$top/bin/moe-train" --schedule "$src/schedules/bench-s.ini" $common --set train.steps=12 \
    --set parallel.ep=1 --set run.dir="$tmp/timeline" >"$tmp/timeline.out" 2>&1
  echo "Op-by-op timeline, 1 GPU, 12 steps (device timestamps around each op, nothing synchronised):"
  echo
  echo '```'
  grep '^profile:' "$tmp/timeline.out" | head -40
  grep '^step' "$tmp/timeline.out" | tail -1
  echo '```'
  echo
} >>"$outfile"
[ "${MOEKIT_BENCH_PROFILE:-1}" = 1 ] && MOEKIT_PROFILE=1 "$top/bin/moe-train" --schedule "$src/schedules/bench-s.ini" $common --set train.steps=12 \
  --set parallel.ep=1 --set run.dir="$tmp/prof" >"$tmp/prof.out" 2>&1
[ "${MOEKIT_BENCH_PROFILE:-1}" = 1 ] && {
  echo "Op-by-op profile, 1 GPU, 12 steps (each op synchronised, so the total exceeds a plain step):"
  echo
  echo '```'
  grep '^profile:' "$tmp/prof.out" | head -40
  echo '```'
  echo
} >>"$outfile"
if [ -f "$src/tests/gpu/torch_moe_bench.py" ] && [ "${MOEKIT_BENCH_TORCH:-1}" != 0 ]; then
  py=${PYTHON_TORCH:-python3}
  "$py" "$src/tests/gpu/torch_moe_bench.py" --device cuda --steps 30 --warmup 10 >"$tmp/torch.out" 2>&1
  {
    echo "PyTorch baseline (tests/gpu/torch_moe_bench.py, same model and step):"
    echo
    echo '```'
    tail -5 "$tmp/torch.out"
    echo '```'
    echo
  } >>"$outfile"
fi
cat "$outfile"
