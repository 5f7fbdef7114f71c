/* moe-ckpt - inspect, check, compare and evaluate moekit checkpoints.
 *
 *   moe-ckpt info CKPT            what a checkpoint holds (like h5ls, in moekit's terms)
 *   moe-ckpt verify CKPT...       mk_ckpt_verify on each file
 *   moe-ckpt diff A B             per-tensor max absolute and relative differences
 *   moe-ckpt eval CKPT FILE       the checkpoint's mean cross-entropy and perplexity on FILE
 *
 * One process, no MPI. The file format is mk_ckpt.h and docs/checkpoint-format.md; this
 * program reads it with the serial HDF5 API only. See moe-ckpt(1).
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <errno.h>
#include <getopt.h>
#include <hdf5.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mk_ckpt.h"
#include "mk_config.h"
#include "mk_error.h"
#include "mk_h5.h"
#include "mk_model.h"
#include "mk_tokenizer.h"
#include "mk_trainer.h"

#define PROG "moe-ckpt"
#define MAX_RANK 8                 /* tensors have 1 to 3 dimensions; anything up to 8 is shown */
#define DIFF_BLOCK (1u << 22)      /* elements per tensor read while diffing (32 MiB of doubles) */

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: moe-ckpt info [-v] CKPT\n"
            "       moe-ckpt verify CKPT...\n"
            "       moe-ckpt diff [--optim] [--tolerance X] [-v|-q] A B\n"
            "       moe-ckpt eval [--threads N] [--batch B] CKPT FILE\n"
            "Inspect, check, compare and evaluate moekit checkpoints (moekit " PACKAGE_VERSION ").\n"
            "\n"
            "  info     format, step, tokens seen, tokenizer, data position, world size and ep\n"
            "           at save, file size, every /config setting, and the /model tensors\n"
            "           (name, shape, elements, MB) with totals\n"
            "  verify   check each file (attributes, shapes, Fletcher32 checksums, finite\n"
            "           values): prints 'CKPT: ok' or 'CKPT: FAILED: why'\n"
            "  diff     per /model tensor: the largest absolute and relative difference;\n"
            "           tensors in one file only or of different shapes are reported\n"
            "  eval     the model's mean cross-entropy on a text file, tokenized with the\n"
            "           checkpoint's tokenizer: prints 'tokens N loss X ppl Y'\n"
            "\n"
            "  -v, --verbose        info: storage of each tensor (chunks, filters, file offset);\n"
            "                       diff: list equal tensors too\n"
            "  -q, --quiet          diff: print nothing, only the exit status\n"
            "      --optim          diff: compare the AdamW moments /optim/m and /optim/v too\n"
            "  -t, --tolerance X    diff: absolute differences <= X count as equal (default 0)\n"
            "  -j, --threads N      eval: CPU threads (default: the OpenMP default)\n"
            "  -b, --batch B        eval: sequences per forward pass (default 4)\n"
            "  -h, --help           this help\n"
            "  -V, --version        print the version\n"
            "\n"
            "Exit status: 0 ok (diff: no difference), 1 diff: the checkpoints differ, 2 usage,\n"
            "3 bad input (not a checkpoint, damaged, failed verify), 4 I/O, 5 out of memory,\n"
            "6 NaN/Inf loss, 7 internal error.\n");
}

/* ================================================================== HDF5 helpers */

/* The most specific description on HDF5's error stack (call right after the failure). */
static herr_t walk_cb(unsigned n, const H5E_error2_t *e, void *data)
{
    (void)n;
    char *out = data;
    if (!out[0] && e->desc && e->desc[0]) snprintf(out, 160, "%s", e->desc);
    return 0;
}

static const char *h5_reason(char buf[160])
{
    buf[0] = 0;
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, walk_cb, buf);
    if (!buf[0]) snprintf(buf, 160, "HDF5 error");
    return buf;
}

/* Does the object at path (absolute, "/a/b") exist? Each component is checked in turn,
 * since H5Lexists wants the intermediate groups to exist. */
static int path_exists(hid_t f, const char *path)
{
    char buf[512];
    size_t n = strlen(path);
    if (n >= sizeof buf) return 0;
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != 0) continue;
        char c = buf[i];
        buf[i] = 0;
        if (H5Lexists(f, buf, H5P_DEFAULT) <= 0) return 0;
        buf[i] = c;
    }
    return 1;
}

/* An attribute as text: strings as they are, numbers in C syntax, arrays comma-separated. */
static int attr_text(hid_t attr, char *buf, size_t n)
{
    int ok = 0;
    buf[0] = 0;
    hid_t type = H5Aget_type(attr), space = H5Aget_space(attr);
    hssize_t npts = space >= 0 ? H5Sget_simple_extent_npoints(space) : -1;
    H5T_class_t cls = type >= 0 ? H5Tget_class(type) : H5T_NO_CLASS;
    if (npts < 0 || type < 0) goto out;
    if (cls == H5T_STRING && npts == 1) {
        hid_t mt = H5Tcopy(H5T_C_S1);
        H5Tset_cset(mt, H5Tget_cset(type));
        if (H5Tis_variable_str(type) > 0) {
            char *s = NULL;
            H5Tset_size(mt, H5T_VARIABLE);
            if (H5Aread(attr, mt, &s) >= 0) {
                snprintf(buf, n, "%s", s ? s : "");
                ok = 1;
            }
            if (s) H5free_memory(s);
        } else {
            size_t sz = H5Tget_size(type);
            char *tmp = calloc(sz + 2, 1);
            H5Tset_size(mt, sz + 1);
            H5Tset_strpad(mt, H5T_STR_NULLTERM);
            if (tmp && H5Aread(attr, mt, tmp) >= 0) {
                snprintf(buf, n, "%s", tmp);
                ok = 1;
            }
            free(tmp);
        }
        H5Tclose(mt);
    } else if ((cls == H5T_INTEGER || cls == H5T_FLOAT) && npts >= 1) {
        const size_t cnt = (size_t)npts;
        const int is_uint = cls == H5T_INTEGER && H5Tget_sign(type) == H5T_SGN_NONE;
        void *vals = malloc(cnt * 8);
        hid_t mt = cls == H5T_FLOAT ? H5T_NATIVE_DOUBLE : is_uint ? H5T_NATIVE_ULLONG : H5T_NATIVE_LLONG;
        if (vals && H5Aread(attr, mt, vals) >= 0) {
            size_t len = 0;
            const int digits = H5Tget_size(type) <= 4 ? 9 : 17;
            if (cnt > 1) len += (size_t)snprintf(buf + len, n - len, "[");
            for (size_t i = 0; i < cnt && len < n; i++) {
                if (i) len += (size_t)snprintf(buf + len, n - len, ", ");
                if (len >= n) break;
                if (i == 16 && cnt > 17) {
                    len += (size_t)snprintf(buf + len, n - len, "... (%zu values)", cnt);
                    break;
                }
                if (cls == H5T_FLOAT)
                    len += (size_t)snprintf(buf + len, n - len, "%.*g", digits, ((double *)vals)[i]);
                else if (is_uint)
                    len += (size_t)snprintf(buf + len, n - len, "%llu", ((unsigned long long *)vals)[i]);
                else
                    len += (size_t)snprintf(buf + len, n - len, "%lld", ((long long *)vals)[i]);
            }
            if (cnt > 1 && len < n) snprintf(buf + len, n - len, "]");
            ok = 1;
        }
        free(vals);
    } else {
        snprintf(buf, n, "(%lld values of HDF5 type class %d)", (long long)npts, (int)cls);
        ok = 1;
    }
out:
    if (type >= 0) H5Tclose(type);
    if (space >= 0) H5Sclose(space);
    return ok;
}

/* Attribute name of obj as text; 0 if it is missing or unreadable. */
static int get_attr(hid_t obj, const char *name, char *buf, size_t n)
{
    buf[0] = 0;
    if (obj < 0 || H5Aexists(obj, name) <= 0) return 0;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    if (a < 0) return 0;
    int ok = attr_text(a, buf, n);
    H5Aclose(a);
    return ok;
}

static int get_attr_ll(hid_t obj, const char *name, long long *v)
{
    if (obj < 0 || H5Aexists(obj, name) <= 0) return 0;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    if (a < 0) return 0;
    hid_t s = H5Aget_space(a), t = H5Aget_type(a);
    int ok = H5Sget_simple_extent_npoints(s) == 1 && H5Tget_class(t) == H5T_INTEGER &&
             H5Aread(a, H5T_NATIVE_LLONG, v) >= 0;
    H5Tclose(t);
    H5Sclose(s);
    H5Aclose(a);
    return ok;
}

/* Open path and check that it is a moekit checkpoint this program can read. */
static int ckpt_open(const char *path, hid_t *out)
{
    *out = -1;
    struct stat st;
    if (stat(path, &st) != 0) return MK_FAIL(MK_ERR_INPUT, "%s: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode)) return MK_FAIL(MK_ERR_INPUT, "%s: is a directory, not a checkpoint", path);
    FILE *fp = fopen(path, "rb");
    if (!fp) return MK_FAIL(MK_ERR_INPUT, "%s: %s", path, strerror(errno));
    /* The HDF5 signature sits at 0 or at a power of two >= 512 (after a user block). */
    static const unsigned char sig[8] = { 0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n' };
    int hdf5 = 0;
    for (long off = 0; !hdf5 && off < (long)st.st_size; off = off ? 2 * off : 512) {
        unsigned char b[8];
        if (fseek(fp, off, SEEK_SET) != 0 || fread(b, 1, 8, fp) != 8) break;
        hdf5 = memcmp(b, sig, 8) == 0;
    }
    fclose(fp);
    if (!hdf5) return MK_FAIL(MK_ERR_INPUT, "%s: not a moekit checkpoint (not an HDF5 file)", path);
    hid_t f = mk_h5_fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) {
        char why[160];
        return MK_FAIL(MK_ERR_INPUT, "%s: damaged or truncated HDF5 file (%s)", path, h5_reason(why));
    }
    char fmt[128];
    long long ver = 0;
    if (!get_attr(f, "format", fmt, sizeof fmt) || strcmp(fmt, MK_CKPT_FORMAT) != 0) {
        H5Fclose(f);
        if (!fmt[0]) return MK_FAIL(MK_ERR_INPUT, "%s: not a moekit checkpoint (an HDF5 file without the "
                                    "root attribute format = \"" MK_CKPT_FORMAT "\")", path);
        return MK_FAIL(MK_ERR_INPUT, "%s: not a moekit checkpoint (format is \"%s\", not \"" MK_CKPT_FORMAT
                       "\")", path, fmt);
    }
    if (!get_attr_ll(f, "format_version", &ver) || ver < 1) {
        H5Fclose(f);
        return MK_FAIL(MK_ERR_INPUT, "%s: damaged checkpoint: no valid format_version attribute", path);
    }
    if (ver > MK_CKPT_VERSION) {
        H5Fclose(f);
        return MK_FAIL(MK_ERR_INPUT, "%s: checkpoint format version %lld is newer than this moe-ckpt reads "
                       "(%d): use a newer moekit", path, ver, MK_CKPT_VERSION);
    }
    *out = f;
    return MK_OK;
}

/* ------------------------------------------------------------------ tensor lists */

typedef struct tensor_info {
    char *name;
    int ndim;
    hsize_t dims[MAX_RANK];
    unsigned long long numel;
    size_t type_size;
} tensor_info;

typedef struct tensor_list {
    tensor_info *v;
    size_t n;
    int present; /* the group exists */
} tensor_list;

static void tensor_list_free(tensor_list *l)
{
    for (size_t i = 0; i < l->n; i++) free(l->v[i].name);
    free(l->v);
    memset(l, 0, sizeof *l);
}

/* Model order: wte, then each layer's tensors in the order of DESIGN section 2, then
 * final_norm and lm_head, then anything else by name. */
static void order_key(const char *name, int *group, long *layer, int *role)
{
    static const char *const roles[] = { "attn_norm", "qkv", "attn_out", "mlp_norm", "router", "w1",
                                         "w3", "w2", "shared_w1", "shared_w3", "shared_w2" };
    *group = 3, *layer = 0, *role = 0;
    if (strcmp(name, "wte") == 0) {
        *group = 0;
    } else if (strncmp(name, "layers.", 7) == 0) {
        char *end;
        long l = strtol(name + 7, &end, 10);
        if (end > name + 7 && *end == '.') {
            *group = 1, *layer = l, *role = (int)(sizeof roles / sizeof *roles);
            for (size_t i = 0; i < sizeof roles / sizeof *roles; i++)
                if (strcmp(end + 1, roles[i]) == 0) *role = (int)i;
        }
    } else if (strcmp(name, "final_norm") == 0) {
        *group = 2;
    } else if (strcmp(name, "lm_head") == 0) {
        *group = 2, *role = 1;
    }
}

static int cmp_names(const char *a, const char *b)
{
    int ga, gb, ra, rb;
    long la, lb;
    order_key(a, &ga, &la, &ra);
    order_key(b, &gb, &lb, &rb);
    if (ga != gb) return ga < gb ? -1 : 1;
    if (la != lb) return la < lb ? -1 : 1;
    if (ra != rb) return ra < rb ? -1 : 1;
    return strcmp(a, b);
}

static int cmp_tensor(const void *a, const void *b)
{
    return cmp_names(((const tensor_info *)a)->name, ((const tensor_info *)b)->name);
}

/* The datasets of group gpath (sub-groups are skipped), in model order. A missing group
 * gives an empty list with present = 0. */
static int list_tensors(hid_t f, const char *path, const char *gpath, tensor_list *out)
{
    memset(out, 0, sizeof *out);
    if (!path_exists(f, gpath)) return MK_OK;
    hid_t g = H5Gopen2(f, gpath, H5P_DEFAULT);
    H5G_info_t gi;
    if (g < 0 || H5Gget_info(g, &gi) < 0) {
        char why[160];
        h5_reason(why);
        if (g >= 0) H5Gclose(g);
        return MK_FAIL(MK_ERR_INPUT, "%s: cannot open the group %s (%s)", path, gpath, why);
    }
    out->present = 1;
    int rc = MK_OK;
    out->v = calloc(gi.nlinks ? (size_t)gi.nlinks : 1, sizeof *out->v);
    if (!out->v) rc = MK_FAIL(MK_ERR_NOMEM, "out of memory");
    for (hsize_t i = 0; rc == MK_OK && i < gi.nlinks; i++) {
        ssize_t len = H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, NULL, 0, H5P_DEFAULT);
        char *name = len >= 0 ? malloc((size_t)len + 1) : NULL;
        if (len < 0 || !name) {
            free(name);
            rc = len < 0 ? MK_FAIL(MK_ERR_INPUT, "%s: cannot list the group %s", path, gpath)
                         : MK_FAIL(MK_ERR_NOMEM, "out of memory");
            break;
        }
        H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, name, (size_t)len + 1, H5P_DEFAULT);
        hid_t o = H5Oopen(g, name, H5P_DEFAULT);
        if (o < 0) {
            char why[160];
            rc = MK_FAIL(MK_ERR_INPUT, "%s: %s/%s cannot be opened (%s)", path, gpath, name, h5_reason(why));
            free(name);
            break;
        }
        if (H5Iget_type(o) != H5I_DATASET) {
            H5Oclose(o);
            free(name);
            continue;
        }
        tensor_info *t = &out->v[out->n];
        hid_t s = H5Dget_space(o), ty = H5Dget_type(o);
        int nd = s >= 0 ? H5Sget_simple_extent_ndims(s) : -1;
        if (nd < 0 || nd > MAX_RANK || ty < 0) {
            rc = MK_FAIL(MK_ERR_INPUT, "%s: %s/%s: unreadable or unsupported shape", path, gpath, name);
            free(name);
        } else {
            t->name = name;
            t->ndim = nd;
            H5Sget_simple_extent_dims(s, t->dims, NULL);
            t->numel = 1;
            for (int k = 0; k < nd; k++) t->numel *= (unsigned long long)t->dims[k];
            t->type_size = H5Tget_size(ty);
            out->n++;
        }
        if (ty >= 0) H5Tclose(ty);
        if (s >= 0) H5Sclose(s);
        H5Oclose(o);
    }
    H5Gclose(g);
    if (rc != MK_OK) {
        tensor_list_free(out);
        return rc;
    }
    qsort(out->v, out->n, sizeof *out->v, cmp_tensor);
    return MK_OK;
}

static void shape_text(const tensor_info *t, char *buf, size_t n)
{
    size_t len = (size_t)snprintf(buf, n, "[");
    for (int k = 0; k < t->ndim && len < n; k++)
        len += (size_t)snprintf(buf + len, n - len, "%s%llu", k ? ", " : "", (unsigned long long)t->dims[k]);
    if (len < n) snprintf(buf + len, n - len, "]");
}

static int same_shape(const tensor_info *a, const tensor_info *b)
{
    return a->ndim == b->ndim && memcmp(a->dims, b->dims, (size_t)a->ndim * sizeof *a->dims) == 0;
}

/* ================================================================== info */

typedef struct kv_list {
    char **key, **val;
    size_t n, cap;
    int failed;
} kv_list;

static herr_t collect_attr(hid_t loc, const char *name, const H5A_info_t *ai, void *data)
{
    (void)ai;
    kv_list *l = data;
    char val[MK_PATH_MAX + 64];
    hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
    int ok = a >= 0 && attr_text(a, val, sizeof val);
    if (a >= 0) H5Aclose(a);
    if (!ok) snprintf(val, sizeof val, "(unreadable)");
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 64;
        char **nk = realloc(l->key, cap * sizeof *nk);
        if (nk) l->key = nk;
        char **nv = realloc(l->val, cap * sizeof *nv);
        if (nv) l->val = nv;
        if (!nk || !nv) {
            l->failed = 1;
            return -1;
        }
        l->cap = cap;
    }
    l->key[l->n] = strdup(name);
    l->val[l->n] = strdup(val);
    if (!l->key[l->n] || !l->val[l->n]) {
        free(l->key[l->n]);
        free(l->val[l->n]);
        l->failed = 1;
        return -1;
    }
    l->n++;
    return 0;
}

static void kv_free(kv_list *l)
{
    for (size_t i = 0; i < l->n; i++) free(l->key[i]), free(l->val[i]);
    free(l->key);
    free(l->val);
    memset(l, 0, sizeof *l);
}

/* Every attribute of group gpath, by name (the order h5dump shows). */
static int read_group_attrs(hid_t f, const char *path, const char *gpath, kv_list *out)
{
    memset(out, 0, sizeof *out);
    if (!path_exists(f, gpath)) return MK_OK;
    hid_t g = H5Gopen2(f, gpath, H5P_DEFAULT);
    if (g < 0) return MK_FAIL(MK_ERR_INPUT, "%s: cannot open the group %s", path, gpath);
    hsize_t idx = 0;
    herr_t r = H5Aiterate2(g, H5_INDEX_NAME, H5_ITER_INC, &idx, collect_attr, out);
    H5Gclose(g);
    if (out->failed) {
        kv_free(out);
        return MK_FAIL(MK_ERR_NOMEM, "out of memory");
    }
    if (r < 0) {
        kv_free(out);
        return MK_FAIL(MK_ERR_INPUT, "%s: cannot read the attributes of %s", path, gpath);
    }
    return MK_OK;
}

/* Layout, chunk shape, filters and file offset of the (first chunk of the) data. */
static void storage_text(hid_t d, char *buf, size_t n)
{
    hid_t dcpl = H5Dget_create_plist(d);
    size_t len = 0;
    buf[0] = 0;
    if (dcpl < 0) return;
    H5D_layout_t lay = H5Pget_layout(dcpl);
    if (lay == H5D_CHUNKED) {
        hsize_t cd[MAX_RANK];
        int nd = H5Pget_chunk(dcpl, MAX_RANK, cd);
        len += (size_t)snprintf(buf + len, n - len, "chunk [");
        for (int k = 0; k < nd && len < n; k++)
            len += (size_t)snprintf(buf + len, n - len, "%s%llu", k ? ", " : "", (unsigned long long)cd[k]);
        if (len < n) len += (size_t)snprintf(buf + len, n - len, "]");
        int nf = H5Pget_nfilters(dcpl);
        for (int i = 0; i < nf && len < n; i++) {
            unsigned flags, cfg;
            size_t ncd = 0;
            char fname[64] = "";
            H5Z_filter_t id = H5Pget_filter2(dcpl, (unsigned)i, &flags, &ncd, NULL, sizeof fname, fname, &cfg);
            const char *nm = id == H5Z_FILTER_FLETCHER32 ? "fletcher32" : id == H5Z_FILTER_DEFLATE ? "deflate"
                             : id == H5Z_FILTER_SHUFFLE ? "shuffle" : fname[0] ? fname : "filter";
            len += (size_t)snprintf(buf + len, n - len, " %s", nm);
        }
#if H5_VERSION_GE(1, 10, 5)
        hsize_t origin[MAX_RANK] = { 0 };
        unsigned mask = 0;
        haddr_t addr = HADDR_UNDEF;
        hsize_t size = 0;
        if (len < n && H5Dget_chunk_info_by_coord(d, origin, &mask, &addr, &size) >= 0 && addr != HADDR_UNDEF)
            len += (size_t)snprintf(buf + len, n - len, ", offset %llu (%llu bytes)", (unsigned long long)addr,
                                    (unsigned long long)size);
#endif
    } else if (lay == H5D_CONTIGUOUS) {
        haddr_t addr = H5Dget_offset(d);
        len += (size_t)snprintf(buf + len, n - len, "contiguous");
        if (addr != HADDR_UNDEF && len < n)
            snprintf(buf + len, n - len, ", offset %llu (%llu bytes)", (unsigned long long)addr,
                     (unsigned long long)H5Dget_storage_size(d));
    } else if (lay == H5D_COMPACT) {
        snprintf(buf + len, n - len, "compact");
    }
    H5Pclose(dcpl);
}

static int cmd_info(const char *path, int verbose)
{
    hid_t f;
    MK_CHECK(ckpt_open(path, &f));
    int rc = MK_OK;
    struct stat st;
    stat(path, &st);
    char v[MK_PATH_MAX + 64];
    long long ver = 0;
    get_attr_ll(f, "format_version", &ver);
    printf("checkpoint        %s\n", path);
    printf("file size         %lld bytes (%.3f MB)\n", (long long)st.st_size, (double)st.st_size / 1e6);
    printf("format            %s, version %lld\n", MK_CKPT_FORMAT, ver);
    printf("step              %s\n", get_attr(f, "step", v, sizeof v) ? v : "(missing)");
    printf("tokens_seen       %s\n", get_attr(f, "tokens_seen", v, sizeof v) ? v : "(missing)");
    printf("tokenizer         %s\n", get_attr(f, "tokenizer", v, sizeof v) ? v : "(missing)");
    hid_t sg = path_exists(f, "/state") ? H5Gopen2(f, "/state", H5P_DEFAULT) : -1;
    printf("samples_consumed  %s\n", get_attr(sg, "samples_consumed", v, sizeof v) ? v : "(missing)");
    char ws[64], ep[64];
    if (!get_attr(sg, "world_size", ws, sizeof ws)) snprintf(ws, sizeof ws, "?");
    if (!get_attr(sg, "ep", ep, sizeof ep)) snprintf(ep, sizeof ep, "?");
    printf("saved on          world size %s, ep %s\n", ws, ep);
    if (verbose) {
        printf("optimizer_step    %s\n", get_attr(sg, "optimizer_step", v, sizeof v) ? v : "(missing)");
        printf("seed              %s\n", get_attr(sg, "seed", v, sizeof v) ? v : "(missing)");
    }
    if (sg >= 0) H5Gclose(sg);

    kv_list cfg;
    MK_CHECK_GOTO(rc, read_group_attrs(f, path, "/config", &cfg), out);
    printf("\nconfig (%zu settings)\n", cfg.n);
    for (size_t i = 0; i < cfg.n; i++) printf("  %s = %s\n", cfg.key[i], cfg.val[i]);
    kv_free(&cfg);

    tensor_list tl;
    MK_CHECK_GOTO(rc, list_tensors(f, path, "/model", &tl), out);
    if (!tl.present) {
        rc = MK_FAIL(MK_ERR_INPUT, "%s: damaged checkpoint: no /model group", path);
        goto out;
    }
    size_t wname = strlen("tensor"), wshape = strlen("shape");
    unsigned long long total = 0, total_bytes = 0;
    for (size_t i = 0; i < tl.n; i++) {
        char s[160];
        shape_text(&tl.v[i], s, sizeof s);
        if (strlen(tl.v[i].name) > wname) wname = strlen(tl.v[i].name);
        if (strlen(s) > wshape) wshape = strlen(s);
        total += tl.v[i].numel;
        total_bytes += tl.v[i].numel * tl.v[i].type_size;
    }
    char tot[32];
    int wel = snprintf(tot, sizeof tot, "%llu", total);
    if (wel < 8) wel = 8;
    printf("\nmodel (%zu tensors)\n", tl.n);
    printf("  %-*s  %-*s  %*s  %10s%s\n", (int)wname, "tensor", (int)wshape, "shape", wel, "elements", "MB",
           verbose ? "  storage" : "");
    hid_t mg = verbose ? H5Gopen2(f, "/model", H5P_DEFAULT) : -1;
    for (size_t i = 0; i < tl.n; i++) {
        const tensor_info *t = &tl.v[i];
        char s[160], stor[256] = "";
        shape_text(t, s, sizeof s);
        if (mg >= 0) {
            hid_t d = H5Dopen2(mg, t->name, H5P_DEFAULT);
            if (d >= 0) {
                storage_text(d, stor, sizeof stor);
                H5Dclose(d);
            }
        }
        printf("  %-*s  %-*s  %*llu  %10.3f%s%s\n", (int)wname, t->name, (int)wshape, s, wel, t->numel,
               (double)(t->numel * t->type_size) / 1e6, verbose ? "  " : "", stor);
    }
    if (mg >= 0) H5Gclose(mg);
    printf("  %-*s  %-*s  %*llu  %10.3f\n", (int)wname, "total", (int)wshape, "", wel, total,
           (double)total_bytes / 1e6);
    tensor_list_free(&tl);

    tensor_list m, vv;
    MK_CHECK_GOTO(rc, list_tensors(f, path, "/optim/m", &m), out);
    if ((rc = list_tensors(f, path, "/optim/v", &vv)) != MK_OK) {
        tensor_list_free(&m);
        goto out;
    }
    if (m.present || vv.present) {
        unsigned long long b = 0;
        for (size_t i = 0; i < m.n; i++) b += m.v[i].numel * m.v[i].type_size;
        for (size_t i = 0; i < vv.n; i++) b += vv.v[i].numel * vv.v[i].type_size;
        printf("\noptim             AdamW moments: m %zu tensors, v %zu tensors, %.3f MB\n", m.n, vv.n, (double)b / 1e6);
    } else {
        printf("\noptim             (none)\n");
    }
    tensor_list_free(&m);
    tensor_list_free(&vv);
    if (path_exists(f, "/tokenizer/ranks")) {
        hid_t d = H5Dopen2(f, "/tokenizer/ranks", H5P_DEFAULT);
        hsize_t sz = d >= 0 ? H5Dget_storage_size(d) : 0;
        if (d >= 0) H5Dclose(d);
        printf("tokenizer ranks   %llu bytes (BPE vocabulary embedded)\n", (unsigned long long)sz);
    }
out:
    H5Fclose(f);
    return rc;
}

/* ================================================================== verify */

static int cmd_verify(char **paths, int n)
{
    int worst = MK_OK;
    for (int i = 0; i < n; i++) {
        char why[2048] = "";
        struct stat st;
        int rc;
        /* A plainer reason than HDF5's for what is not a file at all. */
        if (stat(paths[i], &st) != 0) {
            snprintf(why, sizeof why, "%s", strerror(errno));
            rc = MK_ERR_INPUT;
        } else if (S_ISDIR(st.st_mode)) {
            snprintf(why, sizeof why, "is a directory");
            rc = MK_ERR_INPUT;
        } else {
            rc = mk_ckpt_verify(paths[i], why, sizeof why);
        }
        if (rc == MK_OK) {
            printf("%s: ok\n", paths[i]);
        } else {
            /* why names the file first; say it once. */
            const char *w = why;
            size_t pl = strlen(paths[i]);
            if (strncmp(w, paths[i], pl) == 0 && w[pl] == ':') w += pl + 1;
            while (*w == ' ') w++;
            printf("%s: FAILED: %s\n", paths[i], *w ? w : mk_status_name(rc));
            if (worst == MK_OK || rc != MK_ERR_INPUT) worst = rc;
        }
        fflush(stdout);
    }
    return worst;
}

/* ================================================================== diff */

typedef struct diff_opts {
    double tol;
    int verbose, quiet;
} diff_opts;

typedef struct diff_sum {
    size_t compared, differ, only, shape;
    double worst;
    char worst_name[256];
    int header_done;
} diff_sum;

static void diff_header(const char *a, const char *b, hid_t fa, hid_t fb, diff_sum *s)
{
    if (s->header_done) return;
    char sa[64], sb[64];
    if (!get_attr(fa, "step", sa, sizeof sa)) snprintf(sa, sizeof sa, "?");
    if (!get_attr(fb, "step", sb, sizeof sb)) snprintf(sb, sizeof sb, "?");
    printf("A: %s (step %s)\nB: %s (step %s)\n", a, sa, b, sb);
    s->header_done = 1;
}

/* Largest |a - b| and |a - b| / max(|a|, |b|) over two datasets of the same shape, read
 * DIFF_BLOCK elements at a time along dim 0. NaN against NaN counts as equal, NaN against a
 * number as an infinite difference. */
static int diff_tensor(hid_t ga, hid_t gb, const char *pa, const char *pb, const char *gname,
                       const tensor_info *t, double *max_abs, double *max_rel)
{
    *max_abs = 0, *max_rel = 0;
    hid_t d[2] = { H5Dopen2(ga, t->name, H5P_DEFAULT), H5Dopen2(gb, t->name, H5P_DEFAULT) };
    const char *paths[2] = { pa, pb };
    int rc = MK_OK;
    for (int k = 0; k < 2 && rc == MK_OK; k++)
        if (d[k] < 0) {
            char why[160];
            rc = MK_FAIL(MK_ERR_INPUT, "%s: %s/%s cannot be opened (%s)", paths[k], gname, t->name, h5_reason(why));
        }
    unsigned long long row = 1;
    for (int k = 1; k < t->ndim; k++) row *= (unsigned long long)t->dims[k];
    const unsigned long long rows_total = t->ndim ? (unsigned long long)t->dims[0] : 1;
    unsigned long long rows_per = row ? DIFF_BLOCK / row : 1;
    if (rows_per < 1) rows_per = 1;
    if (rows_per > rows_total) rows_per = rows_total ? rows_total : 1;
    const size_t blk = (size_t)(rows_per * row);
    double *buf[2] = { NULL, NULL };
    if (rc == MK_OK && t->numel > 0) {
        buf[0] = malloc((blk ? blk : 1) * sizeof(double));
        buf[1] = malloc((blk ? blk : 1) * sizeof(double));
        if (!buf[0] || !buf[1]) rc = MK_FAIL(MK_ERR_NOMEM, "out of memory diffing %s/%s", gname, t->name);
    }
    for (unsigned long long r0 = 0; rc == MK_OK && t->numel > 0 && r0 < rows_total; r0 += rows_per) {
        const unsigned long long nr = rows_total - r0 < rows_per ? rows_total - r0 : rows_per;
        hsize_t start[MAX_RANK] = { 0 }, count[MAX_RANK];
        for (int k = 0; k < t->ndim; k++) count[k] = t->dims[k];
        size_t cnt = 1;
        if (t->ndim) {
            start[0] = r0;
            count[0] = nr;
            cnt = (size_t)(nr * row);
        }
        hsize_t mdim = cnt;
        hid_t ms = H5Screate_simple(1, &mdim, NULL);
        for (int k = 0; k < 2 && rc == MK_OK; k++) {
            hid_t fs = H5Dget_space(d[k]);
            if (t->ndim) H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, count, NULL);
            if (H5Dread(d[k], H5T_NATIVE_DOUBLE, ms, fs, H5P_DEFAULT, buf[k]) < 0) {
                char why[160];
                rc = MK_FAIL(MK_ERR_INPUT, "%s: %s/%s cannot be read (%s)", paths[k], gname, t->name, h5_reason(why));
            }
            H5Sclose(fs);
        }
        H5Sclose(ms);
        for (size_t i = 0; rc == MK_OK && i < cnt; i++) {
            const double x = buf[0][i], y = buf[1][i];
            if (x == y || (isnan(x) && isnan(y))) continue;
            double ad = fabs(x - y), m = fmax(fabs(x), fabs(y));
            if (isnan(ad)) ad = INFINITY; /* NaN vs a number, or inf vs -inf */
            double rd = isinf(ad) ? INFINITY : ad / m;
            if (ad > *max_abs) *max_abs = ad;
            if (rd > *max_rel) *max_rel = rd;
        }
    }
    free(buf[0]);
    free(buf[1]);
    for (int k = 0; k < 2; k++)
        if (d[k] >= 0) H5Dclose(d[k]);
    return rc;
}

static int diff_group(hid_t fa, hid_t fb, const char *pa, const char *pb, const char *gname,
                      const diff_opts *o, diff_sum *s)
{
    tensor_list la, lb;
    MK_CHECK(list_tensors(fa, pa, gname, &la));
    int rc = list_tensors(fb, pb, gname, &lb);
    if (rc != MK_OK) {
        tensor_list_free(&la);
        return rc;
    }
    /* Display names: model tensors as they are, the moments with their group. */
    const char *prefix = strcmp(gname, "/model") == 0 ? "" : gname + 1;
    char label[256];
    if (!la.present || !lb.present) {
        if (la.present != lb.present) {
            if (!o->quiet) {
                diff_header(pa, pb, fa, fb, s);
                printf("%s: only in %s\n", gname, la.present ? "A" : "B");
            }
            s->only++;
        }
        goto done;
    }
    hid_t ga = H5Gopen2(fa, gname, H5P_DEFAULT), gb = H5Gopen2(fb, gname, H5P_DEFAULT);
    size_t i = 0, j = 0;
    while (rc == MK_OK && (i < la.n || j < lb.n)) {
        int c = i == la.n ? 1 : j == lb.n ? -1 : cmp_names(la.v[i].name, lb.v[j].name);
        const tensor_info *t = c <= 0 ? &la.v[i] : &lb.v[j];
        snprintf(label, sizeof label, "%s%s%s", prefix, *prefix ? "/" : "", t->name);
        if (c != 0) {
            s->only++;
            if (!o->quiet) {
                diff_header(pa, pb, fa, fb, s);
                printf("%-28s only in %s\n", label, c < 0 ? "A" : "B");
            }
            if (c < 0) i++;
            else j++;
            continue;
        }
        const tensor_info *u = &lb.v[j];
        i++, j++;
        char sh[160], shb[160];
        shape_text(t, sh, sizeof sh);
        if (!same_shape(t, u)) {
            s->shape++;
            shape_text(u, shb, sizeof shb);
            if (!o->quiet) {
                diff_header(pa, pb, fa, fb, s);
                printf("%-28s shape %s in A, %s in B\n", label, sh, shb);
            }
            continue;
        }
        double ma, mr;
        if ((rc = diff_tensor(ga, gb, pa, pb, gname, t, &ma, &mr)) != MK_OK) break;
        s->compared++;
        const int differs = ma > o->tol;
        if (differs) {
            s->differ++;
            if (ma > s->worst || s->differ == 1) {
                s->worst = ma;
                snprintf(s->worst_name, sizeof s->worst_name, "%s", label);
            }
        }
        if (!o->quiet && (differs || o->verbose)) {
            diff_header(pa, pb, fa, fb, s);
            printf("%-28s %-16s max_abs %-11.4g max_rel %-11.4g %s\n", label, sh, ma, mr,
                   differs ? "differs" : ma > 0 ? "equal within tolerance" : "equal");
        }
    }
    if (ga >= 0) H5Gclose(ga);
    if (gb >= 0) H5Gclose(gb);
done:
    tensor_list_free(&la);
    tensor_list_free(&lb);
    return rc;
}

static int cmd_diff(const char *a, const char *b, int optim, const diff_opts *o)
{
    hid_t fa, fb;
    MK_CHECK(ckpt_open(a, &fa));
    int rc = ckpt_open(b, &fb);
    if (rc != MK_OK) {
        H5Fclose(fa);
        return rc;
    }
    diff_sum s = { 0 };
    if (!path_exists(fa, "/model") || !path_exists(fb, "/model")) {
        rc = MK_FAIL(MK_ERR_INPUT, "%s: damaged checkpoint: no /model group", path_exists(fa, "/model") ? b : a);
        goto out;
    }
    if (o->verbose && !o->quiet) diff_header(a, b, fa, fb, &s);
    MK_CHECK_GOTO(rc, diff_group(fa, fb, a, b, "/model", o, &s), out);
    if (optim) {
        MK_CHECK_GOTO(rc, diff_group(fa, fb, a, b, "/optim/m", o, &s), out);
        MK_CHECK_GOTO(rc, diff_group(fa, fb, a, b, "/optim/v", o, &s), out);
    }
    const int same = s.differ == 0 && s.only == 0 && s.shape == 0;
    if (!o->quiet && (!same || o->verbose)) {
        printf("%zu tensors compared: %zu differ", s.compared, s.differ);
        if (o->tol > 0) printf(" by more than %g", o->tol);
        if (s.differ) printf(" (largest max_abs %.4g in %s)", s.worst, s.worst_name);
        if (s.only) printf("; %zu in one file only", s.only);
        if (s.shape) printf("; %zu of different shapes", s.shape);
        printf("\n");
    }
    rc = same ? MK_OK : 1;
out:
    H5Fclose(fa);
    H5Fclose(fb);
    return rc;
}

/* ================================================================== eval */

static int read_file(const char *path, char **data, size_t *len)
{
    *data = NULL, *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return MK_FAIL(MK_ERR_INPUT, "%s: %s", path, strerror(errno));
    size_t cap = 1 << 20, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        if (n == cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb, cap *= 2;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) break;
    }
    int err = ferror(f);
    fclose(f);
    if (!buf) return MK_FAIL(MK_ERR_NOMEM, "%s: out of memory reading the file", path);
    if (err) {
        free(buf);
        return MK_FAIL(MK_ERR_INPUT, "%s: read error", path);
    }
    *data = buf, *len = n;
    return MK_OK;
}

/* The checkpoint's tokenizer: byte-level, or the BPE ranks embedded in /tokenizer/ranks
 * (written to a temporary file for mk_tokenizer_bpe_load and checked against the id). */
static int ckpt_tokenizer(hid_t f, const char *path, const char *id, mk_tokenizer **out)
{
    *out = NULL;
    if (strcmp(id, "byte") == 0) return mk_tokenizer_byte(out);
    if (strncmp(id, "bpe:", 4) != 0)
        return MK_FAIL(MK_ERR_INPUT, "%s: tokenizer \"%s\" is neither byte nor bpe:SHA256; cannot tokenize text "
                       "for it", path, id);
    if (!path_exists(f, "/tokenizer/ranks"))
        return MK_FAIL(MK_ERR_INPUT, "%s: tokenizer %s but no /tokenizer/ranks dataset", path, id);
    hid_t d = H5Dopen2(f, "/tokenizer/ranks", H5P_DEFAULT);
    hid_t s = d >= 0 ? H5Dget_space(d) : -1;
    hssize_t n = s >= 0 ? H5Sget_simple_extent_npoints(s) : -1;
    unsigned char *bytes = n > 0 ? malloc((size_t)n) : NULL;
    int rc = MK_OK;
    if (n <= 0 || !bytes || H5Dread(d, H5T_NATIVE_UCHAR, H5S_ALL, H5S_ALL, H5P_DEFAULT, bytes) < 0) {
        char why[160];
        rc = n > 0 && !bytes ? MK_FAIL(MK_ERR_NOMEM, "out of memory")
                             : MK_FAIL(MK_ERR_INPUT, "%s: /tokenizer/ranks cannot be read (%s)", path, h5_reason(why));
    }
    if (s >= 0) H5Sclose(s);
    if (d >= 0) H5Dclose(d);
    if (rc) {
        free(bytes);
        return rc;
    }
    const char *tmpdir = getenv("TMPDIR");
    char tmp[MK_PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s/moe-ckpt-ranks-XXXXXX", tmpdir && *tmpdir ? tmpdir : "/tmp");
    int fd = mkstemp(tmp);
    if (fd < 0) {
        free(bytes);
        return MK_FAIL(MK_ERR_IO, "%s: cannot create a temporary file: %s", tmp, strerror(errno));
    }
    size_t done = 0;
    while (done < (size_t)n) {
        ssize_t w = write(fd, bytes + done, (size_t)n - done);
        if (w <= 0) break;
        done += (size_t)w;
    }
    free(bytes);
    if (close(fd) != 0 || done != (size_t)n) {
        unlink(tmp);
        return MK_FAIL(MK_ERR_IO, "%s: cannot write the tokenizer ranks", tmp);
    }
    rc = mk_tokenizer_bpe_load(tmp, out);
    unlink(tmp);
    if (rc) return rc;
    if (strcmp(mk_tokenizer_id(*out), id) != 0) {
        rc = MK_FAIL(MK_ERR_INPUT, "%s: /tokenizer/ranks hashes to %s, not the tokenizer attribute %s", path,
                     mk_tokenizer_id(*out), id);
        mk_tokenizer_free(out);
        return rc;
    }
    return MK_OK;
}

static int is_setting(const char *key)
{
    for (size_t i = 0; i < mk_config_setting_count(); i++)
        if (strcmp(mk_config_setting(i)->key, key) == 0) return 1;
    return 0;
}

static int cmd_eval(const char *ckpt, const char *text_path, const char *threads, const char *batch)
{
    hid_t f;
    MK_CHECK(ckpt_open(ckpt, &f));
    int rc = MK_OK;
    mk_config cfg;
    mk_config_defaults(&cfg);
    kv_list kv = { 0 };
    mk_tokenizer *tok = NULL;
    mk_trainer *tr = NULL;
    char *text = NULL;
    int32_t *ids = NULL, *tokens = NULL, *targets = NULL;
    size_t nids = 0, cap = 0, len = 0;
    char origin[MK_PATH_MAX + 16], tok_id[256];

    /* The run's settings, then what evaluation changes: one process, small batches. */
    MK_CHECK_GOTO(rc, read_group_attrs(f, ckpt, "/config", &kv), out);
    if (!kv.n) {
        rc = MK_FAIL(MK_ERR_INPUT, "%s: no /config settings: cannot build the model", ckpt);
        goto out;
    }
    snprintf(origin, sizeof origin, "%s:/config", ckpt);
    for (size_t i = 0; i < kv.n; i++) {
        if (!is_setting(kv.key[i])) {
            fprintf(stderr, PROG ": warning: %s: setting %s = %s is unknown to this moekit; ignored\n", ckpt,
                    kv.key[i], kv.val[i]);
            continue;
        }
        if (mk_config_set_kv(&cfg, kv.key[i], kv.val[i], origin) != MK_OK) {
            rc = MK_ERR_INPUT;
            goto out;
        }
    }
    cfg.parallel.ep = 1;
    cfg.train.threads = 0; /* this machine's, not the training run's */
    MK_CHECK_GOTO(rc, mk_config_set_kv(&cfg, "train.micro_batch", batch, "--batch"), out);
    if (threads) MK_CHECK_GOTO(rc, mk_config_set_kv(&cfg, "train.threads", threads, "--threads"), out);
    if (!get_attr(f, "tokenizer", tok_id, sizeof tok_id)) {
        rc = MK_FAIL(MK_ERR_INPUT, "%s: no tokenizer attribute: cannot tokenize text for this model", ckpt);
        goto out;
    }
    MK_CHECK_GOTO(rc, ckpt_tokenizer(f, ckpt, tok_id, &tok), out);
    H5Fclose(f);
    f = -1;
    if (mk_tokenizer_vocab(tok) > cfg.model.vocab) {
        rc = MK_FAIL(MK_ERR_INPUT, "%s: tokenizer %s has %d ids but model.vocab is %d", ckpt, tok_id,
                     mk_tokenizer_vocab(tok), cfg.model.vocab);
        goto out;
    }

    MK_CHECK_GOTO(rc, read_file(text_path, &text, &len), out);
    MK_CHECK_GOTO(rc, mk_tokenizer_encode(tok, text, len, &ids, &nids, &cap), out);
    free(text);
    text = NULL;
    if (nids < 2) {
        rc = MK_FAIL(MK_ERR_INPUT, "%s: %zu token%s: need at least 2 to predict one", text_path, nids,
                     nids == 1 ? "" : "s");
        goto out;
    }

    MK_CHECK_GOTO(rc, mk_trainer_create(&cfg, NULL, &tr), out);
    mk_ckpt_meta meta;
    MK_CHECK_GOTO(rc, mk_ckpt_load(tr, ckpt, &meta), out);
    mk_model *m = mk_trainer_model(tr);

    /* Consecutive windows of T inputs; targets are the next tokens; the last window is
     * padded (token 0, target -1). */
    const int T = cfg.model.seq_len, B = cfg.train.micro_batch;
    const size_t ntargets = nids - 1, nwin = (ntargets + (size_t)T - 1) / (size_t)T;
    tokens = malloc((size_t)B * T * sizeof *tokens);
    targets = malloc((size_t)B * T * sizeof *targets);
    if (!tokens || !targets) {
        rc = MK_FAIL(MK_ERR_NOMEM, "out of memory");
        goto out;
    }
    double ce = 0;
    long counted = 0;
    for (size_t w0 = 0; w0 < nwin; w0 += (size_t)B) {
        const int b = nwin - w0 < (size_t)B ? (int)(nwin - w0) : B;
        for (int s = 0; s < b; s++)
            for (int t = 0; t < T; t++) {
                const size_t pos = (w0 + (size_t)s) * (size_t)T + (size_t)t;
                tokens[s * T + t] = pos < ntargets ? ids[pos] : 0;
                targets[s * T + t] = pos < ntargets ? ids[pos + 1] : -1;
            }
        mk_forward_stats fs;
        MK_CHECK_GOTO(rc, mk_model_forward(m, tokens, targets, b, NULL, 0, &fs), out);
        ce += fs.ce_sum;
        counted += fs.targets;
    }
    if (counted != (long)ntargets) {
        rc = MK_FAIL(MK_ERR_INTERNAL, "eval counted %ld targets, expected %zu", counted, ntargets);
        goto out;
    }
    const double loss = ce / (double)counted;
    if (!isfinite(loss)) {
        rc = MK_FAIL(MK_ERR_NUMERIC, "%s on %s: the loss is not finite (%g)", ckpt, text_path, loss);
        goto out;
    }
    printf("tokens %ld loss %.6f ppl %.6f\n", counted, loss, exp(loss));
    if (fflush(stdout) != 0) rc = MK_FAIL(MK_ERR_IO, "standard output: %s", strerror(errno));
out:
    if (f >= 0) H5Fclose(f);
    kv_free(&kv);
    mk_trainer_free(&tr);
    mk_tokenizer_free(&tok);
    free(text);
    free(ids);
    free(tokens);
    free(targets);
    return rc;
}

/* ================================================================== main */

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, PROG ": ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, " (try 'moe-ckpt --help')\n"); /* one line, like every other error */
    return MK_ERR_USAGE;
}

int main(int argc, char **argv)
{
    enum { OPT_OPTIM = 256 };
    static const struct option longopts[] = {
        { "verbose", no_argument, NULL, 'v' },       { "quiet", no_argument, NULL, 'q' },
        { "optim", no_argument, NULL, OPT_OPTIM },   { "tolerance", required_argument, NULL, 't' },
        { "threads", required_argument, NULL, 'j' }, { "batch", required_argument, NULL, 'b' },
        { "help", no_argument, NULL, 'h' },          { "version", no_argument, NULL, 'V' },
        { NULL, 0, NULL, 0 },
    };
    if (argc < 2) return usage_error("no command: give info, verify, diff or eval", "");
    const char *cmd = argv[1];
    if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "-V") == 0 || strcmp(cmd, "--version") == 0) {
        printf("moe-ckpt (moekit) %s\n", PACKAGE_VERSION);
        return 0;
    }
    enum { INFO, VERIFY, DIFF, EVAL } which;
    if (strcmp(cmd, "info") == 0) which = INFO;
    else if (strcmp(cmd, "verify") == 0) which = VERIFY;
    else if (strcmp(cmd, "diff") == 0) which = DIFF;
    else if (strcmp(cmd, "eval") == 0) which = EVAL;
    else if (cmd[0] == '-') return usage_error("unknown option '%s' (the command comes first)", cmd);
    else return usage_error("unknown command '%s': give info, verify, diff or eval", cmd);

    int verbose = 0, quiet = 0, optim = 0, tol_given = 0, batch_given = 0, c;
    double tol = 0;
    const char *threads = NULL, *batch = "4";
    /* Options may come before or after the files; argv[1], the command, is getopt's argv[0]. */
    int sargc = argc - 1;
    char **sargv = argv + 1;
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(sargc, sargv, ":vqt:j:b:hV", longopts, NULL)) != -1) {
        char *end;
        switch (c) {
        case 'v': verbose = 1; break;
        case 'q': quiet = 1; break;
        case OPT_OPTIM: optim = 1; break;
        case 't':
            tol = strtod(optarg, &end);
            if (end == optarg || *end || !(tol >= 0) || isinf(tol))
                return usage_error("--tolerance: '%s' is not a number >= 0", optarg);
            tol_given = 1;
            break;
        case 'j': threads = optarg; break;
        case 'b': batch = optarg, batch_given = 1; break;
        case 'h': usage(stdout); return 0;
        case 'V': printf("moe-ckpt (moekit) %s\n", PACKAGE_VERSION); return 0;
        default:
            if (c == ':') return usage_error("option '%s' needs an argument", sargv[optind - 1]);
            if (optopt) {
                char o[3] = { '-', (char)optopt, 0 };
                return usage_error("unknown option '%s'", o);
            }
            return usage_error("unknown option '%s'", sargv[optind - 1]);
        }
    }
    /* Options that the command does not take are usage errors, not silently ignored. */
    const char *bad = NULL;
    if (which != DIFF && (quiet || optim || tol_given)) bad = quiet ? "--quiet" : optim ? "--optim" : "--tolerance";
    if (which != EVAL && (threads || batch_given)) bad = threads ? "--threads" : "--batch";
    if ((which == VERIFY || which == EVAL) && verbose) bad = "--verbose";
    if (bad) {
        fprintf(stderr, PROG ": %s: option %s does not apply (try 'moe-ckpt --help')\n", cmd, bad);
        return MK_ERR_USAGE;
    }
    char **files = sargv + optind;
    const int nfiles = sargc - optind;
    const int want = which == INFO ? 1 : which == VERIFY ? -1 : 2;
    if ((want > 0 && nfiles != want) || (want < 0 && nfiles < 1)) {
        static const char *const forms[] = { "info CKPT", "verify CKPT...", "diff A B", "eval CKPT FILE" };
        fprintf(stderr, PROG ": %s: expected %s, got %d file%s (try 'moe-ckpt --help')\n", cmd, forms[which],
                nfiles, nfiles == 1 ? "" : "s");
        return MK_ERR_USAGE;
    }

    /* moekit reports HDF5 failures in one line of its own. */
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    int rc;
    switch (which) {
    case INFO: rc = cmd_info(files[0], verbose); break;
    case VERIFY: rc = cmd_verify(files, nfiles); break;
    case DIFF: {
        diff_opts o = { .tol = tol, .verbose = verbose, .quiet = quiet };
        rc = cmd_diff(files[0], files[1], optim, &o);
        break;
    }
    default: rc = cmd_eval(files[0], files[1], threads, batch); break;
    }
    if (fflush(stdout) != 0 && rc == MK_OK) rc = MK_FAIL(MK_ERR_IO, "standard output: %s", strerror(errno));
    H5close();
    return rc;
}
