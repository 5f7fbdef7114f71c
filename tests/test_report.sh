#!/bin/sh
# test_report.sh - moe-report end to end: a routing log with known counts (written with h5py
# by tests/test_report_check.py from docs/routing-log-format.md), every metric in the CSVs
# against numpy over the same counts, the figures (PNG magic and IHDR size, SVG parses), the
# error cases, and a report over a log that tests/routing_log_writer is still writing.
report=${top_builddir:-.}/analysis/moe-report
writer=${top_builddir:-.}/tests/routing_log_writer
chk=${srcdir:-.}/tests/test_report_check.py
py=/usr/bin/python3
if ! "$py" -c 'import h5py, numpy' >/dev/null 2>&1; then
  echo "1..0 # SKIP h5py or numpy not available"
  exit 0
fi
tmp=$(mktemp -d) || exit 99
pid=
trap '[ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; rm -rf "$tmp"' EXIT
n=0
check() {
  what=$1; shift
  n=$((n + 1))
  if "$@" >"$tmp/out" 2>"$tmp/err"; then
    echo "ok $n - $what"
  else
    echo "not ok $n - $what"
    sed 's/^/# /' "$tmp/err" | head -10
  fi
}
# fails CODE PATTERN WHAT -- ARGS: moe-report ARGS exits CODE with one stderr line matching PATTERN.
fails() {
  code=$1; pat=$2; what=$3; shift 4
  n=$((n + 1))
  "$report" "$@" >"$tmp/out" 2>"$tmp/err"
  rc=$?
  lines=$(wc -l <"$tmp/err")
  if [ "$rc" -eq "$code" ] && [ "$lines" -eq 1 ] && grep -q -- "$pat" "$tmp/err"; then
    echo "ok $n - $what (exit $code, one line)"
  else
    echo "not ok $n - $what: exit $rc, $lines stderr lines"
    sed 's/^/# /' "$tmp/err" | head -5
  fi
}

"$py" "$chk" make "$tmp/micro" 1 && "$py" "$chk" make "$tmp/global" 2 || { echo "Bail out! fixture"; exit 1; }

# --- metrics against numpy
check "one run, auto source (eval), all rows: runs" "$report" "$tmp/micro" -o "$tmp/r1"
check "... every metric equals numpy's" "$py" "$chk" check "$tmp/r1" auto all "$tmp/micro"
check "--source train --window last:2: runs" "$report" "$tmp/micro" -o "$tmp/r2" --source train --window last:2
check "... every metric equals numpy's" "$py" "$chk" check "$tmp/r2" train last:2 "$tmp/micro"
check "--window steps:2-4 (eval rows 2 and 4): runs" "$report" "$tmp/micro" -o "$tmp/r3" -w steps:2-4
check "... every metric equals numpy's" "$py" "$chk" check "$tmp/r3" auto steps:2-4 "$tmp/micro"
check "two runs side by side: runs" "$report" "$tmp/micro" "$tmp/global" -o "$tmp/r4"
check "... every metric of both equals numpy's" "$py" "$chk" check "$tmp/r4" auto all "$tmp/micro" "$tmp/global"
check "... comparison.csv has a column per run" grep -q '^metric,micro,global$' "$tmp/r4/comparison.csv"
check "... report.md starts with the summary" sh -c "sed -n 3p '$tmp/r4/report.md' | grep -q '^## Summary'"
check "--domains code,prose: runs" "$report" "$tmp/micro" -o "$tmp/r5" --domains code,prose
check "... only those domains in the tables" sh -c "! grep -q ',math,' '$tmp/r5/concentration.csv' && grep -q ',prose,' '$tmp/r5/concentration.csv'"

# --- figures
check "figures: PNG magic and 900x600 IHDR, SVG parses and is 900x600 (one run)" "$py" "$chk" figures "$tmp/r1"
check "figures: the same with two runs" "$py" "$chk" figures "$tmp/r4"
check "figures: a heatmap and sorted bars per layer, four curves" sh -c \
  "ls '$tmp/r4' | grep -c -E '^(heatmap_layer[01]|freq_bars_layer[01]|curve_(loss|lbl|maxvio|val_loss))\.(png|svg)$' | grep -qx 16"

# --- errors
fails 3 "$tmp/none/routing.h5" "a missing log names the file" -- "$tmp/none" -o "$tmp/e"
mkdir -p "$tmp/zero" && : >"$tmp/zero/routing.h5"
fails 3 "empty" "a 0-byte log" -- "$tmp/zero" -o "$tmp/e"
mkdir -p "$tmp/norows" && "$py" "$chk" make-empty "$tmp/norows/routing.h5"
fails 3 "empty routing log" "a log with 0 rows" -- "$tmp/norows" -o "$tmp/e"
mkdir -p "$tmp/cut" && head -c 3000 "$tmp/micro/routing.h5" >"$tmp/cut/routing.h5"
fails 3 "$tmp/cut/routing.h5" "a truncated file" -- "$tmp/cut" -o "$tmp/e"
mkdir -p "$tmp/short" && "$py" "$chk" make-short "$tmp/short/routing.h5"
fails 3 "truncated routing log" "a log whose /counts lacks committed rows" -- "$tmp/short" -o "$tmp/e"
"$py" "$chk" make "$tmp/wide" 3 2 16
fails 3 "$tmp/micro.*$tmp/wide" "runs of different expert counts name both" -- "$tmp/micro" "$tmp/wide" -o "$tmp/e"
"$py" "$chk" make "$tmp/deep" 3 3 8
fails 3 "different layer or expert counts" "runs of different layer counts" -- "$tmp/micro" "$tmp/deep" -o "$tmp/e"
fails 3 "unknown domain 'bio'" "an unknown domain in --domains" -- "$tmp/micro" -o "$tmp/e" --domains code,bio
fails 2 "no output directory" "no -o is a usage error" -- "$tmp/micro"
fails 2 "window" "a bad --window is a usage error" -- "$tmp/micro" -o "$tmp/e" --window last:0
fails 2 "source" "a bad --source is a usage error" -- "$tmp/micro" -o "$tmp/e" --source both
fails 3 "no evaluation row" "a steps: window without rows" -- "$tmp/micro" -o "$tmp/e" --window steps:100-200
check "--help prints usage and exits 0" sh -c "'$report' --help | grep -q '^Usage: moe-report'"

# --- a log still being written (routing_log_writer: steps 1..N, 100 ms apart)
mkdir -p "$tmp/live"
"$writer" "$tmp/live/routing.h5" 100000 100 >"$tmp/live.out" 2>"$tmp/live.err" &
pid=$!
i=0
while [ "$(grep -c '^step' "$tmp/live.out" 2>/dev/null)" -lt 4 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
first=$(grep '^step' "$tmp/live.out" | tail -1 | awk '{print $2}')
"$report" "$tmp/live" -o "$tmp/rl" --source train --window last:1 >"$tmp/rl.out" 2>"$tmp/rl.err"
rc=$?
last=$(grep '^step' "$tmp/live.out" | tail -1 | awk '{print $2}')
check "a report while the writer runs succeeds (exit $rc)" [ "$rc" -eq 0 ]
check "... and the writer is still running" kill -0 "$pid"
check "... its window ends at the last flushed step (writer at $first..$last)" \
  "$py" "$chk" live "$tmp/rl" "${first:-0}" "${last:-0}"
upto=$(awk -F, 'NR==2{print $4}' "$tmp/rl/summary.csv")
check "... every metric equals numpy's over steps 1..$upto, read again while the writer runs" \
  sh -c "'$report' '$tmp/live' -o '$tmp/rl2' --source train --window steps:1-${upto:-0} && \
         '$py' '$chk' check '$tmp/rl2' train steps:1-${upto:-0} '$tmp/live'"
kill -9 "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
pid=
echo "1..$n"
