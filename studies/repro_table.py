#!/usr/bin/env python3
"""studies/repro_table.py - results tables of the reproduction study from moe-report's CSVs.

    python3 studies/repro_table.py [--order "global micro-b1 ..."] [--out results.md] REPORT_DIR...

Each REPORT_DIR is the output of `moe-report RUN... -o DIR --window last:1` (the final
evaluation pass of each run). Runs are named SETTING-sSEED (their run directory); a setting's
schedule is read from schedules/repro/cpu-SETTING.ini (--schedules, --prefix) for its
lbl.mode and batch split. Nothing is computed here that moe-report does not give, except:
perplexity = exp(validation loss) (also in val_loss.csv), means over domains, layers and seeds,
the seed spread |seed A - seed B| (max - min with more seeds), counts of shares above the
paper's thresholds (0.15, 0.2) from expert_shares.csv, and the batch MaxVio / LBL averaged over
the last quarter of the logged training steps (train_steps.csv).
"""
import argparse
import configparser
import csv
import math
import os
import re
import sys
from collections import defaultdict


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run_key(run):
    m = re.fullmatch(r"(.+)-s(\d+)", run)
    if not m:  # a run without a seed suffix counts as seed 0
        return run, 0
    return m.group(1), int(m.group(2))


def mean(xs):
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return sum(xs) / len(xs) if xs else float("nan")


def spread(xs):
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return max(xs) - min(xs) if len(xs) > 1 else float("nan")


def schedule_info(sched_dir, setting, prefix="cpu-"):
    path = os.path.join(sched_dir, f"{prefix}{setting}.ini")
    cp = configparser.ConfigParser(inline_comment_prefixes=(";",), comment_prefixes=(";", "#"))
    if not cp.read(path):
        return {"mode": "?", "mb": 0, "ga": 0, "scope": "?", "path": path}
    mode = cp.get("lbl", "mode", fallback="micro")
    mb = cp.getint("train", "micro_batch", fallback=8)
    ga = cp.getint("train", "grad_accum", fallback=1)
    gb = mb * ga
    if mode == "micro":
        scope = f"{mb}"
    elif mode == "global":
        scope = f"{gb} (buffer: {mb}..{gb})"
    elif mode == "global-exact":
        scope = f"{gb}"
    else:
        scope = "none"
    return {"mode": mode, "mb": mb, "ga": ga, "gb": gb, "scope": scope, "path": path}


def f3(x, nd=3):
    return "nan" if x is None or math.isnan(x) else f"{x:.{nd}f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", nargs="+")
    ap.add_argument("--order", default="", help="settings in table order (space-separated)")
    ap.add_argument("--schedules", default="schedules/repro")
    ap.add_argument("--prefix", default="cpu-", help="schedule of SETTING: SCHEDULES/PREFIX SETTING.ini")
    ap.add_argument("--out", default="-")
    a = ap.parse_args()

    val = {}          # (setting, seed) -> {domain: loss}
    step_of = {}      # (setting, seed) -> eval step used
    summ = {}         # (setting, seed) -> summary row
    conc = defaultdict(dict)   # (setting, seed) -> {(layer, domain): top1}
    above = defaultdict(lambda: defaultdict(int))  # (setting, seed) -> {thr: count}
    dom_above = defaultdict(lambda: defaultdict(set))  # (setting, seed) -> {thr: domains}
    tail = {}         # (setting, seed) -> (maxvio_batch, lbl) over last quarter of training
    domains = []
    K = E = None
    for rep in a.reports:
        vl = read_csv(os.path.join(rep, "val_loss.csv"))
        last = {}
        for r in vl:
            last[r["run"]] = max(last.get(r["run"], -1), int(r["step"]))
        for r in vl:
            if int(r["step"]) != last[r["run"]]:
                continue
            key = run_key(r["run"])
            val.setdefault(key, {})[r["domain"]] = float(r["loss"])
            step_of[key] = last[r["run"]]
            if r["domain"] not in domains:
                domains.append(r["domain"])
        for r in read_csv(os.path.join(rep, "summary.csv")):
            summ[run_key(r["run"])] = r
            K, E = int(r["topk"]), int(r["experts"])
        for r in read_csv(os.path.join(rep, "concentration.csv")):
            conc[run_key(r["run"])][(int(r["layer"]), r["domain"])] = float(r["top1_share"])
        for r in read_csv(os.path.join(rep, "expert_shares.csv")):
            key, s = run_key(r["run"]), float(r["share"])
            for thr in (0.15, 0.2):
                if s > thr:
                    above[key][thr] += 1
                    dom_above[key][thr].add(r["domain"])
        ts = defaultdict(list)
        for r in read_csv(os.path.join(rep, "train_steps.csv")):
            ts[r["run"]].append((int(r["step"]), float(r["maxvio"]), float(r["lbl"])))
        for run, rows in ts.items():
            steps = sorted({s for s, _, _ in rows})
            cut = steps[len(steps) - max(1, len(steps) // 4)]
            sel = [(m, l) for s, m, l in rows if s >= cut]
            tail[run_key(run)] = (mean([m for m, _ in sel]), mean([l for _, l in sel]))

    settings = []
    for s in a.order.split():
        if s not in settings and any(k[0] == s for k in val):
            settings.append(s)
    for k in sorted(val):
        if k[0] not in settings:
            settings.append(k[0])
    seeds = sorted({k[1] for k in val})
    info = {s: schedule_info(a.schedules, s, a.prefix) for s in settings}
    ppl = {k: {d: math.exp(v) for d, v in dl.items()} for k, dl in val.items()}
    mppl = {k: mean(list(p.values())) for k, p in ppl.items()}
    mloss = {k: mean(list(v.values())) for k, v in val.items()}

    o = []
    w = o.append
    steps_used = sorted(set(step_of.values()))
    w(f"Seeds: {', '.join(map(str, seeds))}. Validation = each domain's held-out split (moe-shard's val "
      f"split, at most 256 windows per domain), final evaluation pass (step {', '.join(map(str, steps_used))}). "
      f"Numbers are means over the seeds; `±` is the seed spread |A - B| (max - min). "
      f"Uniform expert share K/E = {K}/{E} = {K / E:.4f}.")
    w("")
    w("### Perplexity per domain (validation), the paper's Table 1 form")
    w("")
    w("| setting | lbl.mode | micro-batch | balance scope (sequences) | " + " | ".join(domains) +
      " | mean PPL | ± seeds |")
    w("|---|---|---|---|" + "---|" * len(domains) + "---|---|")
    for s in settings:
        ks = [(s, sd) for sd in seeds if (s, sd) in ppl]
        cells = [f3(mean([ppl[k][d] for k in ks])) for d in domains]
        w(f"| {s} | {info[s]['mode']} | {info[s]['mb']} | {info[s]['scope']} | " + " | ".join(cells) +
          f" | **{f3(mean([mppl[k] for k in ks]))}** | {f3(spread([mppl[k] for k in ks]))} |")
    w("")
    w("### Mean perplexity and loss per seed, and the paired difference to micro-b1")
    w("")
    base = "micro-b1" if "micro-b1" in settings else settings[0]
    w("| setting | " + " | ".join(f"mean PPL s{sd}" for sd in seeds) + " | mean val loss | ± seeds | " +
      " | ".join(f"Δ PPL vs {base} s{sd}" for sd in seeds) + " | mean Δ PPL |")
    w("|---|" + "---|" * len(seeds) + "---|---|" + "---|" * len(seeds) + "---|")
    for s in settings:
        ks = [(s, sd) for sd in seeds]
        d = [mppl.get(k, float("nan")) - mppl.get((base, k[1]), float("nan")) for k in ks]
        w(f"| {s} | " + " | ".join(f3(mppl.get(k, float('nan'))) for k in ks) +
          f" | {f3(mean([mloss.get(k, float('nan')) for k in ks]), 4)} | "
          f"{f3(spread([mloss.get(k, float('nan')) for k in ks]), 4)} | " +
          " | ".join(f"{x:+.3f}" for x in d) + f" | {mean(d):+.3f} |")
    w("")
    w("### Specialization on the held-out tokens (final evaluation pass)")
    w("")
    w("Top expert share per domain: the largest share of the domain's tokens that chose one expert "
      "(max over experts and layers; the paper's Fig. 1b frequency). Experts > 0.15 / > 0.2: "
      "(layer, domain, expert) triples whose share exceeds the paper's thresholds (K/E is the same "
      "0.0625 as the paper's), with the number of domains that have one in brackets. "
      "JS: Jensen-Shannon divergence between the domains' expert distributions, mean over pairs and "
      "layers (0 = same routing, 1 = disjoint). MaxVio eval: (max load - mean load)/mean load over the "
      "whole evaluation pass; MaxVio batch and LBL: per training step's global batch, mean over the last "
      "quarter of the logged steps and the layers.")
    w("")
    w("| setting | " + " | ".join(f"top share {d}" for d in domains) +
      " | mean top-1 share | experts > 0.15 | experts > 0.2 | mean JS | MaxVio eval | MaxVio batch | LBL |")
    w("|---|" + "---|" * len(domains) + "---|---|---|---|---|---|---|")
    for s in settings:
        ks = [(s, sd) for sd in seeds if (s, sd) in summ]
        tops = []
        for d in domains:
            per = [max(v for (l, dd), v in conc[k].items() if dd == d) for k in ks]
            tops.append(f"{f3(mean(per))} ± {f3(spread(per))}")
        def sm(col):
            xs = [float(summ[k][col]) for k in ks]
            return f"{f3(mean(xs))} ± {f3(spread(xs))}"
        n15 = " / ".join(f"{above[k][0.15]} ({len(dom_above[k][0.15])})" for k in ks)
        n20 = " / ".join(f"{above[k][0.2]} ({len(dom_above[k][0.2])})" for k in ks)
        mvb = [tail[k][0] for k in ks if k in tail]
        lb = [tail[k][1] for k in ks if k in tail]
        w(f"| {s} | " + " | ".join(tops) + f" | {sm('mean_top1_share')} | {n15} | {n20} | "
          f"{sm('mean_js_divergence')} | {sm('maxvio_global_mean')} | {f3(mean(mvb))} ± {f3(spread(mvb))} | "
          f"{f3(mean(lb))} ± {f3(spread(lb))} |")
    w("")
    w("(Experts > 0.15 / > 0.2 are given per seed, " + " / ".join(f"s{sd}" for sd in seeds) + ".)")
    text = "\n".join(o) + "\n"
    if a.out == "-":
        sys.stdout.write(text)
    else:
        with open(a.out, "w") as f:
            f.write(text)
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
