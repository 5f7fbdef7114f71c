#!/bin/sh
# make_seeds.sh - (re)make the seed corpora of tests/fuzz/corpus/ from the repository:
# demo corpus snippets, schedules/*.ini, a tiny dataset made by moe-shard, a BPE ranks file
# trained by moe-shard, and a tiny checkpoint and routing log made by moe-train
# (tests/fuzz/seed.ini). Run from the top build directory after `make`:
#   sh tests/fuzz/make_seeds.sh [SRCDIR]
# The committed seeds are its output (the HDF5 files are whole: the smallest valid ones
# moe-train writes). The files named by a SHA-1 were added from `make fuzz` runs with
#   tests/fuzz/clang-build/bin/fuzz_NAME -merge=1 tests/fuzz/corpus/NAME tests/fuzz/clang-build/corpus/NAME
# which keeps only inputs that add coverage.
set -eu
src=${1:-.}
out=$src/tests/fuzz/corpus
bin=$(pwd)/bin
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for h in indexed config manifest corpus bpe sbatch ckpt routing_log; do mkdir -p "$out/$h"; done

# ---- a tiny two-domain dataset (byte tokens), and one with int32 tokens
head -c 300 "$src/data/demo/code.txt" > "$tmp/a.txt"
head -c 300 "$src/data/demo/english.txt" > "$tmp/b.txt"
printf '\n\nein kleiner Text.\n\nund noch einer\n' >> "$tmp/b.txt"
( cd "$tmp" && "$bin/moe-shard" -q -d code=a.txt -d english=b.txt --val-fraction 0.5 -o ds &&
  "$bin/moe-shard" -q -d code=a.txt --dtype int32 -o ds32 )
python3 - "$tmp" "$out" <<'PY'
import json, os, struct, sys
tmp, out = sys.argv[1], sys.argv[2]
def pair(prefix, name):
    idx = open(prefix + ".idx", "rb").read()
    b = open(prefix + ".bin", "rb").read()
    open(os.path.join(out, "indexed", name), "wb").write(struct.pack("<I", len(idx)) + idx + b)
pair(tmp + "/ds/code/train_00000", "uint16")
pair(tmp + "/ds32/code/train_00000", "int32")
for d in ("english",):
    for s in ("train", "val"):
        p = "%s/ds/%s/%s_00000" % (tmp, d, s)
        if os.path.exists(p + ".idx"):
            pair(p, "%s_%s" % (d, s))
m = json.load(open(tmp + "/ds/manifest.json"))
open(os.path.join(out, "manifest", "moe-shard"), "w").write(json.dumps(m, separators=(",", ":")))
# the reader's view only: what mk_dataset reads
for dom in m["domains"]:
    dom.pop("inputs", None)
    for s in dom["splits"].values():
        for sh in s["shards"]:
            for k in list(sh):
                if k != "prefix": del sh[k]
open(os.path.join(out, "manifest", "minimal"), "w").write(json.dumps(
    {k: m[k] for k in ("format", "format_version", "tokenizer", "domains")}, separators=(",", ":")))
PY

# ---- schedules
for f in "$src"/schedules/*.ini; do cp "$f" "$out/config/$(basename "$f")"; done
cp "$src/tests/fuzz/seed.ini" "$out/config/seed.ini"
printf '[model]\nexperts = 8\ntopk = 2\n[parallel]\nep = 2\n--\ntrain.lr=1e-3\ndata.mixture=code:1,english:2\nmodel.topk = 9\n' > "$out/config/with-set"

# ---- corpus: mode byte (0 text/blank, 1 text/file, 2 jsonl "text", 3 jsonl "body") + file
{ printf '\000'; head -c 400 "$src/data/demo/german.txt"; printf '\n\n\nzweites\nDokument\n'; } > "$out/corpus/blank"
{ printf '\001'; head -c 200 "$src/data/demo/math.txt"; } > "$out/corpus/file"
python3 - "$src" "$out" <<'PY'
import json, sys
src, out = sys.argv[1], sys.argv[2]
text = open(src + "/data/demo/structured.txt", encoding="utf-8", errors="replace").read()[:600]
lines = [json.dumps({"text": t, "id": i}) for i, t in enumerate(text.split("\n")) if t]
lines.insert(1, "")
lines.append(json.dumps({"text": "nul \u0000 and \u00e9\ud83d\ude00 escapes"}))
open(out + "/corpus/jsonl", "wb").write(b"\x02" + "\n".join(lines).encode() + b"\n")
open(out + "/corpus/jsonl-body", "wb").write(b"\x03" + json.dumps({"body": "x", "text": 1}).encode() + b"\n")
PY

# ---- BPE ranks: trained by moe-shard, and the same with a text to encode after a NUL
( cd "$tmp" && "$bin/moe-shard" -q -d code=a.txt,b.txt --bpe-train 300 -o dsb )
cp "$tmp/dsb/tokenizer.ranks" "$out/bpe/trained300"
{ cat "$tmp/dsb/tokenizer.ranks"; printf '\000'; head -c 200 "$src/data/demo/code.txt"; printf '\377\376 caf\303\251'; } > "$out/bpe/trained300-text"

# ---- sbatch specs: flags byte, then values separated by 0x01
sb() { name=$1; shift; printf "$@" > "$out/sbatch/$name"; }
sb plain '\001/home/u/run\001/home/u/runs/tiny\001/usr/share/moekit/jobs\001p1\001a1\0011:00:00\001/home/u/s.ini\001runs/ds\001/usr/bin\001train.steps=3 train.lr=1e-3\001web=a.txt code=b.txt'
sb hostile '\047/home/u/$(touch x)\001/r/50%%;`id` |x\001/j obs\001-p\001"a\001%%H\001/s.ini\001ds1,ds2\001/b\001run.dir=$(x)\001'
sb minimal '\000/\001/r\001/j\001\001\001\001/s\001d\001/b\001\001'

# ---- a tiny checkpoint and routing log, made by the trainer
mkdir -p "$tmp/t"
cp "$src/tests/fuzz/seed.ini" "$tmp/t/seed.ini"
cp -r "$tmp/ds" "$tmp/t/ds"
( cd "$tmp/t" && OMP_NUM_THREADS=1 "$bin/moe-train" -q -s seed.ini )
cp "$tmp/t/run/ckpt/step_00000002.h5" "$out/ckpt/step2"
{ printf '\001'; cat "$tmp/t/run/routing.h5"; } > "$out/routing_log/keep-all"
{ printf '\002'; cat "$tmp/t/run/routing.h5"; } > "$out/routing_log/resume-1"
ls -l "$out"/*
du -sh "$out"
