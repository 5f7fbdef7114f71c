/* mk_sha256.h - SHA-256 (FIPS 180-4) for content hashes in manifests and tokenizer ids. */
#ifndef MK_SHA256_H
#define MK_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct mk_sha256 {
    uint32_t h[8];
    uint64_t len;           /* bytes hashed so far */
    unsigned char buf[64];
    size_t fill;
} mk_sha256;

void mk_sha256_init(mk_sha256 *s);
void mk_sha256_update(mk_sha256 *s, const void *data, size_t n);
void mk_sha256_final(mk_sha256 *s, unsigned char digest[32]);
/* Digest of data as 64 lowercase hex characters and a NUL. */
void mk_sha256_hex(const void *data, size_t n, char hex[65]);
void mk_sha256_to_hex(const unsigned char digest[32], char hex[65]);
/* Hash a whole file; MK_ERR_INPUT naming path if it cannot be read. */
int mk_sha256_file(const char *path, char hex[65], uint64_t *bytes);

#endif
