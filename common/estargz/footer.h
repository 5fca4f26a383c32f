/* The footer at the end of a layer blob, which says where the TOC is.
 * Pure functions over bytes; no I/O. */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "common/estargz/format.h"
#include "common/util/errmsg.h"

typedef struct Footer {
        LayerFormat format;
        uint64_t footer_size;  /* bytes of footer at the end of the blob */
        uint64_t toc_offset;   /* where the compressed TOC starts */
        uint64_t toc_size;     /* compressed TOC bytes: [toc_offset, toc_offset + toc_size) */
        uint64_t toc_raw_size; /* uncompressed TOC JSON bytes, 0 when the format does not say */
} Footer;

/* Parses the footer from the last min(blob_size, LAYER_FOOTER_MAX_SIZE)
 * bytes of a blob of blob_size bytes. Tries eStargz, then legacy stargz,
 * then zstd:chunked. Returns 0, or -EBADMSG with a message naming every
 * format's reason when none matches (not a stargz layer, truncated footer,
 * TOC offset past the end), -EOPNOTSUPP for a zstd:chunked manifest type
 * other than 1. *ret is untouched on failure. */
int footer_parse(const uint8_t *tail, size_t tail_len, uint64_t blob_size, Footer *ret, ErrMsg *err);

/* The 51-byte eStargz footer for a TOC at toc_offset, byte for byte what the
 * reference writer emits (an empty gzip member with an "SG" extra field). */
void footer_estargz_build(uint64_t toc_offset, uint8_t ret[ESTARGZ_FOOTER_SIZE]);
