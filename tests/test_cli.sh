#!/bin/sh
# test_cli.sh - moe-train's command line: help, version, and one clear error line with the
# documented exit status for each kind of bad input.
bin=$top_builddir/bin/moe-train
tmp=$(mktemp -d) || exit 99
trap 'rm -rf "$tmp"' EXIT
n=0
fails=0
# expect STATUS PATTERN ARGS...: exit status STATUS and stderr matching PATTERN (grep -E).
expect() {
  want=$1; pat=$2; shift 2
  n=$((n + 1))
  "$bin" "$@" >"$tmp/out" 2>"$tmp/err"
  got=$?
  if [ "$got" -eq "$want" ] && grep -Eq -- "$pat" "$tmp/err" "$tmp/out"; then
    echo "ok $n - moe-train $* -> $got"
  else
    echo "not ok $n - moe-train $* -> $got (wanted $want matching '$pat')"
    sed 's/^/# /' "$tmp/err" | head -5
    fails=$((fails + 1))
  fi
}
printf '[model]\nd_model = 64\n' >"$tmp/ok.ini"
printf '[model]\nd_modl = 64\n' >"$tmp/typo.ini"
printf '[model]\nheads = four\n' >"$tmp/badval.ini"
printf 'x' >"$tmp/short.txt"
expect 0 'Usage: moe-train' --help
expect 0 'moe-train \(moekit\)' --version
expect 0 'model.d_model' --help-settings
expect 2 'unknown option' --bogus
expect 2 'unexpected argument' stray
expect 3 'nope.ini' --schedule "$tmp/nope.ini"
expect 2 'd_modl' --schedule "$tmp/typo.ini"
expect 2 'heads' --schedule "$tmp/badval.ini"
expect 2 'model.layerz' --set model.layerz=3
expect 2 'train.steps' --set train.steps=-1
expect 2 'model.heads' --set model.heads=5
expect 2 'data.path' --schedule "$tmp/ok.ini" --set data.path=
expect 3 'short.txt' --schedule "$tmp/ok.ini" --data "$tmp/short.txt"
expect 3 'missing.txt' --data "$tmp/missing.txt"
# A bad tuning variable is a usage error that names it, before anything is written.
awk 'BEGIN { for (i = 0; i < 80; i++) print "some text for a tiny training run, line " i }' >"$tmp/text.txt"
export MOEKIT_OVERLAP_SMS=abc
expect 2 'MOEKIT_OVERLAP_SMS=abc: want a number of SMs' --set model.d_model=32 --set model.layers=1 \
  --set train.steps=1 --set train.warmup=0 --data "$tmp/text.txt" --set run.dir="$tmp/run"
unset MOEKIT_OVERLAP_SMS
n=$((n + 1))
if [ ! -e "$tmp/run" ]; then echo "ok $n - nothing written for a bad MOEKIT_OVERLAP_SMS"; else echo "not ok $n - $tmp/run written"; fails=$((fails + 1)); fi
# --print-config writes a schedule that reads back to the same settings.
n=$((n + 1))
"$bin" --set model.layers=3 --set lbl.coeff=0.02 --print-config >"$tmp/a.ini" &&
  "$bin" --schedule "$tmp/a.ini" --print-config >"$tmp/b.ini" && cmp -s "$tmp/a.ini" "$tmp/b.ini" &&
  grep -q 'layers = 3' "$tmp/a.ini"
if [ $? -eq 0 ]; then echo "ok $n - --print-config round-trips"; else echo "not ok $n - --print-config round-trips"; fails=$((fails + 1)); fi
echo "1..$n"
[ "$fails" -eq 0 ]
