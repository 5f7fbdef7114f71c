#!/bin/sh
# test_tiktoken.sh - tiktoken parity: tokenizer_tool trains a BPE ranks file on the demo
# corpus, tiktoken loads it (load_tiktoken_bpe, GPT-2 pattern) and must encode the demo files
# and UTF-8 snippets (German, CJK, emoji, other scripts, whitespace runs, long words) to
# exactly the ids moekit's encoder gives. Skipped when no python can import tiktoken.
tool=${TOKENIZER_TOOL:-$top_builddir/tests/tokenizer_tool}
py=
for p in python3 /usr/bin/python3; do
  if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import tiktoken' >/dev/null 2>&1; then
    py=$p
    break
  fi
done
if [ -z "$py" ]; then echo "1..0 # SKIP tiktoken not installed"; exit 0; fi
tmp=$(mktemp -d) || exit 99
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/snippets" && "$py" "$srcdir/tests/tokenizer_tiktoken.py" snippets "$tmp/snippets" || exit 99
if ! "$tool" train 2048 "$tmp/demo.ranks" "$srcdir"/data/demo/*.txt >"$tmp/train.log" 2>&1; then
  echo "not ok 1 - tokenizer_tool trains a 2048-rank vocabulary on the demo corpus"
  sed 's/^/# /' "$tmp/train.log"
  echo "1..1"
  exit 1
fi
sed 's/^/# /' "$tmp/train.log"
set --
n=0
for f in "$srcdir"/data/demo/*.txt "$tmp"/snippets/*.txt; do
  n=$((n + 1))
  ids=$tmp/$n.ids
  if ! "$tool" encode "$tmp/demo.ranks" "$f" >"$ids" 2>"$tmp/encode.err"; then
    { echo ERROR; cat "$tmp/encode.err"; } >"$ids"
  fi
  set -- "$@" "$f" "$ids"
done
"$py" "$srcdir/tests/tokenizer_tiktoken.py" compare "$tmp/demo.ranks" "$@"
