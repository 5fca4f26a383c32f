/* Labels, infos and mounts (worker/snapshotter/info.h): plain owned data,
 * no I/O. Labels are a small array searched linearly: a snapshot has a
 * handful (SNAP_LABELS_MAX bounds the quadratic cost of a hostile
 * request). */
#include "worker/snapshotter/info.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

static ssize_t labels_find(const SnapLabels *l, const char *key) {
        for (size_t i = 0; i < l->n; i++)
                if (strcmp(l->items[i].key, key) == 0)
                        return (ssize_t) i;
        return -1;
}

int snap_labels_set(SnapLabels *l, const char *key, const char *value) {
        char *v = strdup(value);
        if (!v)
                return -ENOMEM;
        ssize_t i = labels_find(l, key);
        if (i >= 0) {
                free(l->items[i].value);
                l->items[i].value = v;
                return 0;
        }
        if (l->n >= SNAP_LABELS_MAX) {
                free(v);
                return -E2BIG;
        }
        if (l->n == l->cap) {
                size_t cap = l->cap ? l->cap * 2 : 8;
                SnapLabel *items = realloc(l->items, cap * sizeof(*items));
                if (!items) {
                        free(v);
                        return -ENOMEM;
                }
                l->items = items;
                l->cap = cap;
        }
        char *k = strdup(key);
        if (!k) {
                free(v);
                return -ENOMEM;
        }
        l->items[l->n++] = (SnapLabel) { .key = k, .value = v };
        return 0;
}

void snap_labels_unset(SnapLabels *l, const char *key) {
        ssize_t i = labels_find(l, key);
        if (i < 0)
                return;
        free(l->items[i].key);
        free(l->items[i].value);
        memmove(&l->items[i], &l->items[i + 1], (l->n - (size_t) i - 1) * sizeof(l->items[0]));
        l->n--;
}

const char *snap_labels_get(const SnapLabels *l, const char *key) {
        ssize_t i = labels_find(l, key);
        return i >= 0 ? l->items[i].value : NULL;
}

int snap_labels_copy(SnapLabels *dst, const SnapLabels *src) {
        SnapLabels n = {};
        for (size_t i = 0; i < src->n; i++) {
                int r = snap_labels_set(&n, src->items[i].key, src->items[i].value);
                if (r < 0) {
                        snap_labels_clear(&n);
                        return r;
                }
        }
        snap_labels_clear(dst);
        *dst = n;
        return 0;
}

void snap_labels_clear(SnapLabels *l) {
        for (size_t i = 0; i < l->n; i++) {
                free(l->items[i].key);
                free(l->items[i].value);
        }
        free(l->items);
        *l = (SnapLabels) {};
}

void snap_info_clear(SnapInfo *i) {
        free(i->name);
        free(i->parent);
        snap_labels_clear(&i->labels);
        *i = (SnapInfo) {};
}

int snap_info_copy(const SnapInfo *src, SnapInfo *ret) {
        SnapInfo n = {
                .name = strdup(src->name ? src->name : ""),
                .parent = strdup(src->parent ? src->parent : ""),
                .kind = src->kind,
                .created_ns = src->created_ns,
                .updated_ns = src->updated_ns,
        };
        int r = n.name && n.parent ? snap_labels_copy(&n.labels, &src->labels) : -ENOMEM;
        if (r < 0) {
                snap_info_clear(&n);
                return r;
        }
        *ret = n;
        return 0;
}

const char *snap_kind_to_string(SnapKind k) {
        switch (k) {
        case SNAP_KIND_VIEW:
                return "view";
        case SNAP_KIND_ACTIVE:
                return "active";
        case SNAP_KIND_COMMITTED:
                return "committed";
        default:
                return "unknown";
        }
}

void snap_mounts_clear(SnapMounts *m) {
        for (size_t i = 0; i < m->n; i++) {
                SnapMount *mt = &m->items[i];
                free(mt->type);
                free(mt->source);
                for (size_t j = 0; j < mt->n_options; j++)
                        free(mt->options[j]);
                free(mt->options);
        }
        free(m->items);
        *m = (SnapMounts) {};
}
