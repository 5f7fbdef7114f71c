# MK_CHECK_CUDA: the optional CUDA backend (nvcc, cudart, cuBLAS, NCCL).
# --with-cuda (auto by default) looks in /usr/local/cuda; a DIR or "yes" that cannot be
# met is a hard error, auto quietly builds without it.
AC_DEFUN([MK_CHECK_CUDA], [
  AC_ARG_WITH([cuda],
    [AS_HELP_STRING([--with-cuda@<:@=DIR@:>@], [CUDA toolkit with cuBLAS and NCCL (default: auto, /usr/local/cuda)])],
    [], [with_cuda=auto])
  AC_ARG_VAR([NVCC], [CUDA compiler])
  AC_ARG_VAR([NVCCFLAGS], [extra flags for nvcc])
  AC_ARG_VAR([CUDA_ARCH], [nvcc -gencode flags (default: sm_90a code, for the wgmma kernels of H100/H200, and sm_90 PTX)])
  mk_have_cuda=no
  AS_IF([test "x$with_cuda" != xno], [
    AS_CASE([$with_cuda], [yes|auto], [mk_cuda_prefix=/usr/local/cuda], [mk_cuda_prefix=$with_cuda])
    AC_PATH_PROG([NVCC], [nvcc], [], [$mk_cuda_prefix/bin$PATH_SEPARATOR$PATH])
    CUDA_CPPFLAGS="-I$mk_cuda_prefix/include"
    CUDA_LDFLAGS="-L$mk_cuda_prefix/lib64 -Wl,-rpath,$mk_cuda_prefix/lib64"
    mk_save_CPPFLAGS=$CPPFLAGS; mk_save_LDFLAGS=$LDFLAGS; mk_save_LIBS=$LIBS
    CPPFLAGS="$CPPFLAGS $CUDA_CPPFLAGS"; LDFLAGS="$LDFLAGS $CUDA_LDFLAGS"
    mk_have_cuda=yes
    AS_IF([test -z "$NVCC"], [mk_have_cuda=no])
    AC_CHECK_HEADERS([cuda_runtime.h nccl.h cublas_v2.h], [], [mk_have_cuda=no])
    AC_CHECK_LIB([cudart], [cudaGetDeviceCount], [:], [mk_have_cuda=no])
    AC_CHECK_LIB([nccl], [ncclGetVersion], [:], [mk_have_cuda=no])
    AC_CHECK_LIB([cublas], [cublasCreate_v2], [:], [mk_have_cuda=no])
    CPPFLAGS=$mk_save_CPPFLAGS; LDFLAGS=$mk_save_LDFLAGS; LIBS=$mk_save_LIBS
  ])
  AS_IF([test "x$with_cuda" != xno && test "x$with_cuda" != xauto && test "x$mk_have_cuda" != xyes],
    [AC_MSG_ERROR([--with-cuda was given but nvcc, cudart, cuBLAS or NCCL is missing under $mk_cuda_prefix])])
  AS_IF([test -z "$CUDA_ARCH"],
    [CUDA_ARCH="-gencode=arch=compute_90a,code=sm_90a -gencode=arch=compute_90,code=compute_90"])
  AS_IF([test "x$mk_have_cuda" = xyes], [
    CUDA_LIBS="-lnccl -lcublasLt -lcublas -lcudart -lstdc++"
    AC_DEFINE([MK_HAVE_CUDA], [1], [Define if the CUDA backend is built])])
  # CUTLASS (headers only) for the Hopper grouped expert GEMMs: --with-cutlass=DIR names a
  # directory holding include/cutlass; auto looks in .deps/cutlass, where
  # tests/gpu/fetch-deps.sh unpacks it. Without it our own grouped kernels run.
  AC_ARG_WITH([cutlass],
    [AS_HELP_STRING([--with-cutlass@<:@=DIR@:>@], [CUTLASS 3/4 headers under DIR/include for the sm_90 grouped GEMMs (default: auto, .deps/cutlass)])],
    [], [with_cutlass=auto])
  mk_have_cutlass=no
  CUTLASS_NVCCFLAGS=
  AS_IF([test "x$mk_have_cuda" = xyes && test "x$with_cutlass" != xno], [
    AS_CASE([$with_cutlass], [yes|auto], [mk_cutlass_dir=`cd "$srcdir" && pwd`/.deps/cutlass], [mk_cutlass_dir=$with_cutlass])
    AS_IF([test -f "$mk_cutlass_dir/include/cutlass/gemm/group_array_problem_shape.hpp"], [
      mk_have_cutlass=yes
      CUTLASS_NVCCFLAGS="-I$mk_cutlass_dir/include --expt-relaxed-constexpr"
      AC_DEFINE([MK_HAVE_CUTLASS], [1], [Define if the CUDA backend uses CUTLASS's grouped GEMMs])])])
  AS_IF([test "x$with_cutlass" != xno && test "x$with_cutlass" != xauto && test "x$mk_have_cutlass" != xyes],
    [AC_MSG_ERROR([--with-cutlass was given but no CUTLASS grouped GEMM headers under $mk_cutlass_dir/include (or no CUDA)])])
  AC_SUBST([CUTLASS_NVCCFLAGS])
  AC_SUBST([CUDA_CPPFLAGS])
  AC_SUBST([CUDA_LDFLAGS])
  AC_SUBST([CUDA_LIBS])
  AM_CONDITIONAL([MK_HAVE_CUDA], [test "x$mk_have_cuda" = xyes])
])
