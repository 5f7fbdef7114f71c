#!/bin/sh
# test_log_errors.sh - T4 for the run's other files: ENOSPC at a write of the routing log
# (routing.h5) and of log.tsv, transient and persistent. moe-train must stop with status 4
# and one error line holding the system's message. After a failed HDF5 flush, HDF5 1.10.8
# crashes in H5F__close_cb at shutdown ("slist already enabled?"); moe-train therefore
# leaves without the library's exit-time clean-up after an I/O error (bin/moe-train.c).
. "${srcdir:-.}/tests/fault/common.sh"
tmp=$(mktemp -d) || exit 99
trap 'rm -rf "$tmp"' EXIT
L="--set train.steps=4 --set log.every=1 --set ckpt.every=0"
for target in routing.h5.tmp log.tsv; do
  rm -rf "$tmp/run"
  env LD_PRELOAD="$shim" FAULTINJ_PREFIX="$tmp/run/$target" FAULTINJ_REPORT="$tmp/trace" $train $TRAIN_ARGS $L \
    --set run.dir="$tmp/run" >"$tmp/out" 2>&1
  ok $? "a 4-step run with $target under the shim ($(sed -n 's/^ops //p' "$tmp/trace") watched ops)"
  # the 3rd write to the file, and the 3rd from its end
  ks=$(awk '$2 == "write" { k[++n] = $1 } END { print k[3], k[n - 2] }' "$tmp/trace")
  for k in $ks; do
    for persist in 0 1; do
      rm -rf "$tmp/run"
      env LD_PRELOAD="$shim" FAULTINJ_PREFIX="$tmp/run/$target" FAULTINJ_AT="$k" FAULTINJ_MODE=enospc \
        FAULTINJ_PERSIST=$persist $train $TRAIN_ARGS $L --set run.dir="$tmp/run" >"$tmp/out" 2>&1
      rc=$?
      lines=$(grep -c '^moekit: error' "$tmp/out")
      echo "# $target op $k persistent=$persist: status $rc, $lines error line(s): $(grep -m1 '^moekit: error' "$tmp/out")"
      grep -q 'No space left on device' "$tmp/out" && ! grep -q "filename = '" "$tmp/out"
      ok $? "$target, ENOSPC at op $k (persistent=$persist): the error holds the system's message, on one line"
      n=$((n + 1))
      if [ $rc -eq 4 ] && [ "$lines" -eq 1 ]; then
        echo "ok $n - $target: status 4 and one error line"
      else
        echo "not ok $n - $target: status 4 and one error line (got $rc, $lines)"; fails=$((fails + 1))
      fi
    done
  done
done
finish
