#!/usr/bin/python3
"""test_report_check.py - fixtures and independent checks for tests/test_report.sh.

  make RUN_DIR SEED [--layers L --experts E]   write RUN_DIR/routing.h5 with known counts (h5py,
                                               following docs/routing-log-format.md only)
  make-empty PATH                              a valid log with 0 rows
  make-short PATH                              /counts has fewer rows than /step (truncated)
  check OUT SOURCE WINDOW RUN_DIR...           recompute every metric with numpy and compare
                                               with OUT's CSVs (exit 1 and a message if not)
  figures OUT                                  PNG magic + IHDR 900x600, SVG parses, 900x600
  live OUT FIRST LAST                          OUT/summary.csv window_last_step in FIRST..LAST
"""
import csv, math, os, struct, sys
import xml.etree.ElementTree as ET
import numpy as np
import h5py

DOMAINS = ["code", "math", "prose"]


def write_log(path, steps, evsteps, L, E, K, rng, short=False):
    D = len(DOMAINS)
    with h5py.File(path, "w", libver="latest") as f:
        f.attrs["format"] = np.bytes_("moekit-routing-log")
        f.attrs["format_version"] = np.int32(1)
        for k, v in (("layers", L), ("experts", E), ("topk", K)):
            f.attrs[k] = np.int32(v)
        f.create_dataset("domains", data=np.array([d.encode() for d in DOMAINS], dtype="S16"))
        for pre, st in (("", steps), ("eval/", evsteps)):
            S = len(st)
            tokens = rng.integers(50, 400, size=(S, D)).astype(np.int64)
            counts = np.zeros((S, L, D, E), np.int64)
            for s in range(S):
                for l in range(L):
                    for d in range(D):
                        p = rng.dirichlet(np.full(E, 0.3 + 2.0 * d))  # domain 0 peaky, 2 flat
                        if l == L - 1:
                            p[E - 1] = 0.0  # a dead expert in the last layer
                            p /= p.sum()
                        counts[s, l, d] = rng.multinomial(K * tokens[s, d], p)
            rows = S + 1 if short else S
            def ds(name, data, dtype):
                shape = data.shape
                f.create_dataset(pre + name, data=data.astype(dtype), maxshape=(None,) + shape[1:],
                                 chunks=(max(1, 1),) + shape[1:])
            ds("step", np.array(st, np.int64), np.int64)
            ds("counts", counts[: S - 1] if short and S > 1 else counts, np.int64)
            ds("tokens", tokens, np.int64)
            ds("lbl", 1.0 + rng.random((S, L)), np.float64)
            ds("maxvio", rng.random((S, L)) * 2, np.float64)
            ds("loss", (3.0 + rng.random((S, D))) if pre else (4.0 + rng.random(S)), np.float64)


def read_log(path):
    with h5py.File(path, "r", libver="latest", swmr=True) as f:
        out = {"L": int(f.attrs["layers"]), "E": int(f.attrs["experts"]), "K": int(f.attrs["topk"]),
               "domains": [d.decode() for d in f["domains"][()]]}
        for pre in ("", "eval/"):
            f[pre + "step"].refresh()
            S = f[pre + "step"].shape[0]
            out[pre] = {n: f[pre + n][:S] for n in ("step", "counts", "tokens", "lbl", "maxvio", "loss")}
        return out


def window_rows(steps, window):
    S = len(steps)
    if window == "all":
        return np.arange(S)
    if window.startswith("last:"):
        n = int(window[5:])
        return np.arange(max(0, S - n), S)
    a, b = map(int, window[6:].split("-"))
    return np.array([i for i in range(S) if a <= steps[i] <= b], int)


def H(p):
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def expected(run_dir, source, window):
    g = read_log(os.path.join(run_dir, "routing.h5"))
    L, E, K, doms = g["L"], g["E"], g["K"], g["domains"]
    src = "eval/" if (source == "eval" or (source == "auto" and len(g["eval/"]["step"]) > 0)) else ""
    s = g[src]
    rows = window_rows(s["step"], window)
    C = s["counts"][rows].sum(axis=0).astype(float)  # [L, D, E]
    T = s["tokens"][rows].sum(axis=0).astype(float)  # [D]
    share = C / T[None, :, None]
    srt = -np.sort(-share, axis=2)
    top1 = srt[:, :, 0]
    topk = srt[:, :, :K].sum(axis=2) / K
    p = C / C.sum(axis=2, keepdims=True)
    ent = np.array([[H(p[l, d]) for d in range(len(doms))] for l in range(L)])
    js = {}
    for l in range(L):
        for a in range(len(doms)):
            for b in range(a + 1, len(doms)):
                m = (p[l, a] + p[l, b]) / 2
                js[(l, doms[a], doms[b])] = H(m) - (H(p[l, a]) + H(p[l, b])) / 2
    load = C.sum(axis=1)
    mvg = (load.max(axis=1) - load.mean(axis=1)) / load.mean(axis=1)
    lo, hi = s["step"][rows[0]], s["step"][rows[-1]]
    t = g[""]
    trows = [i for i in range(len(t["step"])) if lo <= t["step"][i] <= hi]
    mvb = t["maxvio"][trows].mean(axis=0) if trows else np.full(L, np.nan)
    lblm = t["lbl"][trows].mean(axis=0) if trows else np.full(L, np.nan)
    return dict(g=g, L=L, E=E, K=K, doms=doms, src=src, lo=lo, hi=hi, n=len(rows), C=C, T=T, share=share,
                top1=top1, topk=topk, ent=ent, js=js, mvg=mvg, mvb=mvb, lbl=lblm,
                dead=(load == 0).sum(axis=1))


def rd(out, name):
    with open(os.path.join(out, name)) as f:
        return list(csv.DictReader(f))


class Checker:
    def __init__(self):
        self.n = 0
        self.bad = []

    def close(self, got, want, what):
        self.n += 1
        g = float(got)
        if (math.isnan(want) and math.isnan(g)) or abs(g - want) <= 1e-9 + 1e-9 * abs(want):
            return
        self.bad.append(f"{what}: got {got}, expected {want!r}")

    def eq(self, got, want, what):
        self.n += 1
        if str(got) != str(want):
            self.bad.append(f"{what}: got {got}, expected {want}")


def check(out, source, window, runs):
    c = Checker()
    exp = {os.path.basename(r.rstrip("/")): expected(r, source, window) for r in runs}
    summ = {r["run"]: r for r in rd(out, "summary.csv")}
    for run, x in exp.items():
        s = summ[run]
        c.eq(s["source"], "eval" if x["src"] else "train", f"{run} source")
        c.eq(s["window_first_step"], x["lo"], f"{run} window first")
        c.eq(s["window_last_step"], x["hi"], f"{run} window last")
        c.eq(s["window_rows"], x["n"], f"{run} window rows")
        c.close(s["uniform_share"], x["K"] / x["E"], f"{run} uniform")
        c.close(s["mean_top1_share"], x["top1"].mean(), f"{run} mean top1")
        c.close(s["mean_topk_share"], x["topk"].mean(), f"{run} mean topk")
        c.close(s["mean_js_divergence"], np.mean([np.mean([v for k, v in x["js"].items() if k[0] == l])
                                                  for l in range(x["L"])]), f"{run} mean js")
        c.close(s["mean_entropy_bits"], x["ent"].mean(), f"{run} mean entropy")
        c.close(s["maxvio_global_mean"], x["mvg"].mean(), f"{run} maxvio global")
        c.close(s["maxvio_batch_mean"], np.mean(x["mvb"]), f"{run} maxvio batch")
        c.eq(s["dead_experts_total"], int(x["dead"].sum()), f"{run} dead total")
    for r in rd(out, "expert_shares.csv"):
        x = exp[r["run"]]; l, d, e = int(r["layer"]), x["doms"].index(r["domain"]), int(r["expert"])
        c.eq(r["count"], int(x["C"][l, d, e]), f"count {l},{d},{e}")
        c.eq(r["tokens"], int(x["T"][d]), f"tokens {d}")
        c.close(r["share"], x["share"][l, d, e], f"share {l},{d},{e}")
    for r in rd(out, "concentration.csv"):
        x = exp[r["run"]]; l, d = int(r["layer"]), x["doms"].index(r["domain"])
        c.close(r["top1_share"], x["top1"][l, d], f"top1 {l},{d}")
        c.close(r["topk_share"], x["topk"][l, d], f"topk {l},{d}")
        c.close(r["entropy_bits"], x["ent"][l, d], f"entropy {l},{d}")
    njs = 0
    for r in rd(out, "js_divergence.csv"):
        x = exp[r["run"]]
        c.close(r["js_divergence"], x["js"][(int(r["layer"]), r["domain_a"], r["domain_b"])], "js")
        njs += 1
    c.eq(njs, sum(len(x["js"]) for x in exp.values()), "js rows")
    for r in rd(out, "layers.csv"):
        x = exp[r["run"]]; l = int(r["layer"])
        c.close(r["maxvio_global"], x["mvg"][l], f"maxvio global {l}")
        c.close(r["maxvio_batch_mean"], x["mvb"][l], f"maxvio batch {l}")
        c.close(r["lbl_mean"], x["lbl"][l], f"lbl mean {l}")
        c.eq(r["dead_experts"], int(x["dead"][l]), f"dead {l}")
        c.close(r["js_mean"], np.mean([v for k, v in x["js"].items() if k[0] == l]), f"js mean {l}")
    for r in rd(out, "train_steps.csv"):
        t = exp[r["run"]]["g"][""]; i = list(t["step"]).index(int(r["step"])); l = int(r["layer"])
        c.close(r["loss"], t["loss"][i], "train loss")
        c.close(r["lbl"], t["lbl"][i, l], "train lbl")
        c.close(r["maxvio"], t["maxvio"][i, l], "train maxvio")
    for r in rd(out, "val_loss.csv"):
        x = exp[r["run"]]; t = x["g"]["eval/"]; i = list(t["step"]).index(int(r["step"]))
        v = t["loss"][i, x["doms"].index(r["domain"])]
        c.close(r["loss"], v, "val loss")
        c.close(r["perplexity"], math.exp(v), "val ppl")
    if c.bad:
        print("\n".join(c.bad[:10]), file=sys.stderr)
        sys.exit(1)
    print(c.n)


def figures(out):
    names = sorted(os.listdir(out))
    pngs = [n for n in names if n.endswith(".png")]
    svgs = [n for n in names if n.endswith(".svg")]
    assert pngs and len(pngs) == len(svgs), (pngs, svgs)
    for n in pngs:
        b = open(os.path.join(out, n), "rb").read()
        assert b[:8] == b"\x89PNG\r\n\x1a\n", n + ": no PNG magic"
        assert b[12:16] == b"IHDR", n
        w, h = struct.unpack(">II", b[16:24])
        assert (w, h) == (900, 600), f"{n}: {w}x{h}"
    for n in svgs:
        root = ET.parse(os.path.join(out, n)).getroot()
        assert root.tag.endswith("svg"), n
        w, h = (float(root.get(k).rstrip("ptx")) for k in ("width", "height"))
        assert (w, h) == (900, 600), f"{n}: {w}x{h}"
    print(len(pngs) + len(svgs))


def main():
    cmd = sys.argv[1]
    if cmd == "make":
        d = sys.argv[2]; seed = int(sys.argv[3])
        L = int(sys.argv[4]) if len(sys.argv) > 4 else 2
        E = int(sys.argv[5]) if len(sys.argv) > 5 else 8
        os.makedirs(d, exist_ok=True)
        write_log(os.path.join(d, "routing.h5"), [1, 2, 3, 4, 5, 6], [2, 4, 6], L, E, 2, np.random.default_rng(seed))
    elif cmd == "make-empty":
        write_log(sys.argv[2], [], [], 2, 8, 2, np.random.default_rng(0))
    elif cmd == "make-short":
        write_log(sys.argv[2], [1, 2, 3], [], 2, 8, 2, np.random.default_rng(0), short=True)
    elif cmd == "check":
        check(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
    elif cmd == "figures":
        figures(sys.argv[2])
    elif cmd == "live":
        s = rd(sys.argv[2], "summary.csv")[0]
        last, lo, hi = int(s["window_last_step"]), int(sys.argv[3]), int(sys.argv[4])
        if not lo <= last <= hi:
            sys.exit(f"report shows step {last}, the writer had flushed {lo}..{hi}")
        print(last)


if __name__ == "__main__":
    main()
