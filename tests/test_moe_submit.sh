#!/bin/sh
# test_moe_submit.sh - moe-submit and the job scripts without Slurm: a fake sbatch first on
# PATH records each call's argv and prints a job id. Checks the shard -> train -> report
# chain (afterok on the right ids, --kill-on-invalid-dep=yes, the --export settings),
# --dry-run (prints, never calls sbatch), the refusals (malformed schedule, missing
# dataset, ranks or experts that parallel.ep does not divide, values --export cannot carry:
# each exits non-zero naming the key and calls sbatch zero times), that schedule values
# with shell metacharacters never run, and the job scripts themselves with fake srun,
# scancel, scontrol and programs (USR1 -> checkpoint -> requeue; skip of an existing
# dataset; the report).
submit=${MOE_SUBMIT:-$top_builddir/bin/moe-submit}
jobs=$srcdir/jobs
tmp=$(mktemp -d) || exit 99
trap 'rm -rf "$tmp"' EXIT
n=0; fails=0
ok() { n=$((n + 1)); if [ "$1" -eq 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; fails=$((fails + 1)); fi; }
show() { sed 's/^/# /' "$@" | head -12; }

# ---- fakes: sbatch records argv (one argument per line, calls separated by "--END--")
mkdir "$tmp/fake" "$tmp/progs" "$tmp/work"
cat >"$tmp/fake/sbatch" <<'EOF'
#!/bin/sh
for a in "$@"; do printf '%s\n' "$a"; done >>"$FAKE_LOG"
echo "--END--" >>"$FAKE_LOG"
id=$(( $(grep -c -- '--END--' "$FAKE_LOG") + 4100 ))
echo "$id;cluster"
EOF
chmod +x "$tmp/fake/sbatch"
PATH=$tmp/fake:$PATH; export PATH
FAKE_LOG=$tmp/sbatch.log; export FAKE_LOG
calls() { if [ -f "$FAKE_LOG" ]; then grep -c -- '--END--' "$FAKE_LOG"; else echo 0; fi; }
call() { awk -v k="$1" '/^--END--$/{i++; next} i==k-1' "$FAKE_LOG"; }   # argv of call k

cd "$tmp/work" || exit 99
mkdir -p data/ds && echo '{}' >data/ds/manifest.json
cat >s.ini <<'EOF'
[model]
experts = 8
topk = 2
[train]
steps = 10
warmup = 0
[parallel]
ep = 2
[data]
path = data/ds
[run]
dir = runs/r1
EOF

# ---- 1. the chain
rm -f "$FAKE_LOG"
"$submit" s.ini --jobs-dir "$jobs" --nodes 2 --ntasks-per-node 2 --partition p1 --account a1 \
  --time 1:00:00 --gpus-per-node 2 --set train.steps=20 >out 2>err
ok $? "moe-submit submits the demo schedule"
[ "$(calls)" -eq 3 ]; ok $? "three sbatch calls"
[ "$(awk '{print $1, $2}' out | tr '\n' ' ')" = "shard 4101 train 4102 report 4103 " ]
ok $? "prints the three job ids (shard, train, report)"
call 1 | tail -1 | grep -q '/shard\.sbatch$' && ! call 1 | grep -q -- '--dependency'
ok $? "call 1: shard.sbatch, no dependency"
call 2 | grep -qx -- '--dependency=afterok:4101' && call 2 | grep -qx -- '--kill-on-invalid-dep=yes' &&
  call 2 | tail -1 | grep -q '/train\.sbatch$'
ok $? "call 2: train.sbatch after shard (afterok:4101, --kill-on-invalid-dep=yes)"
call 3 | grep -qx -- '--dependency=afterok:4102' && call 3 | grep -qx -- '--kill-on-invalid-dep=yes' &&
  call 3 | tail -1 | grep -q '/report\.sbatch$'
ok $? "call 3: report.sbatch after train (afterok:4102, --kill-on-invalid-dep=yes)"
r=0; for k in 1 2 3; do call $k | grep -qx -- '--parsable' || r=1; done
ok $r "every call uses --parsable"
call 2 | grep -qx -- '--nodes=2' && call 2 | grep -qx -- '--ntasks-per-node=2' &&
  call 2 | grep -qx -- '--gpus-per-node=2' && call 2 | grep -qx -- '--time=1:00:00' &&
  call 2 | grep -qx -- '--partition=p1' && call 2 | grep -qx -- '--account=a1'
ok $? "train job: nodes, tasks, GPUs, time, partition, account"
exp=$(call 2 | grep -- '^--export=')
case $exp in
  --export=ALL,*MOEKIT_SCHEDULE=$tmp/work/s.ini*) r=0 ;; *) r=1 ;; esac
case $exp in *MOEKIT_SET=train.steps=20*) ;; *) r=1 ;; esac
case $exp in *MOEKIT_RUN_DIR=$tmp/work/runs/r1*) ;; *) r=1 ;; esac
ok $r "--export=ALL carries MOEKIT_SCHEDULE (absolute), MOEKIT_RUN_DIR and MOEKIT_SET"
[ -d runs/r1 ]; ok $? "run.dir created for the job logs"

# ---- 2. --dry-run
rm -f "$FAKE_LOG"
"$submit" s.ini --jobs-dir "$jobs" --dry-run >out 2>err
rc=$?
[ $rc -eq 0 ] && [ "$(calls)" -eq 0 ] && [ "$(grep -c 'sbatch --parsable' out)" -eq 3 ] &&
  grep -q 'afterok:"${shard_id' out && grep -q 'afterok:"${train_id' out
ok $? "--dry-run prints three sbatch commands and calls sbatch zero times"
show out

# ---- 3. refusals: non-zero, one message naming the key, no sbatch call
refuse() { # NAME KEY-PATTERN ARGS...
  name=$1; pat=$2; shift 2
  rm -f "$FAKE_LOG"
  "$submit" --jobs-dir "$jobs" "$@" >out 2>err
  rc=$?
  if [ $rc -ne 0 ] && [ $rc -ne 1 ] && [ "$(calls)" -eq 0 ] && grep -q -- "$pat" err; then ok 0 "$name (exit $rc)"
  else ok 1 "$name (exit $rc, $(calls) sbatch calls)"; show err; fi
}
printf '[model]\nexperts = 8\nd_model = sixty\n' >bad1.ini
refuse "malformed value refused" "model.d_model" bad1.ini
printf '[model]\nexpertz = 8\n' >bad2.ini
refuse "unknown key refused" "expertz" bad2.ini
printf '[model\nexperts = 8\n' >bad3.ini
refuse "broken INI syntax refused" "bad3.ini" bad3.ini
refuse "missing schedule refused" "nope.ini" nope.ini
refuse "missing dataset refused" "data.path" s.ini --set data.path=data/missing
refuse "missing corpus file refused" "corpus" s.ini --set data.path=data/new --corpus web=nowhere.txt
refuse "ranks not a multiple of parallel.ep refused" "parallel.ep" s.ini --nodes 1 --ntasks-per-node 3
refuse "experts not a multiple of parallel.ep refused" "parallel.ep" s.ini --set parallel.ep=3 --ntasks-per-node 3
refuse "comma in a --set value refused" "data.mixture" s.ini --set data.mixture=a:1,b:1
refuse "comma in run.dir refused" "run.dir" s.ini --set run.dir=a,b
nl='
'
refuse "newline in run.dir refused" "run.dir" s.ini --set "run.dir=a${nl}b"
refuse "bad --nodes refused" "nodes" s.ini --nodes 0
refuse "missing job scripts refused" "sbatch" s.ini --jobs-dir "$tmp"

# ---- 4. shell metacharacters in schedule values never run
cat >evil.ini <<'EOF'
[model]
experts = 8
[parallel]
ep = 1
[data]
path = data/ds
[run]
dir = x;touch pwned1 $(touch pwned2) `touch pwned3` |touch pwned4
EOF
rm -f "$FAKE_LOG"
"$submit" evil.ini --jobs-dir "$jobs" --set 'train.lr_schedule=cosine' >out 2>err
rc=$?
"$submit" evil.ini --jobs-dir "$jobs" --dry-run >dry 2>&1
ls pwned* >/dev/null 2>&1 && r=1 || r=0
ok $r "run.dir with ; \$( ) \` | creates no marker file (status $rc)"
if [ $rc -eq 0 ]; then
  call 2 | grep -q -- 'MOEKIT_RUN_DIR=.*/x;touch pwned1 $(touch pwned2) `touch pwned3` |touch pwned4'
  ok $? "the value is passed literally in --export"
else
  grep -q run.dir err; ok $? "the value is refused naming run.dir"
fi
rm -f "$FAKE_LOG"
sh -c "$(grep '^train_id=' dry)" >/dev/null 2>&1
ls pwned* >/dev/null 2>&1 && r=1 || r=0
call 1 | grep -q -- '^--export=.*MOEKIT_RUN_DIR=.*/x;touch pwned1 $(touch pwned2) `touch pwned3` |touch pwned4' && [ $r -eq 0 ]
ok $? "--dry-run output is shell-quoted: pasted into sh it yields the literal value, runs nothing"

# ---- 4b. hostile strings (T16 of docs/reliability.md) in every field that reaches
# sbatch: --set values (MOEKIT_SET), run.dir (MOEKIT_RUN_DIR and --output), data.path
# (MOEKIT_DATASET), the schedule's name (MOEKIT_SCHEDULE), --corpus (MOEKIT_CORPUS),
# --partition, --account, --time, --jobs-dir and $MOEKIT_BIN. For each string and field,
# moe-submit either refuses it (status 2 or 3, one line naming the field, no sbatch call)
# or submits, and then: the --dry-run commands, run by sh, hand sbatch exactly the argv
# that the real submission did (NUL-separated, byte for byte); the value is one argv
# element (or one --export item) of its own; and no sentinel file is ever created. A
# newline is refused in every field. A NUL cannot be passed in argv or the environment;
# in a schedule it is refused by the INI reader (tests/hostile cases.tsv, ini-nul).
mkdir "$tmp/fake0"
cat >"$tmp/fake0/sbatch" <<'EOF'
#!/bin/sh
printf '%s\0' "$@" --END-- >>"$FAKE0_LOG"
n=0; [ -f "$FAKE0_LOG.n" ] && read -r n <"$FAKE0_LOG.n"
n=$((n + 1)); echo $n >"$FAKE0_LOG.n"
echo "$((n + 5000));cluster"
EOF
chmod +x "$tmp/fake0/sbatch"
mkdir "$tmp/hostile" && cd "$tmp/hostile" || exit 99
mkdir -p ds c j b && echo '{}' >ds/manifest.json && mkdir jobs && cp "$jobs"/*.sbatch jobs/
printf '[model]\nexperts = 8\n[parallel]\nep = 1\n[data]\npath = ds\n[run]\ndir = runs\n' >h.ini
nl='
'
tab=$(printf '\t'); cr=$(printf '\r'); ctl=$(printf '\001')
set -- '$(touch SENTINEL)' '`touch SENTINEL`' ';touch SENTINEL' '|touch SENTINEL' '&touch SENTINEL' \
  'x>SENTINEL' 'a b' "'" '"' '\' "a${nl}touch SENTINEL" '-x' '--export=NONE' '*' '?' '[a]' '~root' \
  '$HOME' '${IFS}' 'a,b' '%j' "a${tab}b" "a${cr}b" "a${ctl}b" '$((1+1))' '{a,b}' 'ü' \
  "'\$(touch SENTINEL)'" '"); touch SENTINEL; echo ("' ' lead' '--' '\$(touch SENTINEL)\'
nstr=$#
fields="set rundir datapath schedule corpus partition account time jobsdir bin"
nf=$(echo $fields | wc -w)
accepted=0 refused=0 bad=0 nl_refused=0 i=0
# 380 runs: the program itself rather than libtool's wrapper script, when there is one
fast=$submit
if [ -z "$MOE_SUBMIT" ] && [ -x "$top_builddir/bin/.libs/moe-submit" ] && [ -d "$top_builddir/.libs" ]; then
  fast=$top_builddir/bin/.libs/moe-submit
  LD_LIBRARY_PATH=$top_builddir/.libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}; export LD_LIBRARY_PATH
fi
# submit FIELDS...: moe-submit with the string in each of these fields (the others plain)
submit_with() {
  jd=jobs sched=h.ini binv=$tmp/hostile/b
  set -- --set train.seed=5 "$@"
  for f in $want_fields; do
    case $f in
      set) set -- "$@" --set "data.mixture=$s" ;;
      rundir) set -- "$@" --set "run.dir=r$i/$s" ;;
      datapath) set -- "$@" --set "data.path=ds/$s" ;;
      schedule) sched=$s.ini ;;
      corpus) set -- "$@" --corpus "web=c/$s" ;;
      partition|account|time) set -- "$@" "--$f" "$s" ;;
      jobsdir) jd=j/$s ;;
      bin) binv=$tmp/hostile/b/$s ;;
    esac
  done
  PATH=$tmp/fake0:$PATH MOEKIT_BIN=$binv "$fast" --jobs-dir "$jd" "$@" -- "$sched"
}
# check_accepted: the --dry-run commands re-parse to the real argv; each field's value is
# one argv element or --export item of the training job
check_accepted() {
  FAKE0_LOG=$PWD/dry.log submit_with --dry-run >dry 2>err
  [ -f dry.log ] && { why="--dry-run called sbatch"; return; }
  FAKE0_LOG=$PWD/dry.log PATH=$tmp/fake0:$PATH sh -c "$(grep '_id=\$(' dry)" >/dev/null 2>&1 ||
    { why="sh failed on the --dry-run output"; return; }
  cmp -s real.log dry.log || { why="the --dry-run commands give sbatch another argv"; return; }
  case $s in *"$nl"*) why="a newline was accepted"; return ;; esac
  tr '\0' '\n' <real.log | awk '/^--END--$/{i++; next} i==1' >train.argv
  exp=$(grep -- '^--export=' train.argv)
  for f in $want_fields; do
    case $f in
      set) want="data.mixture=$s" ;;
      rundir) want="run.dir=r$i/$s" ;;
      datapath) want="data.path=ds/$s" ;;
      schedule) want="MOEKIT_SCHEDULE=$PWD/$s.ini" ;;
      corpus) want="MOEKIT_CORPUS=web=c/$s" ;;
      partition|account|time) want="--$f=$s" ;;
      jobsdir) want="$PWD/j/$s/train.sbatch" ;;
      bin) want="MOEKIT_BIN=$PWD/b/$s" ;;
    esac
    found=0
    case $f in
      set|rundir|datapath) # one space-separated item of MOEKIT_SET
        old_ifs=$IFS; IFS=,; for item in $exp; do case $item in MOEKIT_SET=*) sl=${item#MOEKIT_SET=} ;; esac; done
        IFS=' '; for item in $sl; do [ "$item" = "$want" ] && found=1; done; IFS=$old_ifs ;;
      schedule|corpus|bin)
        old_ifs=$IFS; IFS=,; for item in $exp; do [ "$item" = "$want" ] && found=1; done; IFS=$old_ifs ;;
      *) grep -qxF -- "$want" train.argv && found=1 ;;
    esac
    [ $found -eq 1 ] || { why="$f: '$want' is not one argv element / --export item"; return; }
  done
}
check_refused() { # the one field in $want_fields
  case $want_fields in
    set) key=data.mixture ;; rundir) key=run.dir ;; datapath) key=data.path ;; schedule) key=schedule ;;
    corpus) key=--corpus ;; partition|account|time) key=--$want_fields ;; jobsdir) key=jobs ;; bin) key=MOEKIT_BIN ;;
  esac
  case $s in *"$nl"*) nl_refused=$((nl_refused + 1)) ;; esac
  if [ $rc -ne 2 ] && [ $rc -ne 3 ]; then why="refused with status $rc"
  elif [ "$(wc -l <err)" -ne 1 ]; then why="refused with $(wc -l <err) lines"
  elif ! grep -qF -- "$key" err; then why="the refusal does not name $key: $(cat err)"
  elif [ -f real.log ]; then why="sbatch was called"; fi
}
for s in "$@"; do
  i=$((i + 1))
  # the files and directories whose names hold the string, made once per string
  mkdir -p "ds/$s" "j/$s" "b/$s" 2>/dev/null && echo '{}' >"ds/$s/manifest.json" && cp jobs/*.sbatch "j/$s/"
  : >"c/$s" 2>/dev/null; cp -- h.ini "$s.ini"
  # all fields at once; when that is refused, each field on its own
  want_fields=$fields why=
  rm -f real.log* dry.log*
  FAKE0_LOG=$PWD/real.log submit_with >out 2>err
  rc=$?
  if [ $rc -eq 0 ]; then
    accepted=$((accepted + nf))
    check_accepted
  else
    for f in $fields; do
      want_fields=$f
      rm -f real.log* dry.log*
      FAKE0_LOG=$PWD/real.log submit_with >out 2>err
      rc=$?
      if [ $rc -eq 0 ]; then accepted=$((accepted + 1)); check_accepted
      else refused=$((refused + 1)); check_refused; fi
      [ -n "$why" ] && break
    done
  fi
  if [ -n "$why" ]; then
    bad=$((bad + 1))
    [ $bad -le 10 ] && printf '# %s <- %s: %s\n' "$want_fields" "$(printf '%s' "$s" | od -An -c | tr -s ' \n' '  ' | head -c 60)" "$why"
  fi
done
cd "$tmp/work" || exit 99
[ $bad -eq 0 ] && [ $nstr -ge 30 ]
ok $? "T16: $nstr hostile strings x $nf fields = $((nstr * nf)) cases: $accepted passed literally (--dry-run re-parse = real argv), $refused refused naming the field; $bad strings wrong"
[ $nl_refused -eq $nf ]
ok $? "a newline is refused in all $nf fields ($nl_refused)"
[ -z "$(find "$tmp" -name SENTINEL)" ]
ok $? "no sentinel file was created anywhere"

# ---- 5. the job scripts with fake srun/scancel/scontrol and programs
cat >"$tmp/fake/srun" <<'EOF'
#!/bin/sh
for a in "$@"; do printf '%s\n' "$a"; done >"$SRUN_LOG"
while [ $# -gt 0 ] && [ "${1#--}" != "$1" ]; do shift; done   # srun options
exec "$@"
EOF
cat >"$tmp/fake/scancel" <<'EOF'
#!/bin/sh
echo "scancel $*" >>"$SLURM_LOG"; exit 1
EOF
cat >"$tmp/fake/scontrol" <<'EOF'
#!/bin/sh
echo "scontrol $*" >>"$SLURM_LOG"; kill -TERM "$PPID"; exit 0
EOF
cat >"$tmp/progs/moe-train" <<'EOF'
#!/bin/sh
echo started >"$SRUN_LOG.started"
trap 'echo checkpoint >>"$SLURM_LOG"; exit 75' USR1 TERM
[ -n "${TRAIN_WAIT-}" ] || exit 0
while :; do sleep 0.1; done
EOF
cat >"$tmp/progs/moe-report" <<'EOF'
#!/bin/sh
echo "moe-report $*" >>"$SLURM_LOG"
EOF
cp "$tmp/progs/moe-report" "$tmp/progs/moe-shard"
chmod +x "$tmp/fake/"* "$tmp/progs/"*
SRUN_LOG=$tmp/srun.log SLURM_LOG=$tmp/slurm.log SLURM_JOB_ID=77 MOEKIT_BIN=$tmp/progs
export SRUN_LOG SLURM_LOG SLURM_JOB_ID MOEKIT_BIN

MOEKIT_SCHEDULE=$tmp/work/s.ini MOEKIT_SET='run.dir=$(touch@pwned5) train.steps=3' \
  sh "$jobs/train.sbatch" >train.out 2>&1
rc=$?
grep -qx -- '--mpi=pmix' "$SRUN_LOG" && grep -qx -- '--resume' "$SRUN_LOG" && grep -qx auto "$SRUN_LOG" &&
  grep -qxF 'run.dir=$(touch@pwned5)' "$SRUN_LOG" && grep -qx 'train.steps=3' "$SRUN_LOG" &&
  [ $rc -eq 0 ] && ! ls pwned* >/dev/null 2>&1
ok $? "train.sbatch: srun --mpi=pmix moe-train --schedule --resume auto, each --set item literal"

: >"$SLURM_LOG"; rm -f "$SRUN_LOG.started"
TRAIN_WAIT=1 MOEKIT_SCHEDULE=$tmp/work/s.ini sh "$jobs/train.sbatch" >train.out 2>&1 &
pid=$!
i=0; while [ ! -f "$SRUN_LOG.started" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
kill -USR1 $pid
wait $pid
rc=$?
grep -q checkpoint "$SLURM_LOG" && grep -q 'scontrol requeue 77' "$SLURM_LOG" && [ $rc -eq 0 ]
r=$?
ok $r "train.sbatch: USR1 reaches moe-train, exit 75 -> scontrol requeue, batch exits 0"
[ $r -eq 0 ] || { show train.out; show "$SLURM_LOG"; }

: >"$SLURM_LOG"; rm -f "$SRUN_LOG"
MOEKIT_DATASET=data/ds MOEKIT_CORPUS='web=a.txt' sh "$jobs/shard.sbatch" >shard.out 2>&1
[ $? -eq 0 ] && [ ! -f "$SRUN_LOG" ] && grep -q 'already exists' shard.out
ok $? "shard.sbatch: exits 0 without running moe-shard when the dataset exists"
MOEKIT_DATASET=data/new MOEKIT_CORPUS='web=a.txt code=b;c.txt' sh "$jobs/shard.sbatch" >shard.out 2>&1
[ $? -eq 0 ] && grep -qx 'web=a.txt' "$SRUN_LOG" && grep -qx 'code=b;c.txt' "$SRUN_LOG" &&
  grep -qx -- '-o' "$SRUN_LOG" && grep -qx 'data/new' "$SRUN_LOG"
ok $? "shard.sbatch: srun moe-shard --domain NAME=PATH... -o data.path otherwise"
MOEKIT_RUN_DIR=runs/r1 sh "$jobs/report.sbatch" >report.out 2>&1
[ $? -eq 0 ] && grep -q 'moe-report runs/r1 -o runs/r1/report' "$SLURM_LOG"
ok $? "report.sbatch: moe-report RUN_DIR -o RUN_DIR/report"

echo "1..$n"
[ $fails -eq 0 ]
