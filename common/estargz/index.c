/* TOC -> Index. Works in three passes over temporary nodes:
 *   1. names: clean and check every path, create implicit parents, attach
 *      chunk entries to their file, refuse duplicates;
 *   2. links and overlay: resolve hardlinks, turn whiteouts into 0:0
 *      character devices, mark opaque directories, hide landmarks;
 *   3. numbering: sort each directory's children by name and walk
 *      breadth-first, giving inode numbers in order of first visit.
 * Temporary state is freed before returning; the Index holds only flat
 * arrays. */
#include "common/estargz/index.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/util/encode.h"
#include "common/util/macro.h"
#include "common/util/strbuf.h"

enum {
        NODE_IMPLICIT = 1 << 0, /* directory created as a parent, no TOC entry */
        NODE_HIDDEN = 1 << 1,   /* not shown (landmark, opaque marker, shadowed whiteout) */
        NODE_WHITEOUT = 1 << 2, /* shown as a 0:0 char device under its stripped name */
        NODE_OPAQUE = 1 << 3,
};

typedef struct Node {
        const char *path;   /* cleaned full path, not NUL-terminated (points into the TOC pool) */
        uint32_t path_len;
        uint32_t base;      /* offset of the last component in path */
        uint32_t parent;    /* node index */
        uint32_t entry;     /* TOC entry index, or INDEX_NONE when implicit */
        uint32_t target;    /* hardlinks: node index of the file; INDEX_NONE otherwise */
        uint32_t kids, n_kids; /* children: b->kids[kids .. kids + n_kids) */
        uint32_t ino;       /* 0 until numbered */
        uint32_t first_chunk, n_chunks; /* into the chunk list built in pass 1 */
        uint8_t flags;
        uint8_t type;       /* TocType; TOC_DIR for implicit directories (kept here so
                             * that the tree walk does not chase TOC entries) */
} Node;

typedef struct Builder {
        const Toc *toc;
        const IndexOptions *opts;
        ErrMsg *err;
        Node *nodes;
        size_t n_nodes, cap_nodes;
        uint64_t *table;    /* open addressing: hash << 32 | node index; TABLE_EMPTY = free */
        size_t table_mask;
        uint32_t *kids;     /* children of every node, grouped by parent */
        IndexChunk *chunks;
        size_t n_chunks, cap_chunks;
} Builder;

#define TABLE_EMPTY UINT64_MAX

/* The slot holding path, or the free slot where it would go. The hash kept
 * in the slot spares most probes a visit to the node and its path. */
static uint64_t *table_find(Builder *b, const char *path, size_t len, uint32_t *ret_hash) {
        uint64_t h = hash_bytes(path, len);
        uint32_t h32 = (uint32_t) (h >> 32);
        *ret_hash = h32;
        for (size_t i = h & b->table_mask;; i = (i + 1) & b->table_mask) {
                uint64_t e = b->table[i];
                if (e == TABLE_EMPTY)
                        return &b->table[i];
                if ((uint32_t) (e >> 32) != h32)
                        continue;
                const Node *node = &b->nodes[(uint32_t) e];
                if (node->path_len == len && memcmp(node->path, path, len) == 0)
                        return &b->table[i];
        }
}

/* Node index of path, or INDEX_NONE. */
static uint32_t table_get(Builder *b, const char *path, size_t len) {
        uint32_t h;
        uint64_t e = *table_find(b, path, len, &h);
        return e == TABLE_EMPTY ? INDEX_NONE : (uint32_t) e;
}

static void table_put(Builder *b, uint32_t node) {
        uint32_t h;
        uint64_t *slot = table_find(b, b->nodes[node].path, b->nodes[node].path_len, &h);
        *slot = (uint64_t) h << 32 | node;
}

static int table_grow(Builder *b) {
        size_t size = (b->table_mask + 1) * 2;
        uint64_t *t = malloc(size * sizeof(uint64_t));
        if (!t)
                return -ENOMEM;
        memset(t, 0xff, size * sizeof(uint64_t));
        free(b->table);
        b->table = t;
        b->table_mask = size - 1;
        for (size_t i = 0; i < b->n_nodes; i++)
                table_put(b, (uint32_t) i);
        return 0;
}

static int node_new(Builder *b, const char *path, uint32_t len, uint32_t parent, uint32_t entry, uint32_t *ret) {
        if ((b->n_nodes + 1) * 2 > b->table_mask + 1) {
                int r = table_grow(b);
                if (r < 0)
                        return r;
        }
        if (b->n_nodes >= UINT32_MAX / 2)
                return -EFBIG;
        if (b->n_nodes >= b->cap_nodes) {
                /* the table is sized from the entry count; implicit dirs are bounded by it too */
                size_t nc = b->cap_nodes * 2;
                Node *n = reallocarray(b->nodes, nc, sizeof(Node));
                if (!n)
                        return -ENOMEM;
                b->nodes = n;
                b->cap_nodes = nc;
        }
        uint32_t base = len;
        while (base > 0 && path[base - 1] != '/')
                base--;
        b->nodes[b->n_nodes] = (Node) {
                .path = path,
                .path_len = len,
                .base = base,
                .parent = parent,
                .entry = entry,
                .type = entry == INDEX_NONE ? TOC_DIR : b->toc->entries[entry].type,
                .target = INDEX_NONE,
        };
        *ret = (uint32_t) b->n_nodes++;
        return 0;
}

static const char *entry_name(const Builder *b, uint32_t i) {
        return toc_str(b->toc, b->toc->entries[i].name);
}

/* Cleans a TOC name in place of a view: strips a leading "./" (any number)
 * and one trailing "/". Refuses absolute names, "..", "." elsewhere, empty
 * components, over-long components and paths. "" (or "." / "./") is the
 * root. */
static int clean_name(Builder *b, uint32_t ei, const char **ret, uint32_t *ret_len) {
        const TocEntry *e = &b->toc->entries[ei];
        const char *s = toc_str(b->toc, e->name);
        size_t len = e->name_len;

        if (len > 0 && s[0] == '/')
                return errmsg_set(b->err, -EBADMSG, "TOC entry %" PRIu32 " '%.200s': absolute path", ei, s);
        while (len >= 2 && s[0] == '.' && s[1] == '/') {
                s += 2;
                len -= 2;
        }
        if (len == 1 && s[0] == '.')
                len = 0;
        if (len > 0 && s[len - 1] == '/')
                len--;
        if (len > INDEX_PATH_MAX)
                return errmsg_set(b->err, -ENAMETOOLONG, "TOC entry %" PRIu32 ": path of %zu bytes is longer than %u", ei, len, INDEX_PATH_MAX);
        size_t start = 0;
        for (size_t i = 0; i <= len; i++) {
                if (i < len && s[i] != '/')
                        continue;
                size_t clen = i - start;
                const char *c = s + start;
                if (len > 0 && clen == 0)
                        return errmsg_set(b->err, -EBADMSG, "TOC entry %" PRIu32 " '%.200s': empty path component", ei, entry_name(b, ei));
                if (clen == 2 && c[0] == '.' && c[1] == '.')
                        return errmsg_set(b->err, -EBADMSG, "TOC entry %" PRIu32 " '%.200s': '..' path component", ei, entry_name(b, ei));
                if (clen == 1 && c[0] == '.')
                        return errmsg_set(b->err, -EBADMSG, "TOC entry %" PRIu32 " '%.200s': '.' path component", ei, entry_name(b, ei));
                if (clen > INDEX_NAME_MAX)
                        return errmsg_set(b->err, -ENAMETOOLONG, "TOC entry %" PRIu32 ": a path component is longer than %u bytes", ei, INDEX_NAME_MAX);
                start = i + 1;
        }
        *ret = s;
        *ret_len = (uint32_t) len;
        return 0;
}

static bool node_is_dir(const Builder *b, const Node *n) {
        (void) b;
        return n->type == TOC_DIR;
}

/* Returns the node for a directory path, creating implicit ones. */
static int ensure_dir(Builder *b, const char *path, uint32_t len, uint32_t ei, uint32_t *ret) {
        uint32_t found = table_get(b, path, len);
        if (found != INDEX_NONE) {
                Node *n = &b->nodes[found];
                if (!node_is_dir(b, n))
                        return errmsg_set(b->err, -ENOTDIR, "TOC entry %" PRIu32 " '%.200s': parent '%.*s' is not a directory",
                                          ei, entry_name(b, ei), (int) MIN(len, 200u), path);
                *ret = found;
                return 0;
        }
        uint32_t plen = len;
        while (plen > 0 && path[plen - 1] != '/')
                plen--;
        uint32_t parent;
        int r = ensure_dir(b, path, plen > 0 ? plen - 1 : 0, ei, &parent);
        if (r < 0)
                return r;
        uint32_t id;
        r = node_new(b, path, len, parent, INDEX_NONE, &id);
        if (r < 0)
                return r;
        b->nodes[id].flags |= NODE_IMPLICIT;
        table_put(b, id);
        *ret = id;
        return 0;
}

static int add_chunk(Builder *b, uint32_t ei, uint64_t chunk_offset, uint64_t chunk_size) {
        const TocEntry *e = &b->toc->entries[ei];
        if (b->opts->max_chunk_size && chunk_size > b->opts->max_chunk_size)
                return errmsg_set(b->err, -EFBIG, "TOC entry %" PRIu32 ": a chunk of %" PRIu64 " bytes is over the configured cap of %" PRIu64,
                                  ei, chunk_size, b->opts->max_chunk_size);
        if (b->n_chunks >= b->cap_chunks) {
                size_t nc = b->cap_chunks ? b->cap_chunks * 2 : 1024;
                IndexChunk *c = reallocarray(b->chunks, nc, sizeof(IndexChunk));
                if (!c)
                        return -ENOMEM;
                b->chunks = c;
                b->cap_chunks = nc;
        }
        uint32_t digest = e->chunk_digest;
        b->chunks[b->n_chunks++] = (IndexChunk) {
                .file_offset = chunk_offset,
                .size = chunk_size,
                .blob_offset = e->offset,
                .inner_offset = e->inner_offset,
                .digest = digest == TOC_NO_DIGEST ? INDEX_NONE : digest,
        };
        return 0;
}

/* Pass 1: one node per named entry, chunks attached to their file. */
static int pass_names(Builder *b) {
        const Toc *t = b->toc;
        uint32_t root;
        int r = node_new(b, "", 0, 0, INDEX_NONE, &root);
        if (r < 0)
                return r;
        b->nodes[root].flags |= NODE_IMPLICIT;
        table_put(b, root);

        uint32_t last_file = INDEX_NONE; /* node of the last reg entry, for chunk entries */
        uint64_t next_chunk = 0;         /* file offset the next chunk must start at */
        for (size_t i = 0; i < t->n_entries; i++) {
                const TocEntry *e = &t->entries[i];
                uint32_t ei = (uint32_t) i;

                if (e->type == TOC_CHUNK) {
                        if (last_file == INDEX_NONE)
                                return errmsg_set(b->err, -EBADMSG, "TOC entry %" PRIu32 ": chunk does not follow a regular file", ei);
                        const TocEntry *f = &t->entries[b->nodes[last_file].entry];
                        if (e->chunk_offset != next_chunk)
                                return errmsg_set(b->err, -EBADMSG, "TOC entry %" PRIu32 " (chunk of '%.200s'): chunkOffset %" PRIu64 " should be %" PRIu64 " (gap or overlap)",
                                                  ei, toc_str(t, f->name), e->chunk_offset, next_chunk);
                        if (e->chunk_offset >= f->size)
                                return errmsg_set(b->err, -EBADMSG, "TOC entry %" PRIu32 " (chunk of '%.200s'): chunkOffset %" PRIu64 " is past the file size %" PRIu64,
                                                  ei, toc_str(t, f->name), e->chunk_offset, f->size);
                        uint64_t size = e->chunk_size ? e->chunk_size : f->size - e->chunk_offset;
                        if (size > f->size - e->chunk_offset)
                                return errmsg_set(b->err, -EBADMSG, "TOC entry %" PRIu32 " (chunk of '%.200s'): chunk [%" PRIu64 ", +%" PRIu64 ") runs past the file size %" PRIu64,
                                                  ei, toc_str(t, f->name), e->chunk_offset, size, f->size);
                        r = add_chunk(b, ei, e->chunk_offset, size);
                        if (r < 0)
                                return r;
                        b->nodes[last_file].n_chunks++;
                        next_chunk = e->chunk_offset + size;
                        continue;
                }

                if (last_file != INDEX_NONE && next_chunk != t->entries[b->nodes[last_file].entry].size)
                        return errmsg_set(b->err, -EBADMSG, "TOC entry %" PRIu32 " '%.200s': chunks cover %" PRIu64 " of %" PRIu64 " bytes",
                                          b->nodes[last_file].entry, entry_name(b, b->nodes[last_file].entry), next_chunk,
                                          t->entries[b->nodes[last_file].entry].size);
                last_file = INDEX_NONE;

                const char *path = NULL;
                uint32_t len = 0;
                r = clean_name(b, ei, &path, &len);
                if (r < 0)
                        return r;
                if (len == 0) {
                        /* the root itself */
                        if (e->type != TOC_DIR)
                                return errmsg_set(b->err, -EBADMSG, "TOC entry %" PRIu32 " '%.200s': the root must be a directory", ei, entry_name(b, ei));
                        if (!(b->nodes[root].flags & NODE_IMPLICIT))
                                return errmsg_set(b->err, -EBADMSG, "TOC entry %" PRIu32 ": duplicate root directory", ei);
                        b->nodes[root].flags &= (uint8_t) ~NODE_IMPLICIT;
                        b->nodes[root].entry = ei;
                        continue;
                }

                uint32_t found = table_get(b, path, len);
                if (found != INDEX_NONE) {
                        Node *n = &b->nodes[found];
                        if ((n->flags & NODE_IMPLICIT) && e->type == TOC_DIR) {
                                /* a directory listed after its children */
                                n->flags &= (uint8_t) ~NODE_IMPLICIT;
                                n->entry = ei;
                                continue;
                        }
                        return errmsg_set(b->err, -EEXIST, "TOC entry %" PRIu32 ": duplicate entry '%.*s'", ei, (int) MIN(len, 200u), path);
                }
                uint32_t plen = len;
                while (plen > 0 && path[plen - 1] != '/')
                        plen--;
                uint32_t parent;
                r = ensure_dir(b, path, plen > 0 ? plen - 1 : 0, ei, &parent);
                if (r < 0)
                        return r;
                uint32_t id;
                r = node_new(b, path, len, parent, ei, &id);
                if (r < 0)
                        return r;
                table_put(b, id);

                if (e->type == TOC_REG) {
                        Node *n = &b->nodes[id];
                        n->first_chunk = (uint32_t) b->n_chunks;
                        if (e->size > 0) {
                                if (e->chunk_offset != 0)
                                        return errmsg_set(b->err, -EBADMSG, "TOC entry %" PRIu32 " '%.200s': first chunk has chunkOffset %" PRIu64, ei, entry_name(b, ei), e->chunk_offset);
                                uint64_t size = e->chunk_size ? e->chunk_size : e->size;
                                if (size > e->size)
                                        return errmsg_set(b->err, -EBADMSG, "TOC entry %" PRIu32 " '%.200s': chunkSize %" PRIu64 " is larger than the file (%" PRIu64 ")", ei, entry_name(b, ei), size, e->size);
                                r = add_chunk(b, ei, 0, size);
                                if (r < 0)
                                        return r;
                                b->nodes[id].n_chunks = 1;
                                next_chunk = size;
                        } else
                                next_chunk = 0;
                        last_file = id;
                }
        }
        if (last_file != INDEX_NONE && next_chunk != t->entries[b->nodes[last_file].entry].size)
                return errmsg_set(b->err, -EBADMSG, "TOC entry %" PRIu32 " '%.200s': chunks cover %" PRIu64 " of %" PRIu64 " bytes",
                                  b->nodes[last_file].entry, entry_name(b, b->nodes[last_file].entry), next_chunk,
                                  t->entries[b->nodes[last_file].entry].size);
        return 0;
}

/* Compressed ranges: chunks are listed in blob order (the writer emits them
 * that way); each one ends where the next one starts, the last at the TOC.
 * zstd:chunked may pack several chunks in one frame (same offset, growing
 * innerOffset); gzip never does. */
static int pass_ranges(Builder *b) {
        uint64_t end = b->opts->toc_offset;
        bool zstd = b->opts->format == LAYER_FORMAT_ZSTD_CHUNKED;
        for (size_t i = b->n_chunks; i-- > 0;) {
                IndexChunk *c = &b->chunks[i];
                if (c->blob_offset == 0 || c->blob_offset >= b->opts->toc_offset)
                        return errmsg_set(b->err, -EBADMSG, "chunk %zu: offset %" PRIu64 " is outside the layer data [1, %" PRIu64 ")",
                                          i, c->blob_offset, b->opts->toc_offset);
                if (c->blob_offset > end || (c->blob_offset == end && !zstd))
                        return errmsg_set(b->err, -EBADMSG, "chunk %zu: offset %" PRIu64 " overlaps the next chunk at %" PRIu64 " (offsets must increase)",
                                          i, c->blob_offset, end);
                if (!zstd && c->inner_offset != 0)
                        return errmsg_set(b->err, -EBADMSG, "chunk %zu: innerOffset is only valid in zstd:chunked layers", i);
                if (c->blob_offset == end && i + 1 < b->n_chunks) {
                        IndexChunk *n = &b->chunks[i + 1];
                        if (n->inner_offset <= c->inner_offset)
                                return errmsg_set(b->err, -EBADMSG, "chunk %zu: shares its frame with the next chunk without a larger innerOffset", i);
                        c->blob_end = n->blob_end;
                } else
                        c->blob_end = end;
                end = c->blob_offset;
        }
        return 0;
}

static bool name_eq(const Node *n, const char *s, size_t len) {
        return n->path_len - n->base == len && memcmp(n->path + n->base, s, len) == 0;
}

/* Pass 2: hardlinks, children lists, whiteouts, landmarks. */
static int pass_links(Builder *b) {
        const Toc *t = b->toc;
        for (size_t i = 1; i < b->n_nodes; i++) {
                Node *n = &b->nodes[i];
                if (n->type != TOC_HARDLINK)
                        continue;
                const TocEntry *e = &t->entries[n->entry];
                /* Follow the chain of hardlinks; each step must name an existing
                 * entry, and a chain longer than the node count is a loop. */
                uint32_t cur = (uint32_t) i;
                for (size_t steps = 0;; steps++) {
                        const TocEntry *ce = &t->entries[b->nodes[cur].entry];
                        if (ce->type != TOC_HARDLINK)
                                break;
                        if (steps > b->n_nodes)
                                return errmsg_set(b->err, -ELOOP, "TOC entry %" PRIu32 " '%.200s': hardlinks form a loop", n->entry, entry_name(b, n->entry));
                        const char *ls = toc_str(t, ce->link);
                        size_t llen = ce->link_len;
                        while (llen > 0 && ls[0] == '/') /* tar writers store absolute targets now and then */
                                ls++, llen--;
                        while (llen >= 2 && ls[0] == '.' && ls[1] == '/')
                                ls += 2, llen -= 2;
                        uint32_t tgt = table_get(b, ls, llen);
                        if (tgt == INDEX_NONE || b->nodes[tgt].entry == INDEX_NONE)
                                return errmsg_set(b->err, -EBADMSG, "TOC entry %" PRIu32 " '%.200s': hardlink target '%.200s' does not exist",
                                                  n->entry, entry_name(b, n->entry), toc_str(t, e->link));
                        if (node_is_dir(b, &b->nodes[tgt]))
                                return errmsg_set(b->err, -EBADMSG, "TOC entry %" PRIu32 " '%.200s': hardlink to directory '%.200s'",
                                                  n->entry, entry_name(b, n->entry), toc_str(t, e->link));
                        cur = tgt;
                }
                n->target = cur;
        }

        /* children, grouped by parent in node order (a counting sort) */
        b->kids = malloc((b->n_nodes + 1) * sizeof(uint32_t));
        if (!b->kids)
                return -ENOMEM;
        for (size_t i = 1; i < b->n_nodes; i++)
                b->nodes[b->nodes[i].parent].n_kids++;
        uint32_t at = 0;
        for (size_t i = 0; i < b->n_nodes; i++) {
                b->nodes[i].kids = at;
                at += b->nodes[i].n_kids;
                b->nodes[i].n_kids = 0;
        }
        for (size_t i = 1; i < b->n_nodes; i++) {
                Node *p = &b->nodes[b->nodes[i].parent];
                b->kids[p->kids + p->n_kids++] = (uint32_t) i;
        }

        Node *root = &b->nodes[0];
        char *path = NULL;
        size_t path_cap = 0;
        for (size_t i = 0; i < b->n_nodes; i++) {
                Node *d = &b->nodes[i];
                for (uint32_t k = 0; k < d->n_kids; k++) {
                        uint32_t c = b->kids[d->kids + k];
                        Node *n = &b->nodes[c];
                        const char *name = n->path + n->base;
                        size_t len = n->path_len - n->base;
                        if (name[0] != '.')
                                continue;
                        if (d == root && n->entry != INDEX_NONE && t->entries[n->entry].type == TOC_REG &&
                            (name_eq(n, ESTARGZ_PREFETCH_LANDMARK, strlen(ESTARGZ_PREFETCH_LANDMARK)) ||
                             name_eq(n, ESTARGZ_NO_PREFETCH_LANDMARK, strlen(ESTARGZ_NO_PREFETCH_LANDMARK)))) {
                                n->flags |= NODE_HIDDEN; /* recorded in index_build() */
                                continue;
                        }
                        if (len == strlen(WHITEOUT_OPAQUE) && memcmp(name, WHITEOUT_OPAQUE, len) == 0) {
                                n->flags |= NODE_HIDDEN;
                                d->flags |= NODE_OPAQUE;
                                continue;
                        }
                        size_t plen = strlen(WHITEOUT_PREFIX);
                        if (len > plen && memcmp(name, WHITEOUT_PREFIX, plen) == 0 && !node_is_dir(b, n)) {
                                if ((len == plen + 1 && name[plen] == '.') ||
                                    (len == plen + 2 && name[plen] == '.' && name[plen + 1] == '.')) {
                                        free(path);
                                        return errmsg_set(b->err, -EBADMSG, "TOC entry '%.*s': a whiteout of '.' or '..'",
                                                          (int) MIN(n->path_len, 200u), n->path);
                                }
                                /* hidden when the directory also has the real name */
                                size_t need = n->base + len - plen + 1;
                                if (need > path_cap) {
                                        char *np = realloc(path, need);
                                        if (!np) {
                                                free(path);
                                                return -ENOMEM;
                                        }
                                        path = np;
                                        path_cap = need;
                                }
                                memcpy(path, n->path, n->base);
                                memcpy(path + n->base, name + plen, len - plen);
                                bool shadowed = table_get(b, path, n->base + len - plen) != INDEX_NONE;
                                n->flags |= shadowed ? NODE_HIDDEN : NODE_WHITEOUT;
                                n->target = INDEX_NONE; /* a whiteout is its own inode even if it was a hardlink */
                        }
                }
        }
        free(path);
        return 0;
}

static const Builder *sort_ctx;

static int cmp_children(const void *a, const void *b) {
        const Node *x = &sort_ctx->nodes[*(const uint32_t *) a], *y = &sort_ctx->nodes[*(const uint32_t *) b];
        const char *xs = x->path + x->base, *ys = y->path + y->base;
        size_t xl = x->path_len - x->base, yl = y->path_len - y->base;
        if (x->flags & NODE_WHITEOUT)
                xs += strlen(WHITEOUT_PREFIX), xl -= strlen(WHITEOUT_PREFIX);
        if (y->flags & NODE_WHITEOUT)
                ys += strlen(WHITEOUT_PREFIX), yl -= strlen(WHITEOUT_PREFIX);
        int c = memcmp(xs, ys, MIN(xl, yl));
        if (c != 0)
                return c;
        return xl < yl ? -1 : xl > yl;
}

static int pool_add(StrBuf *pool, const char *s, size_t len, uint32_t *ret) {
        if (pool->len + len + 1 > UINT32_MAX)
                return -EFBIG;
        *ret = (uint32_t) pool->len;
        int r = strbuf_append(pool, s, len);
        if (r >= 0)
                r = strbuf_putc(pool, 0);
        return r;
}

static uint32_t mode_of(const TocEntry *e) {
        uint32_t perm = e->mode & 07777;
        switch (e->type) {
        case TOC_DIR: return S_IFDIR | perm;
        case TOC_REG: return S_IFREG | perm;
        case TOC_SYMLINK: return S_IFLNK | perm;
        case TOC_CHAR: return S_IFCHR | perm;
        case TOC_BLOCK: return S_IFBLK | perm;
        case TOC_FIFO: return S_IFIFO | perm;
        default: return 0;
        }
}

/* Pass 3: number and emit. */
static int pass_emit(Builder *b, Index *idx) {
        const Toc *t = b->toc;
        StrBuf pool = {};
        size_t cap_inodes = 0, cap_dirents = 0, cap_xattrs = 0;
        uint32_t *kids = NULL, *node_of = NULL;
        size_t cap_kids = 0, cap_node_of = 0, n_node_of = 0;
        int r = 0;

#define PUSH(arr, n, cap, val)                                                          \
        do {                                                                            \
                if ((n) >= (cap)) {                                                     \
                        size_t _nc = (cap) ? (cap) * 2 : 256;                           \
                        void *_a = reallocarray((arr), _nc, sizeof(*(arr)));            \
                        if (!_a) {                                                      \
                                r = -ENOMEM;                                            \
                                goto out;                                               \
                        }                                                               \
                        (arr) = _a;                                                     \
                        (cap) = _nc;                                                    \
                }                                                                       \
                (arr)[(n)++] = (val);                                                   \
        } while (0)

        /* Everything is sized up front from the node count and the TOC's
         * string pool (an upper bound), so that no array is copied by a
         * doubling realloc while both copies are alive. */
        r = strbuf_reserve(&pool, t->pool_len + 1);
        if (r < 0)
                goto out;
        idx->inodes = malloc(b->n_nodes * sizeof(IndexInode));
        idx->dirents = malloc(b->n_nodes * sizeof(IndexDirent));
        idx->xattrs = malloc((t->n_xattrs + 1) * sizeof(IndexXattr));
        node_of = malloc(b->n_nodes * sizeof(uint32_t));
        if (!idx->inodes || !idx->dirents || !idx->xattrs || !node_of) {
                r = -ENOMEM;
                goto out;
        }
        cap_inodes = cap_dirents = cap_node_of = b->n_nodes;
        cap_xattrs = t->n_xattrs + 1;
        r = pool_add(&pool, "", 0, &(uint32_t) { 0 });
        if (r < 0)
                goto out;

        /* node_of: node index per inode, so that the BFS walks inodes in order */
        b->nodes[0].ino = INDEX_ROOT_INO;
        PUSH(node_of, n_node_of, cap_node_of, 0u);

        for (size_t ino_i = 0; ino_i < n_node_of; ino_i++) {
                uint32_t ni = node_of[ino_i];
                Node *n = &b->nodes[ni];
                const TocEntry *e = n->entry != INDEX_NONE ? &t->entries[n->entry] : NULL;
                IndexInode in = {
                        .parent = b->nodes[n->parent].ino ? b->nodes[n->parent].ino : INDEX_ROOT_INO,
                        .first = 0,
                        .digest = INDEX_NONE,
                };
                if (n->flags & NODE_WHITEOUT) {
                        in.mode = S_IFCHR;
                        in.uid = e->uid;
                        in.gid = e->gid;
                        in.mtime = e->mtime;
                } else if (!e || (n->flags & NODE_IMPLICIT)) {
                        in.mode = S_IFDIR | 0755;
                } else {
                        in.mode = mode_of(e);
                        in.uid = e->uid;
                        in.gid = e->gid;
                        in.mtime = e->mtime;
                        in.rdev_major = (e->type == TOC_CHAR || e->type == TOC_BLOCK) ? e->devmajor : 0;
                        in.rdev_minor = (e->type == TOC_CHAR || e->type == TOC_BLOCK) ? e->devminor : 0;
                        if (e->xattr_count > UINT16_MAX) {
                                r = errmsg_set(b->err, -EBADMSG, "TOC entry %" PRIu32 ": more than %u xattrs", n->entry, UINT16_MAX);
                                goto out;
                        }
                        in.xattr_first = (uint32_t) idx->n_xattrs;
                        for (uint32_t x = 0; x < e->xattr_count; x++) {
                                const TocXattr *tx = &t->xattrs[e->xattr_first + x];
                                IndexXattr ix = { .name_len = tx->name_len, .value_len = tx->value_len };
                                r = pool_add(&pool, toc_str(t, tx->name), tx->name_len, &ix.name);
                                if (r >= 0)
                                        r = pool_add(&pool, toc_str(t, tx->value), tx->value_len, &ix.value);
                                if (r < 0)
                                        goto out;
                                PUSH(idx->xattrs, idx->n_xattrs, cap_xattrs, ix);
                        }
                        in.xattr_count = (uint16_t) e->xattr_count;
                        if (e->type == TOC_REG) {
                                in.size = e->size;
                                in.first = n->first_chunk;
                                in.count = n->n_chunks;
                                in.digest = e->digest == TOC_NO_DIGEST ? INDEX_NONE : e->digest;
                        } else if (e->type == TOC_SYMLINK) {
                                r = pool_add(&pool, toc_str(t, e->link), e->link_len, &in.first);
                                if (r < 0)
                                        goto out;
                                in.count = e->link_len;
                                in.size = e->link_len;
                        }
                }
                if (n->flags & NODE_OPAQUE)
                        in.flags |= INODE_OPAQUE;
                in.nlink = S_ISDIR(in.mode) ? 2 : 0;

                if (S_ISDIR(in.mode)) {
                        size_t nk = 0;
                        for (uint32_t k = 0; k < n->n_kids; k++) {
                                uint32_t c = b->kids[n->kids + k];
                                if (b->nodes[c].flags & NODE_HIDDEN)
                                        continue;
                                PUSH(kids, nk, cap_kids, c);
                        }
                        sort_ctx = b;
                        if (nk > 1)
                                qsort(kids, nk, sizeof(uint32_t), cmp_children);
                        in.first = (uint32_t) idx->n_dirents;
                        in.count = (uint32_t) nk;
                        for (size_t k = 0; k < nk; k++) {
                                Node *c = &b->nodes[kids[k]];
                                Node *real = c->target != INDEX_NONE ? &b->nodes[c->target] : c;
                                if (!real->ino) {
                                        if (n_node_of >= UINT32_MAX - 1) {
                                                r = errmsg_set(b->err, -EFBIG, "too many inodes");
                                                goto out;
                                        }
                                        PUSH(node_of, n_node_of, cap_node_of, (uint32_t) (real - b->nodes));
                                        real->ino = (uint32_t) n_node_of;
                                        real->parent = ni; /* first name wins as the parent */
                                }
                                const char *name = c->path + c->base;
                                size_t len = c->path_len - c->base;
                                if (c->flags & NODE_WHITEOUT)
                                        name += strlen(WHITEOUT_PREFIX), len -= strlen(WHITEOUT_PREFIX);
                                IndexDirent d = { .name_len = (uint32_t) len, .ino = real->ino };
                                r = pool_add(&pool, name, len, &d.name);
                                if (r < 0)
                                        goto out;
                                PUSH(idx->dirents, idx->n_dirents, cap_dirents, d);
                                if (node_is_dir(b, real) && !(c->flags & NODE_WHITEOUT))
                                        in.nlink++;
                        }
                }
                PUSH(idx->inodes, idx->n_inodes, cap_inodes, in);
        }

        /* nlink of non-directories: the number of names */
        for (size_t i = 0; i < idx->n_dirents; i++) {
                IndexInode *in = &idx->inodes[idx->dirents[i].ino - 1];
                if (!S_ISDIR(in->mode))
                        in->nlink++;
        }
        idx->pool = strbuf_steal(&pool, &idx->pool_len);
        /* give back what the up-front sizing did not use */
        idx->pool = realloc(idx->pool, idx->pool_len + 1) ?: idx->pool;
        idx->inodes = realloc(idx->inodes, MAX(idx->n_inodes, (size_t) 1) * sizeof(IndexInode)) ?: idx->inodes;
        idx->dirents = realloc(idx->dirents, MAX(idx->n_dirents, (size_t) 1) * sizeof(IndexDirent)) ?: idx->dirents;
out:
        free(node_of);
        free(kids);
        strbuf_done(&pool);
        return r;
#undef PUSH
}

int index_build(const Toc *toc, const IndexOptions *opts, Index **ret, ErrMsg *err) {
        Builder b = { .toc = toc, .opts = opts, .err = err };
        Index *idx = NULL;
        int r;

        if (toc->n_entries >= UINT32_MAX / 4)
                return errmsg_set(err, -EFBIG, "TOC has too many entries (%zu)", toc->n_entries);
        b.cap_nodes = toc->n_entries + 16;
        b.nodes = malloc(b.cap_nodes * sizeof(Node));
        /* at most half full; implicit directories may grow it (table_grow) */
        size_t tsize = 64;
        while (tsize < (toc->n_entries + 1) * 2 + 64)
                tsize *= 2;
        b.table = malloc(tsize * sizeof(uint64_t));
        b.table_mask = tsize - 1;
        idx = calloc(1, sizeof(Index));
        if (!b.nodes || !b.table || !idx) {
                r = -ENOMEM;
                goto out;
        }
        memset(b.table, 0xff, tsize * sizeof(uint64_t));

        size_t n_data = 0;
        for (size_t i = 0; i < toc->n_entries; i++)
                n_data += toc->entries[i].type == TOC_CHUNK || (toc->entries[i].type == TOC_REG && toc->entries[i].size > 0);
        b.cap_chunks = n_data + 1;
        b.chunks = malloc(b.cap_chunks * sizeof(IndexChunk));
        if (!b.chunks) {
                r = -ENOMEM;
                goto out;
        }

        r = pass_names(&b);
        if (r < 0)
                goto out;
        r = pass_ranges(&b);
        if (r < 0)
                goto out;
        r = pass_links(&b);
        if (r < 0)
                goto out;

        /* landmarks */
        for (uint32_t k = 0; k < b.nodes[0].n_kids; k++) {
                Node *n = &b.nodes[b.kids[b.nodes[0].kids + k]];
                if (!(n->flags & NODE_HIDDEN) || n->entry == INDEX_NONE)
                        continue;
                if (name_eq(n, ESTARGZ_NO_PREFETCH_LANDMARK, strlen(ESTARGZ_NO_PREFETCH_LANDMARK)))
                        idx->no_prefetch = true;
                else if (name_eq(n, ESTARGZ_PREFETCH_LANDMARK, strlen(ESTARGZ_PREFETCH_LANDMARK)))
                        idx->prefetch_end = toc->entries[n->entry].offset;
        }

        r = pass_emit(&b, idx);
        if (r < 0)
                goto out;

        idx->chunks = TAKE_PTR(b.chunks);
        idx->n_chunks = b.n_chunks;
        for (size_t i = 0; i < idx->n_chunks; i++) {
                if (idx->chunks[i].digest != INDEX_NONE)
                        continue;
                idx->n_unverified++;
        }
        /* A file of one chunk without a chunkDigest is still verifiable by
         * its whole-file digest, as the reference verifier allows. */
        for (size_t i = 0; i < idx->n_inodes; i++) {
                IndexInode *in = &idx->inodes[i];
                if (S_ISREG(in->mode) && in->count == 1 && idx->chunks[in->first].digest == INDEX_NONE &&
                    in->digest != INDEX_NONE) {
                        idx->chunks[in->first].digest = in->digest;
                        idx->n_unverified--;
                }
        }
        if (toc->n_digests > 0) {
                idx->digests = malloc(toc->n_digests * SHA256_LEN);
                if (!idx->digests) {
                        r = -ENOMEM;
                        goto out;
                }
                memcpy(idx->digests, toc->digests, toc->n_digests * SHA256_LEN);
                idx->n_digests = toc->n_digests;
        }
        *ret = TAKE_PTR(idx);
        r = 0;
out:
        free(b.nodes);
        free(b.table);
        free(b.kids);
        free(b.chunks);
        index_free(idx);
        return r;
}

Index *index_free(Index *idx) {
        if (!idx)
                return NULL;
        free(idx->inodes);
        free(idx->dirents);
        free(idx->chunks);
        free(idx->xattrs);
        free(idx->digests);
        free(idx->pool);
        free(idx);
        return NULL;
}

int index_lookup(const Index *idx, uint64_t parent, const char *name, size_t len, uint64_t *ret_ino) {
        const IndexInode *d = index_inode(idx, parent);
        if (!d || !S_ISDIR(d->mode))
                return -ENOTDIR;
        size_t lo = d->first, hi = (size_t) d->first + d->count;
        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                const IndexDirent *e = &idx->dirents[mid];
                int c = memcmp(idx->pool + e->name, name, MIN((size_t) e->name_len, len));
                if (c == 0)
                        c = e->name_len < len ? -1 : e->name_len > len;
                if (c == 0) {
                        *ret_ino = e->ino;
                        return 0;
                }
                if (c < 0)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return -ENOENT;
}

int index_lookup_path(const Index *idx, const char *path, uint64_t *ret_ino) {
        uint64_t ino = INDEX_ROOT_INO;
        const char *p = path;
        while (*p) {
                while (*p == '/')
                        p++;
                if (!*p)
                        break;
                const char *e = strchrnul(p, '/');
                int r = index_lookup(idx, ino, p, (size_t) (e - p), &ino);
                if (r < 0)
                        return r;
                p = e;
        }
        *ret_ino = ino;
        return 0;
}

int64_t index_chunk_find(const Index *idx, uint64_t ino, uint64_t offset) {
        const IndexInode *in = index_inode(idx, ino);
        if (!in)
                return -EINVAL;
        if (S_ISDIR(in->mode))
                return -EISDIR;
        if (!S_ISREG(in->mode))
                return -EINVAL;
        if (offset >= in->size)
                return -ERANGE;
        size_t lo = in->first, hi = (size_t) in->first + in->count;
        while (hi - lo > 1) {
                size_t mid = lo + (hi - lo) / 2;
                if (idx->chunks[mid].file_offset <= offset)
                        lo = mid;
                else
                        hi = mid;
        }
        return (int64_t) lo;
}
