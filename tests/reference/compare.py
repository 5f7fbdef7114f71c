#!/usr/bin/env python3
"""compare.py - check a ref_dump file against the PyTorch reference; prints TAP.

    compare.py DUMP.bin [--tol 1e-4]

Runs the reference (moe_ref.py, next to this file) in float32 and float64 from the dump's
weights and tokens, and prints one TAP line per checked quantity: the CE mean, each layer's
LBL, the z-loss, the expert counts, the dropped choices, the routing, and every parameter
gradient, as "ok N - grad.layers.0.w1 rel err 3.2e-07" with rel err = ||C - ref32|| /
||ref32|| (the float64 reference's error follows as a "#" line). A check passes when rel
err < tol. The plan "1..N" comes last; exit status 1 if any check failed.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import moe_ref  # noqa: E402

if __name__ == "__main__":
    sys.exit(moe_ref.main(["compare"] + sys.argv[1:]))
