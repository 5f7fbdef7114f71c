/* mpi_batches.c DATASET dump N - print the loader's first N samples (domain, T+1 tokens).
 * mpi_batches.c DATASET STEPS GLOBAL_BATCH GRAD_ACCUM [FIRST [warm]] - every rank loads its
 * slices of STEPS global batches the way the trainer does (mk_sample_index), rank 0 gathers
 * them in global order and prints one SHA-256 over tokens, targets and domains. The same
 * hash for 1, 2 and 4 ranks shows the batches do not depend on the rank count.
 * FIRST: start at global batch FIRST the way a run resumed there does (a fresh loader, the
 * samples consumed as base, steps counted from the resume); "warm": read batches
 * 0..FIRST-1 first, like a run that never stopped (the loader keeps its position).
 * mpi_batches.c DATASET boundary GLOBAL_BATCH - the first global batch holding a sample
 * of a domain's second epoch (its train split repeats from there), and that domain.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mk_dataset.h"
#include "mk_error.h"
#include "mk_sha256.h"

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank, world;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    const int T = 32;
    if (argc == 4 && strcmp(argv[2], "dump") == 0) { /* dump N: print samples 0..N-1, one line each */
        mk_dataset_opts o = { .path = argv[1], .mixture = "natural", .seq_len = T, .seed = 7,
                              .tokenizer = "", .model_vocab = 1 << 20 };
        mk_dataset *d;
        int n = atoi(argv[3]), rc = mk_dataset_open(&o, &d);
        int32_t tok[T], tgt[T], dom;
        for (int i = 0; rc == MK_OK && i < n; i++) {
            rc = mk_dataset_samples(d, (uint64_t)i, 1, tok, tgt, &dom);
            printf("%d", dom);
            for (int t = 0; t < T; t++) printf(" %d", tok[t]);
            printf(" %d\n", tgt[T - 1]);
        }
        mk_dataset_close(&d);
        MPI_Finalize();
        return rc;
    }
    if (argc == 4 && strcmp(argv[2], "boundary") == 0) { /* where the first domain repeats */
        mk_dataset_opts o = { .path = argv[1], .mixture = "uniform", .repeat_cap = 0, .seq_len = T,
                              .seed = 7, .tokenizer = "", .model_vocab = 1 << 20 };
        mk_dataset *d;
        int rc = mk_dataset_open(&o, &d);
        const int D = rc ? 0 : mk_dataset_domains(d), GB = atoi(argv[3]);
        uint64_t count[64] = { 0 }, W[64];
        for (int i = 0; i < D && i < 64; i++) W[i] = (mk_dataset_domain_tokens(d, i, 0) - 1) / T;
        int32_t tok[T], tgt[T], dom = -1;
        uint64_t i = 0;
        for (; rc == MK_OK && D > 0 && D <= 64; i++) {
            rc = mk_dataset_samples(d, i, 1, tok, tgt, &dom);
            if (rc == MK_OK && ++count[dom] > W[dom]) break;
        }
        if (rc == MK_OK && D > 0) printf("%llu %s\n", (unsigned long long)(i / (uint64_t)GB), mk_dataset_domain_name(d, dom));
        mk_dataset_close(&d);
        MPI_Finalize();
        return rc ? rc : D > 0 ? 0 : MK_ERR_INPUT;
    }
    if (argc < 5 || argc > 7) {
        if (!rank) fprintf(stderr, "usage: mpi_batches DATASET STEPS GLOBAL_BATCH GRAD_ACCUM [FIRST [warm]]\n");
        MPI_Finalize();
        return MK_ERR_USAGE;
    }
    const int steps = atoi(argv[2]), GB = atoi(argv[3]), G = atoi(argv[4]);
    const long first = argc > 5 ? atol(argv[5]) : 0;
    const int warm = argc > 6 && strcmp(argv[6], "warm") == 0;
    const int B = GB / (G * world);
    if (B * G * world != GB) {
        if (!rank) fprintf(stderr, "global batch %d is not divisible by %d ranks x %d micro-steps\n", GB, world, G);
        MPI_Finalize();
        return MK_ERR_USAGE;
    }
    mk_dataset_opts o = { .path = argv[1], .mixture = "uniform", .repeat_cap = 0, .seq_len = T,
                          .seed = 7, .tokenizer = "", .model_vocab = 1 << 20 };
    mk_dataset *d;
    int rc = mk_dataset_open(&o, &d);
    if (rc) MPI_Abort(MPI_COMM_WORLD, rc);
    const size_t row = 2 * (size_t)T + 1; /* tokens, targets, domain */
    int32_t *mine = malloc((size_t)G * B * row * sizeof *mine), *all = malloc((size_t)GB * row * sizeof *all);
    int32_t *tok = malloc((size_t)B * T * sizeof *tok), *tgt = malloc((size_t)B * T * sizeof *tgt), *dom = malloc((size_t)B * sizeof *dom);
    mk_sha256 h;
    mk_sha256_init(&h);
    /* a run that never stopped: the loader has served every earlier batch */
    for (long s = 0; warm && s < first; s++)
        for (int g = 0; g < G; g++) {
            rc = mk_dataset_samples(d, mk_sample_index((uint64_t)s, g, rank, world, B, G, 0), B, tok, tgt, dom);
            if (rc) MPI_Abort(MPI_COMM_WORLD, rc);
        }
    /* as mk_train.c's load_step: the checkpoint's samples consumed + the index since resuming */
    const uint64_t base = warm ? 0 : (uint64_t)first * (uint64_t)GB;
    const long s0 = warm ? first : 0;
    for (long s = s0; s < s0 + steps; s++) {
        for (int g = 0; g < G; g++) {
            rc = mk_dataset_samples(d, base + mk_sample_index((uint64_t)s, g, rank, world, B, G, 0), B, tok, tgt, dom);
            if (rc) MPI_Abort(MPI_COMM_WORLD, rc);
            for (int b = 0; b < B; b++) {
                int32_t *r = mine + ((size_t)g * B + b) * row;
                for (int t = 0; t < T; t++) {
                    r[t] = tok[b * T + t];
                    r[T + t] = tgt[b * T + t];
                }
                r[2 * T] = dom[b];
            }
        }
        /* all[rank][g][b] -> global order g, rank, b */
        MPI_Gather(mine, (int)((size_t)G * B * row), MPI_INT32_T, all, (int)((size_t)G * B * row), MPI_INT32_T, 0,
                   MPI_COMM_WORLD);
        if (rank == 0)
            for (int g = 0; g < G; g++)
                for (int r = 0; r < world; r++)
                    mk_sha256_update(&h, all + ((size_t)r * G * B + (size_t)g * B) * row, (size_t)B * row * sizeof(int32_t));
    }
    if (rank == 0) {
        unsigned char dg[32];
        char hex[65];
        mk_sha256_final(&h, dg);
        mk_sha256_to_hex(dg, hex);
        printf("%s\n", hex);
    }
    free(mine);
    free(all);
    free(tok);
    free(tgt);
    free(dom);
    mk_dataset_close(&d);
    MPI_Finalize();
    return 0;
}
