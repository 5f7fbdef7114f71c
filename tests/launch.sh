#!/bin/sh
# launch.sh - how make check starts a test: shell scripts through sh, programs directly.
prog=$1; shift
case $prog in
  *.sh) exec "${SHELL:-/bin/sh}" "$prog" "$@" ;;
  *) exec "$prog" "$@" ;;
esac
