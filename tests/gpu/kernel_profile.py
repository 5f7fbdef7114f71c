#!/usr/bin/env python3
"""tests/gpu/kernel_profile.py - summarise one training step of an Nsight Compute CSV.

    python3 tests/gpu/kernel_profile.py NCU.csv [STEP]

NCU.csv is `ncu --csv --page raw --metrics gpu__time_duration.sum` over moe-train. A step
ends with the optimizer's run of adamw kernels; STEP (default: the last whole one) picks the
kernels after the previous step's adamw run up to and including this step's. Prints each
kernel name's launches and total time, largest first, with the step's sum.
"""
import csv
import sys


def rows(path):
    with open(path, newline="") as f:
        lines = [l for l in f if l.startswith('"')]  # ncu's own messages are not quoted
    reader = csv.DictReader(lines)
    for r in reader:
        t = r.get("gpu__time_duration.sum", "").replace(",", "")
        try:
            yield r["Kernel Name"], float(t)
        except ValueError:
            continue  # the units row


def steps(kernels):
    """Split the launches into steps at the end of each run of adamw kernels."""
    out, cur, in_adamw = [], [], False
    for name, t in kernels:
        adamw = "adamw" in name
        if in_adamw and not adamw:
            out.append(cur)
            cur = []
        cur.append((name, t))
        in_adamw = adamw
    if in_adamw:
        out.append(cur)
    return out


def short(name, width=110):
    return name if len(name) <= width else name[: width - 3] + "..."


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: kernel_profile.py NCU.csv [STEP]")
    ks = list(rows(sys.argv[1]))
    st = steps(ks)
    if not st:
        sys.exit("kernel_profile.py: %s: no adamw kernel, no whole step" % sys.argv[1])
    i = int(sys.argv[2]) - 1 if len(sys.argv) > 2 else len(st) - 1
    step = st[i]
    unit = 1e-6  # ns -> ms
    total = sum(t for _, t in step) * unit
    by = {}
    for name, t in step:
        n, s = by.get(name, (0, 0.0))
        by[name] = (n + 1, s + t * unit)
    print("step %d of %d: %d kernels, %.3f ms of kernel time" % (i + 1, len(st), len(step), total))
    for name, (n, s) in sorted(by.items(), key=lambda kv: -kv[1][1]):
        print("%9.3f ms %5.1f%% %5d  %s" % (s, 100 * s / total, n, short(name)))
    print("\nin launch order (ms):")
    for name, t in step:
        print("%8.4f  %s" % (t * unit, short(name, 90)))


if __name__ == "__main__":
    main()
