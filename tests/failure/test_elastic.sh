#!/bin/sh
# test_elastic.sh - T13: tests/failure/mpi_elastic in one 4-rank job: the 20 ordered pairs
# of (world, ep) in {(1,1), (2,1), (2,2), (4,2), (4,4)}; a checkpoint loaded into another
# layout and saved again has bitwise-equal datasets, and the next step's loss matches.
. "${srcdir:-.}/tests/failure/common.sh"
if [ -z "$MPIEXEC" ]; then echo "1..0 # SKIP no MPI launcher"; exit 0; fi
tmp=$(mktemp -d) || exit 99
trap 'rm -rf "$tmp"' EXIT
$MPIEXEC -n 4 --bind-to none "$top_builddir/tests/failure/mpi_elastic" "$srcdir/schedules/tiny.ini" \
  "$srcdir/data/demo/english.txt" "$tmp"
