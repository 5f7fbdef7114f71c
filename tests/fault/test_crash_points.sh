#!/bin/sh
# test_crash_points.sh - T2: the process dies (_exit) at I/O op k of one checkpoint save, for
# every k, both before the op and (for writes) after the first half of its bytes; the
# resume-and-compare half of the check on every third case (FAULT_FULL: every tenth)
# (FAULT_FULL=1: after each eighth, 1/8 .. 7/8).
# After each crash: every checkpoint at its final name verifies, latest names one of them,
# and --resume auto loads step 2 or 4 and finishes bit-identical to an uninterrupted run.
. "${srcdir:-.}/tests/fault/common.sh"
tmp=$(mktemp -d) || exit 99
trap 'rm -rf "$tmp"' EXIT
make_base "$tmp"; ok $? "base run (step 2) and an uninterrupted run to step $FINAL"
N=$(count_ops "$tmp"); ok $? "the saves up to step $FINAL make $N watched I/O ops"
[ -n "$N" ] && [ "$N" -gt 10 ] || { ok 1 "the shim sees the save's I/O"; finish; }
cp "$tmp/trace" "$tmp/ops"
ks=$(seq 1 "$N"); modes="crash torn"
tears=4; [ "${FAULT_FULL:-0}" = 1 ] && tears=${TEARS:-1 2 3 4 5 6 7}
for mode in $modes; do
  cases=0; bad=0; at4=0
  for kt in $(for k in $ks; do if [ $mode = torn ]; then for t in $tears; do echo "$k:$t"; done; else echo "$k:4"; fi; done); do
    k=${kt%:*}; t=${kt#*:}
    [ "$mode" = torn ] && [ "$(awk -v k="$k" '$1 == k { print $2 }' "$tmp/ops")" != write ] && continue
    fresh "$tmp"
    under_shim "$tmp" FAULTINJ_AT="$k" FAULTINJ_MODE=$mode FAULTINJ_TORN="$t"
    rc=$?
    cases=$((cases + 1))
    why=""
    [ $rc -eq 42 ] || why="exit status $rc, not the crash's 42"
    [ "$(cat "$tmp/run/ckpt/latest" 2>/dev/null)" = step_00000004.h5 ] && at4=$((at4 + 1))
    # the resume-and-compare check on every third case (every tenth in the long run)
    every=3; [ "${FAULT_FULL:-0}" = 1 ] && every=10
    [ -z "$why" ] && why=$(QUICK=$([ $((cases % every)) -eq 1 ] && echo 0 || echo 1) after_crash "$tmp")
    if [ -n "$why" ]; then
      bad=$((bad + 1))
      echo "# $mode at op $k${t:+ (torn at $t/8)} ($(awk -v k="$k" '$1 == k { print $2, $3 }' "$tmp/ops")): $why"
    fi
  done
  echo "# $mode: $cases crash points, $bad broke a rule; latest named the new step after $at4"
  ok $bad "$mode at $cases of $N ops: previous or new checkpoint resumes and verifies, latest always valid"
done
finish
