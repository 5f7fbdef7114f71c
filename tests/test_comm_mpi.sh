#!/bin/sh
# test_comm_mpi.sh - tests/mpi_comm (the collectives of mk_comm.h) under the MPI launcher on
# 1, 2 and 4 ranks. One TAP line per rank count; the program's own checks and messages are
# kept as "# " diagnostics, so a failure shows which check failed and why.
if [ -z "$MPIEXEC" ]; then
  echo "1..0 # SKIP no MPI launcher"
  exit 0
fi
prog=$top_builddir/tests/mpi_comm
tmp=$(mktemp -d) || exit 99
trap 'rm -rf "$tmp"' EXIT
# A broken collective hangs rather than fails: bound each run when timeout(1) exists.
limit=
if command -v timeout >/dev/null 2>&1; then limit="timeout 600"; fi
fails=0
t=0
for n in 1 2 4; do
  t=$((t + 1))
  $limit $MPIEXEC -n $n --bind-to none "$prog" >"$tmp/out" 2>"$tmp/err"
  rc=$?
  sed 's/^/# /' "$tmp/out" "$tmp/err"
  plan=$(sed -n 's/^1\.\.\([0-9][0-9]*\)$/\1/p' "$tmp/out")
  passed=$(grep -c '^ok ' "$tmp/out")
  if [ "$rc" -eq 0 ] && [ -n "$plan" ] && [ "$plan" -gt 0 ] && [ "$passed" -eq "$plan" ] &&
     ! grep -q '^not ok' "$tmp/out"; then
    echo "ok $t - mpi_comm on $n rank(s): $passed of $plan checks"
  else
    echo "not ok $t - mpi_comm on $n rank(s): exit status $rc, $passed of ${plan:-?} checks passed"
    fails=$((fails + 1))
  fi
done
echo "1..$t"
[ "$fails" -eq 0 ]
