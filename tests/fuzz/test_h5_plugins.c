/* test_h5_plugins.c - moekit never lets an HDF5 file load a filter plugin (T8).
 *
 * A checkpoint whose /model/w uses filter 32999, which nothing registers, is read by
 * mk_ckpt_verify with HDF5_PLUGIN_PATH pointing at tests/fuzz/.libs, where
 * libh5sentinel.so offers that filter and marks a file when it is loaded. moekit must fail
 * the read ("filter not available") with the mark absent and plugin loading off. The
 * control then turns loading on and reads the same dataset with plain HDF5 calls: the
 * plugin loads and leaves its mark, which shows the first half could have failed. */
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../tap.h"
#include "mk_ckpt.h"
#include "mk_error.h"

#define FILTER 32999

static size_t pass(unsigned flags, size_t cd_nelmts, const unsigned cd_values[], size_t nbytes,
                   size_t *buf_size, void **buf)
{
    (void)flags; (void)cd_nelmts; (void)cd_values; (void)buf_size; (void)buf;
    return nbytes;
}

static const H5Z_class2_t writer_filter = {
    H5Z_CLASS_T_VERS, (H5Z_filter_t)FILTER, 1, 1, "test writer", NULL, NULL, pass,
};

static void attr_str(hid_t obj, const char *name, const char *v)
{
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, strlen(v) + 1);
    hid_t s = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(obj, name, t, s, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, t, v);
    H5Aclose(a);
    H5Sclose(s);
    H5Tclose(t);
}

static void attr_i64(hid_t obj, const char *name, long long v)
{
    hid_t s = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(obj, name, H5T_STD_I64LE, s, H5P_DEFAULT, H5P_DEFAULT);
    H5Awrite(a, H5T_NATIVE_LLONG, &v);
    H5Aclose(a);
    H5Sclose(s);
}

/* A checkpoint-shaped file; /model/w goes through the filter. */
static int write_file(const char *path)
{
    if (H5Zregister(&writer_filter) < 0) return -1;
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    attr_str(f, "format", MK_CKPT_FORMAT);
    attr_i64(f, "format_version", MK_CKPT_VERSION);
    attr_i64(f, "step", 1);
    H5Gclose(H5Gcreate2(f, "/config", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    H5Gclose(H5Gcreate2(f, "/state", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    hid_t g = H5Gcreate2(f, "/model", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    hsize_t dims[1] = { 16 };
    hid_t s = H5Screate_simple(1, dims, NULL);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_chunk(dcpl, 1, dims);
    H5Pset_filter(dcpl, FILTER, H5Z_FLAG_MANDATORY, 0, NULL);
    hid_t d = H5Dcreate2(g, "w", H5T_IEEE_F32LE, s, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    float v[16];
    for (int i = 0; i < 16; i++) v[i] = (float)i;
    herr_t w = d >= 0 ? H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v) : -1;
    if (d >= 0) H5Dclose(d);
    H5Pclose(dcpl);
    H5Sclose(s);
    H5Gclose(g);
    H5Fclose(f);
    H5Zunregister(FILTER);
    return w < 0 ? -1 : 0;
}

int main(void)
{
    const char *top = getenv("top_builddir");
    char plugdir[4096], dir[] = "/tmp/mk-h5plugins-XXXXXX", path[4200], mark[4200];
    snprintf(plugdir, sizeof plugdir, "%s/tests/fuzz/.libs", top ? top : ".");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(path, sizeof path, "%s/ckpt.h5", dir);
    snprintf(mark, sizeof mark, "%s/plugin-was-loaded", dir);
    /* Before the first HDF5 call: the library reads the plugin path when it starts. */
    setenv("HDF5_PLUGIN_PATH", plugdir, 1);
    setenv("MK_SENTINEL", mark, 1);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);

    tap_ok(access(plugdir, R_OK) == 0, "plugin directory %s exists", plugdir);
    tap_ok(write_file(path) == 0, "wrote a checkpoint whose /model/w needs filter %d", FILTER);

    char why[1024] = "";
    int rc = mk_ckpt_verify(path, why, sizeof why);
    tap_ok(rc == MK_ERR_INPUT && strstr(why, "/model/w") != NULL, "mk_ckpt_verify refuses it naming /model/w (rc %d: %s)", rc, why);
    tap_ok(access(mark, F_OK) != 0, "the plugin was not loaded");
    /* (H5Zfilter_avail would itself search the plugin path: asked only now, with loading off.) */
    tap_ok(H5Zfilter_avail(FILTER) <= 0 && access(mark, F_OK) != 0, "filter %d stays unavailable", FILTER);
    unsigned state = 99;
    herr_t got = H5PLget_loading_state(&state);
    tap_ok(got >= 0 && state == 0, "HDF5 plugin loading is off after moekit opened a file (state %u)", state);

    /* Control: with loading on, plain HDF5 loads the plugin (so the checks above can fail). */
    H5PLset_loading_state(H5PL_ALL_PLUGIN);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t d = f >= 0 ? H5Dopen2(f, "/model/w", H5P_DEFAULT) : -1;
    float v[16] = { 0 };
    herr_t r = d >= 0 ? H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v) : -1;
    if (d >= 0) H5Dclose(d);
    if (f >= 0) H5Fclose(f);
    tap_ok(r >= 0 && v[15] == 15.0f, "control: with loading on, HDF5 reads it through the plugin");
    tap_ok(access(mark, F_OK) == 0, "control: the plugin left its mark");

    unlink(mark);
    unlink(path);
    rmdir(dir);
    return tap_done();
}
