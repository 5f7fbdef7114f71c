#!/bin/sh
# sweep.sh - the long fault-injection runs (T2, T3, T4, T6), outside make check.
#   cd BUILD && srcdir=SRC top_builddir=. sh SRC/tests/fault/sweep.sh [LOG]
# Needs a built tree (make && make check TESTS= to build the test programs). Prints the
# TAP of each part and ends with the totals; LOG (default fault-sweep.log) gets everything.
: "${top_builddir:=.}" "${srcdir:=.}"
export top_builddir srcdir
log=${1:-fault-sweep.log}
: >"$log"
t0=$(date +%s)
# SWEEP_SKIP: names of parts to leave out (T2a T2b T4 T4h T4s T3 T6 kill), e.g. SWEEP_SKIP="T2a"
skip() { case " ${SWEEP_SKIP:-} " in *" $1 "*) return 0 ;; esac; return 1; }
run() { # ID NAME SCRIPT [VAR=VALUE]...
  skip "$1" && return; shift
  name=$1; script=$2; shift 2
  s=$(date +%s)
  echo "=== $name" >>"$log"
  env FAULT_FULL=1 "$@" sh "$srcdir/tests/fault/$script" >"$log.part" 2>&1
  cat "$log.part" >>"$log"
  printf '%-58s %3d ok %3d not ok %5d s\n' "$name" "$(grep -c '^ok' "$log.part")" "$(grep -c '^not ok' "$log.part")" \
    "$(($(date +%s) - s))" | tee -a "$log"
  grep '^#\|^not ok' "$log.part" | grep -v '^# [0-9]*: ' | head -20
}
run T2a "T2 crash points, one save (every k, torn 1/8..7/8)" test_crash_points.sh
run T2b "T2 crash points, ten saves (every k, torn 1/2)" test_crash_points.sh FINAL=12 "EXTRA=--set ckpt.every=1" TEARS=4
run T4 "T4 I/O errors (every k x ENOSPC/EIO x transient/persistent)" test_io_errors.sh
run T4h "T4 HDF5 calls (every k of save/load/verify/find, both modes)" test_h5_errors.sh H5LOOP_FULL=1
run T4s "T4 moe-shard I/O errors (every k x ENOSPC/EIO x both modes)" test_shard_errors.sh
run T3 "T3 power loss (100 crash points x 10 damage patterns)" test_power_loss.sh
run T6 "T6 corruption (1000 data / 100 meta flips, 100 cuts; dataset)" test_corrupt.sh

# T2: SIGKILL at random times during a run that saves every step
skip kill && { echo "total $(($(date +%s) - t0)) s" | tee -a "$log"; exit 0; }
. "$srcdir/tests/fault/common.sh"
FINAL=12 EXTRA="--set ckpt.every=1"
FINAL_CKPT=$(printf 'step_%08d.h5' "$FINAL")
tmp=$(mktemp -d) || exit 99
trap 'rm -rf "$tmp"' EXIT
s=$(date +%s)
make_base "$tmp"
kills=${KILLS:-200}; bad=0; i=0; early=0
while [ $i -lt "$kills" ]; do
  i=$((i + 1))
  fresh "$tmp"
  $train $TRAIN_ARGS --set train.steps="$FINAL" $EXTRA --set run.dir="$tmp/run" --resume auto >/dev/null 2>&1 &
  pid=$!
  sleep "$(awk -v s="$i" 'BEGIN { srand(s); printf "%.3f", 0.15 + rand() * 1.2 }')"
  kill -9 $pid 2>/dev/null || early=$((early + 1))
  wait $pid 2>/dev/null
  why=$(QUICK=$([ $((i % 10)) -eq 0 ] && echo 0 || echo 1) after_crash "$tmp")
  [ -n "$why" ] && { bad=$((bad + 1)); echo "# kill $i: $why"; }
done
printf '%-58s %3d cases, %d broke the rule (%d runs had ended) %5d s\n' "T2 random-time SIGKILL during 10 saves" "$kills" "$bad" \
  "$early" "$(($(date +%s) - s))" | tee -a "$log"
echo "total $(($(date +%s) - t0)) s" | tee -a "$log"
