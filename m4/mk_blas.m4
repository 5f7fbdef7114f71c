# MK_CHECK_BLAS: a CBLAS (OpenBLAS preferred) for the CPU backend's GEMMs.
AC_DEFUN([MK_CHECK_BLAS], [
  AC_ARG_WITH([blas],
    [AS_HELP_STRING([--with-blas=LIB], [CBLAS library to link (default: openblas, then cblas, then blas)])],
    [], [with_blas=auto])
  AC_CHECK_HEADERS([cblas.h], [], [AC_MSG_FAILURE([cblas.h not found; on Debian: apt-get install libopenblas-dev])])
  mk_save_LIBS=$LIBS
  AS_IF([test "x$with_blas" = xauto],
    [AC_SEARCH_LIBS([cblas_sgemm], [openblas cblas blas], [],
       [AC_MSG_FAILURE([no CBLAS library with cblas_sgemm; on Debian: apt-get install libopenblas-dev])])],
    [AC_SEARCH_LIBS([cblas_sgemm], [$with_blas], [],
       [AC_MSG_FAILURE([--with-blas=$with_blas has no cblas_sgemm])])])
  mk_blas_libs=${ac_cv_search_cblas_sgemm}
  AS_IF([test "x$mk_blas_libs" = "xnone required"], [mk_blas_libs=""])
  AC_CHECK_FUNCS([openblas_set_num_threads])
  LIBS=$mk_save_LIBS
  BLAS_LIBS=$mk_blas_libs
  AC_SUBST([BLAS_LIBS])
])
