#!/bin/sh
# test_power_loss.sh - T3: simulated power loss during checkpoint saves (SQLite's crash VFS
# semantics, tests/fault/faultinj.c power mode). The run resumes step 2 and saves every step
# up to 12 (10 saves, ckpt.keep=1, about 130 watched ops). At op k the shim rebuilds what a
# disk could hold after a power cut: writes since the file's last fsync kept, dropped or
# garbage, directory changes since the directory's last fsync lost (all, none, or from a
# random point on) under damage pattern p = 0..9, then the process dies. Rule as T2: every
# checkpoint at its final name verifies, latest names one of them, and --resume auto loads
# the newest and finishes bit-identical to an uninterrupted run.
# make check: 8 (k, p) cases spread over the ops; FAULT_FULL=1: 100 k spread over the ops
# (POWER_POINTS) x every p. The resume-and-compare half of the check runs on every fourth
# case (FAULT_FULL: every tenth).
FINAL=12 EXTRA="--set ckpt.every=1"
. "${srcdir:-.}/tests/fault/common.sh"
tmp=$(mktemp -d) || exit 99
trap 'rm -rf "$tmp"' EXIT
make_base "$tmp"; ok $? "base run (step 2) and an uninterrupted run to step $FINAL"
N=$(count_ops "$tmp"); ok $? "10 saves make $N watched I/O ops"
[ -n "$N" ] && [ "$N" -gt 100 ] || { ok 1 "the shim sees the saves' I/O"; finish; }
cp "$tmp/trace" "$tmp/ops"
if [ "${FAULT_FULL:-0}" = 1 ]; then
  cases=$(for k in $(pick "${POWER_POINTS:-100}" "$tmp/ops"); do for p in 0 1 2 3 4 5 6 7 8 9; do echo "$k:$p"; done; done)
else
  cases=$(pick 8 "$tmp/ops" | awk '{ print $1 ":" (NR - 1) % 10 }')
fi
total=0; bad=0; older=0; lost_latest=0
for c in $cases; do
  k=${c%:*}; p=${c#*:}
  fresh "$tmp"; rm -rf "$tmp/stash"; mkdir "$tmp/stash"
  under_shim "$tmp" FAULTINJ_AT="$k" FAULTINJ_MODE=power FAULTINJ_PATTERN="$p" FAULTINJ_SEED=$((k * 10 + p)) \
    FAULTINJ_STASH="$tmp/stash"
  rc=$?
  total=$((total + 1))
  why=""
  [ $rc -eq 42 ] || why="exit status $rc, not the crash's 42"
  # how far back the power cut threw the run: the newest step on disk against the step reached
  reached=$(awk -v k="$k" 'NR > 1 && $1 < k && $2 == "rename" && $3 ~ /step_[0-9]*\.h5$/ { s = $3 } END { print s }' "$tmp/ops" |
    sed -n 's/.*step_0*\([0-9][0-9]*\)\.h5/\1/p')
  have=$(ls "$tmp/run/ckpt" | sed -n 's/^step_0*\([0-9][0-9]*\)\.h5$/\1/p' | sort -n | tail -1)
  [ -n "$reached" ] && [ -n "$have" ] && [ "$have" -lt "$reached" ] && older=$((older + 1))
  every=4; [ "${FAULT_FULL:-0}" = 1 ] && every=10
  quick=0; [ $((total % every)) -ne 1 ] && quick=1
  [ -z "$why" ] && why=$(QUICK=$quick after_crash "$tmp")
  if [ -n "$why" ]; then
    bad=$((bad + 1))
    echo "# op $k ($(awk -v k="$k" '$1 == k { print $2, $3 }' "$tmp/ops")), pattern $p: $why"
  fi
done
echo "# $total power cuts; after $older of them the newest checkpoint on disk was older than the last one renamed into place (a lost rename, as allowed)"
ok $bad "$total power cuts x damage patterns: every checkpoint on disk verifies, latest valid, resume bit-identical"
finish
