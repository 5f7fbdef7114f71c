#!/bin/sh
# test_shard.sh - moe-shard end to end on the demo corpus: byte-level and BPE datasets decode
# back to the input documents (checked by an independent Python reader), the output is
# byte-identical for 1, 2 and 4 MPI ranks, the first 100 global batches are the same for 1,
# 2 and 4 ranks, bad inputs fail cleanly and leave nothing behind, and moe-train trains on
# the result.
py=/usr/bin/python3
if ! $py -c 'import numpy' 2>/dev/null; then echo "1..0 # SKIP numpy not available"; exit 0; fi
shard=$top_builddir/bin/moe-shard
train=$top_builddir/bin/moe-train
tmp=$(mktemp -d) || exit 99
trap 'rm -rf "$tmp"' EXIT
export OMP_NUM_THREADS=1
n=0; fails=0
ok() { n=$((n + 1)); if [ "$1" -eq 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; fails=$((fails + 1)); fi; }
run_tap() { # run a TAP-printing command, renumber its lines into ours
  out=$("$@" 2>"$tmp/err"); rc=$?
  echo "$out" | grep -E '^(not )?ok ' | while IFS= read -r line; do echo "# $line"; done
  bad=$(echo "$out" | grep -c '^not ok')
  [ $rc -eq 0 ] && [ "$bad" -eq 0 ]
}
mpi() { np=$1; shift; $MPIEXEC -n "$np" --bind-to none "$@"; }

domains=""; specs=""
for f in "$srcdir"/data/demo/*.txt; do
  name=$(basename "$f" .txt)
  domains="$domains --domain $name=$f"; specs="$specs $name=$f"
done

# byte-level, 1 rank
$shard $domains -o "$tmp/byte" --quiet; ok $? "moe-shard byte-level on the demo corpus"
run_tap $py "$srcdir/tests/dataset_roundtrip.py" "$tmp/byte" $specs; ok $? "byte-level: every document round-trips (independent reader)"
[ -z "$(ls -d "$tmp"/*.tmp-* 2>/dev/null)" ]; ok $? "no temporary directory left"

# JSONL input (a text field with escapes, unicode and an embedded NUL)
$py -c "
import json
docs=open('$srcdir/data/demo/german.txt',encoding='utf-8').read().split('\n\n')[:50]
with open('$tmp/de.jsonl','w') as f:
    for i,d in enumerate(docs):
        if d: f.write(json.dumps({'id': i, 'text': d + ('\u0000tail' if i == 3 else '')})+'\n')
"
$shard --domain de="$tmp/de.jsonl" -o "$tmp/jsonl" --val-fraction 0.2 --quiet &&
  run_tap $py "$srcdir/tests/dataset_roundtrip.py" "$tmp/jsonl" de="$tmp/de.jsonl"
ok $? "JSONL input: every document round-trips"

# BPE trained on the corpus
$shard $domains -o "$tmp/bpe" --bpe-train 1024 --quiet; ok $? "moe-shard with --bpe-train 1024"
run_tap $py "$srcdir/tests/dataset_roundtrip.py" "$tmp/bpe" $specs; ok $? "BPE: every document round-trips (independent reader and decoder)"

if [ -n "$MPIEXEC" ]; then
  for np in 2 4; do
    mpi $np $shard $domains -o "$tmp/byte$np" --quiet && diff -r "$tmp/byte" "$tmp/byte$np" >/dev/null
    ok $? "byte-level dataset from $np ranks is byte-identical to 1 rank"
  done
  mpi 2 $shard $domains -o "$tmp/bpe2" --bpe-train 1024 --quiet && diff -r "$tmp/bpe" "$tmp/bpe2" >/dev/null
  ok $? "BPE dataset from 2 ranks is byte-identical to 1 rank"
  h1=$(mpi 1 "$top_builddir/tests/mpi_batches" "$tmp/byte" 100 16 2)
  h2=$(mpi 2 "$top_builddir/tests/mpi_batches" "$tmp/byte" 100 16 2)
  h4=$(mpi 4 "$top_builddir/tests/mpi_batches" "$tmp/byte" 100 16 2)
  [ -n "$h1" ] && [ "$h1" = "$h2" ] && [ "$h1" = "$h4" ]; ok $? "first 100 global batches identical for 1, 2, 4 ranks (sha256 ${h1%????????????????????????????????????????????????????????})"
fi

# the loader reads a fixture written by the independent writer (tests/megatron_ref.py):
# 12 documents holding the counter 0..1199, so every sample must be 33 consecutive numbers
# starting at a multiple of T = 32
mkdir "$tmp/fx"
$py -c "
for d in range(12): print(' '.join(str(100 * d + i) for i in range(100)))" | $py "$srcdir/tests/megatron_ref.py" write "$tmp/fx/seq" uint16 &&
  "$top_builddir/tests/mpi_batches" "fx=$tmp/fx/seq" dump 200 >"$tmp/fx/samples" &&
  $py -c "
import sys
rows = [list(map(int, l.split())) for l in open('$tmp/fx/samples')]
good = len(rows) == 200 and all(r[0] == 0 and r[1] % 32 == 0 and r[1:] == list(range(r[1], r[1] + 33)) for r in rows)
starts = sorted(set(r[1] for r in rows))
sys.exit(0 if good and starts == list(range(0, 1199 - 32, 32)) else 1)"
ok $? "the loader reads a fixture from the independent writer: 200 samples, all 37 windows used, tokens exact"

# bad inputs: status, a message naming the culprit, and no output left behind
first=$(ls "$srcdir"/data/demo/*.txt | head -1)
: >"$tmp/empty.txt"; printf '\n\n\n' >"$tmp/blank.txt"; printf '{"text": "a"}\nnot json\n' >"$tmp/bad.jsonl"
$py -c "
import base64
with open('$tmp/huge.ranks','w') as f:
    r=0
    for b in range(256): f.write(base64.b64encode(bytes([b])).decode()+' %d\n'%r); r+=1
    for a in range(256):
        for b in range(256):
            if r>=70000: break
            f.write(base64.b64encode(bytes([a,b])).decode()+' %d\n'%r); r+=1
"
bad() { # bad STATUS PATTERN ARGS...
  want=$1; pat=$2; shift 2
  $shard "$@" -o "$tmp/out" --quiet 2>"$tmp/err"; got=$?
  [ $got -eq "$want" ] && grep -q -- "$pat" "$tmp/err" && [ ! -e "$tmp/out" ] && [ -z "$(ls -d "$tmp"/out.tmp-* 2>/dev/null)" ]
  ok $? "bad input ($pat): exit $got, clear message, nothing left behind"
  [ $got -eq "$want" ] || sed 's/^/# /' "$tmp/err"
}
bad 3 missing.txt --domain a="$tmp/missing.txt"
bad 3 empty.txt --domain a="$tmp/empty.txt"
bad 3 blank.txt --domain a="$tmp/blank.txt"
bad 2 "given twice" --domain a="$first" --domain a="$first"
bad 3 "bad.jsonl:2" --domain a="$tmp/bad.jsonl"
bad 2 "uint16" --domain a="$first" --tokenizer "$tmp/huge.ranks" --dtype uint16
$shard --domain a="$first" --quiet 2>"$tmp/err"; [ $? -eq 2 ] && grep -q "no output" "$tmp/err"; ok $? "no -o: usage error"
mkdir "$tmp/out"; $shard --domain a="$first" -o "$tmp/out" --quiet 2>"$tmp/err"; [ $? -eq 2 ] && grep -q "already exists" "$tmp/err"; ok $? "an existing output is never overwritten"
rmdir "$tmp/out"

# moe-train on the datasets
$train --data "$tmp/byte" --set train.steps=5 --set train.warmup=1 --set model.seq_len=32 --set run.dir="$tmp/run" --quiet
ok $? "moe-train trains on the byte-level dataset"
$train --data "$tmp/bpe" --set model.vocab=1025 --set train.steps=3 --set train.warmup=1 --set model.seq_len=32 --set run.dir="$tmp/run" --quiet
ok $? "moe-train trains on the BPE dataset (vocab 1025)"
$train --data "$tmp/bpe" --set model.vocab=1025 --set data.tokenizer=byte --set train.steps=3 --set train.warmup=1 --set run.dir="$tmp/run" --quiet 2>"$tmp/err"
[ $? -eq 2 ] && grep -q "tokenizer" "$tmp/err"; ok $? "moe-train refuses a dataset made by another tokenizer"
$train --data "$tmp/byte" --set data.mixture=prose:-1 --set train.steps=3 --set train.warmup=1 --set run.dir="$tmp/run" --quiet 2>"$tmp/err"
[ $? -eq 2 ] && grep -q "data.mixture" "$tmp/err"; ok $? "moe-train refuses a bad mixture"
echo "1..$n"
[ $fails -eq 0 ]
