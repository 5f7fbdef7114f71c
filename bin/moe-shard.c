/* moe-shard - turn a multi-domain corpus into a moekit dataset directory.
 *
 * Runs as one process or under mpirun/srun; the output does not depend on the rank count.
 * See moe-shard(1) and mk_shard.h for the layout.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <getopt.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mk_error.h"
#include "mk_indexed.h"
#include "mk_shard.h"

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: moe-shard --domain NAME=PATH[,PATH...]... -o DIR [options]\n"
            "Tokenize a multi-domain corpus into a moekit dataset (moekit " PACKAGE_VERSION ").\n"
            "\n"
            "  -d, --domain NAME=PATHS   a domain and its input files (repeat for each domain);\n"
            "                            *.jsonl/*.json are JSON lines, anything else plain text\n"
            "  -o, --output DIR          dataset directory to create (must not exist)\n"
            "  -t, --tokenizer T         byte (default), or a tiktoken ranks file for BPE\n"
            "      --bpe-train SIZE      train a BPE vocabulary of SIZE ranks on the train split\n"
            "      --val-fraction F      share of documents held out for validation (default 0.05)\n"
            "      --shard-size BYTES    largest .bin file, with K/M/G suffixes (default 1G)\n"
            "      --text-docs MODE      blank: documents are separated by empty lines (default);\n"
            "                            file: each text file is one document\n"
            "      --text-field NAME     JSON field holding the text (default: text)\n"
            "      --dtype D             auto (default: uint16 below 65500 tokens, else int32),\n"
            "                            uint16 or int32\n"
            "  -q, --quiet               no progress lines\n"
            "  -h, --help                this help\n"
            "  -V, --version             print the version\n"
            "\n"
            "Writes DIR/manifest.json and DIR/<domain>/{train,val}_NNNNN.{bin,idx} (Megatron-LM\n"
            "indexed datasets). Exit status: 0 ok, 2 usage, 3 bad input, 4 I/O, 5 out of memory,\n"
            "7 internal error, 8 another rank or a collective failed.\n");
}

static int parse_size(const char *s, uint64_t *out)
{
    char *end;
    double v = strtod(s, &end);
    double mult = 1;
    if (*end == 'K' || *end == 'k') mult = 1024, end++;
    else if (*end == 'M' || *end == 'm') mult = 1024.0 * 1024, end++;
    else if (*end == 'G' || *end == 'g') mult = 1024.0 * 1024 * 1024, end++;
    if (end == s || *end || !(v > 0) || v * mult > 1e18)
        return MK_FAIL(MK_ERR_USAGE, "--shard-size: '%s' is not a size like 512M", s);
    *out = (uint64_t)(v * mult);
    return MK_OK;
}

/* Options are parsed on every rank (all see the same argv), errors printed by rank 0. */
static int parse(int argc, char **argv, mk_shard_opts *o, mk_shard_domain **doms, int rank)
{
    static const struct option longopts[] = {
        { "domain", required_argument, NULL, 'd' }, { "output", required_argument, NULL, 'o' },
        { "tokenizer", required_argument, NULL, 't' }, { "bpe-train", required_argument, NULL, 1 },
        { "val-fraction", required_argument, NULL, 2 }, { "shard-size", required_argument, NULL, 3 },
        { "text-docs", required_argument, NULL, 4 }, { "text-field", required_argument, NULL, 5 },
        { "dtype", required_argument, NULL, 6 }, { "quiet", no_argument, NULL, 'q' },
        { "help", no_argument, NULL, 'h' }, { "version", no_argument, NULL, 'V' }, { NULL, 0, NULL, 0 },
    };
    int c, quiet = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":d:o:t:qhV", longopts, NULL)) != -1) {
        char *end;
        switch (c) {
        case 'd': {
            char *eq = strchr(optarg, '=');
            if (!eq || eq == optarg || !eq[1])
                return rank ? MK_ERR_USAGE : MK_FAIL(MK_ERR_USAGE, "--domain '%s': expected NAME=PATH[,PATH...]", optarg);
            mk_shard_domain *nd = realloc(*doms, (size_t)(o->ndomains + 1) * sizeof *nd);
            if (!nd) return MK_FAIL(MK_ERR_NOMEM, "out of memory");
            *doms = nd;
            mk_shard_domain *d = &nd[o->ndomains++];
            *eq = 0;
            d->name = optarg;
            d->paths = NULL;
            d->npaths = 0;
            char *save = NULL;
            for (char *p = strtok_r(eq + 1, ",", &save); p; p = strtok_r(NULL, ",", &save)) {
                const char **np = realloc(d->paths, (size_t)(d->npaths + 1) * sizeof *np);
                if (!np) return MK_FAIL(MK_ERR_NOMEM, "out of memory");
                d->paths = np;
                d->paths[d->npaths++] = p;
            }
            break;
        }
        case 'o': o->out_dir = optarg; break;
        case 't': o->tokenizer = optarg; break;
        case 1:
            o->bpe_train = (int)strtol(optarg, &end, 10);
            if (*end || end == optarg)
                return rank ? MK_ERR_USAGE : MK_FAIL(MK_ERR_USAGE, "--bpe-train: '%s' is not an integer", optarg);
            break;
        case 2:
            o->val_fraction = strtod(optarg, &end);
            if (*end || end == optarg)
                return rank ? MK_ERR_USAGE : MK_FAIL(MK_ERR_USAGE, "--val-fraction: '%s' is not a number", optarg);
            break;
        case 3: {
            int rc = rank ? (parse_size(optarg, &o->shard_bytes) ? MK_ERR_USAGE : MK_OK) : parse_size(optarg, &o->shard_bytes);
            if (rc) return rc;
            break;
        }
        case 4:
            if (strcmp(optarg, "blank") == 0) o->text_format = MK_CORPUS_TEXT_BLANK;
            else if (strcmp(optarg, "file") == 0) o->text_format = MK_CORPUS_TEXT_FILE;
            else return rank ? MK_ERR_USAGE : MK_FAIL(MK_ERR_USAGE, "--text-docs: '%s' is not blank or file", optarg);
            break;
        case 5: o->text_field = optarg; break;
        case 6:
            if (strcmp(optarg, "auto") == 0) o->dtype = 0;
            else if (strcmp(optarg, "uint16") == 0) o->dtype = MK_DTYPE_UINT16;
            else if (strcmp(optarg, "int32") == 0) o->dtype = MK_DTYPE_INT32;
            else return rank ? MK_ERR_USAGE : MK_FAIL(MK_ERR_USAGE, "--dtype: '%s' is not auto, uint16 or int32", optarg);
            break;
        case 'q': quiet = 1; break;
        case 'h': if (!rank) usage(stdout); return -1;
        case 'V': if (!rank) printf("moe-shard (moekit) %s\n", PACKAGE_VERSION); return -1;
        default:
            if (!rank) {
                if (c == ':')
                    fprintf(stderr, "moe-shard: option '%s' needs an argument (try 'moe-shard --help')\n", argv[optind - 1]);
                else if (optopt)
                    fprintf(stderr, "moe-shard: unknown option '-%c' (try 'moe-shard --help')\n", optopt);
                else
                    fprintf(stderr, "moe-shard: unknown option '%s' (try 'moe-shard --help')\n", argv[optind - 1]);
            }
            return MK_ERR_USAGE;
        }
    }
    if (optind < argc)
        return rank ? MK_ERR_USAGE : MK_FAIL(MK_ERR_USAGE, "unexpected argument '%s' (try --help)", argv[optind]);
    if (!o->out_dir) return rank ? MK_ERR_USAGE : MK_FAIL(MK_ERR_USAGE, "no output: give -o DIR");
    o->domains = *doms;
    o->progress = quiet || rank ? NULL : stderr;
    return MK_OK;
}

int main(int argc, char **argv)
{
    if (MPI_Init(&argc, &argv) != MPI_SUCCESS) {
        fprintf(stderr, "moe-shard: MPI_Init failed\n");
        return MK_ERR_COMM;
    }
    int rank, world;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    mk_shard_opts o = { .tokenizer = "byte", .val_fraction = 0.05, .shard_bytes = 1ull << 30,
                        .text_format = MK_CORPUS_TEXT_BLANK, .text_field = "text" };
    mk_shard_domain *doms = NULL;
    int rc = parse(argc, argv, &o, &doms, rank);
    if (rc == 0) {
        mk_shard_result res;
        rc = mk_shard_run(&o, MPI_COMM_WORLD, &res);
        if (rc == MK_OK && rank == 0 && o.progress)
            fprintf(stderr, "moe-shard: %s: %d domains, %llu documents, %llu tokens from %.1f MB in %.1f s "
                    "(%.2f MB/s, %d rank%s)\n", o.out_dir, o.ndomains, (unsigned long long)res.documents,
                    (unsigned long long)res.tokens, res.input_bytes / 1e6, res.seconds,
                    res.seconds > 0 ? res.input_bytes / 1e6 / res.seconds : 0.0, world, world > 1 ? "s" : "");
    } else if (rc < 0) {
        rc = 0; /* --help or --version */
    }
    for (int i = 0; i < o.ndomains; i++) free(doms[i].paths);
    free(doms);
    MPI_Finalize();
    return rc;
}
