#!/bin/sh
# test_hang.sh - T10: a rank that stops (SIGSTOP) inside a collective ends the whole job
# through the watchdog (parallel.timeout, here 3 s): every rank gone, the launcher non-zero,
# within the timeout + 10 s, and the line of the watchdog naming the phase and the step.
# A healthy run with the same short timeout finishes normally.
. "${srcdir:-.}/tests/failure/common.sh"
if [ -z "$MPIEXEC" ]; then echo "1..0 # SKIP no MPI launcher"; exit 0; fi
tmp=$(mktemp -d) || exit 99
trap 'rm -rf "$tmp"' EXIT
TO=3
H="$SMALL --quiet --set train.steps=1000 --set parallel.ep=2 --set ckpt.every=2 --set parallel.timeout=$TO"

# check D START RC WHAT PHASE STEP: the job ended in time with the watchdog's line
check() {
  d=$1 start=$2 rc=$3
  gone "run.dir=$d"; g=$?
  el=$(elapsed "$start")
  lines=$(grep -c "has not finished after .* (parallel.timeout = $TO s)" "$d.out")
  grep -q "^moe-train: rank [0-9]: $5[^:]* of step $6 has not finished" "$d.out"
  named=$?
  r=$(( (rc == 0) | g | named ))
  awk -v e="$el" -v t=$TO 'BEGIN { exit !(e <= t + 10) }' || r=1
  [ $r -ne 0 ] && sed 's/^/#   /' "$d.out" | head -12
  said=$(grep -m1 -o "rank [0-9]: .* of step [0-9]*" "$d.out")
  ok $r "$4: launcher exit $rc, every rank gone after $el s (timeout $TO s), $lines watchdog line(s), first: '$said'"
}

# SIGSTOP from the fault hook, right where the others wait in the collective
for c in "3 allreduce 3 forward/backward" "0 alltoall 3 forward/backward" "3 ckpt 4 checkpoint write"; do
  set -- $c
  v=$1 p=$2 s=$3 d="$tmp/$2"
  want=$(echo "$c" | cut -d' ' -f4-)
  start=$(now)
  MOEKIT_TEST_FAIL_RANK=$v MOEKIT_TEST_FAIL_STEP=$s MOEKIT_TEST_FAIL_PHASE=$p MOEKIT_TEST_FAIL_MODE=stop \
    mpi 4 -x MOEKIT_TEST_FAIL_RANK -x MOEKIT_TEST_FAIL_STEP -x MOEKIT_TEST_FAIL_PHASE -x MOEKIT_TEST_FAIL_MODE \
    $train $H --set run.dir="$d" >"$d.out" 2>&1
  check "$d" "$start" $? "rank $v stopped in $p of step $s" "$want" "$s"
done

# SIGSTOP from outside, to one rank at some moment after the first step
d="$tmp/ext"
start=$(now)
$MPIEXEC -n 4 --bind-to none $train $H --set run.dir="$d" >"$d.out" 2>&1 &
pid=$!
i=0; while [ "$( { wc -l <"$d/log.tsv"; } 2>/dev/null || echo 0)" -lt 4 ] && [ $i -lt 3000 ]; do sleep 0.01; i=$((i + 1)); done
victim=$(pgrep -P $pid | tail -1)
kill -STOP "$victim"
wait $pid
check "$d" "$start" $? "SIGSTOP from outside to one rank (pid $victim) after step 3" ".*" "[0-9]*"

# srun -K ends the survivors of a dead rank with SIGTERM (then SIGKILL after KillWait, 30 s
# by default): with the default timeout of 300 s, ranks stuck in a collective when a stop
# signal comes end after twice the phase's longest duration + 5 s, not after 300 s
d="$tmp/stopped"
start=$(now)
MOEKIT_TEST_FAIL_RANK=3 MOEKIT_TEST_FAIL_STEP=20 MOEKIT_TEST_FAIL_PHASE=allreduce MOEKIT_TEST_FAIL_MODE=stop \
  $MPIEXEC -n 4 --bind-to none -x MOEKIT_TEST_FAIL_RANK -x MOEKIT_TEST_FAIL_STEP -x MOEKIT_TEST_FAIL_PHASE \
  -x MOEKIT_TEST_FAIL_MODE $train $SMALL --quiet --set train.steps=1000 --set parallel.ep=2 --set run.dir="$d" \
  </dev/null >"$d.out" 2>&1 &
pid=$!
i=0; while [ "$( { wc -l <"$d/log.tsv"; } 2>/dev/null || echo 0)" -lt 20 ] && [ $i -lt 3000 ]; do sleep 0.01; i=$((i + 1)); done
sleep 1
sig=$(now)
for p in $(pgrep -f "run.dir=$d"); do
  case $(readlink "/proc/$p/exe") in */moe-train) grep -q '^State:.*T (stopped)' "/proc/$p/status" || kill -TERM "$p" ;; esac
done
# without the shorter wait this would take 300 s: end it after 30 s (and fail)
( sleep 30; kill -9 $pid $(pgrep -f "run.dir=$d") ) >/dev/null 2>&1 &
guard=$!
wait $pid
rc=$?
gone "run.dir=$d"; g=$?
el=$(elapsed "$sig")
kill $guard 2>/dev/null
lines=$(grep -c "asked to stop, but forward/backward[^:]* of step 20 has taken" "$d.out")
[ $rc -ne 0 ] && [ $g -eq 0 ] && [ "$lines" -ge 1 ] && awk -v e="$el" 'BEGIN { exit !(e <= 15) }'
r=$?
[ $r -ne 0 ] && sed 's/^/#   /' "$d.out" | head -12
ok $r "rank 3 stopped in step 20, SIGTERM to the others (timeout 300 s): exit $rc, every rank gone $el s after the signal, $lines line(s) 'asked to stop, but ...'"

# the same short timeout does not end a healthy run
$MPIEXEC -n 4 --bind-to none $train $H --set train.steps=40 --set run.dir="$tmp/ok" >"$tmp/ok.out" 2>&1
rc=$?
[ $rc -eq 0 ] && ! grep -q "has not finished" "$tmp/ok.out" && [ "$(tail -1 "$tmp/ok/log.tsv" | cut -f1)" = 40 ]
ok $? "a healthy 40-step 4-rank run with parallel.timeout = $TO s and checkpoints finishes (exit $rc)"
finish
