#!/bin/sh
# quickstart.sh - set up moekit on a fresh Debian/Ubuntu machine and run the main demo job.
#
# 1. installs the build dependencies with apt-get when run as root and they are missing,
# 2. builds moekit (./autogen.sh, ./configure, make),
# 3. shards the embedded five-domain demo corpus (data/demo) into runs/demo/dataset,
# 4. trains schedules/tiny.ini on it.
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
echo "quickstart: training schedules/tiny.ini on runs/demo/dataset"
./bin/moe-train --schedule schedules/tiny.ini
echo "quickstart: done; per-step log in runs/demo/tiny/log.tsv"
