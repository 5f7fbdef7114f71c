#!/usr/bin/python3
"""megatron_ref.py - an independent reader and writer of Megatron-LM indexed datasets
(MMIDIDX version 1, prefix.bin + prefix.idx), written from Megatron's published layout
(megatron/core/datasets/indexed_dataset.py) with numpy and struct only, to check moekit's C
implementation against something that shares none of its code.

.idx, little-endian, packed: magic b"MMIDIDX\\x00\\x00", uint64 version 1, uint8 dtype code,
uint64 sequence_count S, uint64 document_count (D+1), int32 sequence_lengths[S], int64
sequence_pointers[S] (byte offsets into .bin), int64 document_indices[D+1], optionally int8
sequence_modes[S]. .bin: the tokens.

Text format (stdin of write, stdout of read): one document per line, token ids separated by
single spaces; an empty line is an empty document.

  megatron_ref.py read PREFIX
  megatron_ref.py write PREFIX DTYPE < docs.txt      DTYPE: uint8 int8 int16 int32 int64 uint16
  megatron_ref.py selftest
"""
import os
import struct
import sys
import tempfile

import numpy as np

MAGIC = b"MMIDIDX\x00\x00"
# Megatron's DType codes. 6 and 7 (float64, float32) exist in the format but hold no ids.
CODES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64,
         6: np.float64, 7: np.float32, 8: np.uint16}
NAMES = {"uint8": 1, "int8": 2, "int16": 3, "int32": 4, "int64": 5, "uint16": 8}


class FormatError(Exception):
    pass


def read_dataset(prefix):
    """Return (dtype code, list of documents, each a list of int token ids)."""
    with open(prefix + ".idx", "rb") as f:
        idx = f.read()
    if len(idx) < 34:
        raise FormatError("%s.idx: %d bytes, shorter than the header" % (prefix, len(idx)))
    if idx[:9] != MAGIC:
        raise FormatError("%s.idx: bad magic" % prefix)
    (version,) = struct.unpack_from("<Q", idx, 9)
    if version != 1:
        raise FormatError("%s.idx: version %d" % (prefix, version))
    (code,) = struct.unpack_from("<B", idx, 17)
    if code not in CODES or code in (6, 7):
        raise FormatError("%s.idx: dtype code %d is not an integer type" % (prefix, code))
    seq_count, doc_count = struct.unpack_from("<QQ", idx, 18)
    # Python integers do not overflow, so the exact size can simply be computed.
    base = 34 + 4 * seq_count + 8 * seq_count + 8 * doc_count
    if len(idx) not in (base, base + seq_count):
        raise FormatError("%s.idx: %d bytes, expected %d" % (prefix, len(idx), base))
    off = 34
    lengths = np.frombuffer(idx, dtype="<i4", count=seq_count, offset=off)
    off += 4 * seq_count
    pointers = np.frombuffer(idx, dtype="<i8", count=seq_count, offset=off)
    off += 8 * seq_count
    doc_idx = np.frombuffer(idx, dtype="<i8", count=doc_count, offset=off)
    if doc_count < 1 or doc_idx[0] != 0 or doc_idx[-1] != seq_count \
            or np.any(np.diff(doc_idx) < 0):
        raise FormatError("%s.idx: bad document_indices" % prefix)
    dt = np.dtype(CODES[code]).newbyteorder("<")
    with open(prefix + ".bin", "rb") as f:
        binary = f.read()
    seqs = []
    # Follow the pointers, as Megatron's reader does, instead of assuming contiguity.
    for length, ptr in zip(lengths.tolist(), pointers.tolist()):
        if length < 0 or ptr < 0 or ptr + length * dt.itemsize > len(binary):
            raise FormatError("%s: sequence outside .bin" % prefix)
        seqs.append(np.frombuffer(binary, dtype=dt, count=length, offset=ptr).tolist())
    docs = []
    for j in range(doc_count - 1):
        doc = []
        for s in seqs[doc_idx[j]:doc_idx[j + 1]]:
            doc.extend(s)
        docs.append(doc)
    return code, docs


def write_dataset(prefix, code, docs):
    """Write docs (lists of ints) as one sequence per document, like Megatron's builder
    without sentence splitting."""
    dt = np.dtype(CODES[code]).newbyteorder("<")
    info = np.iinfo(dt)
    lengths, chunks = [], []
    for k, doc in enumerate(docs):
        a = np.array(doc, dtype=np.int64)
        if a.size and (a.min() < max(info.min, 0) or a.max() > info.max):
            raise FormatError("document %d: token outside %s" % (k, dt.name))
        chunks.append(a.astype(dt).tobytes())
        lengths.append(a.size)
    lengths = np.array(lengths, dtype="<i4")
    pointers = np.zeros(len(lengths), dtype="<i8")
    if len(lengths) > 1:
        pointers[1:] = np.cumsum(lengths[:-1].astype(np.int64)) * dt.itemsize
    doc_idx = np.arange(len(lengths) + 1, dtype="<i8")
    with open(prefix + ".bin", "wb") as f:
        for c in chunks:
            f.write(c)
    with open(prefix + ".idx", "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<B", code))
        f.write(struct.pack("<Q", len(lengths)))
        f.write(struct.pack("<Q", len(doc_idx)))
        f.write(lengths.tobytes())
        f.write(pointers.tobytes())
        f.write(doc_idx.tobytes())


def parse_docs(text):
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line does not start a document
    return [[int(t) for t in line.split()] for line in lines]


def format_docs(docs):
    return "".join(" ".join(str(t) for t in doc) + "\n" for doc in docs)


def selftest():
    fails = 0

    def check(cond, what):
        nonlocal fails
        print("%s - %s" % ("ok" if cond else "FAILED", what))
        fails += 0 if cond else 1

    docs = [[0, 1, 65535], [], [7, 7, 7], [], [42]]
    with tempfile.TemporaryDirectory() as tmp:
        p = os.path.join(tmp, "d")
        write_dataset(p, 8, docs)
        idx = open(p + ".idx", "rb").read()
        check(len(idx) == 34 + 12 * 5 + 8 * 6, "uint16 .idx size")
        check(idx[:9] == MAGIC and idx[17] == 8, "magic and dtype code")
        check(struct.unpack_from("<QQ", idx, 18) == (5, 6), "counts")
        check(struct.unpack_from("<5i", idx, 34) == (3, 0, 3, 0, 1), "sequence_lengths")
        check(struct.unpack_from("<5q", idx, 54) == (0, 6, 6, 12, 12), "sequence_pointers")
        check(struct.unpack_from("<6q", idx, 94) == (0, 1, 2, 3, 4, 5), "document_indices")
        check(open(p + ".bin", "rb").read() == struct.pack("<7H", 0, 1, 65535, 7, 7, 7, 42),
              ".bin bytes")
        check(read_dataset(p) == (8, docs), "uint16 round trip")
        big = [[0, 100000, 2147483646], [], [65536]]
        write_dataset(p, 4, big)
        check(read_dataset(p) == (4, big), "int32 round trip")
        write_dataset(p, 8, [])
        check(os.path.getsize(p + ".idx") == 42 and os.path.getsize(p + ".bin") == 0,
              "empty dataset sizes")
        check(read_dataset(p) == (8, []), "empty dataset round trip")
        write_dataset(p, 8, docs)
        with open(p + ".idx", "ab") as f:
            f.write(b"\x00" * 5)  # sequence_modes
        check(read_dataset(p) == (8, docs), "accepts sequence_modes")
        with open(p + ".idx", "r+b") as f:
            f.seek(9)
            f.write(struct.pack("<Q", 2))
        try:
            read_dataset(p)
            check(False, "rejects version 2")
        except FormatError:
            check(True, "rejects version 2")
        check(parse_docs("1 2\n\n3") == [[1, 2], [], [3]] and parse_docs("") == []
              and parse_docs("\n") == [[]], "text parsing")
        check(format_docs([[1, 2], []]) == "1 2\n\n", "text formatting")
    return 1 if fails else 0


def main(argv):
    if len(argv) == 3 and argv[1] == "read":
        _, docs = read_dataset(argv[2])
        sys.stdout.write(format_docs(docs))
        return 0
    if len(argv) == 4 and argv[1] == "write" and argv[3] in NAMES:
        write_dataset(argv[2], NAMES[argv[3]], parse_docs(sys.stdin.read()))
        return 0
    if len(argv) == 2 and argv[1] == "selftest":
        return selftest()
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except (FormatError, OSError, ValueError) as e:
        sys.stderr.write("megatron_ref.py: error: %s\n" % e)
        sys.exit(3)
