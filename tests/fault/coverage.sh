#!/bin/sh
# coverage.sh - T18 (make coverage): branch coverage of the parsers and the checkpoint code
# after make check, and the list of their error returns that no test reaches.
#   ./configure CFLAGS='--coverage -O0 -g' LDFLAGS=--coverage ... && make && make coverage
# COVERAGE_TESTS='tests/a.sh tests/b' runs only those tests (default: all of make check);
# COVERAGE_NOCHECK=1 reports on the counters already there. Needs gcovr (Debian: gcovr).
: "${top_builddir:=.}" "${srcdir:=.}"
out=${COVERAGE_OUT:-coverage}
files='mk_(config|indexed|dataset|corpus|bpe|tokenizer|ckpt)\.c'
command -v gcovr >/dev/null || { echo "coverage: needs gcovr (apt-get install gcovr)" >&2; exit 2; }
if ! ls "$top_builddir"/lib/.libs/*.gcno >/dev/null 2>&1; then
  echo "coverage: not a coverage build; configure with CFLAGS='--coverage -O0 -g' LDFLAGS=--coverage" >&2
  exit 2
fi
mkdir -p "$out"
if [ "${COVERAGE_NOCHECK:-0}" != 1 ]; then
  find "$top_builddir" -name '*.gcda' -exec rm -f {} +
  ${MAKE:-make} -C "$top_builddir" check ${COVERAGE_TESTS:+TESTS="$COVERAGE_TESTS"} >"$out/check.log" 2>&1 ||
    echo "coverage: make check failed (see $out/check.log); reporting anyway" >&2
fi
# one report per source file, the library's objects and those compiled into alloc_loop merged
gcovr -r "$srcdir" --object-directory "$top_builddir" -f "$srcdir/lib/$files" --exclude-unreachable-branches \
  --json "$out/coverage.json" --txt "$out/lines.txt" --branches >"$out/branches.txt" 2>"$out/gcovr.err" ||
  { cat "$out/gcovr.err" >&2; exit 1; }
python3 - "$out/coverage.json" "$srcdir" <<'PY' | tee "$out/summary.txt"
import json, re, sys, os
data = json.load(open(sys.argv[1]))
err = re.compile(r'MK_FAIL\(|return MK_ERR_|rc = MK_ERR_|= MK_ERR_[A-Z]+;|MK_ERR_[A-Z]+ :')
tb = tt = 0
rows, unreached = [], []
for f in sorted(data['files'], key=lambda f: f['file']):
    src = open(os.path.join(sys.argv[2], f['file'])).read().split('\n') if not os.path.isabs(f['file']) else open(f['file']).read().split('\n')
    b = t = 0
    e_all = e_hit = 0
    for ln in f['lines']:
        for br in ln.get('branches', []):
            b += 1
            t += br['count'] > 0
        if ln.get('gcovr/noncode'):
            continue
        text = src[ln['line_number'] - 1] if ln['line_number'] <= len(src) else ''
        if err.search(text):
            e_all += 1
            if ln['count'] > 0:
                e_hit += 1
            else:
                unreached.append('%s:%d: %s' % (os.path.basename(f['file']), ln['line_number'], text.strip()[:110]))
    tb += b; tt += t
    rows.append((os.path.basename(f['file']), t, b, e_hit, e_all))
print('| file | branches taken | branch coverage | error returns reached |')
print('|---|---|---|---|')
for name, t, b, eh, ea in rows:
    print('| %s | %d / %d | %.1f%% | %d / %d |' % (name, t, b, 100.0 * t / b if b else 100.0, eh, ea))
ea = sum(r[4] for r in rows); eh = sum(r[3] for r in rows)
print('| **all** | %d / %d | **%.1f%%** | %d / %d (%.1f%%) |' % (tt, tb, 100.0 * tt / tb if tb else 100.0, eh, ea, 100.0 * eh / ea if ea else 100.0))
print()
print('Error returns no test reaches (%d):' % len(unreached))
for u in unreached:
    print('- `%s`' % u)
PY
