# common.sh - sourced by the fault-injection scripts (tests/fault/test_*.sh, sweep.sh).
#
# The case under test is one checkpoint save of the real moe-train: a base run trains a tiny
# model 2 steps and saves step 2 (ckpt.keep=1); the run under test resumes it with
# --resume auto, trains to step 4 and saves step 4 under tests/fault/faultinj.c, which
# watches only run/ckpt. Every check uses the real programs (moe-train, moe-ckpt).
: "${top_builddir:=.}" "${srcdir:=.}"
train=$top_builddir/bin/moe-train
ckpt=$top_builddir/bin/moe-ckpt
shim=$top_builddir/tests/fault/.libs/libfaultinj.so
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
# the shim is not built with the sanitizers and comes first in the preload list
ASAN_OPTIONS="verify_asan_link_order=0:detect_leaks=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}"; export ASAN_OPTIONS
TRAIN_ARGS="--schedule $srcdir/schedules/tiny.ini --data $srcdir/data/demo/english.txt --set train.warmup=1
  --set log.every=0 --set model.d_model=32 --set model.ffn=32 --set model.seq_len=32 --set train.micro_batch=4
  --set ckpt.every=2 --set ckpt.keep=1 --set train.threads=1 --set eval.every=0"
# FINAL: the step the run under test trains to; EXTRA: more settings for it (T3 saves every step)
: "${FINAL:=4}" "${EXTRA:=}"
FINAL_CKPT=$(printf 'step_%08d.h5' "$FINAL")
n=0; fails=0
ok() { n=$((n + 1)); if [ "$1" -eq 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; fails=$((fails + 1)); fi; }
finish() { echo "1..$n"; [ "$fails" -eq 0 ]; exit $?; }

# make_base DIR: DIR/base (step 2 saved) and DIR/want (an uninterrupted run to step FINAL).
make_base() {
  $train $TRAIN_ARGS --set train.steps=2 --set run.dir="$1/base" >"$1/base.out" 2>&1 || return 1
  cp -a "$1/base" "$1/want" &&
    $train $TRAIN_ARGS --set train.steps="$FINAL" $EXTRA --set run.dir="$1/want" --resume auto >"$1/want.out" 2>&1
}
# fresh DIR: DIR/run is a copy of the base run
fresh() { rm -rf "$1/run" && cp -a "$1/base" "$1/run"; }
# under_shim DIR [VAR=VALUE]...: resume DIR/run to step FINAL with the shim watching run/ckpt
under_shim() {
  d=$1; shift
  env LD_PRELOAD="$shim" FAULTINJ_PREFIX="$d/run/ckpt" "$@" \
    $train $TRAIN_ARGS --set train.steps="$FINAL" $EXTRA --set run.dir="$d/run" --resume auto >"$d/shim.out" 2>&1
}
# count_ops DIR [FAULTINJ_OPS]: the ops of one save, as "k kind path" lines in DIR/trace
count_ops() {
  fresh "$1" && under_shim "$1" FAULTINJ_REPORT="$1/trace" ${2:+FAULTINJ_OPS=$2} &&
    sed -n 's/^ops //p' "$1/trace"
}
# after_crash DIR: why the state of DIR/run after a crash breaks the rules (empty: it does not):
#  every step_*.h5 at its final name verifies, latest names one of them, --resume auto loads
#  the newest of them and finishes with a step-FINAL checkpoint bit-identical (model and
#  optimizer) to the uninterrupted run's.
after_crash() {
  d=$1; c=$d/run/ckpt
  [ -f "$c/latest" ] || { echo "latest is missing"; return; }
  l=$(cat "$c/latest")
  [ -f "$c/$l" ] || { echo "latest names $l, which does not exist"; return; }
  for f in "$c"/step_*.h5; do
    [ -e "$f" ] || continue
    $ckpt verify "$f" >"$d/verify.out" 2>&1 || { echo "$(basename "$f") fails verify: $(cat "$d/verify.out")"; return; }
  done
  # QUICK=1: the checks above only (--resume auto takes the newest file that verifies, so
  # with every file verifying its choice is known); the scripts run the full check on a share
  [ "${QUICK:-0}" = 1 ] && return
  want=$(ls "$c" | sed -n 's/^step_0*\([0-9][0-9]*\)\.h5$/\1/p' | sort -n | tail -1)
  $train $TRAIN_ARGS --set train.steps="$FINAL" $EXTRA --set run.dir="$d/run" --resume auto >"$d/resume.out" 2>&1 ||
    { echo "resume failed: $(tail -2 "$d/resume.out")"; return; }
  got=$(sed -n 's/.*resuming from .* (step \([0-9]*\),.*/\1/p' "$d/resume.out")
  [ "$got" = "$want" ] || { echo "resume loaded step '$got', expected $want"; return; }
  $ckpt diff -q --optim "$d/want/ckpt/$FINAL_CKPT" "$c/$FINAL_CKPT" >/dev/null 2>&1 ||
    { echo "the resumed step-$FINAL checkpoint differs from the uninterrupted run's"; return; }
}
# pick N FILE [OFFSET]: N k values spread evenly over the ops listed in FILE, shifted by OFFSET
pick() {
  awk -v want="$1" -v off="${3:-0}" 'NR > 1 { n++ } END {
      step = n / want; if (step < 1) step = 1
      for (x = 1 + off % step; x <= n; x += step) print int(x) }' "$2" | sort -n -u
}
