/* mk_ckpt.c - HDF5 checkpoints: gather to one writer, durable rename, elastic load. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include "mk_ckpt.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mk_error.h"
#include "mk_failpoint.h"
#include "mk_h5.h"
#include "mk_fs.h"
#include "mk_sha256.h"

#ifdef MK_HDF5_PARALLEL
#include <mpi.h>
#endif

/* Settings that fix the tensors' shapes: a checkpoint only loads into the same model. */
static const char *const shape_keys[] = { "model.vocab", "model.d_model", "model.layers", "model.heads",
                                          "model.experts", "model.topk", "model.ffn", "model.shared_ffn",
                                          "model.tie_embeddings" };

/* HDF5 prints its error stack by default; moekit reports one line of its own instead. */
typedef struct quiet { H5E_auto2_t func; void *data; } quiet;
static quiet quiet_on(void)
{
    quiet q;
    H5Eget_auto2(H5E_DEFAULT, &q.func, &q.data);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    return q;
}
static void quiet_off(quiet q) { H5Eset_auto2(H5E_DEFAULT, q.func, q.data); }

/* ------------------------------------------------------------------ small HDF5 helpers */

/* Every call is checked: a failed H5Tset_size once left the step attribute out of a
 * checkpoint that was then published (tests/fault/h5_loop). */
static int attr_str(hid_t obj, const char *name, const char *value)
{
    hid_t t = H5Tcopy(H5T_C_S1);
    hid_t s = H5Screate(H5S_SCALAR);
    hid_t a = t >= 0 && s >= 0 && H5Tset_size(t, strlen(value) + 1) >= 0
                  ? H5Acreate2(obj, name, t, s, H5P_DEFAULT, H5P_DEFAULT)
                  : H5I_INVALID_HID;
    int ok = a >= 0 && H5Awrite(a, t, value) >= 0;
    if (a >= 0) H5Aclose(a);
    if (s >= 0) H5Sclose(s);
    if (t >= 0) H5Tclose(t);
    return ok ? MK_OK : MK_ERR_IO;
}

static int attr_i64(hid_t obj, const char *name, int64_t v)
{
    hid_t s = H5Screate(H5S_SCALAR);
    hid_t a = s >= 0 ? H5Acreate2(obj, name, H5T_STD_I64LE, s, H5P_DEFAULT, H5P_DEFAULT) : H5I_INVALID_HID;
    int ok = a >= 0 && H5Awrite(a, H5T_NATIVE_INT64, &v) >= 0;
    if (a >= 0) H5Aclose(a);
    if (s >= 0) H5Sclose(s);
    return ok ? MK_OK : MK_ERR_IO;
}

static int read_attr_i64(hid_t obj, const char *name, int64_t *v)
{
    if (H5Aexists(obj, name) <= 0) return MK_ERR_INPUT;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    int ok = a >= 0 && H5Aread(a, H5T_NATIVE_INT64, v) >= 0;
    if (a >= 0) H5Aclose(a);
    return ok ? MK_OK : MK_ERR_INPUT;
}

/* MK_ERR_NOMEM is kept apart from MK_ERR_INPUT: out of memory is not a damaged file. */
static int read_attr_str(hid_t obj, const char *name, char *buf, size_t n)
{
    if (H5Aexists(obj, name) <= 0) return MK_ERR_INPUT;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    if (a < 0) return MK_ERR_INPUT;
    hid_t ft = H5Aget_type(a);
    int rc = MK_ERR_INPUT;
    size_t sz = ft >= 0 ? H5Tget_size(ft) : 0;
    if (sz > 0 && H5Tget_class(ft) == H5T_STRING && H5Tis_variable_str(ft) == 0) {
        char *tmp = calloc(sz + 1, 1);
        hid_t mt = H5Tcopy(H5T_C_S1);
        if (!tmp) rc = MK_ERR_NOMEM;
        else if (mt >= 0 && H5Tset_size(mt, sz) >= 0 && H5Aread(a, mt, tmp) >= 0) {
            snprintf(buf, n, "%s", tmp);
            rc = MK_OK;
        }
        if (mt >= 0) H5Tclose(mt);
        free(tmp);
    }
    if (ft >= 0) H5Tclose(ft);
    H5Aclose(a);
    return rc;
}

/* ------------------------------------------------------------------ integrity */

/* SHA-256 over what HDF5 does not checksum in every file format: the name and value of
 * every attribute of every object, every object's path, and each dataset's type and shape,
 * plus the bytes of datasets without Fletcher32 (/tokenizer/ranks). Tensor chunks carry
 * their own Fletcher32. tests/fault/test_corrupt.sh found single-byte flips in attribute
 * heaps and group indexes that loaded silently changed (a /config value, a tensor name).
 * The lines are sorted, so the writer and the reader agree whatever order HDF5 lists. */
typedef struct integ { char **v; size_t n, cap; int rc; const char *obj; } integ;

static void integ_add(integ *g, const char *a, const char *b, const char *c)
{
    if (g->rc) return;
    size_t len = strlen(a) + strlen(b) + strlen(c) + 3;
    char *line = malloc(len);
    if (g->n == g->cap) {
        size_t cap = g->cap ? 2 * g->cap : 256;
        char **v = realloc(g->v, cap * sizeof *v);
        if (v) g->v = v, g->cap = cap;
    }
    if (!line || g->n == g->cap) {
        free(line);
        g->rc = MK_ERR_NOMEM;
        return;
    }
    snprintf(line, len, "%s %s %s", a, b, c);
    g->v[g->n++] = line;
}

static herr_t integ_attr(hid_t loc, const char *name, const H5A_info_t *info, void *op)
{
    (void)info;
    integ *g = op;
    if (strcmp(g->obj, ".") == 0 && strcmp(name, "integrity") == 0) return 0;
    /* Every query is checked: a failed H5Tget_class or H5Tget_size once put another line
     * into the digest, and the writer sealed a file that then failed verify. */
    hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
    hid_t t = a >= 0 ? H5Aget_type(a) : -1, sp = a >= 0 ? H5Aget_space(a) : -1;
    hssize_t np = sp >= 0 ? H5Sget_simple_extent_npoints(sp) : -1;
    size_t sz = t >= 0 ? H5Tget_size(t) : 0, n = sz * (size_t)(np > 0 ? np : 0);
    const H5T_class_t cls = t >= 0 ? H5Tget_class(t) : H5T_NO_CLASS;
    const htri_t vstr = t >= 0 ? H5Tis_variable_str(t) : -1;
    const int readable = a >= 0 && t >= 0 && np > 0 && sz > 0 && cls >= 0 && vstr == 0 && n < ((size_t)1 << 26);
    unsigned char *buf = readable ? calloc(n, 1) : NULL;
    hid_t mt = readable && buf && cls != H5T_STRING ? H5Tget_native_type(t, H5T_DIR_ASCEND) : -1;
    if (!readable) {
        if (!g->rc) g->rc = MK_ERR_INPUT;
    } else if (!buf) {
        if (!g->rc) g->rc = MK_ERR_NOMEM;
    } else if ((cls != H5T_STRING && mt < 0) || H5Aread(a, cls == H5T_STRING ? t : mt, buf) < 0) {
        if (!g->rc) g->rc = MK_ERR_INPUT;
    } else {
        char hex[65], what[128];
        mk_sha256_hex(buf, n, hex);
        snprintf(what, sizeof what, "A:%d:%zu:%s", (int)cls, sz, hex);
        char obj[512];
        snprintf(obj, sizeof obj, "%s@%s", g->obj, name);
        integ_add(g, "attr", obj, what);
    }
    free(buf);
    if (mt >= 0) H5Tclose(mt);
    if (sp >= 0) H5Sclose(sp);
    if (t >= 0) H5Tclose(t);
    if (a >= 0) H5Aclose(a);
    return g->rc ? -1 : 0;
}

static herr_t integ_obj(hid_t root, const char *name, const H5O_info_t *info, void *op)
{
    integ *g = op;
    g->obj = name;
    if (H5Aiterate_by_name(root, name, H5_INDEX_NAME, H5_ITER_INC, NULL, integ_attr, g, H5P_DEFAULT) < 0) {
        if (!g->rc) g->rc = MK_ERR_INPUT;
        return -1;
    }
    char what[256] = "group";
    if (info->type == H5O_TYPE_DATASET) {
        hid_t d = H5Dopen2(root, name, H5P_DEFAULT);
        hid_t t = d >= 0 ? H5Dget_type(d) : -1, sp = d >= 0 ? H5Dget_space(d) : -1, dcpl = d >= 0 ? H5Dget_create_plist(d) : -1;
        hsize_t dims[8] = { 0 };
        int nd = sp >= 0 ? H5Sget_simple_extent_ndims(sp) : -1;
        const H5T_class_t cls = t >= 0 ? H5Tget_class(t) : H5T_NO_CLASS;
        const size_t tsz = t >= 0 ? H5Tget_size(t) : 0;
        const int nfilters = dcpl >= 0 ? H5Pget_nfilters(dcpl) : -1;
        if (nd < 0 || nd > 8 || cls < 0 || tsz == 0 || nfilters < 0 || H5Sget_simple_extent_dims(sp, dims, NULL) < 0) {
            if (!g->rc) g->rc = MK_ERR_INPUT;
        } else {
            int len = snprintf(what, sizeof what, "D:%d:%zu:", (int)cls, tsz);
            for (int i = 0; i < nd && len < (int)sizeof what - 24; i++)
                len += snprintf(what + len, sizeof what - (size_t)len, "%llu,", (unsigned long long)dims[i]);
            if (nfilters == 0 && cls == H5T_INTEGER && tsz == 1) {
                size_t n = 1;
                for (int i = 0; i < nd; i++) n *= (size_t)dims[i];
                unsigned char *b = malloc(n ? n : 1);
                char hex[65];
                if (!b) g->rc = g->rc ? g->rc : MK_ERR_NOMEM;
                else if (H5Dread(d, H5T_NATIVE_UCHAR, H5S_ALL, H5S_ALL, H5P_DEFAULT, b) < 0) g->rc = g->rc ? g->rc : MK_ERR_INPUT;
                else {
                    mk_sha256_hex(b, n, hex);
                    snprintf(what + len, sizeof what - (size_t)len, ":%s", hex);
                }
                free(b);
            }
        }
        if (dcpl >= 0) H5Pclose(dcpl);
        if (sp >= 0) H5Sclose(sp);
        if (t >= 0) H5Tclose(t);
        if (d >= 0) H5Dclose(d);
    }
    integ_add(g, "obj", name, what);
    return g->rc ? -1 : 0;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* The file's integrity digest as 64 hex digits: MK_OK, MK_ERR_NOMEM, or MK_ERR_INPUT when
 * HDF5 cannot read some object. */
static int integrity_of(hid_t f, char hex[65])
{
    integ g = { 0 };
    if (H5Ovisit(f, H5_INDEX_NAME, H5_ITER_INC, integ_obj, &g) < 0 && !g.rc) g.rc = MK_ERR_INPUT;
    if (!g.rc) {
        qsort(g.v, g.n, sizeof *g.v, cmp_str);
        mk_sha256 sh;
        unsigned char dg[32];
        mk_sha256_init(&sh);
        for (size_t i = 0; i < g.n; i++) {
            mk_sha256_update(&sh, g.v[i], strlen(g.v[i]));
            mk_sha256_update(&sh, "\n", 1);
        }
        mk_sha256_final(&sh, dg);
        mk_sha256_to_hex(dg, hex);
    }
    for (size_t i = 0; i < g.n; i++) free(g.v[i]);
    free(g.v);
    return g.rc;
}

/* MK_OK when the file has no integrity attribute (older files) or it matches; else the
 * reason in why. */
static int integrity_check(hid_t f, const char *path, char *why, size_t n)
{
    const htri_t has = H5Aexists(f, "integrity");
    if (has == 0) return MK_OK;
    if (has < 0) { /* not "absent": the check would be skipped on a read error */
        snprintf(why, n, "%s: cannot read the root attributes (damaged file)", path);
        return MK_ERR_INPUT;
    }
    char want[80] = "", have[65];
    int rc = read_attr_str(f, "integrity", want, sizeof want);
    if (rc == MK_OK) rc = integrity_of(f, have);
    if (rc == MK_ERR_NOMEM) {
        snprintf(why, n, "%s: out of memory", path);
        return rc;
    }
    if (rc != MK_OK || strncmp(want, "sha256:", 7) != 0 || strcmp(want + 7, have) != 0) {
        snprintf(why, n, "%s: the attributes, names or shapes do not match the integrity checksum (damaged file)", path);
        return MK_ERR_INPUT;
    }
    return MK_OK;
}

static int integrity_seal(hid_t f, const char *path)
{
    char hex[65], v[80];
    int rc = integrity_of(f, hex);
    if (rc == MK_ERR_NOMEM) return MK_FAIL(rc, "%s: out of memory", path);
    if (rc) return MK_FAIL(MK_ERR_INTERNAL, "%s: cannot read back what was written", path);
    snprintf(v, sizeof v, "sha256:%s", hex);
    return attr_str(f, "integrity", v) == MK_OK ? MK_OK : MK_FAIL(MK_ERR_INTERNAL, "%s: cannot write the integrity attribute", path);
}

static int write_f32(hid_t group, const char *name, int ndim, const hsize_t *dims, const float *data)
{
    hid_t s = H5Screate_simple(ndim, dims, NULL);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    /* One chunk per tensor (split along dim 0 when above 1 GiB): Fletcher32 needs chunks. */
    hsize_t chunk[3];
    size_t row = 1;
    for (int i = 0; i < ndim; i++) chunk[i] = dims[i] > 0 ? dims[i] : 1;
    for (int i = 1; i < ndim; i++) row *= chunk[i];
    const hsize_t max_rows = (hsize_t)((1u << 30) / 4 / row);
    if (chunk[0] > max_rows && max_rows > 0) chunk[0] = max_rows;
    /* a dataset without its Fletcher32 would verify as "no checksum", so no step may fail */
    hid_t d = s >= 0 && dcpl >= 0 && H5Pset_chunk(dcpl, ndim, chunk) >= 0 && H5Pset_fletcher32(dcpl) >= 0
                  ? H5Dcreate2(group, name, H5T_IEEE_F32LE, s, H5P_DEFAULT, dcpl, H5P_DEFAULT)
                  : H5I_INVALID_HID;
    int ok = d >= 0 && H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0;
    if (d >= 0) H5Dclose(d);
    if (dcpl >= 0) H5Pclose(dcpl);
    if (s >= 0) H5Sclose(s);
    return ok ? MK_OK : MK_ERR_IO;
}

/* ------------------------------------------------------------------ saving */

/* One tensor of a block (params, m or v) as float32 with its global shape on every rank of
 * the expert-parallel group: shards are placed in a zeroed full-size buffer and summed
 * over the group (adding zeros is exact). */
static int gather_tensor(mk_trainer *tr, const mk_tensor *t, const mk_real *block, float *out, mk_real *scratch)
{
    mk_model *m = mk_trainer_model(tr);
    mk_backend *be = mk_model_backend(m);
    const size_t per = t->numel / (size_t)t->shape[0];
    const size_t global = per * (size_t)t->dim0_global;
    const mk_comm *ep = mk_trainer_ep(tr);
    if (t->expert && ep) {
        memset(scratch, 0, global * sizeof *scratch);
        MK_CHECK(be->ops->to_host(be, scratch + (size_t)t->dim0_offset * per, block + t->offset,
                                  t->numel * sizeof *scratch));
        MK_CHECK(mk_comm_allreduce_real(ep, scratch, global));
    } else {
        MK_CHECK(be->ops->to_host(be, scratch, block + t->offset, t->numel * sizeof *scratch));
    }
    for (size_t i = 0; i < global; i++) out[i] = (float)scratch[i];
    return MK_OK;
}

static void global_dims(const mk_tensor *t, hsize_t *dims)
{
    for (int i = 0; i < t->ndim; i++) dims[i] = (hsize_t)t->shape[i];
    dims[0] = (hsize_t)t->dim0_global;
}

/* is_writer 0: only take part in the gathers (another rank writes, or this rank's writing
 * already failed and it must not leave the others waiting). */
static int write_tensors(mk_trainer *tr, hid_t file, const char *path, int is_writer)
{
    mk_model *m = mk_trainer_model(tr);
    size_t maxg = 0;
    for (size_t i = 0; i < mk_model_tensor_count(m); i++) {
        const mk_tensor *t = mk_model_tensor(m, i);
        size_t g = t->numel / (size_t)t->shape[0] * (size_t)t->dim0_global;
        if (g > maxg) maxg = g;
    }
    float *buf = malloc(maxg * sizeof *buf);
    mk_real *scratch = malloc(maxg * sizeof *scratch);
    int rc = buf && scratch ? MK_OK : MK_FAIL(MK_ERR_NOMEM, "%s: out of memory for the tensors", path);
    const char *groups[3] = { "/model", "/optim/m", "/optim/v" };
    mk_real *blocks[3] = { mk_model_params(m), mk_model_adam_m(m), mk_model_adam_v(m) };
    hid_t g[3] = { -1, -1, -1 };
    /* A failed write stops the writing, not the gathers: the other ranks of the
     * expert-parallel group are in them too (wrc keeps the write's error). */
    int wrc = MK_OK;
    if (rc == MK_OK && is_writer) {
        hid_t optim = H5Gcreate2(file, "/optim", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        for (int k = 0; k < 3; k++) g[k] = H5Gcreate2(file, groups[k], H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        if (optim < 0 || g[0] < 0 || g[1] < 0 || g[2] < 0)
            wrc = MK_FAIL(MK_ERR_IO, "%s: cannot create the /model and /optim groups", path);
        if (optim >= 0) H5Gclose(optim);
    }
    for (int k = 0; k < 3 && rc == MK_OK; k++)
        for (size_t i = 0; i < mk_model_tensor_count(m) && rc == MK_OK; i++) {
            const mk_tensor *t = mk_model_tensor(m, i);
            rc = gather_tensor(tr, t, blocks[k], buf, scratch);
            if (rc == MK_OK && is_writer && wrc == MK_OK) {
                hsize_t dims[3];
                global_dims(t, dims);
                if (write_f32(g[k], t->name, t->ndim, dims, buf) != MK_OK)
                    wrc = MK_FAIL(MK_ERR_IO, "%s: cannot write %s/%s", path, groups[k], t->name);
            }
        }
    if (rc == MK_OK) rc = wrc;
    for (int k = 0; k < 3; k++)
        if (g[k] >= 0) H5Gclose(g[k]);
    free(buf);
    free(scratch);
    return rc;
}

static int write_meta(mk_trainer *tr, hid_t f, const char *tmp, const mk_ckpt_meta *meta)
{
    const mk_config *cfg = mk_trainer_config(tr);
    int rc = MK_OK;
    if (attr_str(f, "format", MK_CKPT_FORMAT) || attr_i64(f, "format_version", MK_CKPT_VERSION) ||
        attr_i64(f, "step", meta->step) || attr_i64(f, "tokens_seen", meta->tokens_seen) ||
        attr_str(f, "tokenizer", meta->tokenizer[0] ? meta->tokenizer : "unknown"))
        rc = MK_FAIL(MK_ERR_IO, "%s: cannot write the root attributes", tmp);
    hid_t g = rc ? -1 : H5Gcreate2(f, "/config", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    for (size_t i = 0; rc == MK_OK && i < mk_config_setting_count(); i++) {
        const char *key = mk_config_setting(i)->key;
        char v[MK_PATH_MAX + 64];
        if (g < 0 || mk_config_get_text(cfg, key, v, sizeof v) || attr_str(g, key, v))
            rc = MK_FAIL(MK_ERR_IO, "%s: cannot write /config/%s", tmp, key);
    }
    if (g >= 0) H5Gclose(g);
    hid_t st = rc ? -1 : H5Gcreate2(f, "/state", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (rc == MK_OK &&
        (st < 0 || attr_i64(st, "samples_consumed", (int64_t)meta->samples_consumed) ||
         attr_i64(st, "optimizer_step", meta->step) ||
         attr_i64(st, "world_size", mk_comm_size(mk_trainer_world(tr))) ||
         attr_i64(st, "ep", cfg->parallel.ep) || attr_i64(st, "seed", (int64_t)cfg->train.seed)))
        rc = MK_FAIL(MK_ERR_IO, "%s: cannot write /state", tmp);
    if (st >= 0) H5Gclose(st);
    return rc;
}

/* /tokenizer/ranks: the BPE vocabulary's bytes, so a checkpoint can be evaluated alone. */
static int write_ranks(hid_t f, const char *tmp, const char *ranks_path)
{
    FILE *rf = fopen(ranks_path, "rb");
    unsigned char *bytes = NULL;
    long n = 0;
    int rc = MK_OK;
    if (rf && fseek(rf, 0, SEEK_END) == 0 && (n = ftell(rf)) > 0 && fseek(rf, 0, SEEK_SET) == 0 &&
        (bytes = malloc((size_t)n)) && fread(bytes, 1, (size_t)n, rf) == (size_t)n) {
        hid_t tg = H5Gcreate2(f, "/tokenizer", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        hsize_t dim = (hsize_t)n;
        hid_t s = H5Screate_simple(1, &dim, NULL);
        hid_t d = tg >= 0 && s >= 0 ? H5Dcreate2(tg, "ranks", H5T_STD_U8LE, s, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT) : -1;
        if (d < 0 || H5Dwrite(d, H5T_NATIVE_UCHAR, H5S_ALL, H5S_ALL, H5P_DEFAULT, bytes) < 0)
            rc = MK_FAIL(MK_ERR_IO, "%s: cannot write /tokenizer/ranks", tmp);
        if (d >= 0) H5Dclose(d);
        if (s >= 0) H5Sclose(s);
        if (tg >= 0) H5Gclose(tg);
    } else {
        rc = MK_FAIL(MK_ERR_INPUT, "%s: cannot read the tokenizer ranks to embed", ranks_path);
    }
    if (rf) fclose(rf);
    free(bytes);
    return rc;
}

#ifdef MK_HDF5_PARALLEL
/* After a parallel write: rank 0 reopens the file serially to add the ranks (if any) and
 * the integrity checksum. */
static int embed_ranks(const char *tmp, const char *ranks_path)
{
    hid_t f = mk_h5_fopen(tmp, H5F_ACC_RDWR, H5P_DEFAULT);
    if (f < 0) return MK_FAIL(MK_ERR_IO, "%s: cannot reopen to embed the tokenizer", tmp);
    int rc = ranks_path ? write_ranks(f, tmp, ranks_path) : MK_OK;
    if (rc == MK_OK) rc = integrity_seal(f, tmp);
    if (H5Fclose(f) < 0 && rc == MK_OK) rc = MK_FAIL(MK_ERR_IO, "%s: close failed", tmp);
    return rc;
}
#endif

/* The serial writer builds the file in memory (HDF5's core driver without backing store) and
 * writes the image itself. HDF5 1.10.8 reports a write error from H5Fclose without errno,
 * and leaves the half-closed file behind to crash in H5F__close_cb at library shutdown
 * (found by tests/fault/test_io_errors.sh); here every disk error is moekit's own, with its
 * errno, and HDF5 never sees one. The image reaches us through the core driver's free
 * callback at close, so it is never copied. */
/* The 1.8 file format and up: its object headers carry checksums, so a damaged attribute
 * (step, data position, a /config value) fails verify instead of loading silently; the
 * default earliest format has none (tests/fault/test_corrupt.sh found one in 30 metadata
 * flips loading changed). Capped at 1.10 so that every HDF5 from 1.10 on reads the files. */
static herr_t set_format(hid_t fapl) { return H5Pset_libver_bounds(fapl, H5F_LIBVER_V110, H5F_LIBVER_V110); }

typedef struct image_sink {
    const char *path;
    size_t size; /* the file's end of allocation, taken just before the close */
    int rc, seen;
} image_sink;

static void *img_malloc(size_t size, H5FD_file_image_op_t op, void *udata)
{
    (void)op, (void)udata;
    return malloc(size ? size : 1);
}
static void *img_memcpy(void *dst, const void *src, size_t size, H5FD_file_image_op_t op, void *udata)
{
    (void)op, (void)udata;
    return memcpy(dst, src, size);
}
static void *img_realloc(void *ptr, size_t size, H5FD_file_image_op_t op, void *udata)
{
    (void)op, (void)udata;
    return realloc(ptr, size ? size : 1);
}
static void *img_udata_copy(void *udata) { return udata; }
static herr_t img_udata_free(void *udata)
{
    (void)udata;
    return 0;
}

static int write_image(const char *path, const unsigned char *b, size_t n)
{
    /* The caller cleared the temporary name (mk_fs_clear_tmp): O_EXCL never writes through
     * a link planted there. */
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
    if (fd < 0) return MK_FAIL(MK_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    if (mk_fs_write_all(fd, b, n, path) != MK_OK) {
        close(fd);
        return MK_ERR_IO;
    }
    /* NFS reports some write errors only at close */
    if (close(fd) != 0) return MK_FAIL(MK_ERR_IO, "%s: write failed at close: %s", path, strerror(errno));
    return MK_OK;
}

static herr_t img_free(void *ptr, H5FD_file_image_op_t op, void *udata)
{
    image_sink *s = udata;
    if (op == H5FD_FILE_IMAGE_OP_FILE_CLOSE && s && !s->seen && ptr) {
        s->seen = 1;
        if (s->rc == MK_OK) s->rc = write_image(s->path, ptr, s->size);
    }
    free(ptr);
    return 0;
}

static int write_file(mk_trainer *tr, const char *tmp, const mk_ckpt_meta *meta, const char *ranks_path)
{
    image_sink sink = { .path = tmp, .rc = MK_OK };
    H5FD_file_image_callbacks_t cb = { img_malloc, img_memcpy, img_realloc, img_free,
                                       img_udata_copy, img_udata_free, &sink };
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    hid_t f = -1;
    if (fapl >= 0 && H5Pset_fapl_core(fapl, (size_t)1 << 20, 0) >= 0 && H5Pset_file_image_callbacks(fapl, &cb) >= 0 &&
        set_format(fapl) >= 0)
        f = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    if (fapl >= 0) H5Pclose(fapl);
    if (f < 0) return MK_FAIL(MK_ERR_NOMEM, "%s: cannot create the checkpoint in memory", tmp);
    int rc = write_meta(tr, f, tmp, meta);
    if (rc == MK_OK && ranks_path) rc = write_ranks(f, tmp, ranks_path);
    /* after a failure the gathers still run (the other ranks wait in them), with no writes
     * and no second error line */
    int trc = write_tensors(tr, rc == MK_OK ? f : -1, tmp, rc == MK_OK);
    if (rc == MK_OK) rc = trc;
    if (rc == MK_OK) rc = integrity_seal(f, tmp);
    ssize_t size = -1; /* the image's length: called without a buffer it copies nothing */
    if (rc == MK_OK && (H5Fflush(f, H5F_SCOPE_GLOBAL) < 0 || (size = H5Fget_file_image(f, NULL, 0)) <= 0))
        rc = MK_FAIL(MK_ERR_INTERNAL, "%s: cannot finish the checkpoint in memory", tmp);
    sink.size = size > 0 ? (size_t)size : 0;
    sink.rc = rc == MK_OK ? MK_OK : MK_ERR_INTERNAL; /* no image to write after a failure */
    if (H5Fclose(f) < 0 && rc == MK_OK) rc = MK_FAIL(MK_ERR_INTERNAL, "%s: close failed", tmp);
    if (rc == MK_OK && !sink.seen) rc = MK_FAIL(MK_ERR_INTERNAL, "%s: HDF5 did not hand over the image", tmp);
    if (rc == MK_OK) rc = sink.rc;
    return rc;
}

static int step_of(const char *name, long *step)
{
    char *end;
    if (strncmp(name, "step_", 5) != 0) return 0;
    long s = strtol(name + 5, &end, 10);
    if (end == name + 5 || strcmp(end, ".h5") != 0) return 0;
    *step = s;
    return 1;
}

static int cmp_long_desc(const void *a, const void *b)
{
    long x = *(const long *)a, y = *(const long *)b;
    return (x < y) - (x > y);
}

/* Steps of the complete checkpoints in dir, newest first. */
static int list_steps(const char *dir, long **steps, size_t *n)
{
    *steps = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) return MK_FAIL(MK_ERR_INPUT, "%s: %s", dir, strerror(errno));
    struct dirent *e;
    size_t cap = 0;
    while ((e = readdir(d))) {
        long s;
        if (!step_of(e->d_name, &s)) continue;
        if (*n == cap) {
            cap = cap ? 2 * cap : 16;
            long *ns = realloc(*steps, cap * sizeof *ns);
            if (!ns) {
                closedir(d);
                return MK_FAIL(MK_ERR_NOMEM, "checkpoint list: out of memory");
            }
            *steps = ns;
        }
        (*steps)[(*n)++] = s;
    }
    closedir(d);
    qsort(*steps, *n, sizeof **steps, cmp_long_desc);
    return MK_OK;
}

/* *made = 1 once latest.tmp is ours: only then may a failure remove it (a symbolic link
 * someone planted there is refused and left alone). */
static int write_latest(const char *lt, long step, int *made)
{
    int fd;
    *made = 0;
    MK_CHECK(mk_fs_create_tmp(lt, &fd)); /* O_EXCL | O_NOFOLLOW after clearing the name */
    *made = 1;
    FILE *f = fdopen(fd, "w");
    if (!f) {
        close(fd);
        return MK_FAIL(MK_ERR_IO, "%s: cannot create: %s", lt, strerror(errno));
    }
    int ok = fprintf(f, "step_%08ld.h5\n", step) > 0, e = errno;
    if (fclose(f) != 0 && ok) ok = 0, e = errno;
    if (!ok) return MK_FAIL(MK_ERR_IO, "%s: write failed: %s", lt, strerror(e));
    return mk_fs_fsync(lt, 0);
}

static int publish(const char *dir, const char *tmp, const char *final, long step, int keep)
{
    MK_CHECK(mk_fs_fsync(tmp, 0));
    const int replaces = access(final, F_OK) == 0;
    if (rename(tmp, final) != 0) return MK_FAIL(MK_ERR_IO, "cannot rename %s to %s: %s", tmp, final, strerror(errno));
    /* The latest pointer changes only after the checkpoint itself is durable. Until latest
     * is renamed a failure undoes the save (a new file at the final name goes again, and
     * latest.tmp), so a reported failure leaves the directory as it was. */
    char lp[MK_PATH_MAX + 32], lt[MK_PATH_MAX + 48];
    snprintf(lp, sizeof lp, "%s/latest", dir);
    snprintf(lt, sizeof lt, "%s/latest.tmp", dir);
    int made = 0;
    int rc = mk_fs_fsync(dir, 1);
    if (rc == MK_OK) rc = write_latest(lt, step, &made);
    if (rc == MK_OK && rename(lt, lp) != 0) rc = MK_FAIL(MK_ERR_IO, "cannot rename %s: %s", lt, strerror(errno));
    if (rc != MK_OK) {
        if (made) unlink(lt);
        if (!replaces) unlink(final);
        return rc;
    }
    /* A failure from here on is reported, but latest already names the new, complete file. */
    MK_CHECK(mk_fs_fsync(dir, 1));
    long *steps;
    size_t n;
    MK_CHECK(list_steps(dir, &steps, &n));
    for (size_t i = (size_t)(keep > 0 ? keep : 1); i < n; i++) {
        char old[MK_PATH_MAX + 32];
        snprintf(old, sizeof old, "%s/step_%08ld.h5", dir, steps[i]);
        unlink(old);
    }
    free(steps);
    return MK_OK;
}

#ifdef MK_HDF5_PARALLEL
/* Parallel HDF5: every rank opens the file, creates every object (collective), and writes
 * what it alone owns with collective I/O (required for checksummed, chunked datasets):
 * replicated tensors come from world rank 0, expert shards from the ranks of the first
 * expert-parallel group, each its own hyperslab of the global-shape dataset. */
static int write_tensors_parallel(mk_trainer *tr, hid_t file, const char *path, hid_t dxpl)
{
    mk_model *m = mk_trainer_model(tr);
    mk_backend *be = mk_model_backend(m);
    const int rank = mk_comm_rank(mk_trainer_world(tr));
    const int ep = mk_trainer_config(tr)->parallel.ep;
    size_t maxn = 0;
    for (size_t i = 0; i < mk_model_tensor_count(m); i++)
        if (mk_model_tensor(m, i)->numel > maxn) maxn = mk_model_tensor(m, i)->numel;
    float *buf = malloc((maxn ? maxn : 1) * sizeof *buf);
    mk_real *scratch = malloc((maxn ? maxn : 1) * sizeof *scratch);
    int rc = buf && scratch ? MK_OK : MK_FAIL(MK_ERR_NOMEM, "%s: out of memory for the tensors", path);
    const char *groups[3] = { "/model", "/optim/m", "/optim/v" };
    mk_real *blocks[3] = { mk_model_params(m), mk_model_adam_m(m), mk_model_adam_v(m) };
    hid_t optim = H5Gcreate2(file, "/optim", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (optim >= 0) H5Gclose(optim);
    for (int k = 0; k < 3 && rc == MK_OK; k++) {
        hid_t g = H5Gcreate2(file, groups[k], H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
        if (g < 0) rc = MK_FAIL(MK_ERR_IO, "%s: cannot create %s", path, groups[k]);
        for (size_t i = 0; rc == MK_OK && i < mk_model_tensor_count(m); i++) {
            const mk_tensor *t = mk_model_tensor(m, i);
            hsize_t dims[3], start[3] = { (hsize_t)t->dim0_offset, 0, 0 }, count[3], chunk[3];
            global_dims(t, dims);
            for (int j = 0; j < t->ndim; j++) count[j] = chunk[j] = (hsize_t)t->shape[j];
            const int writes = t->expert ? rank < ep : rank == 0;
            hid_t fs = H5Screate_simple(t->ndim, dims, NULL);
            hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
            H5Pset_chunk(dcpl, t->ndim, chunk); /* one chunk per shard: no chunk has two writers */
            H5Pset_fletcher32(dcpl);
            H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER);
            hid_t d = H5Dcreate2(g, t->name, H5T_IEEE_F32LE, fs, H5P_DEFAULT, dcpl, H5P_DEFAULT);
            hid_t ms = H5Screate_simple(t->ndim, count, NULL);
            if (writes) {
                rc = be->ops->to_host(be, scratch, blocks[k] + t->offset, t->numel * sizeof *scratch);
                for (size_t e = 0; e < t->numel; e++) buf[e] = (float)scratch[e];
                H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL);
            } else {
                H5Sselect_none(fs);
                H5Sselect_none(ms);
            }
            if (d < 0 || H5Dwrite(d, H5T_NATIVE_FLOAT, ms, fs, dxpl, buf) < 0)
                rc = MK_FAIL(MK_ERR_IO, "%s: cannot write %s/%s", path, groups[k], t->name);
            H5Sclose(ms);
            if (d >= 0) H5Dclose(d);
            H5Pclose(dcpl);
            H5Sclose(fs);
        }
        if (g >= 0) H5Gclose(g);
    }
    free(buf);
    free(scratch);
    return rc;
}

/* write_meta (above) makes the same calls with the same values on every rank. */

static int write_file_parallel(mk_trainer *tr, const char *tmp, const mk_ckpt_meta *meta)
{
    MPI_Comm comm;
    MK_CHECK(mk_comm_mpi_handle(mk_trainer_world(tr), &comm));
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5Pset_fapl_mpio(fapl, comm, MPI_INFO_NULL);
    set_format(fapl);
    H5Pset_all_coll_metadata_ops(fapl, 1);
    H5Pset_coll_metadata_write(fapl, 1);
    hid_t f = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    H5Pclose(fapl);
    if (f < 0) return MK_FAIL(MK_ERR_IO, "%s: cannot create (parallel HDF5)", tmp);
    hid_t dxpl = H5Pcreate(H5P_DATASET_XFER);
    H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_COLLECTIVE);
    int rc = write_meta(tr, f, tmp, meta);
    int trc = write_tensors_parallel(tr, f, tmp, dxpl);
    if (rc == MK_OK) rc = trc;
    H5Pclose(dxpl);
    if (H5Fclose(f) < 0 && rc == MK_OK) rc = MK_FAIL(MK_ERR_IO, "%s: close failed", tmp);
    return rc;
}
#endif

int mk_ckpt_save(mk_trainer *tr, const char *run_dir, const mk_ckpt_meta *meta, int keep,
                 const char *ranks_path, char *written, size_t written_n)
{
    const mk_comm *world = mk_trainer_world(tr);
    const int writer = mk_comm_rank(world) == 0;
    char dir[MK_PATH_MAX + 8], tmp[MK_PATH_MAX + 64], final[MK_PATH_MAX + 32];
    snprintf(dir, sizeof dir, "%s/ckpt", run_dir);
    snprintf(final, sizeof final, "%s/step_%08ld.h5", dir, meta->step);
    snprintf(tmp, sizeof tmp, "%s/step_%08ld.h5.tmp-%ld", dir, meta->step, (long)getpid());
    int rc = MK_OK;
    if (writer && mkdir(dir, 0777) != 0 && errno != EEXIST)
        rc = MK_FAIL(MK_ERR_IO, "%s: cannot create: %s", dir, strerror(errno));
    if (writer && rc == MK_OK) rc = mk_fs_clear_tmp(tmp); /* no writing through a planted link */
    int agreed = rc;
    MK_CHECK(mk_comm_allreduce_max_int(world, &agreed, 1));
    if (agreed) return agreed;
    MK_CHECK(mk_failpoint("ckpt"));
    quiet q = quiet_on();
#ifdef MK_HDF5_PARALLEL
    /* The BPE ranks travel in serial files only; a parallel run embeds them afterwards. */
    /* MOEKIT_CKPT_GATHER=1 takes the serial-HDF5 path (gather to rank 0) on a parallel
     * build too, so both paths are tested on one machine. */
    const int parallel = mk_comm_size(world) > 1 && !getenv("MOEKIT_CKPT_GATHER");
#else
    const int parallel = 0;
#endif
    if (parallel) {
#ifdef MK_HDF5_PARALLEL
        char name[sizeof tmp];
        snprintf(name, sizeof name, "%s", tmp);
        /* every rank must use the writer's temporary name */
        rc = mk_comm_bcast(world, name, sizeof name, 0);
        if (rc == MK_OK) rc = write_file_parallel(tr, name, meta);
        if (rc == MK_OK && writer) rc = embed_ranks(name, ranks_path);
#endif
    } else if (writer) {
        rc = write_file(tr, tmp, meta, ranks_path);
    } else {
        rc = write_tensors(tr, -1, tmp, 0); /* take part in the gathers */
    }
    quiet_off(q);
    if (writer && rc == MK_OK) rc = publish(dir, tmp, final, meta->step, keep);
    if (writer && rc != MK_OK) unlink(tmp);
    agreed = rc;
    MK_CHECK(mk_comm_allreduce_max_int(world, &agreed, 1));
    if (agreed == MK_OK && written) snprintf(written, written_n, "%s", final);
    return agreed;
}

/* ------------------------------------------------------------------ loading */

static int load_tensor(hid_t g, const char *gname, const char *path, const mk_tensor *t, mk_real *dst,
                       mk_backend *be, float *buf, mk_real *conv)
{
    if (H5Lexists(g, t->name, H5P_DEFAULT) <= 0)
        return MK_FAIL(MK_ERR_INPUT, "%s: %s/%s is missing", path, gname, t->name);
    hid_t d = H5Dopen2(g, t->name, H5P_DEFAULT);
    hid_t fs = H5Dget_space(d);
    hsize_t dims[3] = { 0, 0, 0 }, want[3];
    int nd = mk_h5_dims(fs, dims, 3);
    global_dims(t, want);
    int rc = MK_OK;
    if (nd != t->ndim || memcmp(dims, want, (size_t)nd * sizeof *dims) != 0)
        rc = MK_FAIL(MK_ERR_INPUT, "%s: %s/%s has another shape than the model's", path, gname, t->name);
    hsize_t start[3] = { (hsize_t)t->dim0_offset, 0, 0 }, count[3];
    for (int i = 0; i < t->ndim; i++) count[i] = (hsize_t)t->shape[i];
    hid_t ms = H5Screate_simple(t->ndim, count, NULL);
    if (rc == MK_OK && (H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL) < 0 ||
                        H5Dread(d, H5T_NATIVE_FLOAT, ms, fs, H5P_DEFAULT, buf) < 0))
        rc = MK_FAIL(MK_ERR_INPUT, "%s: cannot read %s/%s (checksum or I/O error)", path, gname, t->name);
    H5Sclose(ms);
    H5Sclose(fs);
    H5Dclose(d);
    if (rc) return rc;
    /* Fletcher32 only proves the bytes are the ones written; a NaN written by a broken run
     * (or by someone else's tool) would train on silently, so resuming refuses it. */
    for (size_t i = 0; i < t->numel; i++)
        if (!isfinite(buf[i]))
            return MK_FAIL(MK_ERR_INPUT, "%s: %s/%s holds a non-finite value (%g) at element %zu", path,
                           gname, t->name, (double)buf[i], i);
    for (size_t i = 0; i < t->numel; i++) conv[i] = (mk_real)buf[i];
    return be->ops->from_host(be, dst + t->offset, conv, t->numel * sizeof *conv);
}

int mk_ckpt_load(mk_trainer *tr, const char *path, mk_ckpt_meta *meta)
{
    memset(meta, 0, sizeof *meta);
    mk_model *m = mk_trainer_model(tr);
    const mk_config *cfg = mk_trainer_config(tr);
    quiet q = quiet_on();
    struct stat pst;
    const int exists = stat(path, &pst) == 0;
    const int err = errno;
    hid_t f = exists ? mk_h5_fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT) : -1;
    int rc = MK_OK;
    char fmt[64] = "";
    int64_t step = 0, tokens = 0, samples = 0;
    if (f < 0) {
        rc = exists ? MK_FAIL(MK_ERR_INPUT, "%s: not an HDF5 file, truncated or unreadable", path)
                    : MK_FAIL(MK_ERR_INPUT, "%s: %s", path, strerror(err));
        goto out;
    }
    int ar = read_attr_str(f, "format", fmt, sizeof fmt);
    if (ar == MK_ERR_NOMEM) {
        rc = MK_FAIL(MK_ERR_NOMEM, "%s: out of memory", path);
        goto out;
    }
    if (ar || strcmp(fmt, MK_CKPT_FORMAT) != 0) {
        rc = MK_FAIL(MK_ERR_INPUT, "%s: not a moekit checkpoint (attribute format)", path);
        goto out;
    }
    char why[MK_PATH_MAX + 128];
    if ((rc = integrity_check(f, path, why, sizeof why)) != MK_OK) {
        rc = MK_FAIL(rc, "%s", why);
        goto out;
    }
    hid_t g = H5Gopen2(f, "/config", H5P_DEFAULT);
    for (size_t i = 0; rc == MK_OK && i < sizeof shape_keys / sizeof *shape_keys; i++) {
        char have[256], want[256];
        mk_config_get_text(cfg, shape_keys[i], want, sizeof want);
        ar = g < 0 ? MK_ERR_INPUT : read_attr_str(g, shape_keys[i], have, sizeof have);
        if (ar == MK_ERR_NOMEM)
            rc = MK_FAIL(MK_ERR_NOMEM, "%s: out of memory", path);
        else if (ar)
            rc = MK_FAIL(MK_ERR_INPUT, "%s: /config/%s is missing", path, shape_keys[i]);
        else if (strcmp(have, want) != 0)
            rc = MK_FAIL(MK_ERR_USAGE, "%s: %s = %s in the checkpoint but %s in the schedule", path,
                         shape_keys[i], have, want);
    }
    if (g >= 0) H5Gclose(g);
    if (rc) goto out;
    hid_t st = H5Gopen2(f, "/state", H5P_DEFAULT);
    if (read_attr_i64(f, "step", &step) || read_attr_i64(f, "tokens_seen", &tokens) || st < 0 ||
        read_attr_i64(st, "samples_consumed", &samples))
        rc = MK_FAIL(MK_ERR_INPUT, "%s: step, tokens_seen or /state/samples_consumed missing", path);
    if (st >= 0) H5Gclose(st);
    /* absent in files before the attribute existed; a read error must not pass for that */
    const htri_t has_tok = rc == MK_OK ? H5Aexists(f, "tokenizer") : 0;
    const int tr_rc = has_tok > 0 ? read_attr_str(f, "tokenizer", meta->tokenizer, sizeof meta->tokenizer) : MK_OK;
    if (rc == MK_OK && tr_rc == MK_ERR_NOMEM) rc = MK_FAIL(MK_ERR_NOMEM, "%s: out of memory", path);
    else if (rc == MK_OK && (has_tok < 0 || tr_rc != MK_OK))
        rc = MK_FAIL(MK_ERR_INPUT, "%s: cannot read the tokenizer attribute", path);
    size_t maxn = 0;
    for (size_t i = 0; i < mk_model_tensor_count(m); i++)
        if (mk_model_tensor(m, i)->numel > maxn) maxn = mk_model_tensor(m, i)->numel;
    float *buf = malloc(maxn * sizeof *buf);
    mk_real *conv = malloc(maxn * sizeof *conv);
    if (rc == MK_OK && (!buf || !conv)) rc = MK_FAIL(MK_ERR_NOMEM, "checkpoint: out of memory");
    const char *groups[3] = { "/model", "/optim/m", "/optim/v" };
    mk_real *blocks[3] = { mk_model_params(m), mk_model_adam_m(m), mk_model_adam_v(m) };
    for (int k = 0; k < 3 && rc == MK_OK; k++) {
        hid_t gg = H5Lexists(f, "/optim", H5P_DEFAULT) > 0 || k == 0 ? H5Gopen2(f, groups[k], H5P_DEFAULT) : -1;
        if (gg < 0) {
            rc = MK_FAIL(MK_ERR_INPUT, "%s: group %s is missing", path, groups[k]);
            break;
        }
        for (size_t i = 0; rc == MK_OK && i < mk_model_tensor_count(m); i++)
            rc = load_tensor(gg, groups[k], path, mk_model_tensor(m, i), blocks[k], mk_model_backend(m), buf, conv);
        H5Gclose(gg);
    }
    free(buf);
    free(conv);
    meta->step = (long)step;
    meta->tokens_seen = (long)tokens;
    meta->samples_consumed = (uint64_t)samples;
out:
    if (f >= 0) H5Fclose(f);
    quiet_off(q);
    return rc;
}

/* ------------------------------------------------------------------ verify and find */

static int verify_group(hid_t f, const char *gname, const char *path, char *why, size_t n, hid_t model)
{
    hid_t g = H5Gopen2(f, gname, H5P_DEFAULT);
    if (g < 0) {
        snprintf(why, n, "%s: group %s is missing", path, gname);
        return MK_ERR_INPUT;
    }
    H5G_info_t info = { 0 };
    if (H5Gget_info(g, &info) < 0) {
        snprintf(why, n, "%s: cannot list %s", path, gname);
        H5Gclose(g);
        return MK_ERR_INPUT;
    }
    int rc = MK_OK;
    for (hsize_t i = 0; rc == MK_OK && i < info.nlinks; i++) {
        char name[256];
        if (H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, name, sizeof name, H5P_DEFAULT) < 0) {
            snprintf(why, n, "%s: cannot list %s", path, gname);
            rc = MK_ERR_INPUT;
            break;
        }
        hid_t d = H5Dopen2(g, name, H5P_DEFAULT);
        if (d < 0) {
            snprintf(why, n, "%s: %s/%s is not a dataset", path, gname, name);
            rc = MK_ERR_INPUT;
            break;
        }
        hid_t s = H5Dget_space(d);
        hssize_t cnt = H5Sget_simple_extent_npoints(s);
        hsize_t dims[8];
        int nd = mk_h5_dims(s, dims, 8);
        /* The shape alone may claim any size (a chunked dataset reads unwritten chunks as
         * zeros). moekit stores tensors raw (Fletcher32 only), so their bytes must be in the
         * file, which also bounds the buffer; a dataset with other filters only has to fit
         * size_t. */
        hsize_t stored = H5Dget_storage_size(d);
        /* an unreadable filter list is an error, not "no filters": it decides the bound */
        hid_t dcpl = H5Dget_create_plist(d);
        int raw = 1, nf = dcpl >= 0 ? H5Pget_nfilters(dcpl) : -1;
        for (int k = 0; k < nf; k++) {
            unsigned flags;
            size_t ncd = 0;
            const H5Z_filter_t id = H5Pget_filter2(dcpl, (unsigned)k, &flags, &ncd, NULL, 0, NULL, NULL);
            if (id < 0) nf = -1;
            else if (id != H5Z_FILTER_FLETCHER32) raw = 0;
        }
        if (dcpl >= 0) H5Pclose(dcpl);
        float *buf = NULL;
        if (nd < 0 || cnt < 0) {
            snprintf(why, n, "%s: %s/%s has an unreadable shape or more than 8 dimensions", path, gname, name);
            rc = MK_ERR_INPUT;
        } else if (nf < 0) {
            snprintf(why, n, "%s: %s/%s: cannot read its filter list", path, gname, name);
            rc = MK_ERR_INPUT;
        } else if ((uint64_t)cnt > (raw ? stored : SIZE_MAX) / sizeof *buf) {
            snprintf(why, n, "%s: %s/%s has %lld elements but %llu bytes in the file (unwritten or truncated)",
                     path, gname, name, (long long)cnt, (unsigned long long)stored);
            rc = MK_ERR_INPUT;
        } else if (!(buf = malloc((size_t)(cnt > 0 ? cnt : 1) * sizeof *buf))) {
            snprintf(why, n, "out of memory");
            rc = MK_ERR_NOMEM;
        } else if (H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0) {
            snprintf(why, n, "%s: %s/%s cannot be read (Fletcher32 checksum mismatch or truncated file)", path, gname, name);
            rc = MK_ERR_INPUT;
        } else {
            for (hssize_t k = 0; k < cnt; k++)
                if (!isfinite(buf[k])) {
                    snprintf(why, n, "%s: %s/%s holds a non-finite value at element %lld", path, gname, name, (long long)k);
                    rc = MK_ERR_INPUT;
                    break;
                }
        }
        if (rc == MK_OK && model >= 0) { /* the moments must mirror /model */
            hid_t md = H5Lexists(model, name, H5P_DEFAULT) > 0 ? H5Dopen2(model, name, H5P_DEFAULT) : -1;
            hsize_t mdims[8];
            hid_t ms = md >= 0 ? H5Dget_space(md) : -1;
            int mnd = ms >= 0 ? mk_h5_dims(ms, mdims, 8) : -1;
            if (mnd != nd || memcmp(mdims, dims, (size_t)nd * sizeof *dims) != 0) {
                snprintf(why, n, "%s: %s/%s has no /model counterpart of the same shape", path, gname, name);
                rc = MK_ERR_INPUT;
            }
            if (ms >= 0) H5Sclose(ms);
            if (md >= 0) H5Dclose(md);
        }
        free(buf);
        H5Sclose(s);
        H5Dclose(d);
    }
    H5Gclose(g);
    return rc;
}

int mk_ckpt_verify(const char *path, char *why, size_t n)
{
    quiet q = quiet_on();
    int rc = MK_OK;
    hid_t f = mk_h5_fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    char fmt[64] = "";
    int64_t ver = 0, step = 0;
    if (f < 0) {
        snprintf(why, n, "%s: not an HDF5 file, truncated or unreadable", path);
        rc = MK_ERR_INPUT;
    } else if (read_attr_str(f, "format", fmt, sizeof fmt) == MK_ERR_NOMEM) {
        snprintf(why, n, "%s: out of memory", path);
        rc = MK_ERR_NOMEM;
    } else if (strcmp(fmt, MK_CKPT_FORMAT) ||
               read_attr_i64(f, "format_version", &ver) || ver != MK_CKPT_VERSION ||
               read_attr_i64(f, "step", &step)) {
        snprintf(why, n, "%s: missing or wrong format, format_version or step attributes", path);
        rc = MK_ERR_INPUT;
    } else if (H5Lexists(f, "/config", H5P_DEFAULT) <= 0 || H5Lexists(f, "/state", H5P_DEFAULT) <= 0) {
        snprintf(why, n, "%s: group /config or /state is missing", path);
        rc = MK_ERR_INPUT;
    } else if ((rc = integrity_check(f, path, why, n)) != MK_OK) {
        /* why is set */
    } else {
        rc = verify_group(f, "/model", path, why, n, -1);
        hid_t model = rc == MK_OK ? H5Gopen2(f, "/model", H5P_DEFAULT) : -1;
        if (rc == MK_OK && model < 0) {
            snprintf(why, n, "%s: cannot open /model again", path);
            rc = MK_ERR_INPUT;
        }
        if (rc == MK_OK) rc = verify_group(f, "/optim/m", path, why, n, model);
        if (rc == MK_OK) rc = verify_group(f, "/optim/v", path, why, n, model);
        if (model >= 0) H5Gclose(model);
    }
    if (f >= 0) H5Fclose(f);
    quiet_off(q);
    return rc;
}

int mk_ckpt_find(const char *run_dir, char *path, size_t n, FILE *log)
{
    char dir[MK_PATH_MAX + 8];
    snprintf(dir, sizeof dir, "%s/ckpt", run_dir);
    long *steps;
    size_t cnt;
    MK_CHECK(list_steps(dir, &steps, &cnt));
    int rc = MK_ERR_INPUT;
    for (size_t i = 0; i < cnt && rc != MK_OK; i++) {
        char p[MK_PATH_MAX + 32], why[1024];
        snprintf(p, sizeof p, "%s/step_%08ld.h5", dir, steps[i]);
        const int vr = mk_ckpt_verify(p, why, sizeof why);
        if (vr == MK_OK) {
            snprintf(path, n, "%s", p);
            rc = MK_OK;
        } else if (vr == MK_ERR_NOMEM) {
            /* not a bad file: skipping it would resume from an older step */
            free(steps);
            return MK_FAIL(MK_ERR_NOMEM, "%s", why);
        } else if (log) {
            fprintf(log, "moe-train: skipping %s\n", why);
        }
    }
    free(steps);
    if (rc != MK_OK) return MK_FAIL(MK_ERR_INPUT, "%s: no checkpoint that verifies", dir);
    return MK_OK;
}
