#!/usr/bin/env python3
"""dataset_roundtrip.py DATASET NAME=FILE... - check a moe-shard dataset against its inputs
without moekit code: read every shard with a reader written from Megatron-LM's published
MMIDIDX v1 layout, decode (byte-level, or through the tiktoken ranks file), split at the
end-of-document token, and compare with the input files split into documents by the rule of
docs/dataset-format.md (blank-line separated, last newline dropped, empty documents skipped).
Also checks the manifest's counts and SHA-256 hashes. Prints TAP."""
import base64, collections, hashlib, json, os, struct, sys

import numpy as np

DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 8: np.uint16}


def read_megatron(prefix):
    with open(prefix + ".idx", "rb") as f:
        idx = f.read()
    assert idx[:9] == b"MMIDIDX\x00\x00", "bad magic"
    version, = struct.unpack_from("<Q", idx, 9)
    assert version == 1
    code = idx[17]
    nseq, ndoc = struct.unpack_from("<QQ", idx, 18)
    off = 34
    lengths = np.frombuffer(idx, np.int32, nseq, off); off += 4 * nseq
    pointers = np.frombuffer(idx, np.int64, nseq, off); off += 8 * nseq
    docidx = np.frombuffer(idx, np.int64, ndoc, off)
    assert docidx[0] == 0 and docidx[-1] == nseq
    data = np.fromfile(prefix + ".bin", DTYPES[code])
    size = np.dtype(DTYPES[code]).itemsize
    return [data[p // size: p // size + n].astype(np.int64) for p, n in zip(pointers, lengths)]


def split_docs(raw):
    docs, cur = [], []
    for line in raw.split(b"\n"):
        if line == b"":
            if cur:
                docs.append(b"\n".join(cur))
            cur = []
        else:
            cur.append(line)
    if cur:
        docs.append(b"\n".join(cur))
    return docs


def main():
    ds, specs = sys.argv[1], sys.argv[2:]
    with open(os.path.join(ds, "manifest.json")) as f:
        man = json.load(f)
    tok = man["tokenizer"]
    eod = tok["eod"]
    if tok["kind"] == "byte":
        table = [bytes([i]) for i in range(256)]
    else:
        table = {}
        with open(os.path.join(ds, tok["ranks_file"]), "rb") as f:
            for line in f:
                b64, rank = line.split()
                table[int(rank)] = base64.b64decode(b64)
    n = 0
    fails = 0

    def ok(cond, what):
        nonlocal n, fails
        n += 1
        fails += not cond
        print(("ok" if cond else "not ok") + " %d - %s" % (n, what))

    domains = {d["name"]: d for d in man["domains"]}
    for spec in specs:
        name, path = spec.split("=", 1)
        d = domains.get(name)
        ok(d is not None, "%s: domain in the manifest" % name)
        if d is None:
            continue
        if path.endswith(".jsonl"):
            want = collections.Counter(
                t for t in (json.loads(l)["text"].encode("utf-8", "surrogatepass")
                            for l in open(path, "rb").read().split(b"\n") if l.strip()) if t)
        else:
            want = collections.Counter(split_docs(open(path, "rb").read()))
        got = collections.Counter()
        counts_ok, hashes_ok = True, True
        for split in ("train", "val"):
            s = d["splits"][split]
            ndocs = ntok = 0
            for sh in s["shards"]:
                prefix = os.path.join(ds, sh["prefix"])
                for ext, key in ((".bin", "bin_sha256"), (".idx", "idx_sha256")):
                    hashes_ok &= hashlib.sha256(open(prefix + ext, "rb").read()).hexdigest() == sh[key]
                for seq in read_megatron(prefix):
                    ndocs += 1
                    ntok += len(seq)
                    counts_ok &= len(seq) > 0 and int(seq[-1]) == eod and eod not in seq[:-1]
                    got[b"".join(table[int(t)] for t in seq[:-1])] += 1
            counts_ok &= ndocs == s["documents"] and ntok == s["tokens"]
        ok(counts_ok, "%s: documents end with EOD; counts match the manifest" % name)
        ok(hashes_ok, "%s: shard SHA-256 match the manifest" % name)
        ok(got == want, "%s: all %d documents decode back byte-identical (%s)" % (name, sum(want.values()), tok["kind"]))
        ins = d["inputs"][0]
        ok(ins["sha256"] == hashlib.sha256(open(path, "rb").read()).hexdigest(), "%s: input hash recorded" % name)
    print("1..%d" % n)
    sys.exit(1 if fails else 0)


if __name__ == "__main__":
    main()
