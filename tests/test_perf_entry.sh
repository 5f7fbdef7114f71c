#!/bin/sh
# test_perf_entry.sh - tests/gpu/perf-entry.sh, which adds one GPU call's results to
# docs/performance.md: the entry lands before the newest one with the date, GPU, command,
# test counts and benchmark table; the rest of the file is kept byte for byte; a missing
# input or a file without entries is refused with the file unchanged.
srcdir=$(cd "${srcdir:-.}" && pwd)
tool=$srcdir/tests/gpu/perf-entry.sh
tmp=$(mktemp -d) || exit 99
trap 'rm -rf "$tmp"' EXIT
n=0; fails=0
ok() { n=$((n + 1)); if [ "$1" -eq 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; fails=$((fails + 1)); fi; }

out=$tmp/out; mkdir "$out"
printf '# GPU test run 2026-11-29T02:33Z\n\nGPU: NVIDIA H200, 143771 MiB, 580.159.04\nnvcc: Build cuda_13.0\nconfigure + build: 107 s\n' >"$out/gpu-results.md"
printf 'ok 1 - a\nok 2 - b # SKIP one GPU only\nnot ok 3 - c\nok 4 - d\n' >"$out/gpu-tests.tap"
printf '### schedules/bench-s.ini, 2026-11-29, NVIDIA H200 x 1\n\n| run | tokens/s |\n|---|---|\n| 1 GPU, lbl micro | 234962 |\n' >"$out/bench.md"
printf '# Performance\n\nIntro.\n\n## 2026-11-28 - older entry\n\nold numbers\n\n## 2026-11-27 - oldest\n' >"$tmp/perf.md"
cp "$tmp/perf.md" "$tmp/orig.md"

sh "$tool" "$out" "$tmp/perf.md" 'MOEKIT_BENCH_STEPS="30" sh tests/gpu/run.sh' >"$tmp/log" 2>&1
ok $? "perf-entry.sh succeeds"
first=$(grep -m1 '^## ' "$tmp/perf.md")
[ "$first" = "## 2026-11-29T02:33Z — tests/gpu/run.sh on NVIDIA H200 (raw results)" ]
ok $? "the new entry comes first, dated and naming the GPU ($first)"
head -4 "$tmp/orig.md" >"$tmp/orig.head"
head -4 "$tmp/perf.md" | cmp -s - "$tmp/orig.head"
ok $? "the header before the entries is kept"
sed -n '/^## 2026-11-28 - older entry/,$p' "$tmp/orig.md" >"$tmp/orig.tail"
sed -n '/^## 2026-11-28 - older entry/,$p' "$tmp/perf.md" | cmp -s - "$tmp/orig.tail"
ok $? "every older entry is kept byte for byte, after the new one"
grep -q '^- GPU tests: 3 ok (1 of them skipped), 1 not ok$' "$tmp/perf.md"
ok $? "the GPU test counts are right"
grep -q '^- command: `MOEKIT_BENCH_STEPS="30" sh tests/gpu/run.sh`' "$tmp/perf.md" &&
  grep -q '^| 1 GPU, lbl micro | 234962 |$' "$tmp/perf.md" && ! grep -q '^### schedules' "$tmp/perf.md"
ok $? "the command and the benchmark table are in, the bench file's own title is not"

cp "$tmp/perf.md" "$tmp/before.md"
mv "$out/gpu-results.md" "$out/gone.md"
sh "$tool" "$out" "$tmp/perf.md" x >"$tmp/log" 2>&1
rc=$?
[ $rc -eq 3 ] && cmp -s "$tmp/perf.md" "$tmp/before.md" && grep -q 'gpu-results.md' "$tmp/log"
ok $? "no gpu-results.md: exit 3 naming it, the file unchanged (exit $rc)"
mv "$out/gone.md" "$out/gpu-results.md"
printf '# Performance\n\nno entries yet\n' >"$tmp/empty.md"
cp "$tmp/empty.md" "$tmp/empty0.md"
sh "$tool" "$out" "$tmp/empty.md" x >"$tmp/log" 2>&1
rc=$?
[ $rc -eq 3 ] && cmp -s "$tmp/empty.md" "$tmp/empty0.md"
ok $? "a file without entries: exit 3, unchanged (exit $rc)"
rm "$out/bench.md"
sh "$tool" "$out" "$tmp/perf.md" x >"$tmp/log" 2>&1 &&
  [ "$(grep -c '^## ' "$tmp/perf.md")" -eq 4 ] && [ -z "$(ls "$tmp" | grep 'perf.md.tmp')" ]
ok $? "without a benchmark the entry is still added, and no temporary file is left"
echo "1..$n"
[ $fails -eq 0 ]
