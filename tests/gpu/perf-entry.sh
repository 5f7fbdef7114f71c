#!/bin/sh
# perf-entry.sh OUTDIR PERFMD COMMAND - add the results of one tests/gpu/run.sh call (left in
# OUTDIR: gpu-results.md, bench.md, kernel-bench.txt, pdl-bench.txt, kernel-profile.txt) to PERFMD (docs/performance.md) as a
# dated entry at the top, newest first: the date, the GPU, the command, the GPU test
# counts and the benchmark's numbers. run.sh calls it at its end and leaves the updated
# file in OUTDIR/performance.md, since nothing else the device machine writes comes back.
# The file is replaced whole (a temporary file, then rename), so a failure leaves it as it
# was.
set -u
[ $# -eq 3 ] || { echo "usage: perf-entry.sh OUTDIR PERFMD COMMAND" >&2; exit 2; }
out=$1 perf=$2 cmd=$3
[ -f "$perf" ] || { echo "perf-entry.sh: $perf: no such file" >&2; exit 3; }
[ -f "$out/gpu-results.md" ] || { echo "perf-entry.sh: $out/gpu-results.md: no such file (run.sh writes it)" >&2; exit 3; }
grep -q '^## ' "$perf" || { echo "perf-entry.sh: $perf has no '## ' entry to put the new one before" >&2; exit 3; }

when=$(sed -n 's/^# GPU test run //p' "$out/gpu-results.md" | head -1)
gpu=$(sed -n 's/^GPU: //p' "$out/gpu-results.md" | head -1)
tap=$out/gpu-tests.tap
[ -f "$tap" ] || tap=/dev/null
n_ok=$(grep -c '^ok ' "$tap")
n_skip=$(grep -c '^ok .*# SKIP' "$tap")
n_bad=$(grep -c '^not ok ' "$tap")
commit=$(git rev-parse --short HEAD 2>/dev/null || echo "not a git checkout")
# The device tool copies the working tree, but its copy of .git can lag it: say when the
# tracked files are not HEAD's.
changed=$(git diff --name-only HEAD 2>/dev/null | wc -l)
[ "${changed:-0}" -gt 0 ] && commit="$commit with $changed tracked files changed"

entry=$(mktemp) || exit 1
new=$perf.tmp.$$
trap 'rm -f "$entry" "$new"' EXIT
{
  echo "## ${when:-$(date -u +%Y-%m-%dT%H:%MZ)} — tests/gpu/run.sh on ${gpu%%,*} (raw results)"
  echo
  echo "Written by \`tests/gpu/perf-entry.sh\` at the end of the call; the analysis, if any, is in"
  echo "the entries below it."
  echo
  echo "- command: \`$cmd\` (tree: $commit)"
  echo "- GPU: $gpu; $(sed -n 's/^nvcc: //p' "$out/gpu-results.md" | head -1)"
  echo "- $(grep '^configure + build' "$out/gpu-results.md" | head -1)"
  echo "- GPU tests: $n_ok ok ($n_skip of them skipped), $n_bad not ok"
  echo
  if [ -f "$out/bench.md" ]; then
    sed '1{/^### /d}' "$out/bench.md" | sed '1{/^$/d}'
    echo
  fi
  if [ -f "$out/kernel-bench.txt" ]; then
    echo "Kernel timings (\`tests/gpu/kernel_bench\`):"
    echo
    echo '```'
    cat "$out/kernel-bench.txt"
    echo '```'
    echo
  fi
  if [ -f "$out/pdl-bench.txt" ]; then
    echo "Programmatic dependent launch (\`tests/gpu/pdl_bench.cu\`):"
    echo
    echo '```'
    cat "$out/pdl-bench.txt"
    echo '```'
    echo
  fi
  if [ -f "$out/kernel-profile.txt" ]; then
    echo "Kernel by kernel, one step (\`tests/gpu/kernel-profile.sh\`, Nsight Compute, each kernel alone):"
    echo
    echo '```'
    sed '/^$/q' "$out/kernel-profile.txt" | head -45
    echo '```'
    echo
  fi
} >"$entry"
# everything before the first entry, the new entry, then every entry before
awk -v entry="$entry" '
  !done && /^## / { while ((getline l < entry) > 0) print l; done = 1 }
  { print }' "$perf" >"$new" && mv "$new" "$perf" || exit 4
echo "perf-entry.sh: added the results of $when to $perf"
