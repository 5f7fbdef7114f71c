#!/bin/sh
# quickstart.sh - set up moekit on a fresh Debian/Ubuntu machine and run the main demo job.
#
# 1. installs the build dependencies with apt-get when run as root and they are missing,
# 2. builds moekit (./autogen.sh, ./configure, make),
# 3. shards the embedded five-domain demo corpus (data/demo) into runs/demo/dataset,
# 4. trains schedules/tiny.ini on it on 2 MPI ranks with the global-batch LBL, is
#    "preempted" (SIGUSR1) after its first checkpoint, resumes from that checkpoint and
#    finishes — bit-identical to an uninterrupted run,
# 5. writes the expert-specialization report of the run (when moe-report is built).
#
# The pipeline grows with the project: sharding, multi-rank global LBL, checkpoint/resume
# and the report join this script as they land (see README.md, "Status").
set -eu
cd "$(dirname "$0")"

need_pkgs=""
command -v mpicc >/dev/null 2>&1 || need_pkgs="$need_pkgs libopenmpi-dev openmpi-bin"
command -v autoreconf >/dev/null 2>&1 || need_pkgs="$need_pkgs autoconf automake libtool pkg-config"
[ -e /usr/include/cblas.h ] || [ -e /usr/include/x86_64-linux-gnu/cblas.h ] || need_pkgs="$need_pkgs libopenblas-dev"
[ -e /usr/include/ini.h ] || need_pkgs="$need_pkgs libinih-dev"
[ -e /usr/include/pcre2.h ] || need_pkgs="$need_pkgs libpcre2-dev"
[ -e /usr/include/jansson.h ] || need_pkgs="$need_pkgs libjansson-dev"
pkg-config --exists cairo 2>/dev/null || need_pkgs="$need_pkgs libcairo2-dev"
pkg-config --exists hdf5-openmpi 2>/dev/null || pkg-config --exists hdf5 2>/dev/null || need_pkgs="$need_pkgs libhdf5-openmpi-dev"
if [ -n "$need_pkgs" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "quickstart: installing$need_pkgs"
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends build-essential $need_pkgs
  else
    echo "quickstart: missing packages:$need_pkgs (install them, or run as root on Debian/Ubuntu)" >&2
    exit 1
  fi
fi

[ -x configure ] || ./autogen.sh
[ -f Makefile ] || ./configure
make -j"$(nproc)"

if [ ! -d runs/demo/dataset ]; then
  echo "quickstart: sharding the demo corpus into runs/demo/dataset"
  mkdir -p runs/demo
  set --
  for f in data/demo/*.txt; do set -- "$@" --domain "$(basename "$f" .txt)=$f"; done
  ./bin/moe-shard "$@" -o runs/demo/dataset
fi
# Several ranks on one machine: allowed as root, and two ranks per core if need be.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export OMP_NUM_THREADS=1
np=${MOEKIT_NP:-2}
run=runs/demo/tiny
rm -rf "$run"
echo "quickstart: training schedules/tiny.ini on $np MPI ranks (lbl.mode = global)"
mpirun -n "$np" --bind-to none ./bin/moe-train --schedule schedules/tiny.ini --set train.threads=1 &
pid=$!
while [ ! -e "$run/ckpt/latest" ] && kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
echo "quickstart: first checkpoint written; sending SIGUSR1 as a cluster would before preempting the job"
kill -USR1 "$pid" 2>/dev/null
set +e
wait "$pid"
rc=$?
set -e
if [ "$rc" -ne 75 ] && [ "$rc" -ne 0 ]; then
  echo "quickstart: training failed (exit $rc)" >&2
  exit "$rc"
fi
[ "$rc" -eq 75 ] && echo "quickstart: stopped with exit 75 (requeue); resuming with --resume auto"
mpirun -n "$np" --bind-to none ./bin/moe-train --schedule schedules/tiny.ini --set train.threads=1 --resume auto
if [ -x analysis/moe-report ]; then
  ./analysis/moe-report "$run" -o runs/demo/report
  echo "quickstart: report in runs/demo/report/report.md"
fi
echo "quickstart: done; per-step log in $run/log.tsv, routing log in $run/routing.h5, checkpoints in $run/ckpt"
