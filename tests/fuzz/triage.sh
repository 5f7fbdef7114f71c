#!/bin/sh
# triage.sh - sort what `make fuzz` found into libhdf5's and moekit's.
#
#   sh tests/fuzz/triage.sh [BUILD]      (BUILD defaults to tests/fuzz/clang-build)
#
# Runs each file of BUILD/artifacts/NAME/ once more through BUILD/bin/fuzz_NAME and prints
# one line per file: harness, kind (crash, leak, timeout, oom, ...), "libhdf5" when the
# innermost frame that is neither a sanitizer nor libc is in libhdf5 (a known 1.10.8
# problem, T8) or "moekit" otherwise (a bug to fix, with a crasher), that frame, and the
# innermost moekit frame (who called into the library). The sanitizers' reports are under
# BUILD/triage/.
set -u
build=${1:-tests/fuzz/clang-build}
out=$build/triage
mkdir -p "$out"
: "${LSAN_OPTIONS:=}"
LSAN_OPTIONS="suppressions=$(dirname "$0")/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
ASAN_OPTIONS="fast_unwind_on_malloc=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export LSAN_OPTIONS ASAN_OPTIONS
printf 'harness\tartifact\tkind\twhere\tframe\tmoekit_frame\n'
for dir in "$build"/artifacts/*/; do
    h=$(basename "$dir")
    for a in "$dir"*; do
        [ -f "$a" ] || continue
        name=$(basename "$a")
        kind=${name%%-*}
        rep=$out/$h-$name.txt
        timeout 120 "$build/bin/fuzz_$h" -timeout=10 -rss_limit_mb=2048 "$a" > "$rep" 2>&1
        frames=$(sed -n '/ERROR:/,$p' "$rep" | grep -E '^ *#[0-9]+ ' |
            grep -vE '__interceptor_|__asan|__sanitizer|__lsan|libclang_rt|fuzzer::|libc\.so|__libc_|_start|in main |nanosleep|clock_nanosleep|malloc|calloc|realloc|free |sysdeps/|__mem(cpy|move|set)|pthread_kill|raise|abort')
        if ! grep -q 'ERROR:' "$rep"; then
            printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$h" "$name" "$kind" "none" "does not reproduce" "-"
            continue
        fi
        top=$(echo "$frames" | head -1 | sed 's/^ *#[0-9]* 0x[0-9a-f]* //; s/ (BuildId.*//')
        mine=$(echo "$frames" | grep -E '/(lib|bin|analysis|tests/fuzz)/[a-z_A-Z0-9-]+\.[ch]:' | head -1 |
            sed 's/ (BuildId.*//; s/^ *#[0-9]* 0x[0-9a-f]* in \([^ ]*\) .*\/\(lib\|bin\|analysis\|tests\)\/\([^/]*\)$/\1 \2\/\3/')
        case $top in *libhdf5*) where=libhdf5 ;; *) where=moekit ;; esac
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$h" "$name" "$kind" "$where" "$top" "${mine:--}"
    done
done
