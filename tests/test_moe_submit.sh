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
