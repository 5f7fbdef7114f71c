#!/bin/sh
# test_fuzz_replay.sh - replay every harness's committed corpus and past crashers (T7, T8).
#
# Each tests/fuzz/replay_NAME is fuzz_NAME.c linked with a plain main() (replay.c) and the
# normal build: it runs every file of tests/fuzz/corpus/NAME/ and tests/fuzz/crashers/NAME/
# through the harness, whose properties abort on failure. Also checks that every place that
# opens an HDF5 file goes through mk_h5_fopen (plugins off).
: "${top_builddir:=.}" "${top_srcdir:=.}"
# Leaks inside libhdf5 on corrupt files are the library's (tests/fuzz/lsan.supp), for
# --enable-sanitizers builds; a hang fails the test instead of stalling make check.
LSAN_OPTIONS="suppressions=$top_srcdir/tests/fuzz/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
export LSAN_OPTIONS
limit=
command -v timeout >/dev/null 2>&1 && limit="timeout 120"
harnesses="indexed config manifest corpus bpe sbatch ckpt routing_log"
n=0
fails=0
echo "1..9"
for h in $harnesses; do
    n=$((n + 1))
    dirs="$top_srcdir/tests/fuzz/corpus/$h"
    [ -d "$top_srcdir/tests/fuzz/crashers/$h" ] && dirs="$dirs $top_srcdir/tests/fuzz/crashers/$h"
    seeds=$(ls "$top_srcdir/tests/fuzz/corpus/$h" 2>/dev/null | wc -l)
    crashers=$(ls "$top_srcdir/tests/fuzz/crashers/$h" 2>/dev/null | wc -l)
    # shellcheck disable=SC2086
    out=$($limit "$top_builddir/tests/fuzz/replay_$h" $dirs 2>&1)
    rc=$?
    want=$((seeds + crashers))
    if [ $rc -eq 0 ] && [ "$seeds" -gt 0 ] && [ "$out" = "replayed $want inputs" ]; then
        echo "ok $n - $h: $seeds corpus inputs and $crashers crashers replayed"
    else
        echo "not ok $n - $h: exit $rc, $seeds corpus inputs, $crashers crashers: $out"
        echo "# rerun with: $top_builddir/tests/fuzz/replay_$h -v $dirs"
        fails=$((fails + 1))
    fi
done
n=$((n + 1))
raw=$(grep -n 'H5Fopen(' "$top_srcdir"/lib/*.c "$top_srcdir"/bin/*.c "$top_srcdir"/analysis/*.c 2>/dev/null)
if [ -z "$raw" ]; then
    echo "ok $n - every HDF5 open in lib/, bin/ and analysis/ goes through mk_h5_fopen (plugins off)"
else
    echo "not ok $n - H5Fopen called directly (plugin loading stays on): $raw"
    fails=$((fails + 1))
fi
[ $fails -eq 0 ]
