#!/bin/sh
# test_shard_errors.sh - T4 for datasets: ENOSPC and EIO at I/O op k of moe-shard writing a
# BPE dataset (mkdir, create, write, fsync, rename of the trained BPE ranks file, the
# .bin/.idx shards, the manifest and the final rename of the temporary directory), transient (op k only) and persistent (op k and
# every later one; ENOSPC never fails an unlink, so persistent ENOSPC leaves unlinks alone),
# 8 sampled k per variant (FAULT_FULL=1: every k).
# Rule: moe-shard exits 4 with one error line holding the errno text and nothing is left in
# the output's parent directory: no dataset, no temporary directory (under a persistent EIO
# the clean-up's own unlinks fail, so a temporary directory may stay, and is counted). A
# failure the run absorbs (exit 0) must give the undisturbed run's dataset byte for byte.
# One documented exception: a failed fsync of the parent directory after the final rename
# (the last op) is reported (status 4) with the complete dataset already at its name; it
# must then be the undisturbed run's, byte for byte.
# Afterwards a clean run writes that same dataset.
. "${srcdir:-.}/tests/fault/common.sh"
shard=$top_builddir/bin/moe-shard
tmp=$(mktemp -d) || exit 99
trap 'rm -rf "$tmp"' EXIT
head -c 40000 "$srcdir/data/demo/english.txt" >"$tmp/en.txt"
head -c 30000 "$srcdir/data/demo/code.txt" >"$tmp/code.txt"
# shard_to DIR [VAR=VALUE]...: moe-shard the two files into DIR/ds (a 300-rank BPE trained on
# them) with the shim watching DIR
shard_to() {
  d=$1; shift
  rm -rf "$d" && mkdir -p "$d" &&
    env LD_PRELOAD="$shim" FAULTINJ_PREFIX="$d" "$@" \
      "$shard" -q -d english="$tmp/en.txt" -d code="$tmp/code.txt" --bpe-train 300 -o "$d/ds" >"$tmp/shard.out" 2>&1
}
# the dataset's files and their bytes, one line each (the manifest records no time or pid)
digest() { (cd "$1" && find . -type f | sort | xargs sha256sum); }

shard_to "$tmp/ref" FAULTINJ_REPORT="$tmp/trace"
r=$?
N=$(sed -n 's/^ops //p' "$tmp/trace" 2>/dev/null)
[ $r -eq 0 ] && [ "${N:-0}" -gt 0 ] && digest "$tmp/ref/ds" >"$tmp/want"
ok $? "undisturbed moe-shard under the shim: $N I/O ops ($(awk 'NR > 1 { print $2 }' "$tmp/trace" | sort | uniq -c | awk '{ printf "%s%d %s", s, $1, $2; s = ", " }'))"
[ $r -eq 0 ] || { sed 's/^/# /' "$tmp/shard.out"; finish; }

for persist in 0 1; do
  for err in enospc eio; do
    ops=all; [ $persist = 1 ] && [ $err = enospc ] && ops=open,write,trunc,fsync,rename,mkdir
    text="No space left on device"; [ $err = eio ] && text="Input/output error"
    what=transient; [ $persist = 1 ] && what=persistent
    shard_to "$tmp/count" FAULTINJ_REPORT="$tmp/ops" FAULTINJ_OPS=$ops
    M=$(sed -n 's/^ops //p' "$tmp/ops")
    if [ "${FAULT_FULL:-0}" = 1 ]; then ks=$(seq 1 "$M"); else ks=$(pick 8 "$tmp/ops" $((persist * 2 + ${#err} % 2))); fi
    cases=0; bad=0; rc4=0; absorbed=0; stuck=0; inplace=0
    for k in $ks; do
      cases=$((cases + 1))
      kind=$(awk -v k="$k" '$1 == k { print $2 }' "$tmp/ops")
      shard_to "$tmp/out" FAULTINJ_AT="$k" FAULTINJ_MODE=$err FAULTINJ_PERSIST=$persist FAULTINJ_OPS=$ops
      rc=$?
      left=$(cd "$tmp/out" && ls -A | tr '\n' ' ')
      why=
      if [ $rc -eq 0 ]; then
        absorbed=$((absorbed + 1))
        [ "$left" = "ds " ] && digest "$tmp/out/ds" | cmp -s - "$tmp/want" || why="status 0 but the dataset differs (left: $left)"
      elif [ $rc -ne 4 ]; then
        why="status $rc, not 4: $(tail -n 1 "$tmp/shard.out")"
      elif [ "$(grep -c 'error' "$tmp/shard.out")" -ne 1 ]; then
        why="not one error line: $(tr '\n' '|' <"$tmp/shard.out")"
      elif ! grep -q "$text" "$tmp/shard.out"; then
        why="no errno text in: $(cat "$tmp/shard.out")"
      else
        rc4=$((rc4 + 1))
        case $left in
          "") ;;
          "ds ") if [ "$kind" = fsync ] && [ "$k" -eq "$M" ] && digest "$tmp/out/ds" | cmp -s - "$tmp/want"; then
                   inplace=$((inplace + 1))
                 else why="left behind: $left"; fi ;;
          ds.tmp-*) if [ $persist = 1 ] && [ $err = eio ]; then stuck=$((stuck + 1)); else why="left behind: $left"; fi ;;
          *) why="left behind: $left" ;;
        esac
      fi
      if [ -n "$why" ]; then bad=$((bad + 1)); echo "# $what $err k=$k ($kind): $why"; fi
    done
    eg=$(grep 'error' "$tmp/shard.out" | head -n 1 | cut -c1-160)
    ok $bad "$what $err over $cases of $M ops: $rc4 status 4 with the errno text ($((rc4 - inplace - stuck)) left nothing, $inplace the complete dataset renamed into place before a failed parent fsync, $stuck a temporary directory whose own unlink failed), $absorbed absorbed with the same dataset (${eg:-no error})"
  done
done

shard_to "$tmp/again"
r=$?
[ $r -eq 0 ] && digest "$tmp/again/ds" | cmp -s - "$tmp/want"
ok $? "after the failed runs a clean moe-shard writes the undisturbed run's dataset (status $r)"
finish
