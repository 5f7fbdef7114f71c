#!/bin/sh
# test_paths.sh - paths and permissions (T17 of docs/reliability.md).
#  1. A symbolic link planted at each temporary name moekit writes through (checkpoint
#     step_N.h5.tmp-PID, ckpt/latest.tmp, routing.h5.tmp, moe-shard's OUT.tmp-PID) is
#     refused with one message naming it: the link's target is not touched, the link is
#     left in place, the program exits with the I/O status 4.
#  2. Domain names in a dataset manifest with '..', '/', an absolute path, a NUL or nothing
#     at all are refused naming the manifest (status 3).
#  3. Files and directories moekit creates (dataset, checkpoints, latest, log, routing log,
#     report) have mode 0666 & ~umask and 0777 & ~umask under umask 022 and 077, and
#     nothing is world-writable.
# PIDs in temporary names are known in advance by planting from a shell that then execs
# the program (the libtool wrapper execs too, so the PID stays).
top_builddir=$(cd "${top_builddir:-.}" && pwd)
srcdir=$(cd "${srcdir:-.}" && pwd)
train=$top_builddir/bin/moe-train shard=$top_builddir/bin/moe-shard report=$top_builddir/analysis/moe-report
tmp=$(mktemp -d) || exit 99
trap 'rm -rf "$tmp"' EXIT
OMP_NUM_THREADS=1 OMPI_MCA_btl=self OMPI_MCA_pml=ob1
export OMP_NUM_THREADS OMPI_MCA_btl OMPI_MCA_pml train shard
n=0; fails=0
ok() { n=$((n + 1)); if [ "$1" -eq 0 ]; then printf 'ok %d - %s\n' $n "$2"; else printf 'not ok %d - %s\n' $n "$2"; fails=$((fails + 1)); fi; }
show() { sed 's/^/# /' "$@" | head -5; }

cd "$tmp" || exit 99
head -c 20000 "$srcdir/data/demo/english.txt" >web.txt
"$shard" -q -d web=web.txt -o ds 2>err || { show err; echo "Bail out! moe-shard failed"; exit 1; }
cat >s.ini <<'EOF'
[model]
d_model = 16
layers = 1
heads = 2
experts = 4
topk = 2
ffn = 16
seq_len = 16
[train]
micro_batch = 2
steps = 2
warmup = 0
threads = 1
[data]
path = ds
[ckpt]
every = 1
EOF
echo "precious" >target
target_sum=$(sha256sum <target)

# planted LINK (relative to the run directory) then RUN=dir: moe-train must refuse it
planted() { # NAME LINK-PATH-IN-RUN [PID-DEPENDENT]
  name=$1; link=$2
  rm -rf run && mkdir -p run/ckpt
  # shellcheck disable=SC2016
  sh -c 'l=run/$1; case $l in *PID) l=${l%PID}$$ ;; esac
         case $1 in */*) t=../../target ;; *) t=../target ;; esac
         ln -s "$t" "$l" && exec "$train" -q -s s.ini --set run.dir=run' sh "$link" >out 2>err
  rc=$?
  lines=$(wc -l <err)
  [ $rc -eq 4 ] && [ "$lines" -eq 1 ] && grep -q 'symbolic link' err && [ "$(sha256sum <target)" = "$target_sum" ] &&
    [ -n "$(find run -type l)" ]
  ok $? "symlink planted at $name: refused (exit $rc, $lines line), target unchanged, link left"
  [ $rc -eq 4 ] || show err
}
planted "the checkpoint's temporary name" "ckpt/step_00000001.h5.tmp-PID"
planted "ckpt/latest.tmp" "ckpt/latest.tmp"
planted "routing.h5.tmp" "routing.h5.tmp"
[ "$(cat target)" = precious ]; ok $? "the link target still reads 'precious'"

# moe-shard's temporary output directory
mkdir elsewhere
sh -c 'ln -s elsewhere "new.tmp-$$"; exec "$shard" -q -d web=web.txt -o new' >out 2>err
rc=$?
[ $rc -eq 4 ] && [ "$(wc -l <err)" -eq 1 ] && grep -q 'new\.tmp-' err && [ -z "$(ls elsewhere)" ] && [ ! -e new ]
ok $? "symlink planted at moe-shard's OUT.tmp-PID: refused (exit $rc), nothing written through it"
[ $rc -eq 4 ] || show err

# a leftover regular file at the checkpoint's temporary name (a crashed run whose PID came
# round again) is replaced, not fatal
rm -rf run && mkdir -p run/ckpt
sh -c 'echo junk >"run/ckpt/step_00000001.h5.tmp-$$"; exec "$train" -q -s s.ini --set run.dir=run' >out 2>err
rc=$?
[ $rc -eq 0 ] && [ -f run/ckpt/step_00000002.h5 ] && [ -z "$(find run -name '*.tmp*')" ]
ok $? "a leftover regular file at the temporary name is replaced: the run saves (exit $rc)"
[ $rc -eq 0 ] || show err

# ---- 2. domain names in a manifest
bad_name() { # LABEL JSON-STRING
  rm -rf d2 && cp -R ds d2
  sed -i "s#\"name\": \"web\"#\"name\": $2#" d2/manifest.json
  "$train" -q -s s.ini --set data.path=d2 --set run.dir=run2 >out 2>err
  rc=$?
  [ $rc -eq 3 ] && [ "$(wc -l <err)" -eq 1 ] && grep -q 'd2/manifest\.json' err && [ ! -e run2 ]
  ok $? "manifest domain name $1 refused naming the manifest (exit $rc)"
  [ $rc -eq 3 ] || show err
}
bad_name "'..'" '".."'
bad_name "'../x'" '"..\/x"'
bad_name "'a/b'" '"a\/b"'
bad_name "'/etc'" '"\/etc"'
bad_name "with a NUL" '"w\\u0000b"'
bad_name "'' (empty)" '""'
bad_name "with a newline" '"w\\nb"'

# ---- 3. modes under umask 022 and 077
for um in 022 077; do
  rm -rf m && mkdir m
  (umask $um && cd m && "$shard" -q -d web=../web.txt -o ds && cp ../s.ini s.ini &&
     "$train" -q -s s.ini --set run.dir=run && "$report" run -o rep >/dev/null 2>&1) >err 2>&1
  rc=$?
  fmode=$(printf '%o' $((0666 & ~0$um))); dmode=$(printf '%o' $((0777 & ~0$um)))
  files=$(find m -mindepth 1 -type f | wc -l)
  badf=$(find m -mindepth 1 -type f ! -perm "$fmode" -o -mindepth 1 -type f -perm /o+w | wc -l)
  badd=$(find m -mindepth 1 -type d ! -perm "$dmode" -o -mindepth 1 -type d -perm /o+w | wc -l)
  [ $rc -eq 0 ] && [ "$files" -ge 10 ] && [ "$badf" -eq 0 ] && [ "$badd" -eq 0 ] &&
    [ -f m/run/ckpt/latest ] && [ -f m/rep/report.md ] && [ -f m/ds/manifest.json ]
  ok $? "umask $um: $files files all mode $fmode, directories $dmode, none world-writable"
  [ $rc -eq 0 ] || show err
  find m -mindepth 1 ! -perm "$fmode" ! -perm "$dmode" -printf '# %m %p\n' | head -5
done

echo "1..$n"
[ $fails -eq 0 ]
