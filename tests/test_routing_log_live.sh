#!/bin/sh
# test_routing_log_live.sh - the routing log read while it is written and after its writer is
# killed, by tests/routing_log_reader.py, which uses h5py and the layout of
# docs/routing-log-format.md only. tests/routing_log_writer logs values that are a known
# function of the step; the reader checks every visible value.
#   A: a live SWMR reader sees steps while the writer runs; the finished file reads with or
#      without SWMR.
#   B: SIGKILL between steps: a SWMR reader reads every step up to the last one; after
#      `h5clear -s --increment` so does a plain reader; a resume from step 2 continues the log.
#   C: SIGKILL while appending as fast as possible (usually mid-append): the same, and a resume
#      keeping everything continues after the last complete step.
writer=${top_builddir:-.}/tests/routing_log_writer
reader=${srcdir:-.}/tests/routing_log_reader.py
py=/usr/bin/python3
if ! "$py" -c 'import h5py' >/dev/null 2>&1; then
  echo "1..0 # SKIP h5py not available"
  exit 0
fi
tmp=$(mktemp -d) || exit 99
pid=
trap '[ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; rm -rf "$tmp"' EXIT
n=0
fails=0
# check NAME COMMAND...: one TAP line; on failure the command's stderr as diagnostics.
check() {
  what=$1; shift
  n=$((n + 1))
  if "$@" >"$tmp/out" 2>"$tmp/err"; then
    echo "ok $n - $what"
  else
    echo "not ok $n - $what"
    sed 's/^/# /' "$tmp/err" | head -10
    fails=$((fails + 1))
  fi
}
skip() { n=$((n + 1)); echo "ok $n - $1 # SKIP $2"; }
# visible PATH [ARGS]: the number of steps the reader checked, into $steps.
visible() { steps=$("$py" "$reader" check "$@") && [ -n "$steps" ]; }
have_h5clear=no
command -v h5clear >/dev/null 2>&1 && have_h5clear=yes

# --- A: live reading, clean finish (50 steps, 100 ms apart).
"$writer" "$tmp/a.h5" 50 100 >"$tmp/a.out" 2>"$tmp/a.err" &
pid=$!
check "A: a SWMR reader sees 3 steps and checks them while the writer runs" \
  "$py" "$reader" wait "$tmp/a.h5" 3 60
check "A: ... and the writer is still running then" kill -0 "$pid"
wait "$pid"
rc=$?
pid=
check "A: the writer finishes with status 0 (got $rc)" [ "$rc" -eq 0 ]
check "A: the closed log holds steps 1..50 and eval rows for the even ones (SWMR reader)" \
  "$py" "$reader" check "$tmp/a.h5" 50 --all-eval
check "A: ... and the same without SWMR, as h5dump would open it" \
  "$py" "$reader" check "$tmp/a.h5" 50 --all-eval --no-swmr

# --- B: SIGKILL between steps (30 ms apart).
"$writer" "$tmp/b.h5" 1000000 30 >"$tmp/b.out" 2>"$tmp/b.err" &
pid=$!
check "B: a SWMR reader sees 5 steps while the writer runs" "$py" "$reader" wait "$tmp/b.h5" 5 60
kill -9 "$pid"
wait "$pid"
rc=$?
pid=
check "B: the writer is killed by SIGKILL (status $rc)" [ "$rc" -eq 137 ]
steps=0
check "B: after the kill a SWMR reader checks every visible step" visible "$tmp/b.h5"
check "B: ... at least the 5 seen before the kill (saw $steps)" [ "$steps" -ge 5 ]
if [ "$have_h5clear" = yes ]; then
  cp "$tmp/b.h5" "$tmp/b_clear.h5"
  check "B: h5clear -s --increment on a copy" h5clear -s --increment "$tmp/b_clear.h5"
  check "B: ... then a plain (non-SWMR) reader sees the same $steps steps" \
    "$py" "$reader" check "$tmp/b_clear.h5" "$steps" --no-swmr
else
  skip "B: h5clear -s --increment, then a plain reader" "h5clear not installed"
fi
check "B: resume from step 2 and log 3 more steps" "$writer" "$tmp/b.h5" 3 0 2
check "B: ... the log holds exactly steps 1..5 with their eval rows" \
  "$py" "$reader" check "$tmp/b.h5" 5 --all-eval --no-swmr

# --- C: SIGKILL while appending without pause, usually in the middle of an append.
"$writer" "$tmp/c.h5" 100000000 0 >"$tmp/c.out" 2>"$tmp/c.err" &
pid=$!
check "C: a SWMR reader follows a writer that does not pause, to 200 steps" \
  "$py" "$reader" wait "$tmp/c.h5" 200 60
kill -9 "$pid"
wait "$pid"
rc=$?
pid=
check "C: the writer is killed by SIGKILL (status $rc)" [ "$rc" -eq 137 ]
steps=0
check "C: after the kill a SWMR reader checks every visible step" visible "$tmp/c.h5"
check "C: ... at least 200 (saw $steps)" [ "$steps" -ge 200 ]
check "C: resume keeping every step and log 3 more" "$writer" "$tmp/c.h5" 3 0 all
check "C: ... the log holds exactly steps 1..$((steps + 3))" \
  "$py" "$reader" check "$tmp/c.h5" "$((steps + 3))" --no-swmr

echo "1..$n"
[ "$fails" -eq 0 ]
