#!/usr/bin/env python3
"""make_demo.py - generate the math domain of the moekit demo corpus.

Usage:  python3 data/make_demo.py data/demo

Writes math.txt into the given directory: worked arithmetic and algebra exercises in
plain ASCII. data/make_corpus.sh runs this script and builds the other domains from
Debian packages; see data/README.md.

Every text is made here from templates and small grammars written for this script;
nothing is copied from elsewhere. The output is a pure function of this file: the
pseudo-random generator is a fixed-seed SplitMix64 implemented below (so the result does
not depend on the Python version's `random` module), no sets or hash order are iterated,
and every number is formatted from integers or Fractions.

Format: 7-bit ASCII, '\\n' line ends, no blank line inside a document, and every
document followed by exactly one blank line.

Standard library only.
"""

import hashlib
import os
import sys
from fractions import Fraction
from math import gcd

SEED = 2501_11873          # the paper's arXiv number
TARGET_BYTES = 900_000     # the file stops at the first document boundary past this

# --------------------------------------------------------------------------------------
# Deterministic pseudo-random numbers (SplitMix64).
# --------------------------------------------------------------------------------------

M64 = (1 << 64) - 1


class Rng:
    def __init__(self, seed):
        self.s = seed & M64

    def next64(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & M64
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)

    def below(self, n):
        """Uniform integer in [0, n) (rejection sampling: exactly uniform)."""
        if n <= 0:
            raise ValueError("below(%d)" % n)
        limit = (1 << 64) - ((1 << 64) % n)
        while True:
            x = self.next64()
            if x < limit:
                return x % n

    def int(self, lo, hi):
        """Uniform integer in [lo, hi]."""
        return lo + self.below(hi - lo + 1)

    def nonzero(self, lo, hi):
        while True:
            v = self.int(lo, hi)
            if v != 0:
                return v

    def chance(self, percent):
        return self.below(100) < percent

    def choice(self, seq):
        return seq[self.below(len(seq))]

    def sample(self, seq, k):
        """k distinct items of seq, in random order."""
        pool = list(seq)
        out = []
        for _ in range(k):
            out.append(pool.pop(self.below(len(pool))))
        return out

    def shuffle(self, lst):
        for i in range(len(lst) - 1, 0, -1):
            j = self.below(i + 1)
            lst[i], lst[j] = lst[j], lst[i]

    def weighted(self, pairs):
        """pairs: [(weight, value), ...] with integer weights."""
        total = sum(w for w, _ in pairs)
        r = self.below(total)
        for w, v in pairs:
            if r < w:
                return v
            r -= w
        raise AssertionError("unreachable")


def domain_rng(name):
    """An independent stream per domain, so editing one domain leaves the others as they are."""
    h = int.from_bytes(hashlib.sha256(("%d/%s" % (SEED, name)).encode()).digest()[:8], "big")
    return Rng(h)


# --------------------------------------------------------------------------------------
# Small text helpers.
# --------------------------------------------------------------------------------------

def fill(rng, template, slots):
    """Replace {key} in template; a slot value may be a list (one is chosen) or a callable."""
    out = []
    i = 0
    while i < len(template):
        c = template[i]
        if c == "{":
            j = template.index("}", i)
            key = template[i + 1:j]
            v = slots[key]
            if callable(v):
                v = v()
            elif isinstance(v, list):
                v = rng.choice(v)
            out.append(v)
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)



# ======================================================================================
# Domain 3: math (every result computed here with exact integer / Fraction arithmetic)
# ======================================================================================

def p(n):
    """A number as an operand: negative numbers in parentheses."""
    return "(%d)" % n if n < 0 else str(n)


def frac(f):
    f = Fraction(f)
    return str(f.numerator) if f.denominator == 1 else "%d/%d" % (f.numerator, f.denominator)


def term(coef, var, first=False):
    """'3x', '- 3x', '+ x', ... for building polynomials left to right."""
    if coef == 0:
        return ""
    mag = abs(coef)
    body = (var if mag == 1 and var else "%d%s" % (mag, var))
    if first:
        return ("-" if coef < 0 else "") + body
    return ("- " if coef < 0 else "+ ") + body


def poly(coefs_vars):
    """[(c, 'x^2'), (c, 'x'), (c, '')] -> '2x^2 - 3x + 5'."""
    out = []
    for c, v in coefs_vars:
        if c == 0:
            continue
        out.append(term(c, v, first=not out))
    return " ".join(out) if out else "0"


def math_mul(rng):
    a = rng.int(12, 99)
    b = rng.int(11, 99)
    t, u = divmod(b, 10)
    lines = ["Compute %d * %d." % (a, b)]
    if u == 0:
        lines.append("%d * %d = %d * %d * 10 = %d * 10 = %d." % (a, b, a, t, a * t, a * b))
    else:
        lines.append("%d * %d = %d * %d + %d * %d = %d + %d = %d." % (
            a, b, a, t * 10, a, u, a * t * 10, a * u, a * b))
    lines.append("Answer: %d." % (a * b))
    return lines


def math_addsub(rng):
    a = rng.int(100, 9999)
    b = rng.int(10, 9999)
    if rng.chance(50):
        return ["Compute %d + %d." % (a, b), "%d + %d = %d." % (a, b, a + b)]
    if b > a:
        a, b = b, a
    lines = ["Compute %d - %d." % (a, b), "%d - %d = %d." % (a, b, a - b)]
    if rng.chance(50):
        lines.append("Check: %d + %d = %d." % (a - b, b, a))
    return lines


def math_div(rng):
    d = rng.int(3, 19)
    q = rng.int(12, 400)
    r = rng.int(0, d - 1)
    n = d * q + r
    lines = ["Divide %d by %d." % (n, d)]
    lines.append("%d * %d = %d, and %d - %d = %d." % (d, q, d * q, n, d * q, r))
    if r == 0:
        lines.append("So %d / %d = %d exactly." % (n, d, q))
    else:
        lines.append("So %d / %d = %d remainder %d, that is %d + %d/%d." % (
            n, d, q, r, q, r // gcd(r, d), d // gcd(r, d)))
    return lines


def math_order(rng):
    a, b, c, d = rng.int(1, 20), rng.int(2, 9), rng.int(5, 15), rng.int(1, 4)
    e = rng.int(2, 3)
    shape = rng.below(3)
    if shape == 0:
        inner = c - d
        pw = inner ** e
        prod = b * pw
        return ["Evaluate %d + %d * (%d - %d)^%d." % (a, b, c, d, e),
                "First the parentheses: %d - %d = %d." % (c, d, inner),
                "Then the power: %d^%d = %d." % (inner, e, pw),
                "Then the product: %d * %d = %d." % (b, pw, prod),
                "Finally the sum: %d + %d = %d." % (a, prod, a + prod)]
    if shape == 1:
        s1 = a + b
        s2 = c - d
        return ["Evaluate (%d + %d) * (%d - %d)." % (a, b, c, d),
                "%d + %d = %d and %d - %d = %d." % (a, b, s1, c, d, s2),
                "%d * %d = %d." % (s1, s2, s1 * s2),
                "So (%d + %d) * (%d - %d) = %d." % (a, b, c, d, s1 * s2)]
    m = b * c
    return ["Evaluate %d * %d - %d + %d." % (b, c, a, d),
            "Multiplication comes first: %d * %d = %d." % (b, c, m),
            "Then from left to right: %d - %d = %d, and %d + %d = %d." % (
                m, a, m - a, m - a, d, m - a + d),
            "Answer: %d." % (m - a + d)]


def math_linear(rng):
    x = rng.int(-12, 15)
    a = rng.nonzero(-9, 9)
    while a in (1, -1, 0):
        a = rng.nonzero(-9, 9)
    b = rng.int(-30, 30)
    c = a * x + b
    lhs = poly([(a, "x"), (b, "")])
    lines = ["Solve %s = %d." % (lhs, c)]
    if b > 0:
        lines.append("Subtract %d from both sides: %dx = %d - %d = %d." % (b, a, c, b, c - b))
    elif b < 0:
        lines.append("Add %d to both sides: %dx = %d + %d = %d." % (-b, a, c, -b, c - b))
    lines.append("Divide both sides by %d: x = %d / %s = %d." % (a, c - b, p(a), x))
    chk = "Check: %s * %s" % (a, p(x))
    if b != 0:
        chk += " %s %d" % ("+" if b > 0 else "-", abs(b))
        chk += " = %d %s %d" % (a * x, "+" if b > 0 else "-", abs(b))
    chk += " = %d." % c
    lines.append(chk)
    return lines


def math_linear2(rng):
    """ax + b = cx + d."""
    x = rng.int(-10, 12)
    a = rng.int(2, 9)
    c = rng.int(1, 9)
    while c == a:
        c = rng.int(1, 9)
    b = rng.int(-20, 20)
    d = a * x + b - c * x
    lines = ["Solve %s = %s." % (poly([(a, "x"), (b, "")]), poly([(c, "x"), (d, "")]))]
    k = a - c
    lines.append("Subtract %s from both sides: %s = %d." % (
        poly([(c, "x")]), poly([(k, "x"), (b, "")]), d))
    rhs = d - b
    if b != 0:
        lines.append("%s %d %s both sides: %s = %d." % (
            "Subtract" if b > 0 else "Add", abs(b), "from" if b > 0 else "to",
            poly([(k, "x")]), rhs))
    if k != 1:
        lines.append("Divide by %d: x = %d / %s = %d." % (k, rhs, p(k), x))
    else:
        lines.append("So x = %d." % x)
    lines.append("Check: %d * %s %s %d = %d and %d * %s %s %d = %d." % (
        a, p(x), "-" if b < 0 else "+", abs(b), a * x + b,
        c, p(x), "-" if d < 0 else "+", abs(d), c * x + d))
    return lines


def math_system(rng):
    while True:
        x, y = rng.int(-8, 9), rng.int(-8, 9)
        a1, b1, a2, b2 = rng.nonzero(-6, 7), rng.nonzero(-6, 7), rng.nonzero(-6, 7), rng.nonzero(-6, 7)
        det = a1 * b2 - a2 * b1
        if det != 0 and a1 != a2:
            break
    c1 = a1 * x + b1 * y
    c2 = a2 * x + b2 * y
    e1 = poly([(a1, "x"), (b1, "y")])
    e2 = poly([(a2, "x"), (b2, "y")])
    lines = ["Solve the system %s = %d and %s = %d." % (e1, c1, e2, c2)]
    # Eliminate x: multiply eq1 by a2 and eq2 by a1, subtract.
    m1 = [a1 * a2, b1 * a2, c1 * a2]
    m2 = [a2 * a1, b2 * a1, c2 * a1]
    lines.append("Multiply the first equation by %s: %s = %d." % (
        p(a2), poly([(m1[0], "x"), (m1[1], "y")]), m1[2]))
    lines.append("Multiply the second equation by %s: %s = %d." % (
        p(a1), poly([(m2[0], "x"), (m2[1], "y")]), m2[2]))
    ky = m1[1] - m2[1]
    kc = m1[2] - m2[2]
    lines.append("Subtract the second from the first: %s = %d." % (poly([(ky, "y")]), kc))
    lines.append("So y = %d / %s = %d." % (kc, p(ky), y))
    rest = c1 - b1 * y
    lines.append("Put y = %d into the first equation: %s + %s * %s = %d, so %s = %d - %s = %d." % (
        y, poly([(a1, "x")]), p(b1), p(y), c1, poly([(a1, "x")]), c1, p(b1 * y), rest))
    if a1 != 1:
        lines.append("x = %d / %s = %d." % (rest, p(a1), x))
    lines.append("Solution: x = %d, y = %d." % (x, y))
    return lines


def math_quadratic(rng):
    r1 = rng.int(-9, 9)
    r2 = rng.int(-9, 9)
    while r1 == 0 and r2 == 0:
        r2 = rng.int(-9, 9)
    s = r1 + r2
    pr = r1 * r2
    eq = poly([(1, "x^2"), (-s, "x"), (pr, "")])

    def factor(r):
        if r == 0:
            return "x"
        return "(x %s %d)" % ("-" if r > 0 else "+", abs(r))

    lines = ["Solve %s = 0." % eq]
    if r1 == r2:
        lines.append("We need two numbers with product %d and sum %d: %d and %d." % (pr, -s, -r1, -r2))
        lines.append("So %s = %s^2 = 0, and the only root is x = %d." % (eq, factor(r1), r1))
    else:
        lines.append("We need two numbers with product %d and sum %d: %d and %d." % (pr, -s, -r1, -r2))
        lines.append("So %s = %s%s = 0." % (eq, factor(r1), factor(r2)))
        lines.append("Therefore x = %d or x = %d." % (r1, r2))
        if rng.chance(50):
            lines.append("Check: %d + %s = %d and %d * %s = %d." % (r1, p(r2), s, r1, p(r2), pr))
    return lines


def math_fractions(rng):
    b, d = rng.int(2, 12), rng.int(2, 12)
    a, c = rng.int(1, 2 * b), rng.int(1, 2 * d)
    while gcd(a, b) != 1:
        a = rng.int(1, 2 * b)
    while gcd(c, d) != 1:
        c = rng.int(1, 2 * d)
    op = rng.choice(["+", "-", "*"])
    f1, f2 = Fraction(a, b), Fraction(c, d)
    lines = ["Compute %d/%d %s %d/%d." % (a, b, op, c, d)]
    if op in "+-":
        l = b * d // gcd(b, d)
        na, nc = a * (l // b), c * (l // d)
        raw = na + nc if op == "+" else na - nc
        lines.append("The common denominator is %d." % l)
        lines.append("%d/%d %s %d/%d = %d/%d %s %d/%d = %d/%d." % (a, b, op, c, d, na, l, op, nc, l, raw, l))
        res = Fraction(raw, l)
        if res.denominator != l and raw != 0:
            g = gcd(abs(raw), l)
            lines.append("Divide top and bottom by %d: %d/%d = %s." % (g, raw, l, frac(res)))
    else:
        raw_n, raw_d = a * c, b * d
        lines.append("%d/%d * %d/%d = %d/%d." % (a, b, c, d, raw_n, raw_d))
        res = Fraction(raw_n, raw_d)
        if res.denominator != raw_d:
            g = gcd(raw_n, raw_d)
            lines.append("Divide top and bottom by %d: %d/%d = %s." % (g, raw_n, raw_d, frac(res)))
    res = f1 + f2 if op == "+" else (f1 - f2 if op == "-" else f1 * f2)
    lines.append("Answer: %s." % frac(res))
    return lines


def math_percent(rng):
    pct = rng.choice([5, 10, 12, 15, 20, 25, 30, 40, 45, 50, 60, 75, 80])
    step = 100 // gcd(pct, 100)
    base = rng.int(max(1, 40 // step), 1200 // step) * step
    val = pct * base // 100
    assert pct * base % 100 == 0
    if rng.chance(50):
        return ["What is %d%% of %d?" % (pct, base),
                "%d%% of %d = %d * %d / 100 = %d / 100 = %d." % (pct, base, pct, base, pct * base, val)]
    price = base
    return ["A coat costs %d dollars and is marked down by %d%%. What is the new price?" % (price, pct),
            "The discount is %d * %d / 100 = %d dollars." % (pct, price, val),
            "The new price is %d - %d = %d dollars." % (price, val, price - val)]


def math_gcd(rng):
    g = rng.int(2, 30)
    a, b = g * rng.int(3, 40), g * rng.int(3, 40)
    if a < b:
        a, b = b, a
    if a == b:
        a += g
    lines = ["Find the greatest common divisor of %d and %d." % (a, b)]
    x, y = a, b
    while y:
        q, r = divmod(x, y)
        lines.append("%d = %d * %d + %d." % (x, q, y, r))
        x, y = y, r
    lines.append("The last nonzero remainder is %d, so gcd(%d, %d) = %d." % (x, a, b, x))
    if rng.chance(50):
        lines.append("Then lcm(%d, %d) = %d * %d / %d = %d." % (a, b, a, b, x, a * b // x))
    return lines


def math_factor(rng):
    primes = [2, 3, 5, 7, 11, 13]
    n = 1
    while True:
        n = 1
        for _ in range(rng.int(3, 6)):
            n *= rng.choice(primes[:rng.int(2, 6)])
        if n not in primes:
            break
    lines = ["Write %d as a product of primes." % n]
    m = n
    steps = []
    exps = []
    for q in primes:
        e = 0
        while m % q == 0:
            if m != q:
                steps.append("%d = %d * %d" % (m, q, m // q))
            m //= q
            e += 1
        if e:
            exps.append((q, e))
    lines.append(", ".join(steps) + ".")
    lines.append("So %d = %s." % (n, " * ".join(
        str(q) if e == 1 else "%d^%d" % (q, e) for q, e in exps)))
    return lines


def math_power(rng):
    b = rng.int(2, 9)
    e = rng.int(2, 6)
    lines = ["Compute %d^%d." % (b, e)]
    lines.append("%d^%d = %s = %d." % (b, e, " * ".join([str(b)] * e), b ** e))
    return lines


WORD_PROBLEMS = [
    ("A crate holds {a} jars. How many jars are in {b} crates?",
     "{b} * {a} = {ab}.", "There are {ab} jars."),
    ("A train travels at {a} kilometres per hour for {b} hours. How far does it go?",
     "distance = speed * time = {a} * {b} = {ab}.", "It travels {ab} kilometres."),
    ("A baker makes {a} loaves each day. How many loaves does she make in {b} days?",
     "{a} * {b} = {ab}.", "She makes {ab} loaves."),
    ("A garden has {b} rows with {a} plants in each row. How many plants are there?",
     "{b} * {a} = {ab}.", "There are {ab} plants."),
    ("Tickets cost {a} dollars each. What do {b} tickets cost?",
     "{b} * {a} = {ab}.", "They cost {ab} dollars."),
]


def math_word(rng):
    if rng.chance(70):
        q, w, ans = rng.choice(WORD_PROBLEMS)
        a, b = rng.int(6, 60), rng.int(3, 25)
        slots = {"a": str(a), "b": str(b), "ab": str(a * b)}
        return [fill(rng, q, slots), fill(rng, w, slots), fill(rng, ans, slots)]
    # sharing with remainder
    k = rng.int(3, 12)
    per = rng.int(4, 30)
    left = rng.int(0, k - 1)
    total = k * per + left
    lines = ["%d marbles are shared equally among %d children. How many does each child get, "
             "and how many are left over?" % (total, k),
             "%d * %d = %d and %d - %d = %d." % (k, per, k * per, total, k * per, left),
             "Each child gets %d marbles and %d %s left over." % (
                 per, left, "is" if left == 1 else "are")]
    return lines


def math_series(rng):
    a = rng.int(-5, 20)
    d = rng.nonzero(-4, 9)
    n = rng.int(5, 40)
    last = a + (n - 1) * d
    s = n * (a + last) // 2
    assert n * (a + last) % 2 == 0
    return ["Find the sum of the first %d terms of the arithmetic sequence %d, %d, %d, ..." % (
                n, a, a + d, a + 2 * d),
            "The common difference is %d, so the last term is %d + (%d - 1) * %s = %d." % (
                d, a, n, p(d), last),
            "The sum is %d * (%d + %s) / 2 = %d * %d / 2 = %d." % (n, a, p(last), n, a + last, s)]


def math_poly_eval(rng):
    a, b, c = rng.nonzero(-5, 6), rng.int(-9, 9), rng.int(-12, 12)
    x = rng.int(-5, 6)
    fx = a * x * x + b * x + c
    name = rng.choice(["p", "f", "g", "q"])
    pe = poly([(a, "x^2"), (b, "x"), (c, "")])
    lines = ["Evaluate %s(x) = %s at x = %d." % (name, pe, x)]
    parts = ["%d * %d" % (a, x * x)]
    vals = [a * x * x]
    if b:
        parts.append("%d * %s" % (b, p(x)))
        vals.append(b * x)
    if c:
        parts.append(p(c))
        vals.append(c)
    lines.append("x^2 = %d, so %s(%d) = %s = %s = %d." % (
        x * x, name, x, " + ".join(parts), " + ".join(p(v) for v in vals), fx))
    return lines


def math_expand(rng):
    a, b, c, d = rng.nonzero(-5, 6), rng.nonzero(-9, 9), rng.nonzero(-5, 6), rng.nonzero(-9, 9)
    f1 = "(%s)" % poly([(a, "x"), (b, "")])
    f2 = "(%s)" % poly([(c, "x"), (d, "")])
    lines = ["Expand %s%s." % (f1, f2)]
    lines.append("Multiply each term: %s." % poly(
        [(a * c, "x^2"), (a * d, "x"), (b * c, "x"), (b * d, "")]))
    lines.append("Collect like terms: %s." % poly([(a * c, "x^2"), (a * d + b * c, "x"), (b * d, "")]))
    return lines


def math_mean(rng):
    n = rng.int(3, 7)
    vals = [rng.int(1, 99) for _ in range(n)]
    if rng.chance(75):                        # mostly whole-number means
        vals[-1] += (-sum(vals)) % n
    s = sum(vals)
    m = Fraction(s, n)
    lines = ["Find the mean of %s." % ", ".join(str(v) for v in vals)]
    lines.append("The sum is %s = %d." % (" + ".join(str(v) for v in vals), s))
    if m.denominator == 1:
        lines.append("There are %d numbers, so the mean is %d / %d = %d." % (n, s, n, s // n))
    else:
        whole, rest = divmod(s, n)
        lines.append("There are %d numbers, so the mean is %d / %d = %s, or %d and %s." % (
            n, s, n, frac(m), whole, frac(Fraction(rest, n))))
    return lines


def math_square_trick(rng):
    t = rng.int(2, 9) * 10
    u = rng.int(1, 9)
    n = t + u
    return ["Compute %d^2 using (a + b)^2 = a^2 + 2ab + b^2." % n,
            "%d^2 = (%d + %d)^2 = %d^2 + 2 * %d * %d + %d^2 = %d + %d + %d = %d." % (
                n, t, u, t, t, u, u, t * t, 2 * t * u, u * u, n * n)]


def math_convert(rng):
    kind = rng.below(3)
    if kind == 0:
        h = rng.int(1, 9)
        mnt = rng.int(0, 59)
        return ["How many minutes are in %d hours and %d minutes?" % (h, mnt),
                "%d * 60 + %d = %d + %d = %d minutes." % (h, mnt, h * 60, mnt, h * 60 + mnt)]
    if kind == 1:
        km = rng.int(1, 40)
        m = rng.int(0, 999)
        return ["Convert %d km %d m to metres." % (km, m),
                "%d * 1000 + %d = %d metres." % (km, m, km * 1000 + m)]
    s = rng.int(100, 20000)
    h, r = divmod(s, 3600)
    mn, sec = divmod(r, 60)
    return ["Write %d seconds in hours, minutes and seconds." % s,
            "%d = %d * 3600 + %d, and %d = %d * 60 + %d." % (s, h, r, r, mn, sec),
            "So %d seconds is %d h %d min %d s." % (s, h, mn, sec)]


MATH_GENS = [(10, math_mul), (7, math_addsub), (7, math_div), (7, math_order), (9, math_linear),
             (6, math_linear2), (6, math_system), (7, math_quadratic), (8, math_fractions),
             (5, math_percent), (5, math_gcd), (5, math_factor), (4, math_power), (6, math_word),
             (4, math_series), (5, math_poly_eval), (5, math_expand), (4, math_mean),
             (3, math_square_trick), (4, math_convert)]


def make_math(rng):
    g = rng.weighted(MATH_GENS)
    lines = g(rng)
    if rng.chance(30):
        lines = ["Exercise %d. %s" % (rng.int(1, 60), lines[0])] + lines[1:]
    return "\n".join(lines)


# A self-check over the whole math file: every line segment made only of numbers,
# + - * / ^ and parentheses, when chained by " = ", must be one exact value.
def _eval_arith(s):
    import ast

    tree = ast.parse(s.replace("^", "**"), mode="eval")

    def ev(n):
        if isinstance(n, ast.Expression):
            return ev(n.body)
        if isinstance(n, ast.Constant) and isinstance(n.value, int):
            return Fraction(n.value)
        if type(n).__name__ == "Num":              # Python < 3.8
            return Fraction(n.n)
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub):
            return -ev(n.operand)
        if isinstance(n, ast.BinOp):
            l, r = ev(n.left), ev(n.right)
            if isinstance(n.op, ast.Add):
                return l + r
            if isinstance(n.op, ast.Sub):
                return l - r
            if isinstance(n.op, ast.Mult):
                return l * r
            if isinstance(n.op, ast.Div):
                return l / r
            if isinstance(n.op, ast.Pow):
                return l ** int(r)
        raise ValueError(s)

    return ev(tree)


def check_math(text):
    import re

    arith = re.compile(r"^[0-9+\-*/^() ]+$")
    tok = re.compile(r"^[0-9+\-*/^()]+$")
    OPS = ("+", "-", "*", "/", "^")
    LEADS = ("Compute", "Evaluate", "Check", "Finally", "Then", "then", "is")
    TRAILS = ("dollars", "metres", "minutes", "exactly")
    checked = 0
    for line in text.split("\n"):
        # split into clauses; take the longest arithmetic tail/head around each " = "
        for clause in re.split(r"[,;:]\s|\.\s|\.$|\band\b|\bso\b|\bSo\b", line):
            segs = [x.strip() for x in clause.split(" = ")]
            if len(segs) < 2:
                continue
            # keep the arithmetic tail of the first segment and head of the last one;
            # a tail or head cut next to an operator belongs to a longer, non-numeric
            # expression ("3x - 15"), so such a clause is skipped
            head = segs[0].split(" ")
            k = len(head)
            while k > 0 and tok.match(head[k - 1]):
                k -= 1
            tail = segs[-1].split(" ")
            j = 0
            while j < len(tail) and tok.match(tail[j]):
                j += 1
            first, last = head[k:], tail[:j]
            if (not first or not last or first[0] in OPS or last[-1] in OPS
                    or (k > 0 and head[k - 1] not in LEADS)
                    or (j < len(tail) and tail[j] not in TRAILS)):
                continue
            segs = [" ".join(first)] + segs[1:-1] + [" ".join(last)]
            if not all(arith.match(x) and x.count("(") == x.count(")") for x in segs):
                continue
            vals = [_eval_arith(x) for x in segs]
            if any(v != vals[0] for v in vals):
                raise AssertionError("math check failed: %r" % line)
            checked += 1
    return checked



def build_math():
    rng = domain_rng("math")
    docs = []
    size = 0
    seen = {}
    while size < TARGET_BYTES:
        doc = make_math(rng).strip("\n")
        if doc in seen:          # drop exact duplicates (possible for tiny documents)
            continue
        seen[doc] = True
        assert "\n\n" not in doc and doc.strip(), doc
        piece = doc + "\n\n"
        docs.append(piece)
        size += len(piece)
    text = "".join(docs)
    text.encode("ascii")        # raises if anything is not 7-bit ASCII
    return text, len(docs)


def main(argv):
    if len(argv) != 2:
        sys.stderr.write("usage: python3 data/make_demo.py OUTDIR\n")
        return 2
    out = argv[1]
    os.makedirs(out, exist_ok=True)
    text, ndocs = build_math()
    n = check_math(text)
    if n < 1000:
        raise AssertionError("math self-check covered only %d equalities" % n)
    data = text.encode("ascii")
    path = os.path.join(out, "math.txt")
    with open(path, "wb") as f:
        f.write(data)
    sys.stderr.write("%-15s %9d bytes %6d documents (self-check: %d equalities)\n" % (
        "math.txt", len(data), ndocs, n))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
