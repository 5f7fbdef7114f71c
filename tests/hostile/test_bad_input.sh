#!/bin/sh
# test_bad_input.sh - the bad-input corpus (T1 of docs/reliability.md): every line of
# tests/hostile/cases.tsv is one bad input to one program. Each case runs in a fresh
# directory and must give
#   - the documented exit status (lib/mk_error.h: 2 usage, 3 input, 4 io),
#   - exactly one line on stderr (one rank), matching the case's regex, which names the
#     file and the key or byte offset (cases marked "ckpt-out" are moe-ckpt verify, whose
#     verdict is one "FILE: FAILED: why" line on stdout, stderr empty),
#   - the directory tree unchanged: names, types, modes and the sha256 of every file are
#     the same before and after (no partial output, no run directory, no *.tmp left).
# Columns of cases.tsv (tab-separated; '#' lines are comments):
#   id  program  exit  regex  setup  args
# No field may be empty ('-' stands for no setup or no arguments). setup and args are
# shell text evaluated in the case directory, with the helpers below
# (sched, ds, ck, rl) and $FIX (the shared fixture: a dataset, a run with checkpoints and
# a routing log), $POKE (tests/hostile/h5poke) and $JOBS (the job scripts).
# HOSTILE_KEEP=1 keeps the work directory; HOSTILE_ONLY=ID runs one case.
top_builddir=$(cd "${top_builddir:-.}" && pwd)
srcdir=$(cd "${srcdir:-.}" && pwd)
cases=$srcdir/tests/hostile/cases.tsv
tmp=$(mktemp -d) || exit 99
[ -n "$HOSTILE_KEEP" ] && echo "# work directory: $tmp" || trap 'rm -rf "$tmp"' EXIT
OMP_NUM_THREADS=1; export OMP_NUM_THREADS
# One rank each: no network transport is needed, and MPI_Init is then twice as fast.
OMPI_MCA_btl=self OMPI_MCA_pml=ob1; export OMPI_MCA_btl OMPI_MCA_pml
n=0; fails=0
ok() { n=$((n + 1)); if [ "$1" -eq 0 ]; then printf 'ok %d - %s\n' $n "$2"; else printf 'not ok %d - %s\n' $n "$2"; fails=$((fails + 1)); fi; }

FIX=$tmp/fix POKE=$top_builddir/tests/hostile/h5poke JOBS=$srcdir/jobs
export FIX POKE JOBS
# A fake sbatch first on PATH: a refused submission must never reach it (and the file it
# leaves would change the tree hash).
mkdir -p "$tmp/fakebin" "$FIX"
printf '#!/bin/sh\ntouch SBATCH_WAS_CALLED\necho 4242\n' >"$tmp/fakebin/sbatch"
chmod +x "$tmp/fakebin/sbatch"
PATH=$tmp/fakebin:$PATH; export PATH

prog_path() {
  case $1 in
    train) echo "$top_builddir/bin/moe-train" ;;
    shard) echo "$top_builddir/bin/moe-shard" ;;
    ckpt|ckpt-out) echo "$top_builddir/bin/moe-ckpt" ;;
    submit) echo "$top_builddir/bin/moe-submit" ;;
    report) echo "$top_builddir/analysis/moe-report" ;;
  esac
}
[ -x "$top_builddir/analysis/moe-report" ] || { echo "1..0 # SKIP moe-report not built (no cairo)"; exit 0; }

# ---- the fixture: a two-domain dataset, 3 steps of a tiny model with a checkpoint each
# step, and its routing log
sched() { # the tiny schedule, plus any extra lines given
  printf '[model]\nd_model = 16\nlayers = 1\nheads = 2\nexperts = 4\ntopk = 2\nffn = 16\nseq_len = 16\n'
  printf '[train]\nmicro_batch = 2\nsteps = 3\nwarmup = 0\nthreads = 1\n[data]\npath = ds\n[run]\ndir = run\n'
  printf '[ckpt]\nevery = 1\n[log]\nevery = 1\n'
  for l in "$@"; do printf '%s\n' "$l"; done
}
head -c 20000 "$srcdir/data/demo/english.txt" >"$FIX/web.txt"
head -c 20000 "$srcdir/data/demo/code.txt" >"$FIX/code.txt"
(cd "$FIX" && "$(prog_path shard)" -q -d web=web.txt -d code=code.txt -o ds &&
  sched >s.ini && "$(prog_path train)" -q -s s.ini) >"$tmp/fix.log" 2>&1
[ -f "$FIX/run/ckpt/step_00000003.h5" ] && [ -f "$FIX/run/routing.h5" ]
ok $? "fixture: dataset, checkpoints and routing log made"
if [ $fails -ne 0 ]; then sed 's/^/# /' "$tmp/fix.log"; echo "1..$n"; exit 1; fi

# helpers for setup: copies of fixture parts into the case directory
ds() { cp -R "$FIX/ds" ds; }
ck() { cp "$FIX/run/ckpt/step_00000003.h5" "${1:-c.h5}"; }
rl() { mkdir -p r && cp "$FIX/run/routing.h5" r/routing.h5; }
long() { head -c "$1" /dev/zero | tr '\0' "${2:-a}"; }
# set byte OFFSET of FILE to the byte given in octal
poke() { printf "\\$3" | dd of="$1" bs=1 seek="$2" conv=notrunc 2>/dev/null; }
# edit the manifest with sed
man() { sed -i "$1" ds/manifest.json; }

tree_hash() { # names, types, modes and contents of everything under $1
  (cd "$1" && { find . -printf '%p %y %m\n' | LC_ALL=C sort; find . -type f -exec sha256sum {} + | LC_ALL=C sort; }) |
    sha256sum | cut -c1-64
}
fix_before=$(tree_hash "$FIX")

tab=$(printf '\t')
ncase=0; npass=0; ids=""
while IFS="$tab" read -r id prog want regex setup args; do
  case $id in ''|'#'*) continue ;; esac
  [ -n "$HOSTILE_ONLY" ] && [ "$HOSTILE_ONLY" != "$id" ] && continue
  case " $ids " in *" $id "*) ok 1 "$id: duplicate case id in cases.tsv"; continue ;; esac
  ids="$ids $id"
  ncase=$((ncase + 1))
  W=$tmp/case/$id
  mkdir -p "$W"
  bin=$(prog_path "$prog")
  ( cd "$W" && { [ "$setup" = - ] || eval "$setup"; } ) >"$tmp/setup.log" 2>&1 </dev/null
  src=$?
  before=$(tree_hash "$W")
  [ "$args" = - ] && args=
  ( cd "$W" && eval "set -- $args" && exec timeout 60 "$bin" "$@" ) >"$tmp/out" 2>"$tmp/err" </dev/null
  got=$?
  after=$(tree_hash "$W")
  if [ "$prog" = ckpt-out ]; then msg=$tmp/out; quiet=$tmp/err; else msg=$tmp/err; quiet=; fi
  lines=$(wc -l <"$msg")
  why=
  [ $src -eq 0 ] || why="setup failed: $(head -c 200 "$tmp/setup.log")"
  [ -z "$why" ] && [ "$got" -ne "$want" ] && why="exit $got, wanted $want"
  [ -z "$why" ] && [ "$lines" -ne 1 ] && why="$lines message lines, wanted 1"
  [ -z "$why" ] && [ -n "$quiet" ] && [ -s "$quiet" ] && why="stderr not empty"
  [ -z "$why" ] && ! grep -Eq -- "$regex" "$msg" && why="message does not match /$regex/"
  [ -z "$why" ] && [ "$before" != "$after" ] && why="the directory changed"
  if [ -z "$why" ]; then
    npass=$((npass + 1))
    ok 0 "$id $prog -> $got: $(head -c 150 "$msg")"
  else
    ok 1 "$id $prog: $why"
    sed 's/^/#   /' "$tmp/err" "$tmp/out" | head -6
  fi
  [ -n "$HOSTILE_KEEP" ] || rm -rf "$W"
done <"$cases"

[ "$(tree_hash "$FIX")" = "$fix_before" ]
ok $? "the shared fixture is unchanged after all cases"
[ "$ncase" -ge 60 ] || [ -n "$HOSTILE_ONLY" ]
ok $? "the corpus holds $ncase cases (at least 60)"
echo "# T1: $npass of $ncase bad inputs gave one line naming file and key/offset, the documented exit status and an unchanged tree"
echo "1..$n"
[ $fails -eq 0 ]
