/* Benchmark: open an eStargz blob (footer, TOC decompression, JSON parse,
 * index build) N times; prints the median and the index size. Peak RSS is
 * measured by the caller (tests/bench/run) around one process.
 *   bench-open BLOB [N] */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
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

static size_t index_bytes(const Index *idx) {
        return idx->n_inodes * sizeof(IndexInode) + idx->n_dirents * sizeof(IndexDirent) +
               idx->n_chunks * sizeof(IndexChunk) + idx->n_xattrs * sizeof(IndexXattr) +
               idx->n_digests * SHA256_LEN + idx->pool_len;
}

int main(int argc, char **argv) {
        if (argc < 2) {
                fprintf(stderr, "usage: bench-open BLOB [N]\n");
                return 2;
        }
        int n = argc > 2 ? atoi(argv[2]) : 5;
        if (n < 1 || n > 1000)
                n = 5;
        int fd = open(argv[1], O_RDONLY | O_CLOEXEC);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) < 0) {
                perror(argv[1]);
                return 1;
        }
        double *t = calloc((size_t) n, sizeof(double));
        size_t bytes = 0, inodes = 0;
        for (int i = 0; i < n; i++) {
                Layer *l;
                ErrMsg err = {};
                double t0 = now();
                int r = layer_open(fd_read_at, &fd, (uint64_t) st.st_size, NULL, &l, &err);
                t[i] = now() - t0;
                if (r < 0) {
                        fprintf(stderr, "bench-open: %s\n", err.text);
                        return 1;
                }
                bytes = index_bytes(l->index);
                inodes = l->index->n_inodes;
                layer_free(l);
        }
        qsort(t, (size_t) n, sizeof(double), cmp_d);
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        printf("open_ms=%.2f inodes=%zu index_bytes=%zu bytes_per_inode=%.1f maxrss_kib=%ld\n", t[n / 2] * 1e3, inodes,
               bytes, inodes ? (double) bytes / (double) inodes : 0.0, ru.ru_maxrss);
        free(t);
        close(fd);
        return 0;
}
