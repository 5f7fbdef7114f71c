#!/usr/bin/env python3
"""torch_moe_bench.py - the plain, strong PyTorch baseline for moekit's CUDA backend (issue 8).

    python3 tests/gpu/torch_moe_bench.py [--device cuda] [--steps 30] [--warmup 10] ...

Trains the moekit model of DESIGN section 2 with the loss of section 3 (lbl.mode micro) at
the shape of schedules/bench-s.ini by default, the way a capable PyTorch user would write it
for one H200:

  * experts through grouped GEMMs, torch._grouped_mm (bf16, the N*K routing choices sorted
    by expert, int32 cumulative group ends as `offs`), gate and up fused in one [E, 2F, D]
    weight; a per-expert loop when this torch has no usable _grouped_mm (a note says which
    path ran);
  * bf16 autocast with fp32 master weights; the router (logits, softmax, top-K, LBL) in fp32
    as moekit does on every backend; causal attention by F.scaled_dot_product_attention;
  * torch.optim.AdamW(fused=True), lr 1e-3, betas (0.9, 0.95), eps 1e-8, weight decay 0.1 on
    every matrix (norms excluded), gradient clipping at 1.0;
  * torch.compile of the whole model (forward and backward); if that fails, the expert
    part is left eager (torch.compiler.disable) and the dense parts stay compiled.

The model (same as tests/reference/moe_ref.py; no biases):
    x = wte[token]; per layer h = x + Attn(RMSNorm(x)), x = h + MoE(RMSNorm(h));
    RMSNorm(x; g) = x / sqrt(mean(x^2) + 1e-5) * g;
    Attn: [q|k|v] = x @ qkv [D, 3D]; RoPE theta 10000 on the interleaved pairs (2i, 2i+1) of
          each head, angle pos * theta^(-2i/hd); causal softmax, scale 1/sqrt(hd); @ attn_out;
    MoE: z = x @ router [D, E] in fp32, s = softmax(z), top-K of s, gates g_j = s_j (sum-1
         renormalised only with --norm-topk); expert e: (silu(x w1[e]) * (x w3[e])) w2[e];
         out = sum_j g_j y_j; dropless;
    final RMSNorm, logits = x @ wte^T (tied);
    loss = mean CE + lbl_coeff * sum_l LBL_l, LBL_l = E * sum_i f_i P_i, f_i = c_i / (K N)
           (no gradient), P_i = mean over the N tokens of s_i.
Weight layout: the expert weights are kept as [E, out, in] (w13[e] = [w1[e] | w3[e]]^T,
w2t[e] = w2[e]^T), the layout torch._grouped_mm is most used with (a column-major mat_b via
.transpose(-2, -1)); DESIGN's [in, out] is the same parameters transposed. Init as DESIGN:
normal(0, 0.02), attn_out and w2 scaled by 1/sqrt(2L), norms 1.

Tokens are synthetic: uniform random ids from a seeded generator, made on the device before
timing (throughput does not depend on the token values beyond the routing they cause, and a
freshly initialised router spreads tokens about evenly either way). --distinct-batches 1
repeats one batch, so the loss visibly falls (memorisation) for a quick sanity check.

FLOPs are counted as Megatron does: per token 6 * (L * (3D^2 + D^2 + K * 3 * D * F)) for the
active non-embedding matmuls, + 6 * D * V for the logits, + 6 * T * D * L for attention (the
causal half of 12 * T * D * L); the router (6 * D * E per layer) is left out. MFU is against
989 TFLOP/s (H100/H200 SXM dense bf16), --peak-tflops to change it.

Output: notes and progress on stderr; on stdout one human line and one JSON line
    {"impl": "pytorch", "torch": ..., "grouped_mm": ..., "compile": ..., "tokens_per_s": ...,
     "step_ms": ..., "tflops": ..., "mfu": ..., ...}
Runs on torch >= 1.13 (CPU, eager, per-expert loop) for testing; the benchmark wants a
recent torch (>= 2.8) on a Hopper GPU.
"""
import argparse
import json
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

ROPE_THETA = 10000.0
NORM_EPS = 1e-5
PEAK_TFLOPS = 989.0


def note(msg):
    print("torch_moe_bench: " + msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ model

class RMSNorm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + NORM_EPS) * self.weight).type_as(x)


def rope_tables(T, hd, device):
    """cos, sin [T, hd/2] in float32: angle pos * theta^(-2i/hd) (computed in float64)."""
    i = torch.arange(hd // 2, dtype=torch.float64)
    inv = ROPE_THETA ** (-2.0 * i / hd)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
    return ang.cos().float().to(device), ang.sin().float().to(device)


def apply_rope(x, cos, sin):
    """x [B, T, H, hd]; rotate pairs (2i, 2i+1): x0' = x0 c - x1 s, x1' = x0 s + x1 c (fp32)."""
    xf = x.float()
    x0 = xf[..., 0::2]
    x1 = xf[..., 1::2]
    c = cos[None, :, None, :]
    s = sin[None, :, None, :]
    return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2).type_as(x)


def causal_attention(q, k, v):
    """q, k, v [B, H, T, hd]."""
    if hasattr(F, "scaled_dot_product_attention"):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    T = q.shape[-2]   # torch < 2.0
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    return att.masked_fill(mask, float("-inf")).softmax(dim=-1).to(v.dtype) @ v


class Attention(nn.Module):
    def __init__(self, D, H):
        super().__init__()
        self.H = H
        self.qkv = nn.Parameter(torch.empty(D, 3 * D))        # [in, out]: columns q, k, v
        self.attn_out = nn.Parameter(torch.empty(D, D))

    def forward(self, x, cos, sin):
        B, T, D = x.shape
        H = self.H
        hd = D // H
        qkv = (x @ self.qkv).view(B, T, 3, H, hd)
        q = apply_rope(qkv[:, :, 0], cos, sin).transpose(1, 2)   # [B, H, T, hd]
        k = apply_rope(qkv[:, :, 1], cos, sin).transpose(1, 2)
        v = qkv[:, :, 2].transpose(1, 2)
        o = causal_attention(q, k, v).transpose(1, 2).reshape(B, T, D)
        return o @ self.attn_out


def _experts_grouped(x, tok, sorted_e, counts, w13, w2t, align):
    """Grouped-GEMM experts. x [N, D]; tok, sorted_e [N*K]: token and expert of each routing
    choice, sorted by expert; counts [E] int64. Returns (y, rows): y [M, D] (bf16) the expert
    outputs in buffer order, rows [N*K] the buffer row of each sorted choice (None: row i).

    align > 1 starts each expert's rows at a multiple of `align`; the pad rows copy token 0
    (finite values that nothing reads, so they add nothing to any gradient), and the last
    group takes the slack up to a fixed buffer size, so shapes stay static and nothing syncs
    with the host. Some torch versions assert that group sizes along a dynamic dimension are
    multiples of 16 bytes; align 8 (bf16) satisfies every version at a cost of fewer than
    E * align extra rows (0.3% at bench-s). Recent versions need none (--group-align 1)."""
    E = counts.shape[0]
    NK = tok.shape[0]
    xb = x.to(torch.bfloat16)
    w13b = w13.to(torch.bfloat16).transpose(-2, -1)          # [E, D, 2F], column-major
    w2b = w2t.to(torch.bfloat16).transpose(-2, -1)           # [E, F, D], column-major
    if align <= 1:
        offs = torch.cumsum(counts, 0).to(torch.int32)       # group ends
        src = tok
        rows = None
    else:
        Mp = (NK + E * (align - 1) + align - 1) // align * align
        padded = (counts + (align - 1)) // align * align
        pends = torch.cumsum(padded, 0)
        start = torch.cumsum(counts, 0) - counts
        offs = torch.cat((pends[:-1], pends.new_full((1,), Mp))).to(torch.int32)
        rows = (pends - padded - start)[sorted_e] + torch.arange(NK, device=x.device)
        src = torch.zeros(Mp, dtype=torch.long, device=x.device).scatter(0, rows, tok)
    xs = xb.index_select(0, src)                              # [M, D]
    h = torch._grouped_mm(xs, w13b, offs=offs)                # [M, 2F]
    g, u = h.chunk(2, dim=-1)
    y = torch._grouped_mm(F.silu(g) * u, w2b, offs=offs)      # [M, D]
    return y, rows


def _experts_loop(x, tok, sorted_e, counts, w13, w2t, align):
    """Per-expert loop (torch without _grouped_mm). Same contract as _experts_grouped."""
    xs = x.index_select(0, tok)
    ys = []
    off = 0
    for e, c in enumerate(counts.tolist()):
        if c:
            h = xs[off:off + c] @ w13[e].t()
            g, u = h.chunk(2, dim=-1)
            ys.append((F.silu(g) * u) @ w2t[e].t())
        off += c
    return torch.cat(ys, 0), None


class MoE(nn.Module):
    def __init__(self, D, E, K, Fh, norm_topk):
        super().__init__()
        self.E, self.K, self.norm_topk = E, K, norm_topk
        self.router = nn.Parameter(torch.empty(D, E))           # [in, out]
        self.w13 = nn.Parameter(torch.empty(E, 2 * Fh, D))      # [e] = [w1[e] | w3[e]]^T
        self.w2t = nn.Parameter(torch.empty(E, D, Fh))          # [e] = w2[e]^T
        self.experts_fn = _experts_loop
        self.align = 1

    def forward(self, x):
        """x [N, D] (normalised). Returns (out [N, D], LBL of this layer)."""
        N = x.shape[0]
        E, K = self.E, self.K
        with torch.autocast(device_type=x.device.type, enabled=False):
            z = x.float() @ self.router.float()
            probs = z.softmax(dim=-1)
            top_p, top_i = torch.topk(probs, K, dim=-1)
            gates = top_p / top_p.sum(-1, keepdim=True) if self.norm_topk else top_p
            flat = top_i.reshape(-1)                              # choice s = n*K + j
            counts = torch.zeros(E, dtype=torch.long, device=x.device).scatter_add_(
                0, flat, torch.ones_like(flat))
            f = counts.float() / float(K * N)                     # constant: no gradient
            lbl = E * (f * probs.mean(0)).sum()
        sorted_e, order = torch.sort(flat, stable=True)           # by expert, then by s
        tok = torch.div(order, K, rounding_mode="floor")
        y, rows = self.experts_fn(x, tok, sorted_e, counts, self.w13, self.w2t, self.align)
        # one gather back to choice order s = n*K + j: choice order[i] sits at sorted slot i
        inv = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=x.device))
        y = y.index_select(0, inv if rows is None else rows.index_select(0, inv)).view(N, K, -1)
        out = (y * gates.to(y.dtype).unsqueeze(-1)).sum(1)      # sum_j g_j y_j
        return out, lbl


class Block(nn.Module):
    def __init__(self, D, H, E, K, Fh, norm_topk):
        super().__init__()
        self.attn_norm = RMSNorm(D)
        self.attn = Attention(D, H)
        self.mlp_norm = RMSNorm(D)
        self.moe = MoE(D, E, K, Fh, norm_topk)

    def forward(self, x, cos, sin):
        B, T, D = x.shape
        x = x + self.attn(self.attn_norm(x), cos, sin)
        y, lbl = self.moe(self.mlp_norm(x).reshape(B * T, D))
        return x + y.view(B, T, D), lbl


class MoEModel(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.V, self.D, self.L = a.vocab, a.d_model, a.layers
        self.lbl_coeff = a.lbl_coeff
        self.wte = nn.Parameter(torch.empty(a.vocab, a.d_model))
        self.blocks = nn.ModuleList(Block(a.d_model, a.heads, a.experts, a.topk, a.ffn, a.norm_topk)
                                    for _ in range(a.layers))
        self.final_norm = RMSNorm(a.d_model)
        self.cos = None
        self.sin = None

    def init_weights(self, seed, T, device):
        g = torch.Generator(device=device)
        g.manual_seed(seed)
        scaled = 0.02 / math.sqrt(2 * self.L)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("norm.weight"):
                    p.fill_(1.0)
                else:
                    p.normal_(0.0, scaled if name.endswith(("attn_out", "w2t")) else 0.02, generator=g)
        self.cos, self.sin = rope_tables(T, self.D // self.blocks[0].attn.H, device)

    def param_groups(self, wd):
        decay = [p for n, p in self.named_parameters() if not n.endswith("norm.weight")]
        rest = [p for n, p in self.named_parameters() if n.endswith("norm.weight")]
        return [dict(params=decay, weight_decay=wd), dict(params=rest, weight_decay=0.0)]

    def forward(self, tokens, targets):
        x = F.embedding(tokens, self.wte)                         # [B, T, D] fp32
        lbls = []
        for blk in self.blocks:
            x, lbl = blk(x, self.cos, self.sin)
            lbls.append(lbl)
        x = self.final_norm(x)
        logits = F.linear(x, self.wte)                            # tied: x @ wte^T
        ce = F.cross_entropy(logits.view(-1, self.V).float(), targets.reshape(-1))
        lbl = torch.stack(lbls).sum()
        return ce + self.lbl_coeff * lbl, ce.detach(), lbl.detach()


# ------------------------------------------------------------------------------ helpers

def flops_per_token(a):
    D, L, K, Fh, V, T = a.d_model, a.layers, a.topk, a.ffn, a.vocab, a.seq_len
    matmul_params = L * (3 * D * D + D * D + K * 3 * D * Fh)
    return 6 * matmul_params + 6 * D * V + 6 * T * D * L


def probe_grouped_mm(device):
    """(usable, reason): runs a small _grouped_mm forward and backward (group sizes that
    every version accepts) and checks it against plain matmuls."""
    if not hasattr(torch, "_grouped_mm"):
        return False, "torch %s has no torch._grouped_mm" % torch.__version__
    try:
        g = torch.Generator(device=device)
        g.manual_seed(0)
        a = torch.randn(48, 64, device=device, generator=g).to(torch.bfloat16).requires_grad_()
        w = torch.randn(3, 32, 64, device=device, generator=g).to(torch.bfloat16).requires_grad_()
        offs = torch.tensor([16, 16, 48], dtype=torch.int32, device=device)   # one empty group
        y = torch._grouped_mm(a, w.transpose(-2, -1), offs=offs)
        y.float().square().sum().backward()
        ref = torch.cat((a[:16].float() @ w[0].float().t(), a[16:].float() @ w[2].float().t()))
        err = float((y.detach().float() - ref.detach()).abs().max()) / max(float(ref.detach().abs().max()), 1e-6)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if not err < 2e-2 or a.grad is None or w.grad is None:
            return False, "torch._grouped_mm gives wrong results here (rel err %.3g)" % err
        return True, "ok"
    except Exception as e:  # noqa: BLE001 - any failure means: use the loop
        return False, "torch._grouped_mm fails here: %s" % str(e).strip().splitlines()[0]


def make_optimizer(model):
    groups = model.param_groups(0.1)
    kw = dict(lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
    try:
        return torch.optim.AdamW(groups, fused=True, **kw), True
    except (TypeError, RuntimeError, ValueError) as e:
        note("fused AdamW unavailable here (%s); using the default AdamW" % str(e).strip().splitlines()[0])
        return torch.optim.AdamW(model.param_groups(0.1), **kw), False


def parse_args(argv):
    ap = argparse.ArgumentParser(description="PyTorch baseline for moekit's CUDA backend (issue 8)")
    ap.add_argument("--vocab", type=int, default=50304)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--experts", type=int, default=64)
    ap.add_argument("--topk", type=int, default=8)
    ap.add_argument("--ffn", type=int, default=256, help="expert hidden size F")
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--micro-batch", type=int, default=16, help="sequences per step")
    ap.add_argument("--norm-topk", action="store_true", help="renormalise the top-K gates (router.norm_topk)")
    ap.add_argument("--lbl-coeff", type=float, default=0.01)
    ap.add_argument("--steps", type=int, default=30, help="timed steps")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps first (compile happens here)")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--no-compile", action="store_true", help="run eagerly")
    ap.add_argument("--compile-scope", default="model", choices=("model", "dense"),
                    help="model: compile everything; dense: leave the expert GEMMs eager "
                         "(chosen automatically when compiling the whole model fails)")
    ap.add_argument("--compile-mode", default=None,
                    help="torch.compile mode (default: torch's default; e.g. max-autotune)")
    ap.add_argument("--experts-impl", default="auto", choices=("auto", "grouped", "loop"),
                    help="auto: torch._grouped_mm when it works here, else a per-expert loop")
    ap.add_argument("--group-align", type=int, default=8,
                    help="pad each expert's rows to a multiple of this for _grouped_mm "
                         "(8 = 16 bytes of bf16, accepted by every torch version; 1 = no padding)")
    ap.add_argument("--distinct-batches", type=int, default=0,
                    help="cycle this many synthetic batches (0 = a new batch every step)")
    ap.add_argument("--peak-tflops", type=float, default=PEAK_TFLOPS)
    a = ap.parse_args(argv)
    if a.d_model % a.heads or (a.d_model // a.heads) % 2:
        ap.error("--d-model must be a multiple of --heads with an even head size")
    if not 1 <= a.topk <= a.experts:
        ap.error("--topk must be in 1..--experts")
    if min(a.vocab, a.d_model, a.layers, a.ffn, a.seq_len, a.micro_batch, a.steps) < 1 or a.warmup < 0:
        ap.error("sizes and --steps must be positive, --warmup >= 0")
    if a.group_align < 1:
        ap.error("--group-align must be >= 1")
    return a


# ------------------------------------------------------------------------------ main

def main(argv=None):
    a = parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        note("error: --device cuda but torch.cuda.is_available() is False")
        return 2
    dev = torch.device(a.device)
    torch.manual_seed(a.seed)

    # Expert path.
    if a.experts_impl == "loop":
        grouped, why = False, "--experts-impl loop"
    else:
        grouped, why = probe_grouped_mm(dev)
        if not grouped and a.experts_impl == "grouped":
            note("error: --experts-impl grouped: " + why)
            return 2
    if grouped:
        note("experts: torch._grouped_mm (bf16, tokens sorted by expert, int32 offsets, groups "
             "aligned to %d rows)" % a.group_align)
    else:
        note("NOTE: experts run as a per-expert Python loop, NOT grouped GEMMs (%s); this is "
             "not the strong baseline" % why)

    use_compile = not a.no_compile
    if use_compile and not hasattr(torch, "compile"):
        note("NOTE: torch %s has no torch.compile; running eagerly" % torch.__version__)
        use_compile = False
    if use_compile and a.warmup < 1:
        note("--warmup raised to 1 so that compilation is not timed")
        a.warmup = 1

    model = MoEModel(a).to(dev)
    model.init_weights(a.seed, a.seq_len, dev)
    for blk in model.blocks:
        blk.moe.experts_fn = _experts_grouped if grouped else _experts_loop
        blk.moe.align = a.group_align
    nparams = sum(p.numel() for p in model.parameters())
    opt, fused = make_optimizer(model)
    params = [p for p in model.parameters()]

    # Synthetic data: uniform ids from a seeded generator, on the device before timing.
    B, T = a.micro_batch, a.seq_len
    nb = a.distinct_batches if a.distinct_batches > 0 else a.warmup + a.steps
    gen = torch.Generator()
    gen.manual_seed(a.seed + 1)
    data = [torch.randint(0, a.vocab, (B, T + 1), generator=gen).to(dev) for _ in range(nb)]

    def build(scope):
        if not use_compile:
            return model, None
        if scope == "dense":
            dis = getattr(getattr(torch, "compiler", None), "disable", None) or torch._dynamo.disable
            for blk in model.blocks:
                blk.moe.experts_fn = dis(blk.moe.experts_fn)
        kw = {} if a.compile_mode is None else {"mode": a.compile_mode}
        return torch.compile(model, **kw), scope

    fwd, scope = build(a.compile_scope)

    def step(i):
        seq = data[i % nb]
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16):
            loss, ce, lbl = fwd(seq[:, :-1], seq[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach(), ce, lbl

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    shape = "V%d D%d L%d H%d E%d K%d F%d T%d B%d" % (a.vocab, a.d_model, a.layers, a.heads, a.experts,
                                                     a.topk, a.ffn, a.seq_len, a.micro_batch)
    note("torch %s on %s, %s, %.1fM parameters, compile %s, fused AdamW %s" % (
        torch.__version__, torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU", shape,
        nparams / 1e6, ("on (%s)" % scope) if use_compile else "off", "yes" if fused else "no"))

    losses = []
    t_start = time.perf_counter()
    for i in range(a.warmup):
        t0 = time.perf_counter()
        try:
            out = step(i)
        except Exception as e:  # noqa: BLE001
            if not (use_compile and i == 0 and scope == "model"):
                raise
            note("compiling the whole model failed (%s: %s); retrying with the expert GEMMs "
                 "eager (--compile-scope dense)" % (type(e).__name__, str(e).strip().splitlines()[0][:300]))
            opt.zero_grad(set_to_none=True)
            torch._dynamo.reset()
            fwd, scope = build("dense")
            out = step(i)
        sync()
        losses.append(float(out[0]))
        note("warmup step %d/%d: loss %.4f (ce %.4f, lbl %.4f), %.1f s" % (
            i + 1, a.warmup, float(out[0]), float(out[1]), float(out[2]), time.perf_counter() - t0))
    warm_s = time.perf_counter() - t_start

    graph_breaks = None
    if use_compile:
        try:
            from torch._dynamo.utils import counters
            graph_breaks = int(sum(counters["graph_break"].values()))
        except Exception:  # noqa: BLE001
            pass

    sync()
    outs = []
    t0 = time.perf_counter()
    for i in range(a.warmup, a.warmup + a.steps):
        outs.append(step(i))
    sync()
    dt = time.perf_counter() - t0
    losses += [float(o[0]) for o in outs]
    last = outs[-1]

    tokens = a.steps * B * T
    tps = tokens / dt
    fpt = flops_per_token(a)
    tflops = fpt * tps / 1e12
    mfu = tflops / a.peak_tflops
    peak_gib = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
    path = "grouped_mm" if grouped else "per-expert loop"
    comp = ("compile(%s)" % scope) if use_compile else "eager"

    print("pytorch %s %s: %.0f tokens/s, %.2f ms/step, %.1f TFLOP/s, MFU %.1f%% (%s, %s, bf16 autocast, "
          "%sAdamW; %s, %d timed steps after %d warm-up in %.0f s%s; loss %.4f -> %.4f, synthetic "
          "uniform tokens)%s" % (
              torch.__version__, torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU",
              tps, 1e3 * dt / a.steps, tflops, 100 * mfu, path, comp, "fused " if fused else "", shape,
              a.steps, a.warmup, warm_s,
              "" if graph_breaks is None else ", %d graph breaks" % graph_breaks,
              losses[0], losses[-1],
              "" if peak_gib is None else "; peak memory %.2f GiB" % peak_gib))
    print(json.dumps({
        "impl": "pytorch",
        "torch": torch.__version__,
        "grouped_mm": grouped,
        "compile": use_compile,
        "tokens_per_s": round(tps, 1),
        "step_ms": round(1e3 * dt / a.steps, 3),
        "tflops": round(tflops, 2),
        "mfu": round(mfu, 4),
        "peak_mem_gib": None if peak_gib is None else round(peak_gib, 3),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "compile_scope": scope,
        "graph_breaks": graph_breaks,
        "fused_adamw": fused,
        "group_align": a.group_align if grouped else None,
        "flops_per_token": fpt,
        "tokens_per_step": B * T,
        "steps": a.steps,
        "warmup": a.warmup,
        "params": nparams,
        "shape": dict(vocab=a.vocab, d_model=a.d_model, layers=a.layers, heads=a.heads, experts=a.experts,
                      topk=a.topk, ffn=a.ffn, seq_len=a.seq_len, micro_batch=a.micro_batch,
                      norm_topk=a.norm_topk, lbl_coeff=a.lbl_coeff),
        "loss_first": round(losses[0], 5),
        "loss_last": round(float(last[0]), 5),
        "ce_last": round(float(last[1]), 5),
        "lbl_last": round(float(last[2]), 5),
        "data": "synthetic uniform token ids",
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
