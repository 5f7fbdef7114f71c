#!/bin/sh
# fetch-deps.sh - download what the GPU machine lacks and unpack it into .deps/, which the
# device tool carries there: the Debian packages of libinih, PCRE2 and Jansson (see
# docs/gpu-machine.md), and CUTLASS's headers (the nvidia-cutlass wheel from PyPI, pinned)
# into .deps/cutlass/include, where configure looks for them. Needs apt lists (apt-get
# update) and pip, but not root.
set -eu
cutlass_version=4.2.0.0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download libinih-dev libinih1 libpcre2-dev libpcre2-8-0 libjansson-dev libjansson4)
rm -rf .deps
for f in "$tmp"/*.deb; do dpkg-deb -x "$f" .deps; done
python3 -m pip download --quiet --no-deps --dest "$tmp" "nvidia-cutlass==$cutlass_version"
python3 -m zipfile -e "$tmp"/nvidia_cutlass-*.whl "$tmp/wheel"
mkdir -p .deps/cutlass
mv "$tmp/wheel/cutlass_library/source/include" .deps/cutlass/include
echo "fetch-deps: .deps/ ready ($(du -sh .deps | cut -f1); CUTLASS $cutlass_version)"
