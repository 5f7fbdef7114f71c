#!/bin/sh
# fuzz.sh - build the libFuzzer harnesses with clang + ASan + UBSan and run each for a while.
#
# Called by `make fuzz` with the build's flags in FUZZ_* variables; arguments are harness
# names (tests/fuzz/fuzz_NAME.c). The library sources are compiled again with clang into
# FUZZ_BUILD/obj (apart from the gcc build). Each harness runs FUZZ_SECONDS on a working
# copy of its corpus (FUZZ_BUILD/corpus/NAME, seeded from tests/fuzz/corpus/NAME) plus its
# crashers; new crash/leak/timeout inputs land in FUZZ_BUILD/artifacts/NAME/. One line per
# harness goes to FUZZ_BUILD/summary.tsv and to stdout. Exit status 1 if any harness found
# something.
#   FUZZ_NICE=10      nice level of the runs
#   FUZZ_ONLY=...     build only (FUZZ_SECONDS=0 also just builds)
#   FUZZ_FLAGS=...    extra libFuzzer flags
#   FUZZ_FORK="ckpt routing_log"  harnesses run with -fork=1 and -ignore_crashes: crashes
#                     inside libhdf5 1.10.8 on crafted files are known (T8); the run goes on
#                     and every crash is kept for tests/fuzz/triage.sh to sort into libhdf5's
#                     and moekit's
set -u
: "${FUZZ_CC:=clang}" "${FUZZ_SECONDS:=60}" "${FUZZ_BUILD:=tests/fuzz/clang-build}" "${FUZZ_NICE:=10}"
: "${FUZZ_FORK=ckpt routing_log}"
: "${FUZZ_SRCDIR:=.}" "${FUZZ_CPPFLAGS:=}" "${FUZZ_LIB_SOURCES:=}" "${FUZZ_LIBS:=}" "${FUZZ_FLAGS:=}"
src=$FUZZ_SRCDIR
san="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
cflags="-g -O1 -fopenmp $san $FUZZ_CPPFLAGS -Wno-unknown-pragmas"
mkdir -p "$FUZZ_BUILD/obj" "$FUZZ_BUILD/bin" || exit 1

# Can this clang link libFuzzer at all?
probe=$FUZZ_BUILD/probe
printf '#include <stddef.h>\n#include <stdint.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n' > "$probe.c"
if ! $FUZZ_CC -fsanitize=fuzzer,address,undefined "$probe.c" -o "$probe" 2> "$probe.err"; then
    echo "fuzz.sh: $FUZZ_CC cannot link -fsanitize=fuzzer,address,undefined:" >&2
    cat "$probe.err" >&2
    echo "fuzz.sh: libFuzzer comes with clang's runtime, on Debian the package libclang-rt-14-dev" \
         "(for clang-14); set FUZZ_CC to another clang with it." >&2
    exit 2
fi

# The library, with the harnesses' instrumentation (fuzzer-no-link: coverage, no main).
objs=
for f in $FUZZ_LIB_SOURCES; do
    case $f in *.c) ;; *) continue ;; esac
    o=$FUZZ_BUILD/obj/$(basename "$f" .c).o
    if [ ! -f "$o" ] || [ "$src/$f" -nt "$o" ] || [ -n "$(find "$src/lib" -name '*.h' -newer "$o" 2>/dev/null | head -1)" ]; then
        echo "  CLANG    $f"
        $FUZZ_CC $cflags -fsanitize=fuzzer-no-link -c "$src/$f" -o "$o" || exit 1
    fi
    objs="$objs $o"
done

extra_sources() {
    case $1 in
        sbatch) echo "$src/bin/mk_sbatch.c" ;;
        routing_log) echo "$src/analysis/mk_routing_read.c" ;;
    esac
}

# Leaks inside libhdf5 itself (failed opens of corrupt files) are the library's.
LSAN_OPTIONS="suppressions=$src/tests/fuzz/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
export LSAN_OPTIONS
status=0
[ -f "$FUZZ_BUILD/summary.tsv" ] || printf 'harness\tseconds\texecs\texec_per_s\tcov\tft\tcorpus\tnew_units\tpeak_rss_mb\tfindings\n' > "$FUZZ_BUILD/summary.tsv"
for h in "$@"; do
    exe=$FUZZ_BUILD/bin/fuzz_$h
    echo "  CLANG    tests/fuzz/fuzz_$h.c"
    # shellcheck disable=SC2046
    $FUZZ_CC $cflags -fsanitize=fuzzer "$src/tests/fuzz/fuzz_$h.c" $(extra_sources "$h") $objs \
        $FUZZ_LIBS -o "$exe" || exit 1
    [ "$FUZZ_SECONDS" -gt 0 ] 2>/dev/null || continue
    [ -z "${FUZZ_ONLY:-}" ] || continue
    work=$FUZZ_BUILD/corpus/$h art=$FUZZ_BUILD/artifacts/$h
    mkdir -p "$work" "$art" "$src/tests/fuzz/crashers/$h"
    cp -n "$src/tests/fuzz/corpus/$h/"* "$work/" 2>/dev/null
    log=$FUZZ_BUILD/fuzz_$h.log
    before=$(ls "$art" | wc -l)
    echo "  FUZZ     $h for ${FUZZ_SECONDS}s (log $log)"
    fork=
    case " $FUZZ_FORK " in *" $h "*) fork="-fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1" ;; esac
    # -close_fd_mask=2: the parsers' one-line errors would flood the log; libFuzzer and the
    # sanitizers keep reporting on a duplicate of stderr.
    # shellcheck disable=SC2086
    nice -n "$FUZZ_NICE" "$exe" -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 \
        -close_fd_mask=2 -print_final_stats=1 -artifact_prefix="$art/" $fork $FUZZ_FLAGS \
        "$work" "$src/tests/fuzz/corpus/$h" "$src/tests/fuzz/crashers/$h" > "$log" 2>&1
    rc=$?
    after=$(ls "$art" | wc -l)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    if [ -n "$fork" ]; then # the parent's status lines: "#EXECS: cov: C ft: F corp: N exec/s E ..."
        execs=$(grep -E '^#[0-9]+: cov:' "$log" | tail -1 | sed 's/^#\([0-9]*\):.*/\1/')
        eps=$(grep -E '^#[0-9]+: cov:' "$log" | tail -1 | sed -n 's/.*exec\/s \([0-9]*\).*/\1/p')
    fi
    newu=$(sed -n 's/^stat::new_units_added: *//p' "$log" | tail -1)
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
    last=$(grep -E '^#[0-9]+:?[[:space:]]' "$log" | grep ' cov: ' | tail -1)
    cov=$(echo "$last" | sed -n 's/.* cov: \([0-9]*\).*/\1/p')
    ft=$(echo "$last" | sed -n 's/.* ft: \([0-9]*\).*/\1/p')
    corp=$(echo "$last" | sed -n 's/.* corp: \([0-9]*\(\/[0-9a-zA-Z]*\)\{0,1\}\).*/\1/p')
    found=$((after - before))
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$h" "$FUZZ_SECONDS" "${execs:-?}" "${eps:-?}" \
        "${cov:-?}" "${ft:-?}" "${corp:-?}" "${newu:-?}" "${rss:-?}" "$found" | tee -a "$FUZZ_BUILD/summary.tsv"
    if [ "$rc" -ne 0 ] || [ "$found" -ne 0 ]; then
        echo "fuzz.sh: $h found something (exit $rc): see $log and $art/" >&2
        grep -E '^(==[0-9]+==ERROR|SUMMARY|.*runtime error)' "$log" | head -5 >&2
        status=1
    fi
done
exit $status
