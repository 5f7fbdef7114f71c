#!/bin/sh
# nvcc-wrap.sh NVCC ARGS... - let libtool drive nvcc: libtool passes gcc-style flags nvcc
# rejects (-fPIC, -pthread, -Wall...), which are forwarded to the host compiler instead.
nvcc=$1; shift
for a in "$@"; do
  shift
  case $a in
    -fPIC|-fpic|-pthread|-fopenmp|-W*|-fsanitize=*|-fno-omit-frame-pointer|-fno-sanitize-recover=*)
      set -- "$@" -Xcompiler "$a" ;;
    -std=c11) ;;
    *) set -- "$@" "$a" ;;
  esac
done
exec "$nvcc" "$@"
