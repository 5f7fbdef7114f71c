#!/bin/sh
# test_data_resume.sh - T14: the data order survives a resume. On the demo corpus sharded
# byte-level (5 domains, uniform mixture, global batch 16 in 2 micro-steps), a loader that
# starts fresh at global batch S, as a resumed run does, on 1, 2 or 4 ranks, gives the next
# 100 global batches hash-identical to a loader on 1 rank that read batches 0..S-1 first.
# S: 0, mid-epoch, the first domain-repeat boundary (a domain's train split starts its second
# epoch inside the window), and 1000 (the last step of a 1000-step run, extended).
. "${srcdir:-.}/tests/failure/common.sh"
if [ -z "$MPIEXEC" ]; then echo "1..0 # SKIP no MPI launcher"; exit 0; fi
tmp=$(mktemp -d) || exit 99
trap 'rm -rf "$tmp"' EXIT
batches=$top_builddir/tests/mpi_batches
domains=""
for f in "$srcdir"/data/demo/*.txt; do domains="$domains --domain $(basename "$f" .txt)=$f"; done
"$top_builddir/bin/moe-shard" $domains -o "$tmp/ds" --quiet
ok $? "moe-shard: the demo corpus, byte-level"
set -- $("$batches" "$tmp/ds" boundary 16)
edge=$1 dom=$2
[ -n "$edge" ] && [ "$edge" -gt 2 ] 2>/dev/null
ok $? "the first domain-repeat boundary: domain ${dom:-?} starts its second epoch in global batch ${edge:-?}"
edge=${edge:-500}
for S in 0 $((edge / 2)) $edge 1000; do
  case $S in 0) what="step 0" ;; "$edge") what="the repeat boundary of $dom" ;; 1000) what="the last step of 1000" ;; *) what="mid-epoch" ;; esac
  ref=$(mpi 1 "$batches" "$tmp/ds" 100 16 2 $S warm)
  [ "$S" = "$edge" ] && edge_ref=$ref
  for np in 1 2 4; do
    got=$(mpi $np "$batches" "$tmp/ds" 100 16 2 $S)
    [ -n "$ref" ] && [ "$got" = "$ref" ]
    ok $? "resume at global batch $S ($what) on $np rank(s): batches $S-$((S + 99)) hash ${got%"${got#????????????}"}... = uninterrupted"
  done
done
# the hash can fail: one batch later is another hash
[ "$(mpi 1 "$batches" "$tmp/ds" 100 16 2 $((edge + 1)))" != "$edge_ref" ]
ok $? "control: starting one batch after the boundary gives another hash"
finish
