/* mk_ckpt.h - HDF5 checkpoints (DESIGN section 6; docs/checkpoint-format.md).
 *
 * run.dir/ckpt/step_XXXXXXXX.h5, one file, global (unsharded) shapes:
 *   /            attributes format = "moekit-checkpoint", format_version = 1, step,
 *                tokens_seen, tokenizer (id, e.g. "byte" or "bpe:<sha256>")
 *   /config      one string attribute per setting, named as in docs/settings.md
 *   /model/NAME  one float32 dataset per parameter (names of mk_model_tensor), chunked,
 *                Fletcher32-checksummed
 *   /optim/m/NAME, /optim/v/NAME   AdamW moments, same shapes
 *   /state       attributes samples_consumed, optimizer_step, world_size, ep, seed
 *   /tokenizer/ranks               the BPE ranks file's bytes (uint8), for BPE runs
 * The file is written under a temporary name, fsynced, renamed, the directory fsynced; then
 * ckpt/latest (the file name, one line) is replaced the same way; then all but the newest
 * ckpt.keep checkpoints are removed.
 */
#ifndef MK_CKPT_H
#define MK_CKPT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "mk_trainer.h"

#define MK_CKPT_FORMAT "moekit-checkpoint"
#define MK_CKPT_VERSION 1

typedef struct mk_ckpt_meta {
    long step;                  /* optimizer steps done */
    long tokens_seen;
    uint64_t samples_consumed;  /* global samples consumed: the data position */
    char tokenizer[80];
} mk_ckpt_meta;

/* Collective over the trainer's world: expert shards are gathered, rank 0 writes.
 * ranks_path: the BPE ranks file to embed, or NULL. *written gets the path (may be NULL). */
int mk_ckpt_save(mk_trainer *tr, const char *run_dir, const mk_ckpt_meta *meta, int keep,
                 const char *ranks_path, char *written, size_t written_n);

/* Every rank reads path and takes its slices (any world size or ep). The checkpoint's
 * model shape must equal the trainer's: MK_ERR_USAGE naming the first differing key. */
int mk_ckpt_load(mk_trainer *tr, const char *path, mk_ckpt_meta *meta);

/* Check a checkpoint without loading it: format and version attributes, every /model and
 * /optim dataset present with matching shapes, every dataset readable (Fletcher32 checks
 * the bytes) and finite. MK_OK, or MK_ERR_INPUT with why[] naming the file and dataset. */
int mk_ckpt_verify(const char *path, char *why, size_t why_n);

/* The newest checkpoint of run_dir/ckpt that verifies (by step number, not the latest
 * pointer, which may lag a crash). Each skipped file is reported on log. MK_ERR_INPUT if
 * there is none. */
int mk_ckpt_find(const char *run_dir, char *path, size_t n, FILE *log);

#endif
