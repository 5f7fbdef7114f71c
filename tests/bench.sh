#!/bin/sh
# bench.sh PYTHON THREADS STEPS - CPU training throughput of moekit on schedules/tiny.ini
# against the PyTorch reference on the same shape and thread count (make bench).
py=$1; threads=$2; steps=$3
src=$(cd "$(dirname "$0")/.." && pwd)
bin=${top_builddir:-.}/bin/moe-train
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
echo "bench: schedules/tiny.ini, $steps steps, $threads threads, $(date -u +%Y-%m-%d) on $(uname -m), $(nproc) cores"
OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=1 "$bin" --schedule "$src/schedules/tiny.ini" \
  --data "$src/data/demo/english.txt" --set train.steps="$steps" --set train.warmup=1 \
  --set train.grad_accum=1 --set run.dir="$tmp/run" --set lbl.mode=micro --set ckpt.every=0 --set eval.every=0 \
  --set log.every=1000000 --threads "$threads" >"$tmp/moekit.out" || { cat "$tmp/moekit.out"; exit 1; }
mk=$(sed -n 's/^done: .* \([0-9][0-9]*\) tok\/s.*/\1/p' "$tmp/moekit.out")
echo "moekit: tokens/s=$mk steps=$steps threads=$threads"
if [ -z "$py" ]; then
  echo "torch: not installed (configure found no python with torch); skipped"
else
  # Torch is measured in its best setting here: with OpenBLAS's own pool on top of torch's
  # OpenMP pool, 2 threads ran 3x slower than 1 (measured 2026-11-28).
  OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=1 "$py" "$src/tests/reference/bench_torch.py" --schedule "$src/schedules/tiny.ini" \
    --threads "$threads" --steps "$steps" >"$tmp/torch.out" || { cat "$tmp/torch.out"; exit 1; }
  cat "$tmp/torch.out"
  tt=$(sed -n 's/^torch: tokens\/s=\([0-9.]*\).*/\1/p' "$tmp/torch.out")
  awk -v a="$mk" -v b="$tt" 'BEGIN { if (b > 0) printf "ratio: moekit / torch = %.2f\n", a / b }'
fi

# ---- moe-shard throughput (MB/s of input) against tiktoken on the same ranks file and text
shard=${top_builddir:-.}/bin/moe-shard
set --
for f in "$src"/data/demo/*.txt; do set -- "$@" --domain "$(basename "$f" .txt)=$f"; done
mbs() { sed -n 's/^moe-shard: .*(\([0-9.]*\) MB\/s.*/\1/p' "$1"; }
for th in 1 "$threads"; do
  rm -rf "$tmp/byte"
  OMP_NUM_THREADS=$th "$shard" "$@" -o "$tmp/byte" 2>"$tmp/shard.err" || { cat "$tmp/shard.err"; exit 1; }
  echo "moe-shard byte-level: MB/s=$(mbs "$tmp/shard.err") threads=$th"
done
rm -rf "$tmp/vocab"
"$shard" "$@" -o "$tmp/vocab" --bpe-train 4096 2>"$tmp/shard.err" || { cat "$tmp/shard.err"; exit 1; }
echo "moe-shard BPE training (4096 ranks) + encoding: $(sed -n 's/^moe-shard: .* in \([0-9.]*\) s .*/\1/p' "$tmp/shard.err") s"
for th in 1 "$threads"; do
  rm -rf "$tmp/bpe"
  OMP_NUM_THREADS=$th "$shard" "$@" -o "$tmp/bpe" --tokenizer "$tmp/vocab/tokenizer.ranks" 2>"$tmp/shard.err" ||
    { cat "$tmp/shard.err"; exit 1; }
  echo "moe-shard BPE encoding (4096 ranks): MB/s=$(mbs "$tmp/shard.err") threads=$th"
done
tkpy=""
for p in python3 /usr/bin/python3; do
  if "$p" -c 'import tiktoken' 2>/dev/null; then tkpy=$p; break; fi
done
if [ -n "$tkpy" ]; then
  "$tkpy" "$src/tests/bench_tokenize.py" "$tmp/vocab/tokenizer.ranks" "$src"/data/demo/*.txt
else
  echo "tiktoken: not installed (pip install tiktoken); skipped"
fi

# ---- distributed: the cost of the global LBL over micro on 4 ranks, and the all-to-all
if [ -n "${MPIEXEC:-}" ] || command -v mpirun >/dev/null 2>&1; then
  launch=${MPIEXEC:-mpirun}
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
  dist="--data $src/data/demo/english.txt --set train.steps=$steps --set train.warmup=1 --set log.every=0
    --set train.micro_batch=2 --set train.threads=1 --set ckpt.every=0 --set eval.every=0"
  best() { # best of 3 runs' tokens/s
    b=0
    for i in 1 2 3; do
      OMP_NUM_THREADS=1 $launch -n 4 --bind-to none "$bin" --schedule "$src/schedules/tiny.ini" $dist "$@" \
        --set run.dir="$tmp/dist" >"$tmp/dist.out" 2>&1 || { cat "$tmp/dist.out"; exit 1; }
      t=$(sed -n 's/^done: .* \([0-9][0-9]*\) tok\/s.*/\1/p' "$tmp/dist.out")
      [ "$t" -gt "$b" ] && b=$t
    done
    echo "$b"
  }
  micro=$(best --set lbl.mode=micro)
  global=$(best --set lbl.mode=global)
  echo "4 ranks (ep 1), best of 3: lbl micro tokens/s=$micro, lbl global tokens/s=$global"
  awk -v a="$micro" -v b="$global" 'BEGIN { printf "global LBL step-time cost over micro: %.2f%%\n", 100 * (a / b - 1) }'
  OMP_NUM_THREADS=1 $launch -n 4 --bind-to none "$bin" --schedule "$src/schedules/tiny.ini" $dist \
    --set lbl.mode=global --set parallel.ep=4 --set run.dir="$tmp/dist" >"$tmp/dist.out" 2>&1 || { cat "$tmp/dist.out"; exit 1; }
  echo "4 ranks, ep 4: $(sed -n 's/^done: .* \([0-9][0-9]*\) tok\/s.*/\1/p' "$tmp/dist.out") tokens/s; $(grep '^expert all-to-all' "$tmp/dist.out")"
fi

# ---- checkpoints: write and read throughput on a model of over 500 MB of checkpoint
# (parameters + two AdamW moments, float32), and the share of step time spent saving
big="--data $src/data/demo/english.txt --set model.d_model=512 --set model.heads=8 --set model.layers=4
  --set model.experts=16 --set model.ffn=512 --set model.seq_len=64 --set train.micro_batch=2
  --set train.warmup=1 --set log.every=0 --set run.dir=$tmp/big --threads $threads"
rm -rf "$tmp/big"
OMP_NUM_THREADS=$threads "$bin" $big --set train.steps=6 --set ckpt.every=3 >"$tmp/big.out" 2>&1 || { cat "$tmp/big.out"; exit 1; }
f=$(ls "$tmp/big/ckpt"/step_*.h5 | tail -1)
mb=$(du -m "$f" | cut -f1)
save=$(sed -n 's/^moe-train: checkpoint .* (\([0-9.]*\) s)$/\1/p' "$tmp/big.out" | tail -1)
total=$(sed -n 's/^done: 6 steps in \([0-9.]*\) s.*/\1/p' "$tmp/big.out")
saves=$(sed -n 's/^moe-train: checkpoint .* (\([0-9.]*\) s)$/\1/p' "$tmp/big.out" | awk '{ s += $1 } END { print s }')
OMP_NUM_THREADS=$threads "$bin" $big --set train.steps=7 --resume auto >"$tmp/big2.out" 2>&1 || { cat "$tmp/big2.out"; exit 1; }
load=$(sed -n 's/.*loaded in \([0-9.]*\) s.*/\1/p' "$tmp/big2.out")
awk -v mb="$mb" -v s="$save" -v l="$load" -v t="$total" -v ss="$saves" 'BEGIN {
  printf "checkpoint: %d MB, write %.0f MB/s (%.2f s incl. fsync), read %.0f MB/s (%.2f s)\n", mb, mb / s, s, mb / l, l
  printf "checkpoint: saving every 3 steps took %.1f%% of the run (%.2f s of %.2f s)\n", 100 * ss / t, ss, t }'
