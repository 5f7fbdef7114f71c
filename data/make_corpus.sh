#!/bin/sh
# make_corpus.sh - build the moekit demo corpus from pinned Debian 12 (bookworm) packages.
#
# Usage:  sh data/make_corpus.sh [DATADIR]
#
# DATADIR defaults to the directory of this script (data/). Writes
#     DATADIR/demo/code.txt        C source (libstb-dev)
#     DATADIR/demo/english.txt     English prose (debian-handbook, en-US)
#     DATADIR/demo/german.txt      German prose (debian-handbook, de-DE)
#     DATADIR/demo/math.txt        generated worked exercises (data/make_demo.py)
#     DATADIR/demo/structured.txt  records of the PCI ID database (pci.ids)
#     DATADIR/demo/SHA256SUMS      sha256sum of the five files
#     DATADIR/licenses/PKG.copyright and DATADIR/licenses/GPL-2
#
# Needs: Debian 12 with bookworm "main" in the APT sources and current package lists
# (run "sudo apt-get update" first if they are missing or old), network access, and
# apt-get, dpkg-deb, sha256sum and /usr/bin/python3 (standard library only). Root is not
# needed: "apt-get download" only reads the package lists. Running it as root works too
# (the downloads then go to a temporary directory owned by apt's user _apt).
#
# If a pinned version has left the Debian archive, fetch the same .deb files (e.g. from
# https://snapshot.debian.org/), put them into one directory and run
#     MOEKIT_DEBS=/that/dir sh data/make_corpus.sh
# The extracted inputs are checked against the digests below either way, so a different
# package build cannot silently change the corpus.
#
# The output is byte-identical on every run; see data/README.md.

set -eu

# The pinned packages, as package=version.
PACKAGES="
debian-handbook=11.20220922
libstb-dev=0.0~git20220908.8b5f1f3+ds-1
pci.ids=0.0~2023.04.11-1
"

# For each package, the sha256 of the listing that input_digest makes of its input files.
want_digest() {
    case $1 in
    debian-handbook) echo 36806748d5597ab8192342cafefa3a8375c62aedf338536383bb84b6880f9063 ;;
    libstb-dev)      echo 8f154c00478b72ec8d932cc8d2a41b6bdebadefcb6f2dacb5323a836aae51168 ;;
    pci.ids)         echo 5433c3ba3539edd61eab3e874a5d0fe1ba6cf2bb8281113dab2b66ea28e7bef6 ;;
    esac
}
GPL2_SHA256=8177f97513213526df2cf6184d8ff986c675afb514d4e68a404010521b880643

TARGET=900000          # each domain stops at the first document boundary past this
PY="/usr/bin/python3 -I"

die() {
    echo "make_corpus.sh: $*" >&2
    exit 1
}

here=$(cd "$(dirname "$0")" && pwd)
datadir=${1:-$here}

for tool in apt-get dpkg-deb sha256sum find sort /usr/bin/python3; do
    command -v "$tool" >/dev/null 2>&1 || die "needs $tool"
done

LC_ALL=C
export LC_ALL
unset PYTHONHASHSEED PYTHONPATH || true

tmp=$(mktemp -d "${TMPDIR:-/tmp}/moekit-corpus.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM
mkdir "$tmp/debs" "$tmp/stage" "$tmp/stage/demo" "$tmp/stage/licenses"
if [ "$(id -u)" = 0 ] && id _apt >/dev/null 2>&1; then
    # let apt download as its unprivileged user _apt, as it prefers to
    chmod 755 "$tmp"
    chown _apt "$tmp/debs"
fi

# The input files of each package that the corpus is made from.
input_files() {   # PKG ROOT
    case $1 in
    debian-handbook)
        find "$2/usr/share/doc/debian-handbook/html/en-US" \
             "$2/usr/share/doc/debian-handbook/html/de-DE" \
             -maxdepth 1 -type f -name '*.html' ;;
    libstb-dev)
        find "$2/usr/include/stb" -maxdepth 1 -type f -name '*.h' ;;
    pci.ids)
        echo "$2/usr/share/misc/pci.ids" ;;
    esac
    echo "$2/usr/share/doc/$1/copyright"
}

# sha256 of the "sha256sum" listing (relative names, sorted) of those files
input_digest() {   # PKG ROOT
    input_files "$1" "$2" | sed "s|^$2/||" | sort | (
        cd "$2" && while IFS= read -r f; do sha256sum "$f"; done
    ) | sha256sum | cut -c1-64
}

for pv in $PACKAGES; do
    pkg=${pv%%=*}
    ver=${pv#*=}
    if [ -n "${MOEKIT_DEBS:-}" ]; then
        set -- "$MOEKIT_DEBS/${pkg}_${ver}_"*.deb
        [ -f "$1" ] || die "MOEKIT_DEBS: no ${pkg}_${ver}_*.deb in $MOEKIT_DEBS"
        cp "$1" "$tmp/debs/"
    else
        echo "make_corpus.sh: apt-get download $pkg=$ver" >&2
        if ! (cd "$tmp/debs" && apt-get download -q "$pkg=$ver"); then
            cat >&2 <<EOF
make_corpus.sh: cannot download $pkg version $ver.
  This script needs Debian 12 (bookworm) with "main" in the APT sources and up-to-date
  package lists: run "sudo apt-get update" and try again.
  If $pkg $ver is no longer in the archive, download the .deb from
  https://snapshot.debian.org/binary/$pkg/ (version $ver), put it in a directory
  and run:  MOEKIT_DEBS=/that/directory sh $0
EOF
            exit 1
        fi
    fi
    set -- "$tmp/debs/${pkg}_"*.deb
    [ -f "$1" ] || die "no .deb for $pkg after download"
    got=$(dpkg-deb -f "$1" Package Version | sed 's/^[A-Za-z]*: //' | tr '\n' ' ')
    [ "$got" = "$pkg $ver " ] || die "$1 is '$got', expected '$pkg $ver'"
    mkdir "$tmp/x.$pkg"
    dpkg-deb -x "$1" "$tmp/x.$pkg"
    digest=$(input_digest "$pkg" "$tmp/x.$pkg")
    want=$(want_digest "$pkg")
    if [ "$digest" != "$want" ]; then
        die "input files of $pkg $ver have digest $digest, expected $want"
    fi
    cp "$tmp/x.$pkg/usr/share/doc/$pkg/copyright" "$tmp/stage/licenses/$pkg.copyright"
done

# The GPL version 2, which the copyright files of debian-handbook and pci.ids refer to.
gpl2=/usr/share/common-licenses/GPL-2
[ -f "$gpl2" ] || die "missing $gpl2 (package base-files)"
[ "$(sha256sum < "$gpl2" | cut -c1-64)" = "$GPL2_SHA256" ] || die "unexpected $gpl2"
cp "$gpl2" "$tmp/stage/licenses/GPL-2"

d=$tmp/stage/demo
$PY "$here/corpus_text.py" code "$tmp/x.libstb-dev/usr/include/stb" "$d/code.txt" $TARGET
$PY "$here/corpus_text.py" handbook "$tmp/x.debian-handbook/usr/share/doc/debian-handbook/html" \
    en-US "$d/english.txt" $TARGET
$PY "$here/corpus_text.py" handbook "$tmp/x.debian-handbook/usr/share/doc/debian-handbook/html" \
    de-DE "$d/german.txt" $TARGET
$PY "$here/corpus_text.py" pciids "$tmp/x.pci.ids/usr/share/misc/pci.ids" "$d/structured.txt" $TARGET
$PY "$here/make_demo.py" "$d"

FILES="code.txt english.txt german.txt math.txt structured.txt"
# shellcheck disable=SC2086  # FILES is a list of plain names
(cd "$d" && $PY "$here/corpus_text.py" check $FILES) || die "format check failed"
# shellcheck disable=SC2086
(cd "$d" && sha256sum $FILES) > "$d/SHA256SUMS"

# Everything is built and checked: put it in place.
mkdir -p "$datadir/demo" "$datadir/licenses"
datadir=$(cd "$datadir" && pwd)
for f in $FILES SHA256SUMS; do
    cp "$d/$f" "$datadir/demo/$f.new"
    mv "$datadir/demo/$f.new" "$datadir/demo/$f"
done
for f in "$tmp/stage/licenses/"*; do
    b=$(basename "$f")
    cp "$f" "$datadir/licenses/$b.new"
    mv "$datadir/licenses/$b.new" "$datadir/licenses/$b"
done
echo "make_corpus.sh: wrote $datadir/demo and $datadir/licenses" >&2
cat "$datadir/demo/SHA256SUMS"
