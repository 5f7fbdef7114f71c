#!/bin/sh
# test_h5_errors.sh - T4/T18: runs tests/fault/h5_loop, the loop that fails the k-th HDF5
# call (k = 1, 2, ...; transient and persistent) of a checkpoint save, load, verify and
# search, in an empty directory.
: "${top_builddir:=.}" "${srcdir:=.}"
tmp=$(mktemp -d) || exit 99
trap 'rm -rf "$tmp"' EXIT
export OMP_NUM_THREADS=1 srcdir
# h5_loop starts no MPI, so LeakSanitizer stays on for it in sanitizer builds
ASAN_OPTIONS=$(echo "${ASAN_OPTIONS:-}" | sed 's/detect_leaks=0//'); export ASAN_OPTIONS
"$top_builddir/tests/fault/h5_loop" "$tmp"
