# common.sh - sourced by the tests of tests/failure. Run outside make check, the tests
# find the build in the current directory and start MPI the way make check does.
: "${top_builddir:=$(pwd)}" "${srcdir:=$(pwd)}" "${MPIEXEC=mpirun}"
OMPI_ALLOW_RUN_AS_ROOT=1; OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_ALLOW_RUN_AS_ROOT OMPI_ALLOW_RUN_AS_ROOT_CONFIRM OMPI_MCA_rmaps_base_oversubscribe
OMP_NUM_THREADS=1; OPENBLAS_NUM_THREADS=1; export OMP_NUM_THREADS OPENBLAS_NUM_THREADS
train=$top_builddir/bin/moe-train
moeckpt=$top_builddir/bin/moe-ckpt
n=0; fails=0
ok() { n=$((n + 1)); if [ "$1" -eq 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; fails=$((fails + 1)); fi; }
finish() { echo "1..$n"; [ $fails -eq 0 ]; }
now() { date +%s.%N; }
# elapsed START: seconds since START (two decimals)
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
# mpi NP ARGS...: NP ranks under the launcher (1: the program alone)
mpi() { np=$1; shift; if [ "$np" -eq 1 ]; then "$@"; else $MPIEXEC -n "$np" --bind-to none "$@"; fi; }
# gone PATTERN: wait (at most 30 s) until no process has PATTERN in its command line
gone() { i=0; while pgrep -f -- "$1" >/dev/null && [ $i -lt 3000 ]; do sleep 0.01; i=$((i + 1)); done; ! pgrep -f -- "$1" >/dev/null; }
# The small model of these tests: schedules/tiny.ini made narrow, one sequence per rank
# (add --quiet for no progress lines).
SMALL="--schedule $srcdir/schedules/tiny.ini --data $srcdir/data/demo/english.txt
  --set model.d_model=32 --set model.ffn=32 --set model.seq_len=32 --set train.micro_batch=1
  --set train.grad_accum=1 --set train.warmup=2 --set train.threads=1 --set log.every=0"
