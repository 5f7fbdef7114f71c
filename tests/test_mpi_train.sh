#!/bin/sh
# test_mpi_train.sh - distributed training under mpirun (2 and 4 ranks, oversubscribed):
# global/global-exact/padding equivalences (tests/mpi_train), expert parallelism ep = 2 and
# 4 giving the losses of ep = 1 over 20 steps (and the same bits with the expert rows in
# buffers of their own), repeatable multi-rank runs, the overlapped
# gradient sums (forced on CPU ranks) giving the bits of the plain ones, a failing
# rank ending a 4-rank job quickly with a message naming it, and a settings mistake
# reported once rather than once per rank.
if [ -z "$MPIEXEC" ]; then echo "1..0 # SKIP no MPI launcher"; exit 0; fi
train=$top_builddir/bin/moe-train
tmp=$(mktemp -d) || exit 99
trap 'rm -rf "$tmp"' EXIT
export OMP_NUM_THREADS=1
n=0; fails=0
ok() { n=$((n + 1)); if [ "$1" -eq 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; fails=$((fails + 1)); fi; }
mpi() { np=$1; shift; $MPIEXEC -n "$np" --bind-to none "$@"; }

for np in 2 4; do
  mpi $np "$top_builddir/tests/mpi_train" >"$tmp/out" 2>&1
  rc=$?
  sed 's/^/# /' "$tmp/out"
  [ $rc -eq 0 ] && ! grep -q '^not ok' "$tmp/out" && grep -q '^1\.\.13' "$tmp/out"
  ok $? "$np ranks: global = micro on the concatenated batch, global-exact with accumulation, padding, prefix counts"
done

common="--data $srcdir/data/demo/english.txt --set train.steps=20 --set train.warmup=2 --set log.every=0
  --set model.d_model=32 --set model.ffn=32 --set model.seq_len=32 --set train.micro_batch=1
  --set train.threads=1 --set lbl.mode=global --quiet"
for ep in 1 2 4; do
  mpi 4 $train $common --set parallel.ep=$ep --set run.dir="$tmp/ep$ep"
  ok $? "4 ranks, parallel.ep = $ep: 20 steps run"
done
for ep in 2 4; do
  awk -v ep=$ep 'NR == FNR { a[FNR] = $2; next } FNR > 1 { d = ($2 - a[FNR]) / a[FNR]; if (d < 0) d = -d; if (d > w) w = d }
    END { printf "# ep %d: worst relative loss difference to ep 1 over 20 steps: %.2e\n", ep, w; exit !(FNR == 21 && w < 1e-5) }' \
    "$tmp/ep1/log.tsv" "$tmp/ep$ep/log.tsv"
  ok $? "parallel.ep = $ep gives the losses of ep = 1 over 20 steps (relative error < 1e-5)"
done
mpi 4 $train $common --set parallel.ep=2 --set run.dir="$tmp/again" && cmp -s "$tmp/ep2/log.tsv" "$tmp/again/log.tsv"
ok $? "a 4-rank run repeats bit for bit"
# Expert rows in the layers' own buffers (where a routing that sends one rank more than
# N * K choices puts them, grown step by step) rather than the activation buffers: the same bits.
MOEKIT_EP_OWN_ROWS=1 mpi 4 -x MOEKIT_EP_OWN_ROWS $train $common --set parallel.ep=2 --set run.dir="$tmp/own" &&
  cmp -s "$tmp/ep2/log.tsv" "$tmp/own/log.tsv"
ok $? "4 ranks, parallel.ep = 2, expert rows in grown buffers of their own: the same bits"
# The overlapped path of GPU ranks (a sum per layer as the backward reaches its end; per
# block with MOEKIT_OVERLAP_LAYERS=0), forced on CPU ranks: the same sums, the same bits.
MOEKIT_OVERLAP=force MOEKIT_OVERLAP_LAYERS=0 mpi 4 -x MOEKIT_OVERLAP -x MOEKIT_OVERLAP_LAYERS $train $common \
  --set parallel.ep=1 --set run.dir="$tmp/ov" && cmp -s "$tmp/ep1/log.tsv" "$tmp/ov/log.tsv"
ok $? "4 ranks, the overlapped path's sums per block: the bits of the sums after the backward"
MOEKIT_OVERLAP=force mpi 4 -x MOEKIT_OVERLAP $train $common --set parallel.ep=1 --set run.dir="$tmp/ovl" &&
  cmp -s "$tmp/ep1/log.tsv" "$tmp/ovl/log.tsv"
ok $? "4 ranks, the overlapped path's sums per layer: the same bits"

# a failing rank ends the job: non-zero exit, one message naming the rank, within 10 s
start=$(date +%s)
MOEKIT_TEST_FAIL_RANK=2 MOEKIT_TEST_FAIL_STEP=3 mpi 4 -x MOEKIT_TEST_FAIL_RANK -x MOEKIT_TEST_FAIL_STEP \
  $train $common --set train.steps=1000 --set run.dir="$tmp/fail" 2>"$tmp/err" >/dev/null
rc=$?
el=$(( $(date +%s) - start ))
sed 's/^/# /' "$tmp/err" | head -5
[ $rc -ne 0 ] && [ $el -lt 10 ] && grep -q "rank 2" "$tmp/err"
ok $? "rank 2 failing at step 3 ends the 4-rank job: exit $rc after ${el}s, message names rank 2"
# a mistake in the settings is every rank's: one error line (rank 0's) and no abort
mpi 4 $train $common --set train.warmup=50 --set run.dir="$tmp/bad" 2>"$tmp/err" >/dev/null
rc=$?
sed 's/^/# /' "$tmp/err" | grep 'moe' | head -3
[ $rc -eq 2 ] && [ "$(grep -c '^moekit: error:' "$tmp/err")" -eq 1 ] && ! grep -q 'stops the job' "$tmp/err" &&
  grep -q 'train.warmup = 50' "$tmp/err"
ok $? "4 ranks, train.warmup over train.steps: exit $rc (usage), the error said once, not once per rank"
mpi 2 $train --help >"$tmp/help" 2>&1
[ "$(grep -c '^Usage: moe-train' "$tmp/help")" -eq 1 ]
ok $? "2 ranks, --help: the usage printed once"
# ... unless only one rank gets it wrong: that rank says why, rank 0 says the job stops
mpi 3 sh -c 'w=2; [ "${OMPI_COMM_WORLD_RANK:-${PMI_RANK:-0}}" = 1 ] && w=500
  exec "$0" "$@" --set train.warmup=$w' $train $common --set run.dir="$tmp/bad1" 2>"$tmp/err" >/dev/null
rc=$?
sed 's/^/# /' "$tmp/err" | grep 'moe' | head -3
[ $rc -ne 0 ] && [ "$(grep -c '^moekit: error:' "$tmp/err")" -eq 1 ] &&
  grep -q '^moekit: error: rank 1: .*train.warmup = 500' "$tmp/err" &&
  grep -q '^moe-train: rank 1 could not read its settings' "$tmp/err"
ok $? "3 ranks, a bad setting on rank 1 only: exit $rc, its error named once, rank 0 says the job stops"
echo "1..$n"
[ $fails -eq 0 ]
