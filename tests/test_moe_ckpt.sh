#!/bin/sh
# test_moe_ckpt.sh - moe-ckpt on real checkpoints: moe-train writes a tiny model's checkpoints
# at steps 2 and 4; info, verify, diff and eval read them; a truncated copy and a copy with
# one flipped byte inside a tensor's data fail verify; eval's loss agrees with the PyTorch
# reference run on the same weights read by h5dump (when torch and h5dump are there).
train=$top_builddir/bin/moe-train
ckpt=$top_builddir/bin/moe-ckpt
tmp=$(mktemp -d) || exit 99
trap 'rm -rf "$tmp"' EXIT
export OMP_NUM_THREADS=1
text=$srcdir/data/demo/english.txt
n=0; fails=0
ok() { n=$((n + 1)); if [ "$1" -eq 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; fails=$((fails + 1)); fi; }
skip() { n=$((n + 1)); echo "ok $n # SKIP $1"; }
show() { sed 's/^/# /' "$@" | head -8; }

"$train" --data "$text" --set run.dir="$tmp/run" --set train.steps=4 --set ckpt.every=2 \
  --set model.d_model=32 --set model.heads=2 --set model.experts=4 --set model.ffn=32 \
  --set model.seq_len=32 --set train.micro_batch=4 --set train.warmup=0 --set train.lr=3e-3 \
  --threads 1 --quiet >"$tmp/train.out" 2>&1
rc=$?
if [ ! -d "$tmp/run/ckpt" ]; then
  if [ $rc -ne 0 ]; then echo "not ok 1 - moe-train failed (status $rc)"; show "$tmp/train.out"; echo "1..1"; exit 1; fi
  echo "1..0 # SKIP moe-train has no checkpointing yet"
  exit 0
fi
ok $rc "moe-train wrote checkpoints (ckpt.every=2, 4 steps)"
c2=$tmp/run/ckpt/step_00000002.h5
c4=$tmp/run/ckpt/step_00000004.h5
[ -f "$c2" ] && [ -f "$c4" ] && [ "$(cat "$tmp/run/ckpt/latest")" = step_00000004.h5 ]
ok $? "step_00000002.h5 and step_00000004.h5 exist, latest names step 4"

# ------------------------------------------------------------------ info
"$ckpt" info "$c4" >"$tmp/info" 2>"$tmp/err"; rc=$?
[ $rc -eq 0 ] && grep -Eq '^step +4$' "$tmp/info" && grep -Eq '^tokenizer +byte$' "$tmp/info" &&
  grep -Eq '^format +moekit-checkpoint, version 1$' "$tmp/info" && grep -q '^  model.d_model = 32$' "$tmp/info" &&
  grep -Eq '^  wte +\[257, 32\] +8224 ' "$tmp/info" && grep -Eq '^  layers\.1\.w2 +\[4, 32, 32\] +4096 ' "$tmp/info" &&
  grep -Eq '^  total ' "$tmp/info"
ok $? "info: step 4, tokenizer, format, /config settings and the tensor table"
[ $rc -eq 0 ] || show "$tmp/err" "$tmp/info"
"$ckpt" info "$text" >"$tmp/out" 2>"$tmp/err"; rc=$?
[ $rc -eq 3 ] && [ "$(wc -l <"$tmp/err")" -eq 1 ] && grep -q 'not a moekit checkpoint' "$tmp/err" && [ ! -s "$tmp/out" ]
ok $? "info on a text file: status 3 and one line 'not a moekit checkpoint' (got $rc)"

# ------------------------------------------------------------------ verify
"$ckpt" verify "$c2" "$c4" >"$tmp/out" 2>&1
[ $? -eq 0 ] && [ "$(grep -c ': ok$' "$tmp/out")" -eq 2 ]
ok $? "verify passes both checkpoints"

# ------------------------------------------------------------------ diff
"$ckpt" diff "$c4" "$c4" >"$tmp/out" 2>&1; rc=$?
[ $rc -eq 0 ] && [ ! -s "$tmp/out" ]
ok $? "diff of a checkpoint with itself: status 0, no output (got $rc)"
"$ckpt" diff --optim "$c4" "$c4" >/dev/null 2>&1
ok $? "diff --optim of a checkpoint with itself: status 0"
"$ckpt" diff "$c2" "$c4" >"$tmp/out" 2>&1; rc=$?
[ $rc -eq 1 ] && grep -Eq '^layers\.0\.router .*max_abs .*max_rel .*differs$' "$tmp/out"
ok $? "diff step 2 vs step 4: status 1, per-tensor differences (got $rc)"
[ $rc -eq 1 ] || show "$tmp/out"
"$ckpt" diff --quiet --tolerance 1 "$c2" "$c4" >"$tmp/out" 2>&1; rc=$?
[ $rc -eq 0 ] && [ ! -s "$tmp/out" ]
ok $? "diff --tolerance 1 (two steps move no weight by 1): status 0 (got $rc)"

# ------------------------------------------------------------------ damaged copies
size=$(wc -c <"$c4")
head -c $((size / 2)) "$c4" >"$tmp/trunc.h5"
"$ckpt" verify "$tmp/trunc.h5" >"$tmp/out" 2>&1; rc=$?
[ $rc -eq 3 ] && grep -q "^$tmp/trunc.h5: FAILED: " "$tmp/out"
ok $? "a truncated copy fails verify with status 3, naming the file (got $rc)"
show "$tmp/out"

# The file offset of the data of /model/layers.0.router from info -v (one chunk, the
# Fletcher32 checksum in its last 4 bytes); cross-checked against h5dump's bytes if present.
tensor=layers.0.router
line=$("$ckpt" info --verbose "$c4" | grep -E "^  $tensor ")
off=$(echo "$line" | sed -n 's/.*offset \([0-9]*\) (\([0-9]*\) bytes).*/\1/p')
len=$(echo "$line" | sed -n 's/.*offset \([0-9]*\) (\([0-9]*\) bytes).*/\2/p')
if [ -z "$off" ] || [ -z "$len" ]; then
  ok 1 "info --verbose gives the file offset of /model/$tensor"
else
  if command -v h5dump >/dev/null 2>&1; then
    h5dump -d "/model/$tensor" -b LE -o "$tmp/raw" "$c4" >/dev/null 2>&1 &&
      [ "$(od -An -tx1 -N16 "$tmp/raw")" = "$(od -An -tx1 -j "$off" -N16 "$c4")" ]
    ok $? "info --verbose: the data of /model/$tensor is at offset $off (h5dump's bytes are there)"
  fi
  cp "$c4" "$tmp/flip.h5"
  at=$((off + (len - 4) / 2))
  b=$(od -An -tu1 -j "$at" -N1 "$c4" | tr -d ' ')
  printf "\\$(printf %03o $((b ^ 255)))" | dd of="$tmp/flip.h5" bs=1 seek="$at" conv=notrunc 2>/dev/null
  cmp -s "$c4" "$tmp/flip.h5"; [ $? -eq 1 ]
  ok $? "one byte flipped at offset $at"
  "$ckpt" verify "$c2" "$tmp/flip.h5" >"$tmp/out" 2>&1; rc=$?
  [ $rc -eq 3 ] && grep -q "^$tmp/flip.h5: FAILED: .*/model/$tensor" "$tmp/out" && grep -q "^$c2: ok$" "$tmp/out"
  ok $? "a flipped byte fails verify with status 3 naming /model/$tensor; the good file still passes (got $rc)"
  show "$tmp/out"
  "$ckpt" diff "$c4" "$tmp/flip.h5" >"$tmp/out" 2>&1; rc=$?
  [ $rc -eq 3 ] && grep -q "$tensor" "$tmp/out"
  ok $? "diff against the damaged copy: status 3 naming the tensor (got $rc)"
fi

# ------------------------------------------------------------------ eval
# loss_of FILE: the X of 'tokens N loss X ppl Y'
loss_of() { sed -n 's/^tokens [0-9][0-9]* loss \([^ ]*\) ppl .*/\1/p' "$1"; }
"$ckpt" eval "$c4" "$text" --threads 2 >"$tmp/e4" 2>"$tmp/err"; rc=$?
bytes=$(wc -c <"$text")
[ $rc -eq 0 ] && grep -Eq '^tokens [0-9]+ loss [0-9.]+ ppl [0-9.]+$' "$tmp/e4" &&
  awk -v want=$((bytes - 1)) '{ l = $4; p = $6; d = p - exp(l); if (d < 0) d = -d;
    exit !($2 == want && l > 0 && l < 20 && d <= 1e-3 * exp(l)) }' "$tmp/e4"
ok $? "eval on english.txt: tokens = bytes - 1, loss finite, ppl = exp(loss) ($(cat "$tmp/e4"))"
[ $rc -eq 0 ] || show "$tmp/err"
head -c 20000 "$text" >"$tmp/slice.txt"
"$ckpt" eval "$c4" "$tmp/slice.txt" >"$tmp/s4" 2>&1 && "$ckpt" eval -b 3 "$c4" "$tmp/slice.txt" >"$tmp/s4b" 2>&1 &&
  cmp -s "$tmp/s4" "$tmp/s4b"
ok $? "eval does not depend on the batch size"
"$ckpt" eval "$c2" "$tmp/slice.txt" >"$tmp/s2" 2>&1
awk -v a="$(loss_of "$tmp/s4")" -v b="$(loss_of "$tmp/s2")" 'BEGIN { exit !(a != "" && b != "" && a + 0 < b + 0) }'
ok $? "eval loss at step 4 ($(loss_of "$tmp/s4")) is below step 2 ($(loss_of "$tmp/s2"))"
if [ -f "$tmp/run/ckpt/step_00000000.h5" ]; then
  "$ckpt" eval "$tmp/run/ckpt/step_00000000.h5" "$tmp/slice.txt" >"$tmp/s0" 2>&1
  awk -v a="$(loss_of "$tmp/s4")" -v b="$(loss_of "$tmp/s0")" 'BEGIN { exit !(a != "" && b != "" && a + 0 < b + 0) }'
  ok $? "eval loss after training is below the step-0 checkpoint's"
else
  skip "no step-0 checkpoint to compare the trained loss with"
fi
printf 'x' >"$tmp/one.txt"
"$ckpt" eval "$c4" "$tmp/one.txt" >/dev/null 2>"$tmp/err"; rc=$?
[ $rc -eq 3 ] && grep -q 'one.txt' "$tmp/err"
ok $? "eval on a one-token file: status 3 naming it (got $rc)"

# The PyTorch reference on the weights as h5dump reads them, the same windows.
py=${PYTHON_TORCH:-python3}
if command -v h5dump >/dev/null 2>&1 && "$py" -c 'import torch, numpy' 2>/dev/null; then
  head -c 3000 "$text" >"$tmp/ref.txt"
  "$ckpt" eval "$c4" "$tmp/ref.txt" >"$tmp/sr" 2>&1
  "$ckpt" info "$c4" | sed -n 's/^  \([a-z_]*\.[a-z0-9_.]*\) = \(.*\)$/\1=\2/p' >"$tmp/config.txt"
  "$ckpt" info "$c4" | sed -n 's/^  \([a-z_]*[a-z0-9_.]*\) *\[.*/\1/p' | grep -v '^total$' | while read -r t; do
    h5dump -d "/model/$t" -b LE -o "$tmp/w.$t" "$c4" >/dev/null 2>&1 || echo "h5dump failed on $t" >&2
  done
  "$py" - "$srcdir/tests/reference" "$tmp" "$(loss_of "$tmp/sr")" <<'EOF' >"$tmp/ref.out" 2>&1
import sys, numpy as np, torch
sys.path.insert(0, sys.argv[1])
import moe_ref
tmp, c_loss = sys.argv[2], float(sys.argv[3])
settings = dict(l.rstrip("\n").split("=", 1) for l in open(tmp + "/config.txt"))
cfg = moe_ref.Config(settings)
p = {}
for name, shape, _ in moe_ref.param_specs(cfg):
    p[name] = torch.from_numpy(np.fromfile(tmp + "/w." + name, dtype="<f4").reshape(shape).astype(np.float64))
ids = list(open(tmp + "/ref.txt", "rb").read())
T = cfg.T
nt = len(ids) - 1
nw = (nt + T - 1) // T
tok = np.zeros((nw, T), dtype=np.int64)
tgt = np.full((nw, T), -1, dtype=np.int64)
for i in range(nt):
    tok[i // T, i % T] = ids[i]
    tgt[i // T, i % T] = ids[i + 1]
with torch.no_grad():
    st = moe_ref.model_forward(p, cfg, torch.from_numpy(tok), torch.from_numpy(tgt))
ref = float(st["ce"])
print("reference loss %.6f, moe-ckpt eval %.6f" % (ref, c_loss))
sys.exit(0 if abs(ref - c_loss) <= 2e-4 * ref else 1)
EOF
  ok $? "eval loss equals the PyTorch reference's on the same weights ($(head -1 "$tmp/ref.out"))"
  [ -n "$(sed -n 2p "$tmp/ref.out")" ] && show "$tmp/ref.out"
else
  skip "no h5dump or no PyTorch: eval not compared with the reference"
fi

# A BPE run: the checkpoint carries its vocabulary in /tokenizer/ranks, and eval uses it.
shard=$top_builddir/bin/moe-shard
head -c 200000 "$text" >"$tmp/bpe.txt"
if "$shard" --domain english="$tmp/bpe.txt" --bpe-train 300 -o "$tmp/bpe" --quiet >"$tmp/out" 2>&1 &&
   "$train" --data "$tmp/bpe" --set run.dir="$tmp/runbpe" --set train.steps=1 --set train.warmup=0 --set ckpt.every=1 \
     --set model.vocab=301 --set model.d_model=32 --set model.heads=2 --set model.experts=4 --set model.ffn=32 \
     --set model.seq_len=32 --set train.micro_batch=2 --threads 1 --quiet >>"$tmp/out" 2>&1; then
  cb=$tmp/runbpe/ckpt/step_00000001.h5
  id=$(sed -n 's/.*"id": *"\(bpe:[0-9a-f]*\)".*/\1/p' "$tmp/bpe/manifest.json" | head -1)
  "$ckpt" info "$cb" >"$tmp/info" 2>&1 && grep -Eq "^tokenizer +$id\$" "$tmp/info" && grep -q '^tokenizer ranks ' "$tmp/info"
  ok $? "BPE run: info shows the tokenizer id of the dataset ($id) and the embedded ranks"
  "$ckpt" eval "$cb" "$tmp/slice.txt" >"$tmp/sb" 2>"$tmp/err"; rc=$?
  nb=$(sed -n 's/^tokens \([0-9]*\) .*/\1/p' "$tmp/sb")
  [ $rc -eq 0 ] && [ -n "$nb" ] && [ "$nb" -gt 1000 ] && [ "$nb" -lt 19999 ] &&
    awk '{ exit !($4 > 0 && $4 < 20) }' "$tmp/sb"
  ok $? "BPE run: eval tokenizes with the checkpoint's vocabulary (fewer tokens than bytes): $(cat "$tmp/sb")"
  [ $rc -eq 0 ] || show "$tmp/err"
else
  ok 1 "BPE run: moe-shard --bpe-train and moe-train with checkpoints"
  show "$tmp/out"
fi

# ------------------------------------------------------------------ command line
"$ckpt" --help >"$tmp/out" 2>&1 && grep -q '^Usage: moe-ckpt info' "$tmp/out"
ok $? "--help"
"$ckpt" --version >"$tmp/out" 2>&1 && grep -q '^moe-ckpt (moekit) ' "$tmp/out"
ok $? "--version"
"$ckpt" frobnicate "$c4" >/dev/null 2>&1; rc=$?
[ $rc -eq 2 ]; ok $? "an unknown command: status 2 (got $rc)"
"$ckpt" diff "$c4" >/dev/null 2>&1; rc=$?
[ $rc -eq 2 ]; ok $? "diff with one file: status 2 (got $rc)"
"$ckpt" verify --tolerance 1 "$c4" >/dev/null 2>&1; rc=$?
[ $rc -eq 2 ]; ok $? "an option of another command: status 2 (got $rc)"
"$ckpt" verify "$tmp/missing.h5" >"$tmp/out" 2>&1; rc=$?
[ $rc -eq 3 ] && grep -q 'missing.h5: FAILED' "$tmp/out"
ok $? "verify of a missing file: status 3 (got $rc)"

echo "1..$n"
[ "$fails" -eq 0 ]
