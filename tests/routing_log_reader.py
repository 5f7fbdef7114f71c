#!/usr/bin/python3
"""routing_log_reader.py - reads a routing log with h5py alone, as docs/routing-log-format.md
describes, and checks it against the values tests/routing_log_writer.c writes.

  routing_log_reader.py wait PATH MIN_STEPS TIMEOUT_S   poll a live log until MIN_STEPS steps
                                                        are visible, checking every poll
  routing_log_reader.py check PATH [N] [--no-swmr] [--all-eval]
      check every visible step: exactly steps 1..N when N is given, an eval row for every
      even step with --all-eval; --no-swmr opens the file as h5dump would (no SWMR)

Prints the number of visible steps; exits 1 (with the reason on stderr) on a wrong value.
"""
import sys
import time

import h5py
import numpy as np

L, DM, E, K = 3, 2, 4, 2
DOMAINS = ["code", "math"]


def expected(s, ev):
    """The values routing_log_writer.c logs for step s (ev: the eval row)."""
    l = np.arange(L).reshape(L, 1, 1)
    d = np.arange(DM).reshape(1, DM, 1)
    e = np.arange(E).reshape(1, 1, E)
    counts = (1 << 40) + s * 1000000 + l * 10000 + d * 100 + e + (7 if ev else 0)
    tokens = (1 << 33) + s * 1000 + np.arange(DM) + (3 if ev else 0)
    lbl = 1.0 + s / 1024.0 + np.arange(L) / 8.0 + (0.5 if ev else 0.0)
    maxvio = s * 0.25 + np.arange(L) + (0.125 if ev else 0.0)
    if ev:
        loss = 5.0 + 0.5 * np.arange(DM) - s / 128.0
    else:
        loss = np.float64(10.0 - s / 64.0)
    return dict(counts=counts.astype(np.int64), tokens=tokens.astype(np.int64), lbl=lbl,
                maxvio=maxvio, loss=loss)


def open_log(path, swmr):
    if swmr:
        return h5py.File(path, "r", libver="latest", swmr=True)
    return h5py.File(path, "r")


def read_table(f, group, swmr):
    """The committed rows of one table: refresh /step first, then the rest, and cut
    everything to len(/step) (the other datasets may hold one more, unfinished row)."""
    g = f[group]
    names = ["step", "counts", "tokens", "lbl", "maxvio", "loss"]
    if swmr:
        for n in names:
            g[n].refresh()
    s = g["step"].shape[0]
    return {n: g[n][:s] for n in names}


def short(a):
    return np.array2string(np.asarray(a), threshold=20, edgeitems=4)


def fail(msg):
    raise SystemExit("routing_log_reader: " + msg)


def check_file(f, swmr, exact=None, all_eval=False):
    if f.attrs["format"] != b"moekit-routing-log" or int(f.attrs["format_version"]) != 1:
        fail("bad format attributes %r %r" % (f.attrs["format"], f.attrs["format_version"]))
    if (int(f.attrs["layers"]), int(f.attrs["experts"]), int(f.attrs["topk"])) != (L, E, K):
        fail("bad shape attributes")
    names = [x.decode("utf-8") for x in f["domains"][()]]
    if names != DOMAINS:
        fail("domains %r" % names)
    train = read_table(f, "/", swmr)
    ev = read_table(f, "/eval", swmr)
    s = len(train["step"])
    want_steps = np.arange(1, s + 1)
    if exact is not None and s != exact:
        fail("%d steps, expected %d" % (s, exact))
    if not np.array_equal(train["step"], want_steps):
        fail("steps %s, expected 1..%d" % (short(train["step"]), s))
    # Eval rows: even steps, increasing. The tables are refreshed one after the other while
    # the writer goes on, and a writer killed between a training row and its eval row never
    # writes that eval row, so only all_eval (a log written without a crash) pins them all.
    ev_steps = ev["step"]
    n_ev = len(ev_steps)
    if np.any(ev_steps % 2 != 0) or np.any(np.diff(ev_steps) <= 0) or \
            (all_eval and not np.array_equal(ev_steps, np.arange(2, s + 1, 2))):
        fail("eval steps %s with %d training steps" % (short(ev_steps), s))
    for table, rows, is_eval in ((train, s, False), (ev, n_ev, True)):
        for r in range(rows):
            step = int(table["step"][r])
            want = expected(step, is_eval)
            for name, value in want.items():
                got = table[name][r]
                if got.shape != np.shape(value) or not np.array_equal(got, value):
                    fail("%s%s of step %d: got %s, want %s" %
                         ("/eval/" if is_eval else "/", name, step, short(got), short(value)))
    return s


def main(argv):
    if len(argv) >= 3 and argv[1] == "wait":
        path, need, timeout = argv[2], int(argv[3]), float(argv[4])
        end = time.monotonic() + timeout
        f = None
        while True:
            if f is None:
                try:
                    f = open_log(path, True)
                except (OSError, FileNotFoundError):
                    f = None
            if f is not None:
                s = check_file(f, True)
                if s >= need:
                    print(s)
                    return 0
            if time.monotonic() > end:
                fail("%s: fewer than %d steps after %g s" % (path, need, timeout))
            time.sleep(0.05)
    if len(argv) >= 3 and argv[1] == "check":
        args = argv[3:]
        swmr = "--no-swmr" not in args
        all_eval = "--all-eval" in args
        args = [a for a in args if not a.startswith("--")]
        exact = int(args[0]) if args else None
        with open_log(argv[2], swmr) as f:
            print(check_file(f, swmr, exact, all_eval))
        return 0
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
