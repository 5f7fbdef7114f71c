# MK_CHECK_PCRE2: PCRE2 (8-bit) runs the BPE pre-tokenization regular expression.
AC_DEFUN([MK_CHECK_PCRE2], [
  PKG_CHECK_MODULES([PCRE2], [libpcre2-8], [],
    [AC_CHECK_HEADER([pcre2.h], [PCRE2_LIBS=-lpcre2-8],
       [AC_MSG_FAILURE([PCRE2 not found; on Debian: apt-get install libpcre2-dev])],
       [#define PCRE2_CODE_UNIT_WIDTH 8])])
])
# MK_CHECK_JANSSON: Jansson reads and writes dataset manifests and JSONL corpora.
AC_DEFUN([MK_CHECK_JANSSON], [
  PKG_CHECK_MODULES([JANSSON], [jansson >= 2.10], [],
    [AC_CHECK_HEADER([jansson.h], [JANSSON_LIBS=-ljansson],
       [AC_MSG_FAILURE([Jansson not found; on Debian: apt-get install libjansson-dev])])])
])
