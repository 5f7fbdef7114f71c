#!/bin/sh
# fetch-deps.sh - download the Debian packages of the libraries the GPU machine lacks
# (libinih, PCRE2, Jansson; see docs/gpu-machine.md) and unpack them into .deps/, which
# the device tool carries there. Needs apt lists (apt-get update) but not root.
set -eu
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download libinih-dev libinih1 libpcre2-dev libpcre2-8-0 libjansson-dev libjansson4)
rm -rf .deps
for f in "$tmp"/*.deb; do dpkg-deb -x "$f" .deps; done
echo "fetch-deps: .deps/ ready ($(du -sh .deps | cut -f1))"
