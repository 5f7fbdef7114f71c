#!/bin/sh
# launch.sh - how make check starts a test: shell scripts through sh, programs directly.
# Open MPI leaks from plugins that LeakSanitizer cannot attribute, so in sanitizer builds
# leak checking is off for whatever initialises MPI (scripts running the programs, mpi_*,
# test_dataset); the other unit tests keep it.
prog=$1; shift
case $prog in
  *.sh|*/mpi_*|*/test_dataset) ASAN_OPTIONS="detect_leaks=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}"; export ASAN_OPTIONS ;;
esac
case $prog in
  *.sh) exec "${SHELL:-/bin/sh}" "$prog" "$@" ;;
  *) exec "$prog" "$@" ;;
esac
