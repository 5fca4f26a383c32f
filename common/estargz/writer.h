/* Converting a layer tar (plain, gzip or zstd) into an eStargz blob that
 * the reference reader accepts: every chunk in a gzip member of its own,
 * the TOC as the last tar entry in its own member, the 51-byte footer.
 * Entries named in the prefetch list (with their parents and hardlink
 * targets) come first, then .prefetch.landmark; without a list,
 * .no.prefetch.landmark comes first. A later tar entry of the same name
 * replaces an earlier one, as in the reference builder. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/util/digest.h"
#include "common/util/errmsg.h"

typedef struct ConvertOptions {
        uint64_t chunk_size;       /* 0: 4 MiB */
        int level;                 /* gzip level 1-12 (libdeflate); 0: 6 */
        const char *const *prefetch; /* paths to prefetch, in order; NULL: none */
        size_t n_prefetch;
        bool allow_missing_prefetch; /* skip prefetch paths not in the layer */
        const char *tmpdir;        /* where the input is spooled; NULL: /var/tmp */
} ConvertOptions;

typedef struct ConvertResult {
        uint8_t toc_digest[SHA256_LEN];  /* sha256 of the TOC JSON */
        uint8_t diff_id[SHA256_LEN];     /* sha256 of the uncompressed tar */
        uint8_t blob_digest[SHA256_LEN]; /* sha256 of the blob */
        uint64_t blob_size;
        uint64_t uncompressed_size;
        size_t n_entries;                /* TOC entries, chunks included */
        size_t n_missing_prefetch;
} ConvertResult;

/* Reads the tar from in_fd (a pipe is fine) and writes the blob to out_fd
 * (written sequentially). Returns 0, or -errno with a message: a malformed
 * or truncated tar, a name that is not UTF-8, a prefetch path not in the
 * layer, a full disk (-ENOSPC). */
int estargz_convert(int in_fd, int out_fd, const ConvertOptions *opts, ConvertResult *ret, ErrMsg *err);
