#!/bin/sh
# run_cve_hdf5.sh - T8's second half: every file of a HDFGroup/cve_hdf5 checkout through
# moekit's HDF5 readers. Needs the checkout (no network on the build machines):
#   git clone https://github.com/HDFGroup/cve_hdf5 /some/dir      (snapshot 4e63a93 in the notes)
#   make && make fuzz FUZZ_SECONDS=0
#   sh tests/fuzz/run_cve_hdf5.sh /some/dir
# For each file: bin/moe-ckpt info and verify (exit status: 0-8 handled, 124 hang, >128
# killed by a signal), then the ASan builds fuzz_ckpt and fuzz_routing_log on it, sorted by
# tests/fuzz/triage.sh into libhdf5's and moekit's. A "moekit" line is a bug to fix.
set -u
cve=${1:?usage: run_cve_hdf5.sh CVE_HDF5_DIR}
build=${FUZZ_BUILD:-tests/fuzz/clang-build}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/artifacts/ckpt" "$work/artifacts/routing_log"
ln -s "$(cd "$build/bin" && pwd)" "$work/bin"
n=0
find "$cve" -type f ! -path '*/.git/*' ! -name '*.md' ! -name '*.txt' ! -name '*.sh' ! -name '*.c' | sort |
while read -r f; do
    n=$((n + 1))
    base=$(echo "$f" | sed "s|^$cve/||; s|/|_|g")
    for cmd in info verify; do
        timeout 60 bin/moe-ckpt "$cmd" "$f" >/dev/null 2>&1
        printf 'moe-ckpt %s\t%s\texit %s\n' "$cmd" "$base" "$?"
    done
    cp "$f" "$work/artifacts/ckpt/crash-$base"
    { printf '\001'; cat "$f"; } > "$work/artifacts/routing_log/crash-$base"
done
sh "$(dirname "$0")/triage.sh" "$work"
