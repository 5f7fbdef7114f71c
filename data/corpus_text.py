#!/usr/bin/python3
"""corpus_text.py - turn files extracted from Debian packages into moekit corpus domains.

Called by data/make_corpus.sh; standard library only. Subcommands:

    corpus_text.py handbook HTMLROOT LANG OUT TARGET
        Prose of "The Debian Administrator's Handbook" (package debian-handbook).
        HTMLROOT is .../usr/share/doc/debian-handbook/html, LANG e.g. en-US or de-DE.
    corpus_text.py code INCLUDEDIR OUT TARGET
        C source: the *.h files of INCLUDEDIR (package libstb-dev) in sorted order.
    corpus_text.py pciids FILE OUT TARGET
        Records: the PCI ID database (package pci.ids), one vendor per document.
    corpus_text.py check FILE...
        Check the corpus format of domain files and print their byte statistics.

Every domain file is UTF-8 text with '\\n' line ends and no NUL or other control
characters except '\\n' and (in code and records) '\\t'. No line ends in white space, no
document contains a blank line, and every document, the last one included, is followed
by exactly one blank line. Documents are taken in a fixed order (see each subcommand)
and a domain stops at the first document boundary at or past TARGET bytes.

The output is a pure function of the input files: file lists are sorted or follow the
book's own "next" links, nothing is random, and no set or dict order is relied on.
"""

import html.parser
import os
import re
import sys

MIN_BYTES = 500_000
MAX_BYTES = 2_000_000

# Unicode white space (incl. no-break and thin spaces) that prose normalises to " ";
# written out so that the result does not depend on the Python version's str.isspace.
WS = re.compile("[ \t\n\r\f\v\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+")
# invisible characters that are simply dropped: soft hyphen, zero-width space/joiners, BOM
INVISIBLE = re.compile("[\u00ad\u200b\u200c\u200d\u2060\ufeff]")
# control characters that must never reach a domain file (tab and newline are allowed)
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def die(msg):
    sys.stderr.write("corpus_text.py: %s\n" % msg)
    sys.exit(1)


def write_domain(docs, out, target):
    """Write documents in order until the file reaches `target` bytes."""
    parts = []
    size = 0
    for doc in docs:
        if size >= target:
            break
        if not doc or "\n\n" in doc or doc.startswith("\n") or doc.endswith("\n"):
            die("%s: malformed document %r" % (out, doc[:80]))
        if CONTROL.search(doc):
            die("%s: control character in document %r" % (out, doc[:80]))
        for line in doc.split("\n"):
            if line != line.rstrip() or not line.strip():
                die("%s: bad line %r" % (out, line[:80]))
        piece = (doc + "\n\n").encode("utf-8")
        parts.append(piece)
        size += len(piece)
    if not MIN_BYTES <= size <= MAX_BYTES:
        die("%s: %d bytes, outside %d..%d" % (out, size, MIN_BYTES, MAX_BYTES))
    with open(out, "wb") as f:
        f.write(b"".join(parts))
    sys.stderr.write("%-15s %9d bytes %6d documents\n" % (os.path.basename(out), size,
                                                           len(parts)))


def read_text(path):
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        die("%s: not UTF-8 (%s)" % (path, e))
    return text.replace("\r\n", "\n").replace("\r", "\n")


# --------------------------------------------------------------------------------------
# Prose from the Publican/DocBook HTML of debian-handbook.
# --------------------------------------------------------------------------------------

# Block elements: text before and after them belongs to different paragraphs.
BLOCK = frozenset("address blockquote br dd div dl dt h1 h2 h3 h4 h5 h6 hr li ol p "
                  "section td th tr ul".split())
HEADING = frozenset("h1 h2 h3 h4 h5 h6".split())
# Whole subtrees that are left out: code and screen listings, tables, figures, examples,
# navigation, tables of contents, the title page's legal notice.
SKIP_TAGS = frozenset("head script style pre table".split())
SKIP_CLASSES = frozenset("docnav toc example informalexample figure informalfigure "
                         "mediaobject table informaltable calloutlist legalnotice "
                         "indexterm".split())
SKIP_IDS = frozenset(["banner", "title"])
VOID = frozenset("area base br col embed hr img input link meta param source track wbr".split())


class PageParser(html.parser.HTMLParser):
    """Collects (kind, text) blocks of one page; kind is 'h' (heading) or 'p'."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.blocks = []
        self.buf = []
        self.kind = "p"
        self.skip_depth = 0       # >0 while inside a skipped subtree
        self.stack = []           # open elements inside the skipped subtree
        self.next_href = None

    def flush(self):
        text = INVISIBLE.sub("", "".join(self.buf))
        text = WS.sub(" ", text).strip()
        if text:
            self.blocks.append((self.kind, text))
        self.buf = []
        self.kind = "p"

    def handle_starttag(self, tag, attrs):
        a = {}
        for k, v in attrs:
            a[k] = v or ""
        if tag == "link" and a.get("rel") == "next":
            self.next_href = a.get("href")
        if tag in VOID and tag not in BLOCK and tag not in SKIP_TAGS:
            return
        if self.skip_depth:
            if tag not in VOID:
                self.stack.append(tag)
            return
        classes = a.get("class", "").split()
        if (tag in SKIP_TAGS or a.get("id") in SKIP_IDS
                or any(c in SKIP_CLASSES for c in classes)):
            self.flush()
            if tag not in VOID:
                self.skip_depth = 1
                self.stack = [tag]
            return
        if tag in BLOCK:
            self.flush()
            if tag in HEADING:
                self.kind = "h"

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if self.skip_depth and self.stack and self.stack[-1] == tag:
            self.handle_endtag(tag)

    def handle_endtag(self, tag):
        if self.skip_depth:
            # pop back to the matching element (tolerates unclosed children)
            if tag in self.stack:
                while self.stack:
                    if self.stack.pop() == tag:
                        break
                if not self.stack:
                    self.skip_depth = 0
            return
        if tag in BLOCK:
            self.flush()

    def handle_data(self, data):
        if not self.skip_depth:
            self.buf.append(data)


def parse_page(path):
    p = PageParser()
    p.feed(read_text(path))
    p.close()
    p.flush()
    return p.blocks, p.next_href


def handbook_pages(langdir):
    """Pages in reading order: follow the rel="next" links from index.html."""
    order = []
    seen = {}
    blocks_of = {}
    _, href = parse_page(os.path.join(langdir, "index.html"))
    while href:
        if "#" in href or "/" in href or href in seen:
            die("%s: unexpected next link %r" % (langdir, href))
        seen[href] = True
        blocks, nxt = parse_page(os.path.join(langdir, href))
        order.append(href)
        blocks_of[href] = blocks
        href = nxt
    all_pages = sorted(f for f in os.listdir(langdir) if f.endswith(".html"))
    missing = [f for f in all_pages if f != "index.html" and f not in seen]
    if missing:
        die("%s: pages not reached by the next links: %s" % (langdir, " ".join(missing)))
    return order, blocks_of


# Function words used to spot paragraphs that the German translation left in English.
EN_WORDS = frozenset("the and is of to that this with for are you be can which".split())
DE_WORDS = frozenset("der die das und ist zu nicht mit für den sie ein eine von auf".split())
WORD = re.compile(r"[^\W\d_]+")


def looks_english(text):
    words = WORD.findall(text.lower())
    en = sum(1 for w in words if w in EN_WORDS)
    de = sum(1 for w in words if w in DE_WORDS)
    return len(words) >= 8 and en >= 2 and en > de


def handbook_docs(order, blocks_of, drop=None):
    """One document per section: its heading line, then one line per paragraph.
    With `drop` (a translation), paragraphs that are in `drop` (the English original
    of the book) or that look English are left out. A section without paragraphs is
    left out."""
    docs = []
    for page in order:
        heading = None
        paras = []
        for kind, text in blocks_of[page] + [("h", None)]:
            if kind == "h":
                if paras:
                    docs.append("\n".join(([heading] if heading else []) + paras))
                heading = text
                paras = []
            elif drop is None or not (text in drop or looks_english(text)):
                paras.append(text)
    return docs


def cmd_handbook(root, lang, out, target):
    en_order, en_blocks = handbook_pages(os.path.join(root, "en-US"))
    drop = None
    if lang == "en-US":
        order, blocks_of = en_order, en_blocks
    elif lang == "de-DE":
        order, blocks_of = handbook_pages(os.path.join(root, lang))
        # Untranslated strings fall back to the English original; leave those out.
        drop = {}
        for page in en_order:
            for kind, text in en_blocks[page]:
                if kind == "p":
                    drop[text] = True
    else:
        die("handbook: language %r is not supported (en-US, de-DE)" % lang)
    write_domain(handbook_docs(order, blocks_of, drop), out, target)


# --------------------------------------------------------------------------------------
# C source: each file cut at blank lines into documents of about CODE_DOC_BYTES.
# --------------------------------------------------------------------------------------

CODE_DOC_BYTES = 2000


def code_docs(paths):
    """Each file is split at its blank lines into blocks; consecutive blocks of one file
    are joined (without the blank line) until the document has CODE_DOC_BYTES bytes or
    more. A shorter rest at the end of a file joins the file's previous document."""
    for path in paths:
        blocks = []
        block = []
        for line in read_text(path).split("\n") + [""]:
            line = line.rstrip()
            if line:
                block.append(line)
            elif block:
                blocks.append("\n".join(block))
                block = []
        docs = []
        cur = []
        size = 0
        for b in blocks:
            cur.append(b)
            size += len(b.encode("utf-8")) + 1
            if size >= CODE_DOC_BYTES:
                docs.append("\n".join(cur))
                cur, size = [], 0
        if cur:
            if docs:
                docs[-1] = docs[-1] + "\n" + "\n".join(cur)
            else:
                docs.append("\n".join(cur))
        for d in docs:
            yield d


def cmd_code(incdir, out, target):
    names = sorted((f for f in os.listdir(incdir) if f.endswith(".h")),
                   key=lambda s: s.encode("utf-8"))
    if not names:
        die("%s: no *.h files" % incdir)
    write_domain(code_docs([os.path.join(incdir, n) for n in names]), out, target)


# --------------------------------------------------------------------------------------
# Records: pci.ids, one document per vendor (or device class) with its devices.
# --------------------------------------------------------------------------------------

def pciids_docs(path):
    """A document starts at each unindented, uncommented line (a vendor "1234  Name" or
    a class "C 02  Network controller"); comment lines at column 0 go with the entry that
    follows them, indented lines with the entry above. A blank line ends a document, so
    the file's header comments form documents of their own."""
    docs = []
    cur = []
    pending = []
    for raw in read_text(path).split("\n"):
        line = raw.rstrip()
        if not line:
            if cur:
                docs.append(cur)
            if pending:
                docs.append(pending)
            cur, pending = [], []
        elif line.startswith("#"):
            pending.append(line)
        elif line[0] in "\t ":
            cur.extend(pending)
            pending = []
            cur.append(line)
        else:
            if cur:
                docs.append(cur)
            cur = pending + [line]
            pending = []
    if cur:
        docs.append(cur)
    if pending:
        docs.append(pending)
    return ["\n".join(d) for d in docs]


def cmd_pciids(path, out, target):
    write_domain(pciids_docs(path), out, target)


# --------------------------------------------------------------------------------------
# Format check and statistics.
# --------------------------------------------------------------------------------------

def cmd_check(paths):
    """Check the format of domain files; print their sizes and byte statistics (shares
    of all bytes; "upper" is the share of upper-case letters among the ASCII letters,
    "punct" is every other printable ASCII byte, "non-ASCII" the bytes >= 0x80 of
    multi-byte UTF-8 characters, "values" the number of distinct byte values)."""
    ok = True
    cols = ("bytes", "docs", "letters", "upper", "digits", "space", "tab", "newline",
            "punct", "non-ASCII", "values")
    print("%-15s" % "file" + "".join("%10s" % c for c in cols))
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        errs = []
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            errs.append("not UTF-8: %s" % e)
            text = data.decode("utf-8", "replace")
        if b"\x00" in data:
            errs.append("NUL byte")
        if CONTROL.search(text):
            errs.append("control character")
        if not text.endswith("\n\n") or "\n\n\n" in text or text.startswith("\n"):
            errs.append("documents not separated by exactly one blank line")
        if re.search("[ \t]\n", text):
            errs.append("trailing white space or white-space-only line")
        n = len(data)
        if not MIN_BYTES <= n <= MAX_BYTES:
            errs.append("size %d outside %d..%d" % (n, MIN_BYTES, MAX_BYTES))
        count = [0] * 256
        for byte in data:
            count[byte] += 1
        upper = sum(count[0x41:0x5b])
        letters = upper + sum(count[0x61:0x7b])
        digits = sum(count[0x30:0x3a])
        space, tab, nl = count[0x20], count[0x09], count[0x0a]
        high = sum(count[0x80:])
        punct = n - letters - digits - space - tab - nl - high
        pct = lambda k, d=n: "%9.1f%%" % (100.0 * k / d) if d else "%10s" % "-"
        print("%-15s%10d%10d" % (os.path.basename(path), n, text.count("\n\n"))
              + pct(letters) + pct(upper, letters) + pct(digits) + pct(space) + pct(tab)
              + pct(nl) + pct(punct) + pct(high)
              + "%10d" % sum(1 for c in count if c))
        for e in errs:
            ok = False
            print("  ERROR %s: %s" % (path, e))
    return 0 if ok else 1


def main(argv):
    if len(argv) >= 2 and argv[1] == "check":
        return cmd_check(argv[2:])
    if len(argv) == 6 and argv[1] == "handbook":
        cmd_handbook(argv[2], argv[3], argv[4], int(argv[5]))
    elif len(argv) == 5 and argv[1] == "code":
        cmd_code(argv[2], argv[3], int(argv[4]))
    elif len(argv) == 5 and argv[1] == "pciids":
        cmd_pciids(argv[2], argv[3], int(argv[4]))
    else:
        sys.stderr.write(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
