# MK_CHECK_MPI: use mpicc as CC (moekit is an MPI program), and find a launcher.
# Runs before AC_PROG_CC. A CC set by the user is kept, and must then compile MPI code.
AC_DEFUN([MK_CHECK_MPI], [
  AC_ARG_VAR([MPICC], [MPI C compiler wrapper])
  AS_IF([test -z "$CC"], [
    AC_PATH_PROGS([MPICC], [mpicc mpiicc], [])
    AS_IF([test -z "$MPICC"],
      [AC_MSG_FAILURE([moekit needs an MPI C compiler (mpicc); on Debian: apt-get install libopenmpi-dev openmpi-bin])])
    CC=$MPICC])
  AC_ARG_VAR([MPIEXEC], [MPI launcher used by make check])
  AC_PATH_PROGS([MPIEXEC], [mpiexec mpirun], [])
  mk_have_mpi=yes
])
AC_DEFUN([MK_CHECK_MPI_WORKS], [
  AC_CHECK_HEADER([mpi.h], [],
    [AC_MSG_FAILURE([$CC cannot compile MPI programs (no mpi.h); use CC=mpicc])])
])
