#!/bin/sh
# test_nonfinite.sh - the NaN/Inf policy (T15 of docs/reliability.md). The test hook of
# lib/mk_trainer.c (MOEKIT_TEST_NAN_RANK/_STEP/_WHERE/_VALUE) makes one rank's loss, one
# expert's gradient or a layer's router logits NaN or Inf at step 3 of a run that writes a
# checkpoint every step. Each case must end the whole job with a non-zero status within
# 10 s, print a message naming the rank, the step and the tensor, and leave no checkpoint
# at or after step 3: ckpt/ holds steps 1 and 2, latest names step 2 and it verifies.
# One rank: the exit status is exactly 6 (numeric). 2 and 4 ranks under mpirun, and 2
# ranks on the overlapped path of GPU ranks (MOEKIT_OVERLAP=force).
if [ -z "$MPIEXEC" ]; then echo "1..0 # SKIP no MPI launcher"; exit 0; fi
top_builddir=$(cd "${top_builddir:-.}" && pwd)
srcdir=$(cd "${srcdir:-.}" && pwd)
train=$top_builddir/bin/moe-train ckpt=$top_builddir/bin/moe-ckpt
tmp=$(mktemp -d) || exit 99
trap 'rm -rf "$tmp"' EXIT
OMP_NUM_THREADS=1; export OMP_NUM_THREADS
n=0; fails=0
ok() { n=$((n + 1)); if [ "$1" -eq 0 ]; then printf 'ok %d - %s\n' $n "$2"; else printf 'not ok %d - %s\n' $n "$2"; fails=$((fails + 1)); fi; }

cd "$tmp" || exit 99
cat >s.ini <<EOF
[model]
d_model = 16
layers = 2
heads = 2
experts = 4
topk = 2
ffn = 16
seq_len = 16
[train]
micro_batch = 2
grad_accum = 2
steps = 8
warmup = 0
threads = 1
[data]
path = $srcdir/data/demo/english.txt
[ckpt]
every = 1
keep = 10
[log]
every = 0
EOF

# case RANKS RANK WHERE VALUE TENSOR-REGEX [EP]
case_() {
  np=$1 rk=$2 where=$3 value=$4 tensor=$5 ep=${6:-1}
  run=run_${np}_${where}_$value
  start=$(date +%s)
  if [ "$np" -eq 1 ]; then
    MOEKIT_TEST_NAN_RANK=$rk MOEKIT_TEST_NAN_STEP=3 MOEKIT_TEST_NAN_WHERE=$where MOEKIT_TEST_NAN_VALUE=$value \
      "$train" -q -s s.ini --set run.dir="$run" >out 2>err
  else
    MOEKIT_TEST_NAN_RANK=$rk MOEKIT_TEST_NAN_STEP=3 MOEKIT_TEST_NAN_WHERE=$where MOEKIT_TEST_NAN_VALUE=$value \
      $MPIEXEC -n "$np" --bind-to none -x MOEKIT_TEST_NAN_RANK -x MOEKIT_TEST_NAN_STEP -x MOEKIT_TEST_NAN_WHERE \
      -x MOEKIT_TEST_NAN_VALUE ${MOEKIT_OVERLAP:+-x MOEKIT_OVERLAP} "$train" -q -s s.ini --set run.dir="$run" --set parallel.ep="$ep" >out 2>err
  fi
  rc=$?
  el=$(( $(date +%s) - start ))
  if [ "$np" -eq 1 ]; then who=""; else who="rank $rk: "; fi
  msg=$(grep -E "^moekit: error: ${who}step 3: .*$tensor" err | head -1)
  steps=$(cd "$run/ckpt" 2>/dev/null && ls step_*.h5 2>/dev/null | tr '\n' ' ')
  if [ "$np" -eq 1 ]; then [ $rc -eq 6 ]; else [ $rc -ne 0 ]; fi
  r=$?
  [ $r -eq 0 ] && [ $el -le 10 ] && [ -n "$msg" ] && [ "$steps" = "step_00000001.h5 step_00000002.h5 " ] &&
    [ "$(cat "$run/ckpt/latest")" = step_00000002.h5 ] && "$ckpt" verify "$run/ckpt/step_00000002.h5" >/dev/null
  ok $? "$np rank(s), $value in $where on rank $rk at step 3: exit $rc after ${el}s, checkpoints: ${steps:-none}; ${msg#moekit: error: }"
  [ -n "$msg" ] || sed 's/^/# /' err | head -4
}
case_ 1 0 loss nan 'the loss \(cross-entropy\) of micro-step 1 is nan'
case_ 1 0 grad inf 'the gradient of layers\.0\.w1 holds inf \(element [0-9]+, expert 1\)'
case_ 1 0 logits nan 'router logits of layer 0 are not finite \(nan at token 0, expert 0\)'
case_ 1 0 logits inf 'router logits of layer 0 are not finite'
case_ 2 1 loss inf 'the loss \(cross-entropy\) of micro-step 1 is inf'
case_ 2 1 grad nan 'the gradient of layers\.0\.w1 holds nan \(element [0-9]+, expert 3\) before the all-reduce' 2
case_ 2 1 logits nan 'router logits of layer 0 are not finite' 2
case_ 4 3 grad nan 'the gradient of layers\.0\.w1 holds nan \(element [0-9]+, expert 1\) before the all-reduce'
# the overlapped path of GPU ranks (sums per block as the backward reaches them), forced
# on CPU ranks: the rerun's checks there name the rank as well
export MOEKIT_OVERLAP=force
case_ 2 1 grad inf 'the gradient of layers\.0\.w1 holds inf \(element [0-9]+, expert 1\) before the all-reduce'
unset MOEKIT_OVERLAP

# without the hook the same run trains its 8 steps (the hook, not the model, made the NaNs)
"$train" -q -s s.ini --set run.dir=clean >out 2>err && [ -f clean/ckpt/step_00000008.h5 ]
ok $? "the same run without the hook trains 8 steps and checkpoints each"

echo "1..$n"
[ $fails -eq 0 ]
