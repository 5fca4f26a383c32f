/* Benchmark: decode and verify every chunk of a blob held in memory, the
 * work a read miss costs once the bytes have arrived. Prints MiB/s of
 * uncompressed output (median of N passes).
 *   bench-chunks BLOB [N] */
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/estargz/layer.h"

static double now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

static int cmp_d(const void *a, const void *b) {
        double x = *(const double *) a, y = *(const double *) b;
        return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
        if (argc < 2) {
                fprintf(stderr, "usage: bench-chunks BLOB [N]\n");
                return 2;
        }
        int n = argc > 2 ? atoi(argv[2]) : 5;
        if (n < 1 || n > 100)
                n = 5;
        int fd = open(argv[1], O_RDONLY | O_CLOEXEC);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) < 0) {
                perror(argv[1]);
                return 1;
        }
        uint8_t *blob = malloc((size_t) st.st_size);
        if (!blob || pread(fd, blob, (size_t) st.st_size, 0) != st.st_size) {
                perror("read");
                return 1;
        }
        Layer *l;
        ErrMsg err = {};
        if (layer_open(fd_read_at, &fd, (uint64_t) st.st_size, NULL, &l, &err) < 0) {
                fprintf(stderr, "bench-chunks: %s\n", err.text);
                return 1;
        }
        ChunkDecoder *d;
        if (chunk_decoder_new(&d) < 0)
                return 1;
        uint64_t total = 0;
        for (size_t i = 0; i < l->index->n_chunks; i++)
                total += l->index->chunks[i].size;
        double *t = calloc((size_t) n, sizeof(double));
        for (int pass = 0; pass < n; pass++) {
                double t0 = now();
                for (size_t i = 0; i < l->index->n_chunks; i++) {
                        const IndexChunk *c = &l->index->chunks[i];
                        /* into the decoder's slot, as a read does */
                        uint8_t *out = chunk_decoder_slot(d, (size_t) c->size);
                        if (!out) {
                                fprintf(stderr, "bench-chunks: out of memory\n");
                                return 1;
                        }
                        if (chunk_decode(d, l->footer.format, l->index, c, blob + c->blob_offset,
                                         (size_t) (c->blob_end - c->blob_offset), out, true, &err) < 0) {
                                fprintf(stderr, "bench-chunks: %s\n", err.text);
                                return 1;
                        }
                }
                t[pass] = now() - t0;
        }
        qsort(t, (size_t) n, sizeof(double), cmp_d);
        printf("decode_verify_mib_s=%.1f uncompressed_mib=%.1f chunks=%zu median_s=%.3f\n",
               (double) total / (1 << 20) / t[n / 2], (double) total / (1 << 20), l->index->n_chunks, t[n / 2]);
        free(t);
        free(blob);
        chunk_decoder_free(d);
        layer_free(l);
        close(fd);
        return 0;
}
