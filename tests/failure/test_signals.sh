#!/bin/sh
# test_signals.sh - T12: SIGTERM or SIGUSR1 at random moments of a 4-rank run (while it
# starts, loads a checkpoint, steps, is in a collective, writes a checkpoint; to every rank,
# to one rank, or SIGUSR1 to mpirun, which forwards it; sometimes a second signal right
# after) -> exit status 75 (requeue) within step + save + 5 s, the newest checkpoint
# verifies (moe-ckpt verify), and it holds the step every rank stopped after (the step of
# the last log.tsv row and of the "stopped by a signal after step N" line). Five cases
# put the signal in one phase exactly (fault hook, modes usr1/term), one sends a second
# signal inside the stop's own checkpoint write, two signal the ranks as they start.
#   sh tests/failure/test_signals.sh [CASES [SEED]]   (make check: 16 cases, under 60 s)
. "${srcdir:-.}/tests/failure/common.sh"
if [ -z "$MPIEXEC" ]; then echo "1..0 # SKIP no MPI launcher"; exit 0; fi
N=${1:-16}
SEED=${2:-$(od -An -N2 -tu2 /dev/urandom | tr -d ' ')}
tmp=$(mktemp -d) || exit 99
trap 'rm -rf "$tmp"' EXIT
S="$SMALL --set train.steps=100000 --set parallel.ep=2 --set ckpt.every=3 --set ckpt.keep=2"
echo "# seed $SEED (sh tests/failure/test_signals.sh $N $SEED repeats these cases)"

# the step and save times of this machine: an uninterrupted 30-step run
start=$(now)
$MPIEXEC -n 4 --bind-to none $train $S --set train.steps=30 --set run.dir="$tmp/cal" >"$tmp/cal.out" 2>&1
wall=$(elapsed "$start")
save=$(sed -n 's/^moe-train: checkpoint .* (\([0-9.]*\) s)$/\1/p' "$tmp/cal.out" | sort -n | tail -1)
bound=$(awk -v w="$wall" -v s="${save:-0}" 'BEGIN { printf "%.2f", w / 30 + s + 5 }')
echo "# 30 steps in $wall s (launch included), slowest save ${save:-?} s: limit step + save + 5 s = $bound s"

# the processes of the ranks of the run in directory $1 (not the launcher, not libtool's wrapper)
ranks_of() { for p in $(pgrep -f "run.dir=$1"); do case $(readlink "/proc/$p/exe") in */moe-train) echo $p ;; esac; done; }
# ... that have entered main() and caught SIGTERM and SIGUSR1 (bits 15 and 10 of SigCgt).
# Before that the dynamic loader runs, and a signal there has its default action: nothing
# a program can do about it (RESULTS.md).
ready_ranks() {
  for p in $(ranks_of "$1"); do
    m=$(awk '/^SigCgt/ { print $2 }' "/proc/$p/status" 2>/dev/null)
    [ -n "$m" ] && [ $(( 0x$m & 0x4200 )) -eq $(( 0x4200 )) ] && echo $p
  done
}

# case NAME SIGNAL TARGET WHEN SECOND [--resume auto]: SIGNAL to TARGET (all, one or mpirun)
# WHEN = init (as soon as the 4 ranks exist), hook (the fault hook sends it) or a delay in
# seconds after the first step; SECOND = 1: another signal to all ranks 0-0.3 s later
case_() {
  name=$1 sig=$2 target=$3 when=$4 second=$5; shift 5
  d="$tmp/c$n"
  [ "$1" = --resume ] && mkdir -p "$d/ckpt" && cp "$tmp/cal/ckpt/"step_* "$tmp/cal/ckpt/latest" "$d/ckpt/"
  # </dev/null: mpirun forwards its standard input to rank 0, which would eat the case list
  $MPIEXEC -n 4 --bind-to none $HOOKENV $train $S --set run.dir="$d" "$@" </dev/null >"$d.out" 2>&1 &
  pid=$!
  i=0
  case $when in
    init) while [ "$(ready_ranks "$d" | wc -l)" -lt 4 ] && [ $i -lt 3000 ]; do sleep 0.005; i=$((i + 1)); done ;;
    hook) while ! grep -q "test hook: rank .* sends itself" "$d.out" && [ $i -lt 3000 ]; do sleep 0.01; i=$((i + 1)); done ;;
    *) while [ "$( { wc -l <"$d/log.tsv"; } 2>/dev/null || echo 0)" -lt 2 ] && [ $i -lt 3000 ]; do sleep 0.01; i=$((i + 1)); done
       sleep "$when" ;;
  esac
  start=$(now)
  case $target in
    all) kill -"$sig" $(ranks_of "$d") 2>/dev/null ;;
    one) kill -"$sig" $(ranks_of "$d" | shuf -n1 --random-source="$tmp/cal.out") 2>/dev/null ;;
    mpirun) kill -"$sig" $pid ;;
  esac
  if [ "$second" = 1 ]; then
    sleep "$(awk -v s="$SEED$n" 'BEGIN { srand(s); printf "%.3f", rand() * 0.3 }')"
    kill -TERM $(ranks_of "$d") 2>/dev/null
  fi
  # a run that does not stop is ended after 60 s (and the case fails)
  ( sleep 60; kill -9 $pid $(ranks_of "$d") 2>/dev/null ) >/dev/null 2>&1 &
  guard=$!
  wait $pid
  rc=$?
  gone "run.dir=$d"
  el=$(elapsed "$start")
  kill $guard 2>/dev/null
  stopped=$(sed -n 's/^moe-train: stopped by a signal after step \([0-9]*\);.*/\1/p' "$d.out")
  latest=$(cat "$d/ckpt/latest" 2>/dev/null)
  saved=$(echo "$latest" | sed 's/step_0*\([0-9]*\)\.h5/\1/')
  logged=$(tail -1 "$d/log.tsv" 2>/dev/null | cut -f1)
  "$moeckpt" verify "$d/ckpt/$latest" >"$d.verify" 2>&1
  v=$?
  r=0
  [ $rc -eq 75 ] && [ $v -eq 0 ] && [ -n "$stopped" ] && [ "$stopped" = "$saved" ] && [ "$saved" = "$logged" ] || r=1
  awk -v e="$el" -v b="$bound" 'BEGIN { exit !(e <= b) }' || r=1
  [ -n "$want" ] && [ "$stopped" != "$want" ] && r=1
  if [ $r -ne 0 ]; then sed 's/^/#   /' "$d.out" "$d.verify" | grep -v '^#   step ' | head -20; fi
  ok $r "$name: exit $rc after $el s, stopped after step ${stopped:-?}, ckpt ${latest:-none} ($( [ $v -eq 0 ] && echo verifies || echo FAILS verify)), log ends at step ${logged:-?}"
  rm -rf "$d" "$d.out" "$d.verify"
}

HOOKENV= want=
# one rank sends itself the signal in one phase of step 4 (a checkpoint is written after step 3 and 6)
for c in "load usr1" "forward term" "allreduce usr1" "alltoall term" "ckpt usr1"; do
  set -- $c
  step=4; [ "$1" = ckpt ] && step=6
  want=$step   # the stop comes right after this step (after its checkpoint for ckpt)
  export MOEKIT_TEST_FAIL_RANK=$((n % 4)) MOEKIT_TEST_FAIL_STEP=$step MOEKIT_TEST_FAIL_PHASE=$1 MOEKIT_TEST_FAIL_MODE=$2
  HOOKENV="-x MOEKIT_TEST_FAIL_RANK -x MOEKIT_TEST_FAIL_STEP -x MOEKIT_TEST_FAIL_PHASE -x MOEKIT_TEST_FAIL_MODE"
  case_ "SIG$(echo "$2" | tr a-z A-Z) to rank $MOEKIT_TEST_FAIL_RANK in $1 of step $step" x hook hook 0
done
want=
# a second signal (SIGTERM from the hook) inside the checkpoint write that the first one caused
export MOEKIT_TEST_FAIL_RANK=2 MOEKIT_TEST_FAIL_STEP=0 MOEKIT_TEST_FAIL_PHASE=ckpt MOEKIT_TEST_FAIL_MODE=term
case_ "SIGUSR1 to every rank, then SIGTERM to rank 2 inside the stop's checkpoint write" USR1 all 0.2 0 --set ckpt.every=0
unset MOEKIT_TEST_FAIL_RANK MOEKIT_TEST_FAIL_STEP MOEKIT_TEST_FAIL_PHASE MOEKIT_TEST_FAIL_MODE
HOOKENV=
# while the ranks start (MPI_Init, data, model), and while they load a checkpoint
case_ "SIGTERM to every rank at start-up" TERM all init 0
case_ "SIGUSR1 to one rank at start-up, resuming from a checkpoint" USR1 one init 0 --resume auto
# random ones: signal, target, moment, a second signal
awk -v seed="$SEED" -v n=$((N - 8)) 'BEGIN { srand(seed)
  for (i = 0; i < n; i++) {
    sig = rand() < 0.5 ? "TERM" : "USR1"; t = rand(); target = t < 0.5 ? "all" : t < 0.8 ? "one" : "mpirun"
    if (target == "mpirun") sig = "USR1"         # mpirun forwards SIGUSR1; SIGTERM ends the job
    w = rand(); when = w < 0.15 ? "init" : sprintf("%.2f", rand() * 1.5)
    resume = rand() < 0.2 ? "resume" : "-"; second = rand() < 0.3
    print sig, target, when, second, resume } }' >"$tmp/cases"
# the list comes on fd 3, so that nothing in a case can read it from standard input
while read -r sig target when second resume <&3; do
  what="SIG$sig to $( [ $target = all ] && echo "every rank" || ([ $target = one ] && echo "one rank" || echo mpirun))"
  [ "$when" = init ] && what="$what at start-up" || what="$what $when s after step 1"
  [ "$second" = 1 ] && what="$what, SIGTERM to every rank soon after"
  if [ "$resume" = resume ]; then
    case_ "$what, resuming from a checkpoint" "$sig" "$target" "$when" "$second" --resume auto
  else
    case_ "$what" "$sig" "$target" "$when" "$second"
  fi
done 3<"$tmp/cases" </dev/null
[ $n -eq "$N" ] || { echo "not ok $((n + 1)) - only $n of the $N cases ran"; exit 1; }
finish
