#!/bin/sh
# tests/gpu/test_gpu_train.sh - whole training runs on the GPU against the CPU and against
# themselves (TAP). Skips (1..0 # SKIP) without a GPU or without a CUDA build. Run from the build
# tree after `make`; tests/gpu/run.sh runs it on the GPU machine.
#
#  - schedules/tiny.ini, 20 steps: CUDA fp32 against the CPU backend (loss of every step),
#    CUDA bf16 against the CPU (bf16 tolerance), CUDA bf16 twice (byte-identical log.tsv);
#  - a checkpoint written on the GPU resumes on the CPU and the other way round, and the
#    resumed run continues the uninterrupted one;
#  - with two GPUs: dp = 2 and ep = 2 against one GPU with the same global batch, and a
#    two-GPU bf16 run twice (byte-identical); a NaN in one rank's gradient, found by the
#    overlapped step's checks on the GPU, named with its rank, tensor and step.
set -u
top=${top_builddir:-$PWD}
src=${top_srcdir:-$top}
train=$top/bin/moe-train
nvidia-smi -L >/dev/null 2>&1 || { echo "1..0 # SKIP no GPU"; exit 0; }
grep -q '^#define MK_HAVE_CUDA 1' "$top/config.h" || { echo "1..0 # SKIP not built with CUDA"; exit 0; }
ngpu=$(nvidia-smi -L | wc -l)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
mpirun_=${MPIEXEC:-mpirun}
n=0
fails=0
ok() { n=$((n + 1)); echo "ok $n - $*"; }
notok() { n=$((n + 1)); fails=$((fails + 1)); echo "not ok $n - $*"; }
check() { if eval "$1"; then ok "$2"; else notok "$2"; fi; }

"$top/bin/moe-shard" -q -o "$tmp/data" -d code="$src/data/demo/code.txt" \
    -d english="$src/data/demo/english.txt" -d math="$src/data/demo/math.txt" >"$tmp/shard.log" 2>&1 ||
  { echo "Bail out! moe-shard failed: $(tail -3 "$tmp/shard.log")"; exit 1; }

common="--set data.path=$tmp/data --set train.steps=20 --set train.warmup=2 --set log.every=0 --set eval.every=0 --set ckpt.every=0"
run() { # name [extra args...]: a run in $tmp/$name; its losses in $tmp/$name.loss
  name=$1; shift
  "$train" --schedule "$src/schedules/tiny.ini" $common --set run.dir="$tmp/$name" "$@" >"$tmp/$name.out" 2>&1
  rc=$?
  [ $rc -eq 0 ] || { echo "# $name failed (exit $rc):"; tail -5 "$tmp/$name.out" | sed 's/^/#   /'; }
  tail -n +2 "$tmp/$name/log.tsv" 2>/dev/null | cut -f1,2 >"$tmp/$name.loss"
  return $rc
}
# max relative difference of the loss columns of two runs (same steps)
reldiff() {
  paste "$tmp/$1.loss" "$tmp/$2.loss" | awk -v lim="$3" '
    { if ($1 != $3) bad = 1; d = $2 - $4; if (d < 0) d = -d; r = d / ($4 < 0 ? -$4 : $4); if (r > m) m = r; c++ }
    END { printf "%.3g", m; exit (bad || c == 0 || m > lim) ? 1 : 0 }'
}
echo "1..14"
run cpu --set train.backend=cpu; run gpu32 --set train.backend=cuda --set train.precision=fp32
d=$(reldiff gpu32 cpu 1e-4); check '[ $? -eq 0 ]' "tiny.ini 20 steps: CUDA fp32 loss of every step = CPU (max rel diff $d < 1e-4)"
run bf1 --set train.backend=cuda; run bf2 --set train.backend=cuda
d=$(reldiff bf1 cpu 3e-2); check '[ $? -eq 0 ]' "tiny.ini 20 steps: CUDA bf16 loss of every step near the CPU (max rel diff $d < 3e-2)"
check 'cmp -s "$tmp/bf1/log.tsv" "$tmp/bf2/log.tsv"' "CUDA bf16 twice: byte-identical log.tsv (loss, LBL, MaxVio, grad norm at %.9g)"
check 'grep -q "MFU" "$tmp/bf1.out" || grep -q "MFU against" "$tmp/bf1.out"' "moe-train on CUDA names its MFU peak"

# Checkpoint interop: a 20-step run that checkpoints at step 10 on one backend; its
# step-10 checkpoint resumed on the other backend must continue it (steps 11-20).
interop() { # from to: names of the backend settings
  from=$1; to=$2
  run "i$from" $3 --set ckpt.every=10 --set ckpt.keep=2
  mkdir -p "$tmp/i$from$to/ckpt"
  "$train" --schedule "$src/schedules/tiny.ini" $common --set run.dir="$tmp/i$from$to" $4 \
    --resume "$tmp/i$from/ckpt/step_00000010.h5" >"$tmp/i$from$to.out" 2>&1
  rc=$?
  grep -v '^step' "$tmp/i$from$to/log.tsv" 2>/dev/null | cut -f1,2 >"$tmp/i$from$to.loss"
  awk '$1 > 10' "$tmp/i$from.loss" >"$tmp/i${from}b.loss"
  return $rc
}
gpu32="--set train.backend=cuda --set train.precision=fp32"
interop g c "$gpu32" "--set train.backend=cpu"
check '[ $? -eq 0 ] && grep -q "resuming from" "$tmp/igc.out"' "a GPU checkpoint resumes on the CPU"
d=$(reldiff igc igb 1e-4); check '[ $? -eq 0 ]' "GPU steps 1-10 + CPU steps 11-20 = GPU steps 1-20 (max rel diff $d < 1e-4)"
interop c g "--set train.backend=cpu" "$gpu32"
check '[ $? -eq 0 ] && grep -q "resuming from" "$tmp/icg.out"' "a CPU checkpoint resumes on the GPU"
d=$(reldiff icg icb 1e-4); check '[ $? -eq 0 ]' "CPU steps 1-10 + GPU steps 11-20 = CPU steps 1-20 (max rel diff $d < 1e-4)"

if [ "$ngpu" -lt 2 ]; then
  for i in 1 2 3 4 5 6; do n=$((n + 1)); echo "ok $n # SKIP one GPU only"; done
  exit $((fails > 0))
fi
# Two GPUs, the same global batch (tiny.ini: 8 sequences x 2 micro-steps on one rank).
run1() { name=$1; shift; run "$name" --set train.backend=cuda --set train.precision=fp32 "$@"; }
runmpi() { # name args: 2 ranks with micro_batch 4
  name=$1; shift
  $mpirun_ -n 2 --bind-to none "$train" --schedule "$src/schedules/tiny.ini" $common \
    --set run.dir="$tmp/$name" --set train.backend=cuda --set train.micro_batch=4 "$@" >"$tmp/$name.out" 2>&1
  rc=$?
  [ $rc -eq 0 ] || { echo "# $name failed (exit $rc):"; tail -5 "$tmp/$name.out" | sed 's/^/#   /'; }
  tail -n +2 "$tmp/$name/log.tsv" 2>/dev/null | cut -f1,2 >"$tmp/$name.loss"
  return $rc
}
runmpi dp2 --set train.precision=fp32
check 'grep -q "gradients over nccl" "$tmp/dp2.out"' "2 ranks on 2 GPUs sum gradients over NCCL"
d=$(reldiff dp2 gpu32 1e-4); check '[ $? -eq 0 ]' "2 GPUs dp = 2 = 1 GPU, same global batch (max rel diff $d < 1e-4)"
runmpi ep2 --set train.precision=fp32 --set parallel.ep=2
d=$(reldiff ep2 gpu32 1e-4); check '[ $? -eq 0 ]' "2 GPUs ep = 2 = 1 GPU (max rel diff $d < 1e-4)"
runmpi bfa; runmpi bfb
check 'cmp -s "$tmp/bfa/log.tsv" "$tmp/bfb/log.tsv"' "2 GPUs bf16 twice: byte-identical log.tsv"
runmpi ep2b --set parallel.ep=2; runmpi ep2c --set parallel.ep=2
check 'cmp -s "$tmp/ep2b/log.tsv" "$tmp/ep2c/log.tsv"' "2 GPUs bf16 ep = 2 twice: byte-identical log.tsv"
# The overlapped step checks each layer's gradient on the device ahead of its sum and reads
# the flags after the sums: the rank that made the NaN still names itself and the tensor.
# The job is bounded (parallel.timeout, and timeout around mpirun), and no rank of it may
# outlive it: the benchmark that follows on the same GPUs would crawl.
start=$(date +%s)
MOEKIT_TEST_NAN_RANK=1 MOEKIT_TEST_NAN_STEP=3 MOEKIT_TEST_NAN_WHERE=grad \
  timeout -k 10 180 $mpirun_ -n 2 --bind-to none -x MOEKIT_TEST_NAN_RANK -x MOEKIT_TEST_NAN_STEP \
  -x MOEKIT_TEST_NAN_WHERE "$train" --schedule "$src/schedules/tiny.ini" $common --set run.dir="$tmp/nan2" \
  --set train.backend=cuda --set train.micro_batch=4 --set parallel.timeout=60 >"$tmp/nan2.out" 2>&1
rc=$?
el=$(( $(date +%s) - start ))
pkill -KILL -f "run.dir=$tmp/nan2" 2>/dev/null && echo "# nan2: a rank outlived its job; killed"
msg=$(grep -m1 'the gradient of' "$tmp/nan2.out" | sed 's/^moekit: error: //')
check '[ $rc -ne 0 ] && grep -q "gradients over nccl" "$tmp/nan2.out" && grep -q "rank 1: step 3: the gradient of layers\.0\.w1 holds nan (element [0-9]*, expert [0-9]*) before the all-reduce" "$tmp/nan2.out"' \
  "2 GPUs: a NaN in rank 1's gradient at step 3 stops the run (exit $rc after ${el}s): $msg"
exit $((fails > 0))
