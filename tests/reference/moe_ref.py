#!/usr/bin/env python3
"""moe_ref.py - PyTorch reference of the moekit model (DESIGN sections 2 and 3).

Plain PyTorch (>= 1.13) and numpy, nothing else. One functional implementation,
model_forward(), serves three users:

  * the reference test: compare.py / `moe_ref.py compare DUMP.bin` loads a dump written by
    tests/reference/ref_dump (weights, tokens, the C model's loss parts and gradients), runs
    this reference in float32 and float64 from the same weights and prints TAP;
  * the speed baseline: MoEModel (an nn.Module over the same function) trained by
    bench_torch.py;
  * its own self-test: `moe_ref.py selftest` checks autograd against finite differences in
    float64 and the batched expert dispatch against a naive per-token loop.

The model (exact, DESIGN section 2): decoder-only, pre-norm, no biases.
    x = wte[token]
    per layer: h = x + Attn(RMSNorm(x; attn_norm)); x = h + MoE(RMSNorm(h; mlp_norm))
    RMSNorm(x; g) = x / sqrt(mean(x^2) + 1e-5) * g
    Attn: [q|k|v] = x @ qkv [D,3D], head h at columns h*hd..h*hd+hd-1 of each of q, k, v;
          RoPE (theta 10000) on interleaved pairs (2i, 2i+1) of each q/k head, angle
          pos * theta^(-2i/hd), pos = position in the sequence; causal softmax with scale
          1/sqrt(hd); output @ attn_out [D,D]
    MoE:  z = x @ router [D,E]; s = softmax(z); top-K of s; gates g_j = s_j (renormalised to
          sum 1 with router.norm_topk); y_e = (silu(x @ w1[e]) * (x @ w3[e])) @ w2[e];
          out = sum_j g_j y_j (+ shared SwiGLU expert when Fs > 0); with a capacity factor
          cf > 0 each expert keeps ceil(cf * N*K/E) routing choices, taken in increasing
          s = n*K + j; the rest are dropped
    final RMSNorm(final_norm); logits = x @ wte^T (tied) or x @ lm_head [D,V]
    loss = mean CE over targets >= 0
         + (lbl.coeff [not for lbl.mode none] + lbl.micro_coeff) * sum_l LBL_l
         + router.zloss_coeff * sum_l mean_n logsumexp(z_n)^2
    LBL_l = E * sum_i f_i P_i, f_i = c_i / (K*N) (counts before capacity dropping, no
          gradient), P_i = mean_n s_{n,i}   (DESIGN section 3, scope = this micro-batch)
"""

import argparse
import math
import sys
import urllib.parse

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROPE_THETA = 10000.0
NORM_EPS = 1e-5

# The mk_config defaults the reference needs (lib/mk_config.c is the authority; a dump
# carries every setting, so these only matter for bench_torch.py and the self-test).
DEFAULTS = {
    "model.vocab": "257",
    "model.d_model": "64",
    "model.layers": "2",
    "model.heads": "4",
    "model.experts": "8",
    "model.topk": "2",
    "model.ffn": "64",
    "model.shared_ffn": "0",
    "model.seq_len": "64",
    "model.tie_embeddings": "true",
    "router.norm_topk": "false",
    "router.zloss_coeff": "0",
    "router.capacity_factor": "0",
    "lbl.mode": "micro",
    "lbl.coeff": "0.01",
    "lbl.micro_coeff": "0",
    "train.micro_batch": "8",
    "train.grad_accum": "1",
    "train.seed": "1234",
    "train.lr": "0.001",
    "train.weight_decay": "0.1",
    "train.beta1": "0.9",
    "train.beta2": "0.95",
    "train.eps": "1e-8",
    "train.grad_clip": "1.0",
}


def _bool(text):
    t = str(text).strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise ValueError("not a boolean: %r" % (text,))


class Config:
    """The settings the reference needs, typed. settings: {"model.d_model": "64", ...}."""

    def __init__(self, settings=None):
        s = dict(DEFAULTS)
        if settings:
            s.update({k: str(v) for k, v in settings.items()})
        self.settings = s
        self.V = int(s["model.vocab"])
        self.D = int(s["model.d_model"])
        self.L = int(s["model.layers"])
        self.H = int(s["model.heads"])
        self.E = int(s["model.experts"])
        self.K = int(s["model.topk"])
        self.F = int(s["model.ffn"])
        self.Fs = int(s["model.shared_ffn"])
        self.T = int(s["model.seq_len"])
        self.tied = _bool(s["model.tie_embeddings"])
        self.norm_topk = _bool(s["router.norm_topk"])
        self.zloss_coeff = float(s["router.zloss_coeff"])
        self.capacity_factor = float(s["router.capacity_factor"])
        self.lbl_mode = s["lbl.mode"].strip().lower()
        self.lbl_coeff = float(s["lbl.coeff"])
        self.lbl_micro_coeff = float(s["lbl.micro_coeff"])
        self.micro_batch = int(s["train.micro_batch"])
        if self.D % self.H or (self.D // self.H) % 2:
            raise ValueError("model.d_model must be a multiple of model.heads with an even head size")
        if not 1 <= self.K <= self.E:
            raise ValueError("model.topk must be in 1..model.experts")
        if self.lbl_mode not in ("none", "micro", "global", "global-exact"):
            raise ValueError("unknown lbl.mode %r" % self.lbl_mode)

    @property
    def hd(self):
        return self.D // self.H

    def lbl_weight(self):
        """Coefficient of sum_l LBL_l in the loss. With one rank and one micro-step every
        scope (micro, global, global-exact) gives the micro-batch f."""
        w = self.lbl_micro_coeff
        if self.lbl_mode != "none":
            w += self.lbl_coeff
        return w

    def capacity(self, N):
        """Rows each expert keeps, or None for dropless."""
        if self.capacity_factor <= 0:
            return None
        return int(math.ceil(self.capacity_factor * N * self.K / self.E))

    def shape_text(self):
        return "V%d,D%d,L%d,H%d,E%d,K%d,F%d,Fs%d,T%d,B%d,%s" % (
            self.V, self.D, self.L, self.H, self.E, self.K, self.F, self.Fs, self.T,
            self.micro_batch, "tied" if self.tied else "untied")


def param_specs(cfg):
    """[(name, shape, kind)] of every parameter, kind in {"norm", "normal", "scaled"}."""
    D, E, F_, Fs = cfg.D, cfg.E, cfg.F, cfg.Fs
    specs = [("wte", (cfg.V, D), "normal")]
    for l in range(cfg.L):
        p = "layers.%d." % l
        specs += [
            (p + "attn_norm", (D,), "norm"),
            (p + "qkv", (D, 3 * D), "normal"),
            (p + "attn_out", (D, D), "scaled"),
            (p + "mlp_norm", (D,), "norm"),
            (p + "router", (D, E), "normal"),
            (p + "w1", (E, D, F_), "normal"),
            (p + "w3", (E, D, F_), "normal"),
            (p + "w2", (E, F_, D), "scaled"),
        ]
        if Fs > 0:
            specs += [
                (p + "shared_w1", (D, Fs), "normal"),
                (p + "shared_w3", (D, Fs), "normal"),
                (p + "shared_w2", (Fs, D), "scaled"),
            ]
    specs.append(("final_norm", (D,), "norm"))
    if not cfg.tied:
        specs.append(("lm_head", (D, cfg.V), "normal"))
    return specs


def init_params(cfg, seed=0, dtype=torch.float32):
    """DESIGN init: normal(0, 0.02), attn_out and w2 (and shared_w2) scaled by 1/sqrt(2L),
    norms 1. (Not bit-identical to mk_model_init: a different random generator.)"""
    g = torch.Generator().manual_seed(int(seed))
    out = {}
    for name, shape, kind in param_specs(cfg):
        if kind == "norm":
            t = torch.ones(shape, dtype=dtype)
        else:
            std = 0.02 if kind == "normal" else 0.02 / math.sqrt(2 * cfg.L)
            t = torch.randn(shape, generator=g, dtype=torch.float64).mul_(std).to(dtype)
        out[name] = t
    return out


# ------------------------------------------------------------------------------ layers

def rmsnorm(x, g):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + NORM_EPS) * g


def rope_tables(T, hd, dtype, device=None):
    """cos, sin of shape [T, hd/2]: angle pos * theta^(-2i/hd), computed in float64."""
    i = torch.arange(hd // 2, dtype=torch.float64)
    inv = ROPE_THETA ** (-2.0 * i / hd)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
    return ang.cos().to(dtype=dtype, device=device), ang.sin().to(dtype=dtype, device=device)


def apply_rope(x, cos, sin):
    """x [B, T, H, hd]; rotate pairs (2i, 2i+1): x0' = x0 c - x1 s, x1' = x0 s + x1 c."""
    x0 = x[..., 0::2]
    x1 = x[..., 1::2]
    c = cos[None, :, None, :]
    s = sin[None, :, None, :]
    return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2)


def attention(x, w_qkv, w_out, B, T, H, cos, sin, mask):
    """x [N, D] (already normalised) -> [N, D]."""
    N, D = x.shape
    hd = D // H
    qkv = (x @ w_qkv).view(B, T, 3, H, hd)
    q = apply_rope(qkv[:, :, 0], cos, sin).transpose(1, 2)      # [B, H, T, hd]
    k = apply_rope(qkv[:, :, 1], cos, sin).transpose(1, 2)
    v = qkv[:, :, 2].transpose(1, 2)
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))
    att = att.masked_fill(mask, float("-inf")).softmax(dim=-1)
    o = (att @ v).transpose(1, 2).reshape(N, D)
    return o @ w_out


def swiglu(x, w1, w3, w2):
    return (F.silu(x @ w1) * (x @ w3)) @ w2


def route(x, w_router, cfg, forced_topk=None):
    """Router of one layer. Returns z, probs, lse, topk [N,K] (int64), gates [N,K]."""
    z = x @ w_router
    probs = z.softmax(dim=-1)
    lse = torch.logsumexp(z, dim=-1)
    if forced_topk is None:
        top_p, top_i = torch.topk(probs, cfg.K, dim=-1)
    else:
        top_i = forced_topk.to(torch.int64)
        top_p = probs.gather(1, top_i)
    gates = top_p / top_p.sum(-1, keepdim=True) if cfg.norm_topk else top_p
    return z, probs, lse, top_i, gates


def moe(x, p, prefix, cfg, forced_topk=None):
    """MoE of one layer on x [N, D]. Batched dispatch: the N*K routing choices are sorted
    (stably) by expert, each expert runs one GEMM chain on its contiguous rows, results are
    weighted by the gates and scattered back with index_add."""
    N, D = x.shape
    K, E = cfg.K, cfg.E
    z, probs, lse, top_i, gates = route(x, p[prefix + "router"], cfg, forced_topk)

    flat = top_i.reshape(-1)                                   # choice s = n*K + j
    counts = torch.bincount(flat, minlength=E)                 # before dropping
    sorted_e, order = torch.sort(flat, stable=True)            # by expert, then by s
    cap = cfg.capacity(N)
    if cap is not None:
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(flat.numel(), device=flat.device) - starts[sorted_e]
        keep = rank < cap
        order = order[keep]
        kept = counts.clamp(max=cap)
    else:
        kept = counts
    dropped = flat.numel() - order.numel()
    tok = torch.div(order, K, rounding_mode="floor")

    xs = x.index_select(0, tok)
    w1, w3, w2 = p[prefix + "w1"], p[prefix + "w3"], p[prefix + "w2"]
    ys = []
    off = 0
    for e, c in enumerate(kept.tolist()):
        if c:
            ys.append(swiglu(xs[off:off + c], w1[e], w3[e], w2[e]))
        off += c
    y = torch.cat(ys, 0) if ys else xs.new_zeros((0, D))
    y = y * gates.reshape(-1).index_select(0, order).unsqueeze(1)
    out = torch.zeros_like(x).index_add(0, tok, y)
    if cfg.Fs > 0:
        out = out + swiglu(x, p[prefix + "shared_w1"], p[prefix + "shared_w3"], p[prefix + "shared_w2"])

    f = counts.to(probs.dtype) / float(K * N)                  # constant: no gradient
    lbl = E * (f * probs.mean(0)).sum()
    zloss = lse.pow(2).mean()
    return out, dict(lbl=lbl, zloss=zloss, counts=counts, topk=top_i, dropped=dropped, probs=probs)


def model_forward(p, cfg, tokens, targets, forced_topk=None, moe_fn=None):
    """The whole model on tokens, targets [B, T] (int64 tensors; targets < 0 ignored).

    p: {name: tensor} of every parameter (param_specs names). forced_topk: optional list of
    [N, K] expert choices per layer used instead of the reference's own top-K (to follow
    the C model through near-ties). Returns a dict: loss (what backward differentiates),
    ce (mean CE), ce_sum, ntargets, lbl [L] tensors, zloss [L] tensors, counts [L, E],
    topk [L] (N, K), dropped [L], probs [L]."""
    moe_fn = moe_fn or moe
    B, T = tokens.shape
    dtype = p["wte"].dtype
    dev = p["wte"].device
    cos, sin = rope_tables(T, cfg.hd, dtype, dev)
    mask = torch.ones(T, T, dtype=torch.bool, device=dev).triu(1)
    x = F.embedding(tokens.reshape(-1), p["wte"])
    stats = dict(lbl=[], zloss=[], counts=[], topk=[], dropped=[], probs=[])
    for l in range(cfg.L):
        pre = "layers.%d." % l
        x = x + attention(rmsnorm(x, p[pre + "attn_norm"]), p[pre + "qkv"], p[pre + "attn_out"],
                          B, T, cfg.H, cos, sin, mask)
        y, st = moe_fn(rmsnorm(x, p[pre + "mlp_norm"]), p, pre, cfg,
                       None if forced_topk is None else forced_topk[l])
        x = x + y
        for k in stats:
            stats[k].append(st[k])
    x = rmsnorm(x, p["final_norm"])
    logits = x @ (p["wte"].t() if cfg.tied else p["lm_head"])
    tg = targets.reshape(-1)
    valid = tg >= 0
    ntargets = int(valid.sum())
    ce_sum = F.cross_entropy(logits, torch.where(valid, tg, torch.full_like(tg, -100)),
                             ignore_index=-100, reduction="sum")
    ce = ce_sum / max(ntargets, 1)
    loss = ce
    w = cfg.lbl_weight()
    if w != 0:
        loss = loss + w * torch.stack(stats["lbl"]).sum()
    if cfg.zloss_coeff != 0:
        loss = loss + cfg.zloss_coeff * torch.stack(stats["zloss"]).sum()
    stats.update(loss=loss, ce=ce, ce_sum=ce_sum, ntargets=ntargets)
    return stats


def reference(params, settings, tokens, targets, dtype=torch.float64, forced_topk=None,
              grads=True):
    """Convenience entry: params {name: numpy array or tensor}, settings {key: value} (or a
    Config), tokens/targets [B, T] integer arrays. Runs the model in dtype and returns
    (parts, grads): parts = {ce, lbl [L], zloss (sum over layers), zloss_layers [L], loss,
    counts [L,E], topk [L], dropped [L], probs [L]} as numpy/python values, grads =
    {name: numpy array} (empty when grads is False)."""
    cfg = settings if isinstance(settings, Config) else Config(settings)
    p = {}
    for name, _, _ in param_specs(cfg):
        if name not in params:
            raise KeyError("missing parameter %s" % name)
        t = torch.as_tensor(np.asarray(params[name]) if not torch.is_tensor(params[name])
                            else params[name]).detach().to(dtype).clone()
        t.requires_grad_(grads)
        p[name] = t
    tok = torch.as_tensor(np.asarray(tokens), dtype=torch.int64)
    tgt = torch.as_tensor(np.asarray(targets), dtype=torch.int64)
    ft = None if forced_topk is None else [
        None if t is None else torch.as_tensor(np.asarray(t), dtype=torch.int64) for t in forced_topk]
    with torch.set_grad_enabled(grads):
        st = model_forward(p, cfg, tok, tgt, forced_topk=ft)
        if grads:
            st["loss"].backward()
    parts = dict(
        ce=float(st["ce"]),
        loss=float(st["loss"]),
        lbl=[float(v) for v in st["lbl"]],
        zloss_layers=[float(v) for v in st["zloss"]],
        zloss=float(sum(float(v) for v in st["zloss"])),
        counts=np.stack([c.numpy() for c in st["counts"]]),
        topk=[t.numpy() for t in st["topk"]],
        dropped=list(st["dropped"]),
        probs=[pr.detach().numpy() for pr in st["probs"]],
        ntargets=st["ntargets"],
    )
    g = {}
    if grads:
        for name, t in p.items():
            g[name] = (t.grad if t.grad is not None else torch.zeros_like(t)).numpy()
    return parts, g


# ------------------------------------------------------------------------------ nn.Module

class MoEModel(nn.Module):
    """The reference model as an nn.Module (for training, e.g. bench_torch.py).
    Parameters live in a ParameterDict under their DESIGN names with '.' spelled '__'."""

    def __init__(self, cfg, seed=0, dtype=torch.float32):
        super().__init__()
        self.cfg = cfg
        self.names = [n for n, _, _ in param_specs(cfg)]
        init = init_params(cfg, seed, dtype)
        self.params = nn.ParameterDict({n.replace(".", "__"): nn.Parameter(init[n]) for n in self.names})
        self._rope = {}
        self._mask = {}

    def named_design_params(self):
        return {n: self.params[n.replace(".", "__")] for n in self.names}

    def param_groups(self, weight_decay):
        """AdamW groups: weight decay on every non-norm weight."""
        decay, no_decay = [], []
        for n, t in self.named_design_params().items():
            (no_decay if n.endswith("norm") else decay).append(t)
        return [dict(params=decay, weight_decay=weight_decay),
                dict(params=no_decay, weight_decay=0.0)]

    def forward(self, tokens, targets):
        return model_forward(self.named_design_params(), self.cfg, tokens, targets)


# ------------------------------------------------------------------------------ dump I/O

_DTYPES = {"f32": "<f4", "f64": "<f8", "i32": "<i4"}


def _unquote(text):
    """ref_dump writes '%', whitespace, '=' and non-printable bytes in values as %XX."""
    return urllib.parse.unquote(text)


def load_dump(path):
    """Read a ref_dump file: returns (settings {key: value}, tensors {name: numpy array})."""
    with open(path, "rb") as f:
        data = f.read()
    pos = 0

    def line():
        nonlocal pos
        nl = data.find(b"\n", pos)
        if nl < 0:
            raise ValueError("%s: truncated at byte %d" % (path, pos))
        s = data[pos:nl].decode("utf-8")
        pos = nl + 1
        return s

    if line() != "MKREF1":
        raise ValueError("%s: not a moekit reference dump (no MKREF1 magic)" % path)
    settings = {}
    for item in line().split():
        k, sep, v = item.partition("=")
        if not sep:
            raise ValueError("%s: bad setting %r" % (path, item))
        settings[k] = _unquote(v)
    tensors = {}
    while pos < len(data):
        head = line().split()
        if len(head) < 3 or head[1] not in _DTYPES:
            raise ValueError("%s: bad tensor header %r" % (path, " ".join(head)))
        name, dt, ndim = head[0], _DTYPES[head[1]], int(head[2])
        dims = tuple(int(d) for d in head[3:3 + ndim])
        if len(dims) != ndim or len(head) != 3 + ndim:
            raise ValueError("%s: bad tensor header %r" % (path, " ".join(head)))
        n = int(np.prod(dims)) if ndim else 1
        nbytes = n * np.dtype(dt).itemsize
        if pos + nbytes > len(data):
            raise ValueError("%s: tensor %s truncated" % (path, name))
        tensors[name] = np.frombuffer(data, dtype=dt, count=n, offset=pos).reshape(dims).copy()
        pos += nbytes
    return settings, tensors


# ------------------------------------------------------------------------------ compare

TOL = 1e-4
TINY = 1e-30
TIE_TOL = 1e-6


def rel_err(c, ref):
    c = np.asarray(c, dtype=np.float64).ravel()
    ref = np.asarray(ref, dtype=np.float64).ravel()
    if c.shape != ref.shape:
        return float("inf")
    d = np.linalg.norm(c - ref)
    if not np.isfinite(d):
        return float("inf")
    return float(d / max(np.linalg.norm(ref), TINY))


def _routing_check(c_topk, probs64, K, E):
    """C's choices [N, K] against reference probabilities: valid, distinct, and the probs
    of C's choices in C's order equal the reference's sorted top-K up to TIE_TOL (so only
    near-ties may be broken differently). Returns (ok, diagnostic, differing tokens)."""
    c = np.asarray(c_topk, dtype=np.int64)
    if c.shape != (probs64.shape[0], K):
        return False, "shape %s, want %s" % (c.shape, (probs64.shape[0], K)), -1
    if c.min() < 0 or c.max() >= E:
        return False, "expert index out of range", -1
    if K > 1 and (np.sort(c, axis=1)[:, 1:] == np.sort(c, axis=1)[:, :-1]).any():
        return False, "a token chose the same expert twice", -1
    pc = np.take_along_axis(probs64, c, axis=1)
    pr = -np.sort(-probs64, axis=1)[:, :K]
    own = np.argsort(-probs64, axis=1, kind="stable")[:, :K]
    differ = int((own != c).any(axis=1).sum())
    gap = np.abs(pc - pr).max()
    if gap > TIE_TOL:
        n = int(np.abs(pc - pr).max(axis=1).argmax())
        return False, ("token %d: C chose %s (probs %s), reference %s (probs %s)"
                       % (n, c[n].tolist(), np.round(pc[n], 6).tolist(), own[n].tolist(),
                          np.round(pr[n], 6).tolist())), differ
    if differ:
        return True, ("%d of %d tokens break a near-tie (within %g) differently from the "
                      "reference's own top-K" % (differ, c.shape[0], TIE_TOL)), differ
    return True, "all %d tokens chose the reference's top-K" % c.shape[0], differ


def compare_dump(path, tol=TOL):
    """Compare a ref_dump file with the reference. Returns a list of
    (ok, description, [diagnostic lines])."""
    settings, t = load_dump(path)
    cfg = Config(settings)
    results = []

    def check(ok, desc, diags=()):
        results.append((bool(ok), desc, list(diags)))

    tokens, targets = t.get("tokens"), t.get("targets")
    if tokens is None or targets is None:
        check(False, "dump has tokens and targets")
        return results
    specs = param_specs(cfg)
    names = [n for n, _, _ in specs]
    missing = [n for n, shape, _ in specs if n not in t or tuple(t[n].shape) != tuple(shape)]
    extra = [k for k in t if not k.startswith(("grad.", "out.", "topk.")) and k not in ("tokens", "targets")
             and k not in names]
    check(not missing and not extra, "parameter set and shapes match DESIGN section 2",
          ["missing or misshapen: %s" % " ".join(missing)] * bool(missing) +
          ["unexpected: %s" % " ".join(extra)] * bool(extra))
    if missing:
        return results
    params = {n: t[n] for n in names}
    B, T = tokens.shape
    N = B * T

    # C's routing, when dumped: check it against the reference's probabilities, then follow
    # it so that a near-tie broken the other way does not derail the gradient comparison.
    c_topk = [t.get("topk.%d" % l) for l in range(cfg.L)]
    forced = None
    if all(x is not None for x in c_topk):
        # Routing of layer l depends on C's choices in layers < l: check layer by layer
        # with the earlier layers forced to C's choices.
        ok_all = True
        for l in range(cfg.L):
            parts, _ = reference(params, cfg, tokens, targets, torch.float64,
                                 forced_topk=c_topk[:l] + [None] * (cfg.L - l), grads=False)
            ok, diag, _ = _routing_check(c_topk[l].reshape(N, cfg.K), parts["probs"][l], cfg.K, cfg.E)
            check(ok, "routing layers.%d: C top-K matches reference probabilities" % l, ["  " + diag])
            ok_all = ok_all and ok
        if ok_all:
            forced = [c.reshape(N, cfg.K) for c in c_topk]
    p32, g32 = reference(params, cfg, tokens, targets, torch.float32, forced_topk=forced)
    p64, g64 = reference(params, cfg, tokens, targets, torch.float64, forced_topk=forced)

    def value(name, cval, r32, r64):
        e32, e64 = rel_err(cval, r32), rel_err(cval, r64)
        diags = ["  %s: float64 rel err %.2e (fp32 ref vs fp64 ref %.2e)" % (name, e64, rel_err(r32, r64))]
        if not e32 < tol:
            c = np.asarray(cval, dtype=np.float64).ravel()
            r = np.asarray(r32, dtype=np.float64).ravel()
            if c.shape == r.shape and c.size:
                i = int(np.abs(c - r).argmax())
                diags.append("  worst element %d: C %.9g reference %.9g (|ref| max %.3g)"
                             % (i, c[i], r[i], np.abs(r).max()))
            else:
                diags.append("  C shape %s, reference shape %s" % (c.shape, r.shape))
        check(e32 < tol, "%s rel err %.2e" % (name, e32), diags)

    if "out.ce_mean" in t:
        value("ce", t["out.ce_mean"].ravel()[0], p32["ce"], p64["ce"])
    else:
        check(False, "dump has out.ce_mean")
    if "out.lbl" in t and t["out.lbl"].size == cfg.L:
        for l in range(cfg.L):
            value("lbl.%d" % l, t["out.lbl"].ravel()[l], p32["lbl"][l], p64["lbl"][l])
    else:
        check(False, "dump has out.lbl [%d]" % cfg.L)
    if "out.zloss" in t:
        cz = float(t["out.zloss"].ravel()[0])
        if cfg.zloss_coeff == 0 and cz == 0:
            # The C model computes the z-loss statistic only when it is part of the loss.
            results.append((True, "zloss # SKIP router.zloss_coeff = 0: C reports 0, reference %.6g"
                            % p32["zloss"], []))
        else:
            value("zloss", cz, p32["zloss"], p64["zloss"])
    else:
        check(False, "dump has out.zloss")
    if "out.counts" in t:
        cc = t["out.counts"].reshape(-1)
        rc = p64["counts"].reshape(-1)
        check(cc.shape == rc.shape and (cc == rc).all(), "expert counts [L,E] equal",
              [] if cc.shape == rc.shape and (cc == rc).all() else
              ["  C %s" % cc.tolist(), "  reference %s" % rc.tolist()])
    if "out.dropped" in t:
        cd = int(t["out.dropped"].ravel()[0])
        rd = int(sum(p64["dropped"]))
        check(cd == rd, "dropped routing choices equal (%d)" % rd,
              [] if cd == rd else ["  C %d, reference %d" % (cd, rd)])
    if "out.targets" in t:
        ct = int(t["out.targets"].ravel()[0])
        check(ct == p64["ntargets"], "target tokens counted (%d)" % p64["ntargets"],
              [] if ct == p64["ntargets"] else ["  C %d, reference %d" % (ct, p64["ntargets"])])
    for n in names:
        gname = "grad." + n
        if gname not in t:
            check(False, "dump has %s" % gname)
            continue
        value(gname, t[gname], g32[n], g64[n])
    return results


def print_tap(results, out=sys.stdout):
    for i, (ok, desc, diags) in enumerate(results, 1):
        out.write("%sok %d - %s\n" % ("" if ok else "not ", i, desc))
        for d in diags:
            out.write("#%s\n" % d)
    out.write("1..%d\n" % len(results))
    failed = sum(1 for r in results if not r[0])
    if failed:
        out.write("# %d of %d checks failed\n" % (failed, len(results)))
    out.flush()
    return failed


# ------------------------------------------------------------------------------ self-test

def _naive_moe(x, p, prefix, cfg, forced_topk=None):
    """Per-token loop with the capacity rule spelled out (for the self-test only)."""
    N, D = x.shape
    K, E = cfg.K, cfg.E
    z, probs, lse, top_i, gates = route(x, p[prefix + "router"], cfg, forced_topk)
    cap = cfg.capacity(N)
    used = [0] * E
    rows = []
    dropped = 0
    for n in range(N):
        acc = x.new_zeros(D)
        for j in range(K):               # s = n*K + j increases: per expert in order of s
            e = int(top_i[n, j])
            if cap is not None and used[e] >= cap:
                dropped += 1
                continue
            used[e] += 1
            acc = acc + gates[n, j] * swiglu(x[n], p[prefix + "w1"][e], p[prefix + "w3"][e], p[prefix + "w2"][e])
        if cfg.Fs > 0:
            acc = acc + swiglu(x[n], p[prefix + "shared_w1"], p[prefix + "shared_w3"], p[prefix + "shared_w2"])
        rows.append(acc)
    counts = torch.zeros(E, dtype=torch.int64)
    for e in top_i.reshape(-1).tolist():
        counts[e] += 1
    f = counts.to(probs.dtype) / (K * N)
    P = torch.stack([probs[:, i].sum() for i in range(E)]) / N
    lbl = E * sum(f[i] * P[i] for i in range(E))
    zl = sum(lse[n] ** 2 for n in range(N)) / N
    return torch.stack(rows), dict(lbl=lbl, zloss=zl, counts=counts, topk=top_i, dropped=dropped, probs=probs)


def _naive_attention_check(seed=3):
    """RoPE + attention against an explicit per-position formula."""
    g = torch.Generator().manual_seed(seed)
    B, T, D, H = 2, 5, 8, 2
    hd = D // H
    x = torch.randn(B * T, D, generator=g, dtype=torch.float64)
    wq = torch.randn(D, 3 * D, generator=g, dtype=torch.float64)
    wo = torch.randn(D, D, generator=g, dtype=torch.float64)
    cos, sin = rope_tables(T, hd, torch.float64)
    mask = torch.ones(T, T, dtype=torch.bool).triu(1)
    got = attention(x, wq, wo, B, T, H, cos, sin, mask)
    qkv = (x @ wq).view(B, T, 3 * D)
    out = torch.zeros(B, T, D, dtype=torch.float64)

    def rot(vec, pos):
        r = vec.clone()
        for i in range(hd // 2):
            a = pos * ROPE_THETA ** (-2.0 * i / hd)
            x0, x1 = vec[2 * i], vec[2 * i + 1]
            r[2 * i] = x0 * math.cos(a) - x1 * math.sin(a)
            r[2 * i + 1] = x0 * math.sin(a) + x1 * math.cos(a)
        return r

    for b in range(B):
        for h in range(H):
            for t1 in range(T):
                q = rot(qkv[b, t1, h * hd:(h + 1) * hd], t1)
                sc = []
                for t2 in range(t1 + 1):
                    k = rot(qkv[b, t2, D + h * hd:D + (h + 1) * hd], t2)
                    sc.append(float(q @ k) / math.sqrt(hd))
                w = torch.tensor(sc, dtype=torch.float64).softmax(0)
                o = sum(w[t2] * qkv[b, t2, 2 * D + h * hd:2 * D + (h + 1) * hd] for t2 in range(t1 + 1))
                out[b, t1, h * hd:(h + 1) * hd] = o
    want = out.reshape(B * T, D) @ wo
    return float((got - want).abs().max())


def selftest(verbose=True):
    """Finite differences (float64) on tiny configurations, the batched dispatch against a
    naive per-token loop, and attention/RoPE against an explicit formula. Returns the
    number of failures and prints TAP."""
    torch.manual_seed(0)
    base = {"model.vocab": "11", "model.d_model": "8", "model.layers": "2", "model.heads": "2",
            "model.experts": "4", "model.topk": "2", "model.ffn": "6", "model.seq_len": "5",
            "train.micro_batch": "3", "lbl.coeff": "0.1"}
    cases = [
        ("tied, micro LBL", {}),
        ("untied, shared expert, norm_topk, zloss", {"model.tie_embeddings": "false", "model.shared_ffn": "5",
                                                      "router.norm_topk": "true", "router.zloss_coeff": "0.01"}),
        ("capacity 1.0, top-1, lbl none", {"router.capacity_factor": "1.0", "model.topk": "1",
                                           "lbl.mode": "none", "router.zloss_coeff": "0.001"}),
        ("capacity 0.5, top-2, 6 experts", {"router.capacity_factor": "0.5", "model.experts": "6",
                                            "router.norm_topk": "true"}),
    ]
    results = []
    results.append((_naive_attention_check() < 1e-10, "attention + RoPE match the explicit formula", []))
    for label, over in cases:
        s = dict(base)
        s.update(over)
        cfg = Config(s)
        B, T = cfg.micro_batch, cfg.T
        params = {k: v.numpy() for k, v in init_params(cfg, seed=7, dtype=torch.float64).items()}
        # Larger weights than the real init so every term has a visible gradient.
        rng = np.random.default_rng(1)
        for k in params:
            params[k] = params[k] * 10 + (rng.normal(0, 0.1, params[k].shape) if k.endswith("norm") else 0)
        tok = rng.integers(0, cfg.V, (B, T + 1))
        tokens, targets = tok[:, :-1].copy(), tok[:, 1:].copy()
        targets[0, 1] = -1
        targets[2, 4] = -1
        parts, grads = reference(params, cfg, tokens, targets, torch.float64)

        # Batched dispatch == naive loop (values and gradients).
        pn = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
        st = model_forward(pn, cfg, torch.as_tensor(tokens), torch.as_tensor(targets), moe_fn=_naive_moe)
        st["loss"].backward()
        d = max(abs(float(st["loss"]) - parts["loss"]),
                max(float((pn[k].grad - torch.as_tensor(grads[k])).abs().max()) for k in pn))
        results.append((d < 1e-12, "%s: batched dispatch == per-token loop (max diff %.1e, dropped %s)"
                        % (label, d, parts["dropped"]), []))

        # Directional finite differences per tensor.
        worst, wname = 0.0, ""
        gen = np.random.default_rng(2)
        for name in params:
            for _ in range(2):
                v = gen.normal(size=params[name].shape)
                def dd(eps):
                    pp = dict(params)
                    pp[name] = params[name] + eps * v
                    lp = reference(pp, cfg, tokens, targets, torch.float64, forced_topk=parts["topk"], grads=False)[0]["loss"]
                    pp[name] = params[name] - eps * v
                    lm = reference(pp, cfg, tokens, targets, torch.float64, forced_topk=parts["topk"], grads=False)[0]["loss"]
                    return (lp - lm) / (2 * eps)
                # Richardson extrapolation of central differences: O(eps^4).
                fd = (4 * dd(5e-6) - dd(1e-5)) / 3
                an = float((grads[name] * v).sum())
                err = abs(fd - an) / max(abs(fd), abs(an), 1e-3 * np.linalg.norm(grads[name]) * np.linalg.norm(v), 1e-8)
                if err > worst:
                    worst, wname = err, name
        results.append((worst < 1e-6, "%s: autograd == finite differences (worst rel err %.1e, %s)" % (label, worst, wname), []))
    return print_tap(results)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compare", help="compare a ref_dump file with the reference; prints TAP")
    c.add_argument("dump")
    c.add_argument("--tol", type=float, default=TOL)
    sub.add_parser("selftest", help="finite-difference and dispatch self-test; prints TAP")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    if a.cmd == "compare":
        try:
            res = compare_dump(a.dump, a.tol)
        except (OSError, ValueError, KeyError) as e:
            print("not ok 1 - read and compare %s: %s" % (a.dump, e))
            print("1..1")
            return 1
        return 1 if print_tap(res) else 0
    return 1 if selftest() else 0


if __name__ == "__main__":
    sys.exit(main())
