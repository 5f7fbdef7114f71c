# MK_CHECK_INIH: libinih parses the INI schedules.
AC_DEFUN([MK_CHECK_INIH], [
  PKG_CHECK_MODULES([INIH], [inih], [],
    [AC_CHECK_HEADER([ini.h], [INIH_LIBS=-linih],
       [AC_MSG_FAILURE([libinih not found; on Debian: apt-get install libinih-dev])])])
])
