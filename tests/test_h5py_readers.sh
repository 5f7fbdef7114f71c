#!/bin/sh
# test_h5py_readers.sh - an h5py user reads moekit's files with only the docs: a checkpoint
# (docs/checkpoint-format.md: root attributes, /config, /model by name and shape; the model's
# loss from those weights through the PyTorch reference equals `moe-ckpt eval`) and a routing
# log (docs/routing-log-format.md: every training and eval row is consistent: counts of each
# layer and domain sum to topk x tokens, steps increase, eval losses finite).
py=${PYTHON_TORCH:-/usr/bin/python3}
if ! "$py" -c 'import h5py, numpy' 2>/dev/null; then echo "1..0 # SKIP h5py not available"; exit 0; fi
train=$top_builddir/bin/moe-train; shard=$top_builddir/bin/moe-shard; ckpt=$top_builddir/bin/moe-ckpt
tmp=$(mktemp -d) || exit 99
trap 'rm -rf "$tmp"' EXIT
export OMP_NUM_THREADS=1
n=0; fails=0
ok() { n=$((n + 1)); if [ "$1" -eq 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; fails=$((fails + 1)); fi; }
set --
for f in "$srcdir"/data/demo/*.txt; do set -- "$@" --domain "$(basename "$f" .txt)=$f"; done
"$shard" "$@" -o "$tmp/ds" --quiet &&
"$train" --data "$tmp/ds" --set run.dir="$tmp/run" --set train.steps=6 --set train.warmup=1 --set log.every=2 \
  --set eval.every=3 --set ckpt.every=6 --set model.d_model=32 --set model.ffn=32 --set model.seq_len=32 --quiet
ok $? "a 6-step run on the demo dataset with checkpoints, routing log and eval passes"
head -c 2000 "$srcdir/data/demo/english.txt" >"$tmp/w.txt"
c=$tmp/run/ckpt/step_00000006.h5
loss=$("$ckpt" eval "$c" "$tmp/w.txt" | sed -n 's/^tokens [0-9]* loss \([0-9.]*\) .*/\1/p')
"$py" - "$c" "$tmp/w.txt" "$loss" "$srcdir/tests/reference" <<'PY'
import sys, h5py, numpy as np
path, text, c_loss, refdir = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
f = h5py.File(path, "r")
assert f.attrs["format"] in (b"moekit-checkpoint", "moekit-checkpoint") and f.attrs["format_version"] == 1
cfg = {k: (v.decode() if isinstance(v, bytes) else str(v)) for k, v in f["config"].attrs.items()}
V, D, L, E, F = (int(cfg["model." + k]) for k in ("vocab", "d_model", "layers", "experts", "ffn"))
want = {"wte": (V, D), "final_norm": (D,)}
for l in range(L):
    p = "layers.%d." % l
    want.update({p + "attn_norm": (D,), p + "qkv": (D, 3 * D), p + "attn_out": (D, D), p + "mlp_norm": (D,),
                 p + "router": (D, E), p + "w1": (E, D, F), p + "w3": (E, D, F), p + "w2": (E, F, D)})
shapes = {k: f["model"][k].shape for k in f["model"]}
assert shapes == want, (shapes, want)
for k in want:
    assert f["optim/m"][k].shape == want[k] and f["optim/v"][k].shape == want[k]
print("# checkpoint layout as documented: %d tensors, step %d" % (len(want), f.attrs["step"]))
try:
    import torch
except ImportError:
    print("# torch missing: loss not recomputed"); sys.exit(0)
sys.path.insert(0, refdir)
import moe_ref
mc = moe_ref.Config(cfg)
params = {k: torch.from_numpy(f["model"][k][...].astype(np.float64)) for k in want}
ids = list(open(text, "rb").read()); T = mc.T; nt = len(ids) - 1; nw = (nt + T - 1) // T
tok = np.zeros((nw, T), dtype=np.int64); tgt = np.full((nw, T), -1, dtype=np.int64)
for i in range(nt):
    tok[i // T, i % T] = ids[i]; tgt[i // T, i % T] = ids[i + 1]
with torch.no_grad():
    ref = float(moe_ref.model_forward(params, mc, torch.from_numpy(tok), torch.from_numpy(tgt))["ce"])
print("# loss from h5py weights through the reference %.6f, moe-ckpt eval %.6f" % (ref, c_loss))
sys.exit(0 if abs(ref - c_loss) <= 2e-4 * ref else 1)
PY
ok $? "h5py reads the checkpoint by the documented names and shapes; its weights give moe-ckpt eval's loss"
"$py" - "$tmp/run/routing.h5" <<'PY'
import sys, h5py, numpy as np
f = h5py.File(sys.argv[1], "r")
L, E, K = int(f.attrs["layers"]), int(f.attrs["experts"]), int(f.attrs["topk"])
doms = [d.decode() if isinstance(d, bytes) else d for d in f["domains"][...]]
for grp in ("", "eval/"):
    step, counts, tokens = f[grp + "step"][...], f[grp + "counts"][...], f[grp + "tokens"][...]
    assert len(step) > 0 and np.all(np.diff(step) > 0), step
    assert counts.shape == (len(step), L, len(doms), E) and tokens.shape == (len(step), len(doms))
    assert np.array_equal(counts.sum(axis=3), K * np.broadcast_to(tokens[:, None, :], counts.shape[:3]))
    assert f[grp + "lbl"].shape == (len(step), L) and f[grp + "maxvio"].shape == (len(step), L)
assert np.all(np.isfinite(f["eval/loss"][...])) and f["eval/loss"].shape == (len(f["eval/step"]), len(doms))
print("# routing log: steps %s, eval steps %s, domains %s" % (list(f["step"][...]), list(f["eval/step"][...]), doms))
PY
ok $? "h5py reads the routing log by the documented layout: counts sum to topk x tokens per layer and domain"
echo "1..$n"
[ $fails -eq 0 ]
