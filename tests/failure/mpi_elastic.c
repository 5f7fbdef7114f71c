/* mpi_elastic.c SCHEDULE DATA DIR - T13: elastic resume across every ordered pair of
 * (world, ep) in {(1,1), (2,1), (2,2), (4,2), (4,4)}, in one 4-rank job.
 *
 * For each layout a, ranks 0..world-1 train 11 steps (global batch 4 sequences, a
 * checkpoint after step 10). For each other layout b, ranks 0..world_b-1 load a's step-10
 * checkpoint into layout b and save it again: every dataset of the new file (/model,
 * /optim/m, /optim/v) must be bitwise equal to a's (the /state and /config attributes say
 * world and ep and may differ). Then layout b resumes from a's checkpoint and trains step
 * 11: its loss must equal a's step-11 loss within a relative error of 1e-5.
 * TAP on rank 0; one line per pair, with the figures.
 */
#include <hdf5.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mk_ckpt.h"
#include "mk_comm.h"
#include "mk_config.h"
#include "mk_error.h"
#include "mk_fs.h"
#include "mk_train.h"
#include "mk_trainer.h"

enum { NL = 5 };
static const int lw[NL] = { 1, 2, 2, 4, 4 }, le[NL] = { 1, 1, 2, 2, 4 };

static int make_cfg(mk_config *c, const char *schedule, const char *data, int l, const char *dir)
{
    char b[4096 + 64];
    mk_config_defaults(c);
    MK_CHECK(mk_config_load_ini(c, schedule));
    const char *sets[] = { "model.d_model=32", "model.ffn=32", "model.seq_len=32", "train.grad_accum=1",
                           "train.warmup=2", "train.threads=1", "log.every=0", "train.steps=11",
                           "ckpt.every=10", "ckpt.keep=5", "lbl.mode=global" };
    for (size_t i = 0; i < sizeof sets / sizeof *sets; i++) MK_CHECK(mk_config_set(c, sets[i], "test"));
    snprintf(b, sizeof b, "train.micro_batch=%d", 4 / lw[l]);
    MK_CHECK(mk_config_set(c, b, "test"));
    snprintf(b, sizeof b, "parallel.ep=%d", le[l]);
    MK_CHECK(mk_config_set(c, b, "test"));
    snprintf(b, sizeof b, "data.path=%s", data);
    MK_CHECK(mk_config_set(c, b, "test"));
    snprintf(b, sizeof b, "run.dir=%s", dir);
    MK_CHECK(mk_config_set(c, b, "test"));
    return MK_OK;
}

/* ---- bitwise comparison of every dataset of two files (rank 0, serial HDF5) */
typedef struct cmp { hid_t other; int datasets, differ; char first[256]; } cmp;

static herr_t cmp_link(hid_t g, const char *name, const H5L_info_t *info, void *arg)
{
    (void)info;
    cmp *c = arg;
    hid_t o = H5Oopen(g, name, H5P_DEFAULT);
    if (o < 0) return -1;
    const int is_ds = H5Iget_type(o) == H5I_DATASET;
    H5Oclose(o);
    if (!is_ds) return 0;
    c->datasets++;
    int same = 0;
    if (H5Lexists(c->other, name, H5P_DEFAULT) > 0) {
        hid_t a = H5Dopen2(g, name, H5P_DEFAULT), b = H5Dopen2(c->other, name, H5P_DEFAULT);
        hid_t ta = H5Dget_type(a), tb = H5Dget_type(b), sa = H5Dget_space(a), sb = H5Dget_space(b);
        const hssize_t na = H5Sget_simple_extent_npoints(sa), nb = H5Sget_simple_extent_npoints(sb);
        if (H5Tequal(ta, tb) > 0 && na == nb && na >= 0) {
            hid_t nt = H5Tget_native_type(ta, H5T_DIR_DEFAULT);
            const size_t bytes = (size_t)na * H5Tget_size(nt);
            unsigned char *ba = malloc(bytes + 1), *bb = malloc(bytes + 1);
            same = ba && bb && H5Dread(a, nt, H5S_ALL, H5S_ALL, H5P_DEFAULT, ba) >= 0 &&
                   H5Dread(b, nt, H5S_ALL, H5S_ALL, H5P_DEFAULT, bb) >= 0 && memcmp(ba, bb, bytes) == 0;
            free(ba);
            free(bb);
            H5Tclose(nt);
        }
        H5Sclose(sa); H5Sclose(sb); H5Tclose(ta); H5Tclose(tb); H5Dclose(a); H5Dclose(b);
    }
    if (!same && c->differ++ == 0) snprintf(c->first, sizeof c->first, "%s", name);
    return 0;
}

static herr_t count_link(hid_t g, const char *name, const H5L_info_t *info, void *arg)
{
    (void)info;
    hid_t o = H5Oopen(g, name, H5P_DEFAULT);
    if (o < 0) return -1;
    if (H5Iget_type(o) == H5I_DATASET) ++*(int *)arg;
    H5Oclose(o);
    return 0;
}

/* Datasets of a compared with b: *n compared, returns the number that differ (or -1). */
static int compare_files(const char *pa, const char *pb, int *n, char *first, size_t fn)
{
    hid_t fa = H5Fopen(pa, H5F_ACC_RDONLY, H5P_DEFAULT), fb = H5Fopen(pb, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (fa < 0 || fb < 0) return -1;
    cmp c = { .other = fb };
    int in_b = 0;
    H5Lvisit(fa, H5_INDEX_NAME, H5_ITER_NATIVE, cmp_link, &c);
    H5Lvisit(fb, H5_INDEX_NAME, H5_ITER_NATIVE, count_link, &in_b);
    H5Fclose(fa);
    H5Fclose(fb);
    *n = c.datasets;
    snprintf(first, fn, "%s", c.first);
    return c.differ + (in_b != c.datasets);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    mk_comm *world = NULL;
    if (argc != 4 || mk_comm_world(&world) != MK_OK || mk_comm_size(world) != 4) {
        fprintf(stderr, "usage: mpirun -n 4 mpi_elastic SCHEDULE DATA DIR\n");
        MPI_Abort(MPI_COMM_WORLD, MK_ERR_USAGE);
    }
    const int rank = mk_comm_rank(world);
    mk_comm *group[NL];
    for (int l = 0; l < NL; l++) MK_CHECK(mk_comm_split(world, rank < lw[l] ? 0 : 1, rank, &group[l]));
    char dir[4096], ck[4200], out[4200];
    double loss11[NL] = { 0 };
    int bad = 0, t = 0, rc;
    /* the five layouts train 11 steps from scratch */
    for (int a = 0; a < NL; a++) {
        mk_config cfg;
        snprintf(dir, sizeof dir, "%s/src%d", argv[3], a);
        if (rank < lw[a]) {
            mk_train_result res;
            mk_train_opts o = { .world = group[a] };
            if ((rc = make_cfg(&cfg, argv[1], argv[2], a, dir)) || (rc = mk_train_run(&cfg, &o, &res)))
                MPI_Abort(MPI_COMM_WORLD, rc);
            loss11[a] = res.final_loss;
        }
        MPI_Bcast(&loss11[a], 1, MPI_DOUBLE, 0, MPI_COMM_WORLD);
    }
    if (rank == 0) printf("1..41\n");
    for (int a = 0; a < NL; a++) {
        for (int b = 0; b < NL; b++) {
            if (a == b) continue;
            snprintf(ck, sizeof ck, "%s/src%d/ckpt/step_00000010.h5", argv[3], a);
            snprintf(dir, sizeof dir, "%s/re%d%d", argv[3], a, b);
            mk_config cfg;
            if (rank == 0 && (rc = mk_fs_mkdir_p(dir))) MPI_Abort(MPI_COMM_WORLD, rc);
            MPI_Barrier(MPI_COMM_WORLD);
            if (rank < lw[b]) { /* load into layout b and save again */
                mk_trainer *tr = NULL;
                mk_ckpt_meta meta;
                if ((rc = make_cfg(&cfg, argv[1], argv[2], b, dir)) || (rc = mk_trainer_create(&cfg, group[b], &tr)) ||
                    (rc = mk_ckpt_load(tr, ck, &meta)) || (rc = mk_ckpt_save(tr, dir, &meta, 1, NULL, NULL, 0)))
                    MPI_Abort(MPI_COMM_WORLD, rc);
                mk_trainer_free(&tr);
            }
            MPI_Barrier(MPI_COMM_WORLD);
            if (rank == 0) {
                int n = 0;
                char first[256] = "";
                snprintf(out, sizeof out, "%s/ckpt/step_00000010.h5", dir);
                const int d = compare_files(ck, out, &n, first, sizeof first);
                bad += d != 0 || n == 0;
                printf("%s %d - (world %d, ep %d) -> (world %d, ep %d): load + save: %d datasets, %d differ%s%s\n",
                       d == 0 && n > 0 ? "ok" : "not ok", ++t, lw[a], le[a], lw[b], le[b], n, d < 0 ? -1 : d,
                       first[0] ? ", first " : "", first);
            } else {
                t++;
            }
            /* layout b trains step 11 from a's checkpoint */
            double got = 0;
            snprintf(dir, sizeof dir, "%s/next%d%d", argv[3], a, b);
            if (rank < lw[b]) {
                mk_train_result res;
                mk_train_opts o = { .world = group[b], .resume = ck };
                if ((rc = make_cfg(&cfg, argv[1], argv[2], b, dir)) || (rc = mk_train_run(&cfg, &o, &res)))
                    MPI_Abort(MPI_COMM_WORLD, rc);
                got = res.final_loss;
            }
            if (rank == 0) {
                const double rel = fabs(got - loss11[a]) / fabs(loss11[a]);
                bad += !(rel < 1e-5);
                printf("%s %d - (world %d, ep %d) -> (world %d, ep %d): step 11 loss %.9g vs %.9g, relative error %.1e\n",
                       rel < 1e-5 ? "ok" : "not ok", ++t, lw[a], le[a], lw[b], le[b], got, loss11[a], rel);
                fflush(stdout);
            } else {
                t++;
            }
            MPI_Barrier(MPI_COMM_WORLD);
        }
    }
    if (rank == 0) { /* the comparison can fail: steps 10 and 11 of one run differ */
        int n = 0;
        char first[256] = "";
        snprintf(ck, sizeof ck, "%s/src0/ckpt/step_00000010.h5", argv[3]);
        snprintf(out, sizeof out, "%s/src0/ckpt/step_00000011.h5", argv[3]);
        const int d = compare_files(ck, out, &n, first, sizeof first);
        bad += !(d > 0);
        printf("%s 41 - control: the step-10 and step-11 checkpoints of one run differ in %d of %d datasets\n",
               d > 0 ? "ok" : "not ok", d, n);
    }
    for (int l = 0; l < NL; l++) mk_comm_free(&group[l]);
    mk_comm_free(&world);
    MPI_Bcast(&bad, 1, MPI_INT, 0, MPI_COMM_WORLD);
    MPI_Finalize();
    return bad ? 1 : 0;
}
