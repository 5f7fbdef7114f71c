#!/bin/sh
# test_rank_failure.sh - T9: one of 4 ranks dies (SIGKILL), crashes (SIGSEGV) or fails with
# an error in one phase of a step (data load, forward, gradient all-reduce, expert
# all-to-all, checkpoint write) -> the launcher exits non-zero, every rank is gone within
# 10 s of the failure, and one message names the rank. make check runs 6 of the 30 cases;
#   sh tests/failure/test_rank_failure.sh --full 3
# runs all 30 (victim 0 or 3 x 3 ways x 5 phases), each 3 times.
# MOEKIT_LAUNCHER=srun launches with srun --mpi=pmix -K -N 2 -n 4 instead of mpirun (a Slurm
# cluster must be reachable, e.g. tests/slurm/slurm-up.sh DIR and . DIR/env.sh).
. "${srcdir:-.}/tests/failure/common.sh"
if [ -z "$MPIEXEC" ]; then echo "1..0 # SKIP no MPI launcher"; exit 0; fi
tmp=$(mktemp -d) || exit 99
trap 'rm -rf "$tmp"' EXIT
worst=0

# case VICTIM MODE PHASE: fail rank VICTIM in PHASE of step 4 (a checkpoint is due after it)
case_() {
  v=$1 m=$2 p=$3 d="$tmp/r$v-$m-$p"
  start=$(now)
  export MOEKIT_TEST_FAIL_RANK=$v MOEKIT_TEST_FAIL_STEP=4 MOEKIT_TEST_FAIL_PHASE=$p MOEKIT_TEST_FAIL_MODE=$m
  if [ "${MOEKIT_LAUNCHER:-}" = srun ]; then
    srun --mpi=pmix -K -N 2 -n 4 \
      $train $SMALL --quiet --set train.steps=1000 --set parallel.ep=2 --set ckpt.every=2 --set run.dir="$d" \
      </dev/null >"$d.out" 2>&1
  else
    mpi 4 -x MOEKIT_TEST_FAIL_RANK -x MOEKIT_TEST_FAIL_STEP -x MOEKIT_TEST_FAIL_PHASE -x MOEKIT_TEST_FAIL_MODE \
      $train $SMALL --quiet --set train.steps=1000 --set parallel.ep=2 --set ckpt.every=2 --set run.dir="$d" \
      </dev/null >"$d.out" 2>&1
  fi
  rc=$?
  unset MOEKIT_TEST_FAIL_RANK MOEKIT_TEST_FAIL_STEP MOEKIT_TEST_FAIL_PHASE MOEKIT_TEST_FAIL_MODE
  gone "run.dir=$d"; g=$?
  end=$(now)
  el=$(elapsed "$start")
  # from the moment of the failure (the hook's line gives its wall-clock time)
  at=$(sed -n 's/^moekit: test hook: rank .* at \([0-9.]*\)$/\1/p' "$d.out" | head -n 1)
  fl=$(awk -v a="${at:-0}" -v b="$end" 'BEGIN { printf "%.2f", (a > 0 ? b - a : 999) }')
  worst=$(awk -v a="$worst" -v b="$fl" 'BEGIN { print (b > a ? b : a) }')
  if [ "$m" = error ]; then
    # one line from the failing rank naming it and the phase, one "stops the job", no other rank's
    [ "$(grep -c "^moekit: error: rank $v: step 4, $p: injected failure" "$d.out")" -eq 1 ] &&
      [ "$(grep -c "stops the job" "$d.out")" -eq 1 ] && grep -q "^moe-train: rank $v stops the job" "$d.out"
  else
    # mpirun names the rank that died; under AddressSanitizer a SIGSEGV becomes exit status 1
    grep -q "process rank $v with PID .* exited on signal" "$d.out" ||
      grep -q "Process name: \[\[[0-9]*,[0-9]*\],$v\]" "$d.out" ||
      grep -q "^srun: error: .*: task $v: " "$d.out"
  fi
  named=$?
  [ $rc -ne 0 ] && [ $g -eq 0 ] && awk -v e="$fl" 'BEGIN { exit !(e <= 10) }' && [ $named -eq 0 ]
  r=$?
  [ $r -ne 0 ] && sed 's/^/#   /' "$d.out" | head -20
  ok $r "rank $v, $m in $p of step 4: launcher exit $rc, every rank gone ${fl} s after the failure (${el} s after the launch), message names rank $v"
  rm -rf "$d" "$d.out"
}

if [ "$1" = --full ]; then
  reps=${2:-3}
  rep=0
  while [ $rep -lt "$reps" ]; do
    for v in 0 3; do for m in kill segv error; do for p in load forward allreduce alltoall ckpt; do
      case_ $v $m $p
    done; done; done
    rep=$((rep + 1))
  done
else
  case_ 3 error alltoall
  case_ 0 error ckpt
  case_ 0 kill allreduce
  case_ 3 kill ckpt
  case_ 3 segv forward
  case_ 0 segv load
fi
echo "# worst time from the failure to every rank gone: $worst s"
finish
