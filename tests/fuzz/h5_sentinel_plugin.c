/* h5_sentinel_plugin.c - an HDF5 filter plugin that only leaves a mark when it is loaded.
 *
 * Built as a shared module for tests/fuzz/test_h5_plugins: if HDF5 ever dlopens it, its
 * constructor creates the file named by $MK_SENTINEL. It offers filter 32999, the filter
 * of the test's crafted dataset. */
#include <fcntl.h>
#include <hdf5.h>
#include <stdlib.h>
#include <unistd.h>

__attribute__((constructor)) static void mark(void)
{
    const char *p = getenv("MK_SENTINEL");
    if (p) {
        int fd = open(p, O_WRONLY | O_CREAT, 0600);
        if (fd >= 0) close(fd);
    }
}

static size_t pass(unsigned flags, size_t cd_nelmts, const unsigned cd_values[], size_t nbytes,
                   size_t *buf_size, void **buf)
{
    (void)flags; (void)cd_nelmts; (void)cd_values; (void)buf_size; (void)buf;
    return nbytes;
}

static const H5Z_class2_t sentinel_filter = {
    H5Z_CLASS_T_VERS, (H5Z_filter_t)32999, 1, 1, "moekit test sentinel", NULL, NULL, pass,
};

H5PL_type_t H5PLget_plugin_type(void);
const void *H5PLget_plugin_info(void);
H5PL_type_t H5PLget_plugin_type(void) { return H5PL_TYPE_FILTER; }
const void *H5PLget_plugin_info(void) { return &sentinel_filter; }
