#!/usr/bin/env python3
"""bench_tokenize.py RANKS FILE... - tiktoken's single-thread encode speed on the files with
a moekit ranks file (GPT-2 pattern, encode_ordinary, best of 3), for make bench; prints
"tiktoken: MB/s=... tokens/s=..." to compare with "tokenizer_tool bench RANKS FILE...".
The files must be UTF-8 (tiktoken takes str)."""
import sys
import time


def main(argv):
    if len(argv) < 3:
        sys.stderr.write(__doc__ + "\n")
        return 2
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    pattern = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    enc = tiktoken.Encoding(name="moekit", pat_str=pattern,
                            mergeable_ranks=load_tiktoken_bpe(argv[1]), special_tokens={})
    raws = [open(path, "rb").read() for path in argv[2:]]
    texts = [raw.decode("utf-8") for raw in raws]
    nbytes = sum(len(raw) for raw in raws)
    best, ntokens = float("inf"), 0
    for _ in range(3):
        t0 = time.perf_counter()
        ntokens = sum(len(enc.encode_ordinary(text)) for text in texts)
        best = min(best, time.perf_counter() - t0)
    print("tiktoken: MB/s=%.2f tokens/s=%.0f" % (nbytes / best / 1e6, ntokens / best))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
