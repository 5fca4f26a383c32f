/* Constants of the eStargz / stargz / zstd:chunked layer formats, as the
 * reference implementation (containerd/stargz-snapshotter estargz, v0.12)
 * writes them. */
#pragma once

#include <stdint.h>

typedef enum LayerFormat {
        LAYER_FORMAT_ESTARGZ,       /* gzip members, 51-byte footer */
        LAYER_FORMAT_STARGZ_LEGACY, /* gzip members, 47-byte footer */
        LAYER_FORMAT_ZSTD_CHUNKED,  /* zstd frames, 40-byte footer in a skippable frame */
        _LAYER_FORMAT_MAX,
} LayerFormat;

const char *layer_format_to_string(LayerFormat f);

static inline int layer_format_is_gzip(LayerFormat f) {
        return f == LAYER_FORMAT_ESTARGZ || f == LAYER_FORMAT_STARGZ_LEGACY;
}

#define ESTARGZ_FOOTER_SIZE 51
#define STARGZ_LEGACY_FOOTER_SIZE 47
#define ZSTD_CHUNKED_FOOTER_SIZE 40
#define LAYER_FOOTER_MAX_SIZE 51

#define ESTARGZ_TOC_TAR_NAME "stargz.index.json"
#define ESTARGZ_TOC_DIGEST_ANNOTATION "containerd.io/snapshot/stargz/toc.digest"
#define ESTARGZ_UNCOMPRESSED_SIZE_ANNOTATION "io.containers.estargz.uncompressed-size"
#define ESTARGZ_PREFETCH_LANDMARK ".prefetch.landmark"
#define ESTARGZ_NO_PREFETCH_LANDMARK ".no.prefetch.landmark"
#define ESTARGZ_LANDMARK_CONTENTS 0x0f
#define ESTARGZ_DEFAULT_CHUNK_SIZE (4u << 20)

#define WHITEOUT_PREFIX ".wh."
#define WHITEOUT_OPAQUE ".wh..wh..opq"
