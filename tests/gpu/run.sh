#!/bin/sh
# tests/gpu/run.sh - everything a GPU machine session needs in one call: configure with
# CUDA against the libraries carried in .deps/ (see docs/gpu-machine.md), build, run the GPU
# tests and the benchmark, and leave the results in $OUT (gpu-results.md, the TAP output,
# bench.md, the build logs, and performance.md: docs/performance.md with this call's
# results added at the top by tests/gpu/perf-entry.sh).
#
# From the project root on this machine, with the device tool:
#   ./autogen.sh && sh tests/gpu/fetch-deps.sh        # once: generated files and .deps/
#   device run: sh tests/gpu/run.sh   carry: configure Makefile.in aclocal.m4 config.h.in
#                                             build-aux m4 .deps
set -u
out=${OUT:-/tmp/moekit-gpu}
mkdir -p "$out"
deps=$PWD/.deps/usr
lib=$deps/lib/x86_64-linux-gnu
export CPPFLAGS="-I$deps/include" LDFLAGS="-L$lib -Wl,-rpath,$lib"
# The machine sets CC to its gcc; moekit is built with the MPI wrapper.
export CC=mpicc
start=$(date +%s)
if ! ./configure --with-cuda >"$out/configure.log" 2>&1; then
  tail -40 "$out/configure.log"; exit 1
fi
grep -A9 '^moekit .* configuration' "$out/configure.log"
if ! make -j"$(nproc)" >"$out/build.log" 2>&1; then
  grep -E 'error|Error' "$out/build.log" | head -30; exit 1
fi
make -j"$(nproc)" tests/test_cuda_smoke tests/test_cuda_backend >>"$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
built=$(( $(date +%s) - start ))
fails=0
: >"$out/gpu-tests.tap"
gpu_tests="tests/test_cuda_smoke tests/test_cuda_backend tests/gpu/test_gpu_train.sh"
case ${MOEKIT_GPU_TESTS:-1} in
  0) gpu_tests= ;;                      # benchmark only
  1) ;;
  *) gpu_tests=$MOEKIT_GPU_TESTS ;;     # a list of the above
esac
for t in $gpu_tests; do
  echo "== $t" >>"$out/gpu-tests.tap"
  case $t in
    *.sh) top_builddir=$PWD top_srcdir=$PWD sh "$t" >>"$out/gpu-tests.tap" 2>&1 ;;
    *) ./"$t" >>"$out/gpu-tests.tap" 2>&1 ;;
  esac
  rc=$?
  [ $rc -eq 0 ] || [ $rc -eq 77 ] || fails=$((fails + 1))
done
cat "$out/gpu-tests.tap"
{
  echo "# GPU test run $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | sed 's/^/GPU: /'
  echo "nvcc: $(nvcc --version | tail -1)"
  echo "configure + build: ${built} s"
  echo
  echo '```'
  grep -E '^(ok|not ok|1\.\.|#)' "$out/gpu-tests.tap"
  echo '```'
} >"$out/gpu-results.md"
# MOEKIT_GEMM_BENCH=1: which cuBLAS form suits bench-s.ini's GEMMs (tests/gpu/gemm_bench.cu).
if [ "${MOEKIT_GEMM_BENCH:-0}" = 1 ]; then
  nvcc -O2 -std=c++17 -arch=sm_90 tests/gpu/gemm_bench.cu -lcublas -o tests/gpu/gemm_bench \
    >>"$out/build.log" 2>&1 && ./tests/gpu/gemm_bench >"$out/gemm-bench.txt" 2>&1
  cat "$out/gemm-bench.txt"
fi
# MOEKIT_PDL_BENCH=1: what programmatic dependent launch saves between two kernels here
# (tests/gpu/pdl_bench.cu).
if [ "${MOEKIT_PDL_BENCH:-0}" = 1 ]; then
  nvcc -O2 -std=c++17 -arch=sm_90 tests/gpu/pdl_bench.cu -o tests/gpu/pdl_bench >>"$out/build.log" 2>&1 &&
    ./tests/gpu/pdl_bench >"$out/pdl-bench.txt" 2>&1
  cat "$out/pdl-bench.txt"
fi
# MOEKIT_KERNEL_BENCH=1: the backend's own kernels at bench-s shapes (tests/gpu/kernel_bench.c).
if [ "${MOEKIT_KERNEL_BENCH:-0}" = 1 ]; then
  { make tests/gpu/kernel_bench >>"$out/build.log" 2>&1 && ./tests/gpu/kernel_bench &&
    ./tests/gpu/kernel_bench skew; } >"$out/kernel-bench.txt" 2>&1
  cat "$out/kernel-bench.txt"
fi
# MOEKIT_KERNEL_PROFILE=1: every kernel of one bench-s.ini step under Nsight Compute
# (tests/gpu/kernel-profile.sh).
if [ "${MOEKIT_KERNEL_PROFILE:-0}" = 1 ]; then
  top_builddir=$PWD top_srcdir=$PWD sh tests/gpu/kernel-profile.sh "$out" 2>&1 | head -80
fi
# The benchmark (MOEKIT_GPU_BENCH=0 skips it): bench-s.ini on 1 and 2 GPUs and PyTorch.
# It stops at the call's deadline (MOEKIT_CALL_S seconds after the start, default 580: the
# device tool gives a command 600), keeping the rows it has, so that the entry below is
# still written.
if [ "${MOEKIT_GPU_BENCH:-1}" != 0 ]; then
  left=$(( ${MOEKIT_CALL_S:-580} - ($(date +%s) - start) - 15 ))
  if [ "$left" -lt 30 ]; then
    echo "Benchmark not run: $left s left before the call's deadline (MOEKIT_CALL_S)." >"$out/bench.md"
  else
    PYTHON_TORCH=$(sed -n 's/^PYTHON_TORCH = //p' Makefile) top_builddir=$PWD top_srcdir=$PWD \
      timeout "$left" sh tests/gpu/bench.sh "$out/bench.md" "${MOEKIT_BENCH_STEPS:-40}" 2>"$out/bench.log"
    [ $? -eq 124 ] && printf '\nThe benchmark was stopped at the call'"'"'s deadline (%s s for it): the rows above are what it finished.\n' \
      "$left" >>"$out/bench.md"
  fi
fi
# The results as a dated entry at the top of docs/performance.md; the updated file comes
# back in $out/performance.md (copy it over the local one).
cmd="$(env | grep '^MOEKIT_' | LC_ALL=C sort | sed 's/=\(.*\)/="\1"/' | tr '\n' ' ')sh tests/gpu/run.sh"
sh tests/gpu/perf-entry.sh "$out" docs/performance.md "$cmd" && cp docs/performance.md "$out/performance.md"
exit $fails
