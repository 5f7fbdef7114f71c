# MK_CHECK_HDF5: parallel HDF5 when there is one, serial HDF5 otherwise (the GPU machine's).
AC_DEFUN([MK_CHECK_HDF5], [
  mk_have_hdf5=no
  mk_hdf5_kind=none
  PKG_CHECK_MODULES([HDF5], [hdf5-openmpi], [mk_have_hdf5=yes],
    [PKG_CHECK_MODULES([HDF5], [hdf5-mpi], [mk_have_hdf5=yes],
      [PKG_CHECK_MODULES([HDF5], [hdf5], [mk_have_hdf5=yes], [mk_have_hdf5=no])])])
  AS_IF([test "x$mk_have_hdf5" = xno], [
    dnl Ubuntu's serial HDF5 without a usable .pc file: try h5cc's layout.
    AC_PATH_PROGS([H5CC], [h5pcc h5cc], [])
    AS_IF([test -n "$H5CC"], [
      HDF5_CFLAGS=`$H5CC -showme:compile 2>/dev/null || $H5CC -show 2>/dev/null | tr ' ' '\n' | grep '^-I' | tr '\n' ' '`
      HDF5_LIBS=`$H5CC -show 2>/dev/null | tr ' ' '\n' | grep -E '^-L|^-l|\.so$|\.a$' | grep -v 'hdf5_hl' | tr '\n' ' '`
      mk_have_hdf5=yes])
  ])
  AS_IF([test "x$mk_have_hdf5" = xyes], [
    mk_save_CPPFLAGS=$CPPFLAGS; CPPFLAGS="$CPPFLAGS $HDF5_CFLAGS"
    mk_save_LIBS=$LIBS; LIBS="$HDF5_LIBS $LIBS"
    AC_CHECK_HEADER([hdf5.h], [], [mk_have_hdf5=no])
    AC_CHECK_FUNC([H5Fcreate], [], [mk_have_hdf5=no])
    AS_IF([test "x$mk_have_hdf5" = xyes], [
      AC_CHECK_FUNC([H5Pset_fapl_mpio],
        [mk_hdf5_kind=parallel; AC_DEFINE([MK_HDF5_PARALLEL], [1], [Define if HDF5 is parallel])],
        [mk_hdf5_kind=serial])])
    CPPFLAGS=$mk_save_CPPFLAGS; LIBS=$mk_save_LIBS
  ])
  AS_IF([test "x$mk_have_hdf5" != xyes],
    [AC_MSG_FAILURE([HDF5 not found; on Debian: apt-get install libhdf5-openmpi-dev])])
  AC_DEFINE([MK_HAVE_HDF5], [1], [Define when HDF5 is available])
])
