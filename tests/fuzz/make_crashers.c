/* make_crashers.c - write the hand-made regression inputs of tests/fuzz/crashers/ that the
 * code review of the HDF5 readers found (shapes a fuzzer rarely reaches: ranks above what a
 * reader's buffer holds, 2^61-row datasets). Not part of the build:
 *   mpicc -Ilib tests/fuzz/make_crashers.c $(pkg-config --cflags --libs hdf5-openmpi) -o mc
 *   ./mc tests/fuzz/corpus/ckpt/step2 tests/fuzz/corpus/routing_log/keep-all tests/fuzz/crashers
 * Each output is a copy of a seed with one dataset replaced. */
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void copy(const char *from, const char *to, long skip)
{
    FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
    if (!a || !b) { perror(from); exit(1); }
    fseek(a, skip, SEEK_SET);
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, a)) > 0) fwrite(buf, 1, n, b);
    fclose(a);
    fclose(b);
}

/* Prefix the file with one byte (the routing harness's flags byte). */
static void prefix(const char *path, unsigned char flag)
{
    FILE *f = fopen(path, "rb");
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *buf = malloc((size_t)n);
    if (fread(buf, 1, (size_t)n, f) != (size_t)n) exit(1);
    fclose(f);
    f = fopen(path, "wb");
    fputc(flag, f);
    fwrite(buf, 1, (size_t)n, f);
    fclose(f);
    free(buf);
}

static void replace(hid_t f, const char *name, int rank, const hsize_t *dims, hid_t type, int chunked)
{
    H5Ldelete(f, name, H5P_DEFAULT);
    hsize_t maxd[H5S_MAX_RANK], chunk[H5S_MAX_RANK];
    for (int i = 0; i < rank; i++) { maxd[i] = H5S_UNLIMITED; chunk[i] = 1; }
    hid_t s = H5Screate_simple(rank, dims, chunked ? maxd : NULL);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    if (chunked) H5Pset_chunk(dcpl, rank, chunk);
    hid_t d = H5Dcreate2(f, name, type, s, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    if (d < 0) { fprintf(stderr, "cannot create %s\n", name); exit(1); }
    H5Dclose(d);
    H5Pclose(dcpl);
    H5Sclose(s);
}

static char first_model_name[256];
static herr_t first(hid_t g, const char *name, const H5L_info_t *i, void *op)
{
    (void)g; (void)i; (void)op;
    snprintf(first_model_name, sizeof first_model_name, "/model/%s", name);
    return 1;
}

int main(int argc, char **argv)
{
    if (argc != 4) return 2;
    const char *ck = argv[1], *rl = argv[2], *out = argv[3];
    char p[4096];
    hsize_t ones[9] = { 1, 1, 1, 1, 1, 1, 1, 1, 1 };

    /* verify: a /model tensor of rank 9 (verify_group's dims[8]) */
    snprintf(p, sizeof p, "%s/ckpt/verify-rank9-tensor", out);
    copy(ck, p, 0);
    hid_t f = H5Fopen(p, H5F_ACC_RDWR, H5P_DEFAULT);
    H5Literate(H5Gopen2(f, "/model", H5P_DEFAULT), H5_INDEX_NAME, H5_ITER_INC, NULL, first, NULL);
    replace(f, first_model_name, 9, ones, H5T_IEEE_F32LE, 0);
    H5Fclose(f);

    /* load: the first /model tensor of rank 5 (load_tensor's dims[3]) */
    snprintf(p, sizeof p, "%s/ckpt/load-rank5-tensor", out);
    copy(ck, p, 0);
    f = H5Fopen(p, H5F_ACC_RDWR, H5P_DEFAULT);
    replace(f, first_model_name, 5, ones, H5T_IEEE_F32LE, 0);
    H5Fclose(f);

    /* verify: a tensor that claims 2^62 elements, none stored (size * 4 wraps) */
    snprintf(p, sizeof p, "%s/ckpt/verify-2e62-elements", out);
    copy(ck, p, 0);
    f = H5Fopen(p, H5F_ACC_RDWR, H5P_DEFAULT);
    hsize_t big[1] = { (hsize_t)1 << 62 };
    replace(f, first_model_name, 1, big, H5T_IEEE_F32LE, 1);
    H5Fclose(f);

    /* routing log: /domains of rank 2 (read_domains wrote the dims into one hsize_t) */
    snprintf(p, sizeof p, "%s/routing_log/domains-rank2", out);
    copy(rl, p, 1);
    f = H5Fopen(p, H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t st = H5Tcopy(H5T_C_S1);
    H5Tset_size(st, 8);
    hsize_t d2[2] = { 2, 3 };
    replace(f, "/domains", 2, d2, st, 0);
    H5Fclose(f);
    prefix(p, 1);

    /* routing log: /step and /counts claim 2^61 rows, none stored (rows * rowlen * 8 wraps) */
    snprintf(p, sizeof p, "%s/routing_log/step-2e61-rows", out);
    copy(rl, p, 1);
    f = H5Fopen(p, H5F_ACC_RDWR, H5P_DEFAULT);
    hsize_t rows = (hsize_t)1 << 61;
    hsize_t c4[4] = { rows, 1, 2, 4 }, s1[1] = { rows };
    replace(f, "/step", 1, s1, H5T_STD_I64LE, 1);
    replace(f, "/counts", 4, c4, H5T_STD_I64LE, 1);
    H5Fclose(f);
    prefix(p, 1);

    /* ... and every row dataset with 2^61 rows, so the resume reaches its step buffer */
    snprintf(p, sizeof p, "%s/routing_log/all-2e61-rows", out);
    copy(rl, p, 1);
    f = H5Fopen(p, H5F_ACC_RDWR, H5P_DEFAULT);
    hsize_t t2[2] = { rows, 2 }, l2[2] = { rows, 1 };
    replace(f, "/step", 1, s1, H5T_STD_I64LE, 1);
    replace(f, "/counts", 4, c4, H5T_STD_I64LE, 1);
    replace(f, "/tokens", 2, t2, H5T_STD_I64LE, 1);
    replace(f, "/lbl", 2, l2, H5T_IEEE_F64LE, 1);
    replace(f, "/maxvio", 2, l2, H5T_IEEE_F64LE, 1);
    replace(f, "/loss", 1, s1, H5T_IEEE_F64LE, 1);
    H5Fclose(f);
    prefix(p, 1);
    return 0;
}
