#!/bin/sh
# test_indexed_interop.sh - moekit's Megatron indexed datasets against an independent
# implementation (tests/megatron_ref.py, numpy + struct from Megatron's published layout):
# each reads what the other writes, and both writers produce the same bytes.
tool=$top_builddir/tests/indexed_tool
ref=$srcdir/tests/megatron_ref.py
py=/usr/bin/python3
if ! "$py" -c 'import numpy' >/dev/null 2>&1; then
  echo "1..0 # SKIP numpy not available"
  exit 0
fi
tmp=$(mktemp -d) || exit 99
trap 'rm -rf "$tmp"' EXIT
n=0
fails=0
# check NAME COMMAND...: one TAP line; on failure the command's stderr as diagnostics.
check() {
  what=$1; shift
  n=$((n + 1))
  if "$@" 2>"$tmp/err"; then
    echo "ok $n - $what"
  else
    echo "not ok $n - $what"
    sed 's/^/# /' "$tmp/err" | head -10
    fails=$((fails + 1))
  fi
}
same() { cmp "$1" "$2" >&2; }

# Token ids across each dtype's range; empty documents in the middle and at the end.
printf '0 1 65535\n\n7 7 7 7\n65534\n32768 255 256\n\n' >"$tmp/u16.txt"
printf '0 1 65535 65536 100000\n\n2147483646\n42\n16777216 3\n\n' >"$tmp/i32.txt"
: >"$tmp/none.txt"

check "megatron_ref.py selftest" sh -c "'$py' '$ref' selftest >'$tmp/selftest.out'"
for case in "u16 uint16 65536" "i32 int32 2147483647" "none uint16 100"; do
  set -- $case
  name=$1 dtype=$2 vocab=$3
  # (a) moekit writes, the reference reads.
  check "$name: indexed_tool write $dtype" \
    sh -c "'$tool' write '$tmp/c_$name' $dtype $vocab <'$tmp/$name.txt'"
  check "$name: megatron_ref.py reads moekit's dataset" \
    sh -c "'$py' '$ref' read '$tmp/c_$name' >'$tmp/c_$name.out'"
  check "$name: ... and gets the documents back" same "$tmp/$name.txt" "$tmp/c_$name.out"
  # (b) the reference writes, moekit reads.
  check "$name: megatron_ref.py write $dtype" \
    sh -c "'$py' '$ref' write '$tmp/p_$name' $dtype <'$tmp/$name.txt'"
  check "$name: indexed_tool reads the reference's dataset" \
    sh -c "'$tool' read '$tmp/p_$name' >'$tmp/p_$name.out'"
  check "$name: ... and gets the documents back" same "$tmp/$name.txt" "$tmp/p_$name.out"
  # (c) the same bytes from both writers.
  check "$name: identical .bin" same "$tmp/c_$name.bin" "$tmp/p_$name.bin"
  check "$name: identical .idx" same "$tmp/c_$name.idx" "$tmp/p_$name.idx"
done

# A token beyond the vocabulary: the C writer fails with MK_ERR_INPUT (3) and leaves nothing.
n=$((n + 1))
printf '1 2\n100\n' | "$tool" write "$tmp/over" uint16 100 2>"$tmp/err"
rc=$?
if [ "$rc" -eq 3 ] && grep -q 'outside the vocabulary' "$tmp/err" &&
   ! ls "$tmp"/over.* >/dev/null 2>&1; then
  echo "ok $n - token 100 with vocab 100: exit 3, no files left"
else
  echo "not ok $n - token 100 with vocab 100: exit $rc (wanted 3, no files)"
  sed 's/^/# /' "$tmp/err" | head -5
  fails=$((fails + 1))
fi

echo "1..$n"
[ "$fails" -eq 0 ]
