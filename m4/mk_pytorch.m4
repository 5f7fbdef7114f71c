# MK_CHECK_PYTORCH: a Python with torch for the reference tests and the benchmark
# (optional; those tests skip without it). Debian's python3-torch serves /usr/bin/python3.
AC_DEFUN([MK_CHECK_PYTORCH], [
  AC_ARG_VAR([PYTHON_TORCH], [Python interpreter that can import torch])
  AS_IF([test -z "$PYTHON_TORCH"], [
    for mk_py in /usr/bin/python3 python3; do
      AS_IF([$mk_py -c 'import torch, numpy' >/dev/null 2>&1], [PYTHON_TORCH=$mk_py; break])
    done])
  AS_IF([test -n "$PYTHON_TORCH"], [mk_have_pytorch=yes], [mk_have_pytorch=no])
])
