#!/usr/bin/env python3
"""tokenizer_tiktoken.py - tiktoken parity for moekit's BPE (driven by test_tiktoken.sh).

  tokenizer_tiktoken.py snippets DIR
      write the UTF-8 snippets as DIR/NAME.txt (tiktoken takes str, so only valid UTF-8
      can be compared; moekit's handling of invalid bytes is tested in test_tokenizer.c)
  tokenizer_tiktoken.py compare RANKS TEXT IDS [TEXT IDS ...]
      load RANKS with tiktoken.load.load_tiktoken_bpe, encode each TEXT with
      Encoding.encode_ordinary under the GPT-2 pattern and compare with the ids moekit wrote
      to IDS (one line, space-separated); prints TAP
"""
import os
import sys

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

SNIPPETS = {
    "german": "Größenwahn über Äpfel und Öl: schön, dass es Straßen gibt. Übermäßig?\n",
    "cjk": "日本語の文章です。中文句子，还有한국어 문장도 있습니다.\n",
    "emoji": "Thumbs 👍🏽, family 👨\u200d👩\u200d👧\u200d👦, flag 🇩🇪, heart ❤️!!\n",
    "scripts": "Привет, мир! Γειά σου κόσμε. مرحبا بالعالم नमस्ते दुनिया สวัสดี\n",
    "contractions": "I'll've don't they're WE'RE it's 'tis o'clock rock'n'roll\n",
    "whitespace": "a  b\t\tc\n\n\nd   \n  e \r\n f\u00a0g\u2003h\u3000i   ",
    "numbers": "3.14159, 1e-9, 1,000,000 = $5.00 (approx.) -> 42%; ٣٤٥ ௫ ½\n",
    "combining": "e\u0301te\u0301 cafe\u0301 A\u030a ग्र क्षि\n",
    "long-word": "thequickbrownfoxjumpsoverthelazydog" * 120 + "\n",
    "long-space": " " * 1500 + "x" + "\n" * 700 + "y\t\t\t" * 200,
    "code": "int main(void) {\n    for (int i = 0; i < n; i++) x[i] += 2 * y[i]; // axpy\n}\n",
    "empty": "",
}


def write_snippets(out_dir):
    for name, text in SNIPPETS.items():
        with open(os.path.join(out_dir, name + ".txt"), "wb") as f:
            f.write(text.encode("utf-8"))


def compare(ranks_path, pairs):
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    checks = []  # (ok, description, diagnostics)
    ranks = load_tiktoken_bpe(ranks_path)
    enc = tiktoken.Encoding(name="moekit", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                            special_tokens={})
    checks.append((len(ranks) > 256, "tiktoken loads moekit's ranks file (%d ranks)" % len(ranks), []))
    for text_path, ids_path in pairs:
        name = os.path.join(os.path.basename(os.path.dirname(text_path)), os.path.basename(text_path))
        with open(text_path, "rb") as f:
            raw = f.read()
        with open(ids_path) as f:
            got_text = f.read()
        if got_text.startswith("ERROR"):
            checks.append((False, "moekit encodes %s" % name, got_text.splitlines()[1:]))
            continue
        got = [int(x) for x in got_text.split()]
        want = enc.encode_ordinary(raw.decode("utf-8"))
        diag = []
        if got != want:
            i = next((k for k, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            diag = ["first difference at id %d of %d (tiktoken %d)" % (i, len(got), len(want)),
                    "moekit   %s" % got[max(0, i - 3):i + 4],
                    "tiktoken %s" % want[max(0, i - 3):i + 4],
                    "tiktoken pieces %r" % [enc.decode_single_token_bytes(t) for t in want[max(0, i - 3):i + 4]]]
        elif enc.decode_bytes(got) != raw:
            diag = ["tiktoken's decode of moekit's ids differs from the text"]
        checks.append((not diag, "tiktoken encodes %s (%d bytes) to moekit's %d ids"
                       % (name, len(raw), len(got)), diag))
    for n, (ok, what, diag) in enumerate(checks, 1):
        print("%sok %d - %s" % ("" if ok else "not ", n, what))
        for line in diag:
            print("# " + line)
    print("1..%d" % len(checks))
    return 0 if all(ok for ok, _, _ in checks) else 1


def main(argv):
    if len(argv) == 3 and argv[1] == "snippets":
        write_snippets(argv[2])
        return 0
    if len(argv) >= 5 and argv[1] == "compare" and len(argv) % 2 == 1:
        return compare(argv[2], list(zip(argv[3::2], argv[4::2])))
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
