/* h5poke - damage one thing in an HDF5 file, for the bad-input corpus (tests/hostile).
 *
 *   h5poke FILE str OBJ NAME VALUE    set string attribute NAME of OBJ to VALUE
 *   h5poke FILE int OBJ NAME VALUE    set 64-bit integer attribute NAME of OBJ to VALUE
 *   h5poke FILE delete PATH           unlink dataset or group PATH
 *   h5poke FILE delattr OBJ NAME      delete attribute NAME of OBJ (e.g. / integrity: the
 *                                     file then reads as one from before the checksum)
 *   h5poke FILE nan DATASET           first element of a float dataset := NaN
 *   h5poke FILE inf DATASET           first element of a float dataset := +Inf
 *   h5poke FILE reshape DATASET       replace a dataset by a float32 [1, 1] one
 *
 * A writer that goes through the HDF5 library, so the checksums of what it changes are
 * right: the damage is semantic (a wrong value), not a flipped byte.
 */
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int set_attr(hid_t f, const char *obj, const char *name, const char *value, int is_int)
{
    hid_t o = H5Oopen(f, obj, H5P_DEFAULT);
    if (o < 0) return 1;
    if (H5Aexists(o, name) > 0) H5Adelete(o, name);
    hid_t sp = H5Screate(H5S_SCALAR), t, a;
    herr_t w;
    if (is_int) {
        long long v = atoll(value);
        t = H5Tcopy(H5T_STD_I64LE);
        a = H5Acreate2(o, name, t, sp, H5P_DEFAULT, H5P_DEFAULT);
        w = H5Awrite(a, H5T_NATIVE_LLONG, &v);
    } else {
        t = H5Tcopy(H5T_C_S1);
        H5Tset_size(t, strlen(value) + 1);
        a = H5Acreate2(o, name, t, sp, H5P_DEFAULT, H5P_DEFAULT);
        w = H5Awrite(a, t, value);
    }
    H5Aclose(a);
    H5Tclose(t);
    H5Sclose(sp);
    H5Oclose(o);
    return w < 0;
}

static int poke_first(hid_t f, const char *path, float v)
{
    hid_t d = H5Dopen2(f, path, H5P_DEFAULT);
    if (d < 0) return 1;
    hid_t sp = H5Dget_space(d);
    hssize_t n = H5Sget_simple_extent_npoints(sp);
    float *buf = malloc((size_t)n * sizeof *buf);
    int bad = !buf || H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0;
    if (!bad) {
        buf[0] = v;
        bad = H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0;
    }
    free(buf);
    H5Sclose(sp);
    H5Dclose(d);
    return bad;
}

static int reshape(hid_t f, const char *path)
{
    if (H5Ldelete(f, path, H5P_DEFAULT) < 0) return 1;
    hsize_t dims[2] = { 1, 1 };
    float z = 0;
    hid_t sp = H5Screate_simple(2, dims, NULL);
    hid_t d = H5Dcreate2(f, path, H5T_IEEE_F32LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    int bad = d < 0 || H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, &z) < 0;
    if (d >= 0) H5Dclose(d);
    H5Sclose(sp);
    return bad;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: h5poke FILE str|int|delete|delattr|nan|inf|reshape ...\n");
        return 2;
    }
    hid_t f = H5Fopen(argv[1], H5F_ACC_RDWR, H5P_DEFAULT);
    if (f < 0) return 1;
    const char *op = argv[2];
    int bad;
    if ((strcmp(op, "str") == 0 || strcmp(op, "int") == 0) && argc == 6)
        bad = set_attr(f, argv[3], argv[4], argv[5], op[0] == 'i');
    else if (strcmp(op, "delete") == 0) bad = H5Ldelete(f, argv[3], H5P_DEFAULT) < 0;
    else if (strcmp(op, "delattr") == 0 && argc == 5) bad = H5Adelete_by_name(f, argv[3], argv[4], H5P_DEFAULT) < 0;
    else if (strcmp(op, "nan") == 0) bad = poke_first(f, argv[3], NAN);
    else if (strcmp(op, "inf") == 0) bad = poke_first(f, argv[3], INFINITY);
    else if (strcmp(op, "reshape") == 0) bad = reshape(f, argv[3]);
    else bad = 2;
    if (H5Fclose(f) < 0) bad = 1;
    if (bad) fprintf(stderr, "h5poke: %s %s failed\n", argv[1], op);
    return bad;
}
