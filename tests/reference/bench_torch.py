#!/usr/bin/env python3
"""bench_torch.py - the PyTorch speed baseline for moekit's CPU trainer.

    bench_torch.py [--threads N] [--steps S] [--schedule FILE] [--set key=value]...

Trains the reference model of DESIGN section 2 (moe_ref.MoEModel, float32) with
torch.optim.AdamW (betas train.beta1/beta2, eps train.eps, weight decay train.weight_decay
on every non-norm weight, lr train.lr, gradient clipping at train.grad_clip when > 0) on
random tokens: each step is one micro-batch of train.micro_batch x model.seq_len tokens
(grad_accum 1), loss = CE + LBL (+ z-loss) exactly as moekit computes it. Runs 3 warm-up
steps, then times S steps and prints one line to stdout:

    torch: tokens/s=12345.6 steps=S threads=N shape=V257,D64,...

Settings come from the mk_config defaults, then the schedule INI file ([model] d_model = 64
sets model.d_model), then --set overrides. Keys the reference does not use are accepted and
ignored, so a moe-train schedule can be passed as it is.
"""
import argparse
import configparser
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import moe_ref  # noqa: E402

WARMUP = 3


def read_schedule(path):
    cp = configparser.ConfigParser(inline_comment_prefixes=("#", ";"), interpolation=None)
    cp.optionxform = str
    with open(path, encoding="utf-8") as f:
        cp.read_file(f)
    out = {}
    for section in cp.sections():
        for key, value in cp.items(section):
            out["%s.%s" % (section, key)] = value.strip().strip('"')
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description="PyTorch baseline for moekit's trainer speed")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps after %d warm-up steps" % WARMUP)
    ap.add_argument("--schedule", help="INI schedule (moe-train format)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a setting, e.g. model.d_model=128")
    ap.add_argument("--seed", type=int, default=None, help="torch seed (default train.seed)")
    a = ap.parse_args(argv)
    if a.threads < 1 or a.steps < 1:
        ap.error("--threads and --steps must be positive")

    settings = {}
    if a.schedule:
        try:
            settings.update(read_schedule(a.schedule))
        except (OSError, configparser.Error) as e:
            print("bench_torch.py: error: %s: %s" % (a.schedule, e), file=sys.stderr)
            return 2
    for item in a.set:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            ap.error("--set wants section.key=value, got %r" % item)
        settings[key.strip()] = value.strip()
    try:
        cfg = moe_ref.Config(settings)
    except (KeyError, ValueError) as e:
        print("bench_torch.py: error: %s" % e, file=sys.stderr)
        return 2
    s = cfg.settings

    torch.set_num_threads(a.threads)
    seed = int(s["train.seed"]) if a.seed is None else a.seed
    torch.manual_seed(seed)
    model = moe_ref.MoEModel(cfg, seed=seed, dtype=torch.float32)
    wd = float(s["train.weight_decay"])
    opt = torch.optim.AdamW(model.param_groups(wd), lr=float(s["train.lr"]),
                            betas=(float(s["train.beta1"]), float(s["train.beta2"])),
                            eps=float(s["train.eps"]), weight_decay=wd)
    clip = float(s["train.grad_clip"])
    B, T, V = cfg.micro_batch, cfg.T, cfg.V
    gen = torch.Generator().manual_seed(seed + 1)
    params = list(model.parameters())

    def step():
        seq = torch.randint(0, V, (B, T + 1), generator=gen)
        opt.zero_grad(set_to_none=True)
        out = model(seq[:, :-1], seq[:, 1:])
        out["loss"].backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        return out["loss"]

    for _ in range(WARMUP):
        step()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    loss = float(loss)
    dt = time.perf_counter() - t0
    print("torch: tokens/s=%.1f steps=%d threads=%d shape=%s loss=%.4f"
          % (a.steps * B * T / dt, a.steps, a.threads, cfg.shape_text(), loss))
    return 0


if __name__ == "__main__":
    sys.exit(main())
