#!/bin/sh
# test_io_errors.sh - T4: ENOSPC and EIO at I/O op k of one checkpoint save, transient (op k
# only) and persistent (op k and every later one; unlink never fails with ENOSPC, so the
# persistent ENOSPC runs leave it alone), 4 sampled k each (FAULT_FULL=1: every k).
# Rule: moe-train exits 4 with one error line holding the errno text; the step-2 checkpoint
# and latest are byte-identical to before, nothing else is left in ckpt/ (no temporaries;
# under a persistent EIO a file whose own unlink failed may stay, and is listed);
# --resume auto then finishes bit-identical to an uninterrupted run. Two documented
# exceptions: a failed unlink of the superseded checkpoint is not an error (status 0, the new
# checkpoint is in place), and a failed fsync of the directory after latest was renamed
# leaves latest naming the new, complete checkpoint (status 4).
. "${srcdir:-.}/tests/fault/common.sh"
tmp=$(mktemp -d) || exit 99
trap 'rm -rf "$tmp"' EXIT
make_base "$tmp"; ok $? "base run (step 2) and an uninterrupted run to step 4"

# check K KIND ERRTEXT RC: why the state breaks the rule (empty: it does not)
check() {
  c=$tmp/run/ckpt; k=$1; kind=$2; text=$3; rc=$4
  # a persistent EIO also fails the unlinks that would clean up: those files may stay
  stuck=$(awk -v k="$k" -v per="$persist" 'NR > 1 && per == 1 && $1 >= k && $2 == "unlink" { n = split($3, p, "/"); print p[n] }' "$tmp/run.trace" 2>/dev/null)
  files=$(cd "$c" && ls -A | grep -v -x -F "$stuck" | tr '\n' ' ')
  [ -n "$stuck" ] && echo "$k: $(echo $stuck) left (its unlink failed)" >>"$tmp/stuck"
  if [ "$rc" -eq 0 ]; then # the failed op was not needed: the save must be complete
    [ "$(cat "$c/latest")" = step_00000004.h5 ] || { echo "status 0 but latest is $(cat "$c/latest")"; return; }
    [ "$files" = "latest step_00000004.h5 " ] ||
      { [ "$kind" = unlink ] && [ "$files" = "latest step_00000002.h5 step_00000004.h5 " ]; } ||
      { echo "status 0 but files: $files"; return; }
    echo "$k $kind" >>"$tmp/absorbed"
  else
    [ "$rc" -eq 4 ] || { echo "status $rc, not 4"; return; }
    [ "$(grep -c 'error' "$tmp/shim.out")" -eq 1 ] || { echo "not one error line: $(cat "$tmp/shim.out")"; return; }
    grep -q "$text" "$tmp/shim.out" || { echo "no errno text in: $(cat "$tmp/shim.out")"; return; }
    cmp -s "$c/step_00000002.h5" "$tmp/base/ckpt/step_00000002.h5" || { echo "step 2 changed"; return; }
    if [ "$(cat "$c/latest")" = step_00000004.h5 ]; then
      [ "$kind" = fsync ] && [ "$files" = "latest step_00000002.h5 step_00000004.h5 " ] &&
        $ckpt verify "$c/step_00000004.h5" >/dev/null 2>&1 || { echo "latest names step 4; files: $files"; return; }
    else
      cmp -s "$c/latest" "$tmp/base/ckpt/latest" || { echo "latest changed"; return; }
      [ "$files" = "latest step_00000002.h5 " ] || { echo "files left: $files"; return; }
    fi
  fi
  # the resume check costs a run: every case in the full sweep, every third one otherwise
  [ "${FAULT_FULL:-0}" = 1 ] || [ $((cases % 3)) -eq 0 ] || return
  why=$(after_crash "$tmp")
  [ -z "$why" ] || echo "afterwards: $why"
}

for persist in 0 1; do
  for err in enospc eio; do
    ops=all; [ $persist = 1 ] && [ $err = enospc ] && ops=open,write,trunc,fsync,rename,mkdir
    N=$(count_ops "$tmp" $ops); cp "$tmp/trace" "$tmp/ops"
    if [ "${FAULT_FULL:-0}" = 1 ]; then ks=$(seq 1 "$N"); else ks=$(pick 4 "$tmp/ops" $((persist * 2 + ${#err} % 2))); fi
    text="No space left on device"; [ $err = eio ] && text="Input/output error"
    what=transient; [ $persist = 1 ] && what=persistent
    cases=0; bad=0; rc4=0; : >"$tmp/absorbed"; : >"$tmp/stuck"
    for k in $ks; do
      kind=$(awk -v k="$k" '$1 == k { print $2 }' "$tmp/ops")
      fresh "$tmp"
      under_shim "$tmp" FAULTINJ_AT="$k" FAULTINJ_MODE=$err FAULTINJ_PERSIST=$persist FAULTINJ_OPS=$ops FAULTINJ_REPORT="$tmp/run.trace"
      rc=$?
      cases=$((cases + 1)); [ $rc -eq 4 ] && rc4=$((rc4 + 1))
      why=$(check "$k" "$kind" "$text" $rc)
      if [ -n "$why" ]; then
        bad=$((bad + 1))
        echo "# $what $err at op $k ($kind $(awk -v k="$k" '$1 == k { print $3 }' "$tmp/ops")): $why"
      fi
    done
    [ -s "$tmp/stuck" ] && sed 's/^/# /' "$tmp/stuck"
    echo "# $what $err: $cases cases, $rc4 reported as failed (status 4), $bad broke the rule; absorbed (status 0, complete save): $(tr '\n' ' ' <"$tmp/absorbed")"
    ok $bad "$what $err at $cases of $N ops: save fails cleanly, step 2 and latest intact, no temporaries"
  done
done
finish
