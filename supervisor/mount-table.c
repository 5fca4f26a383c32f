/* The mount records (mount-table.h). Owns every Mount, its strings and its
 * /dev/fuse fd. Runs on the supervisor's loop only. Invariant: ids are
 * unique and smaller than next_id. */
#include "supervisor/mount-table.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util/macro.h"

static Mount *mount_free(Mount *m) {
        if (!m)
                return NULL;
        if (m->fd >= 0)
                close(m->fd);
        free(m->mountpoint);
        free(m->source);
        free(m);
        return NULL;
}

int mount_table_add(MountTable *t, const char *mountpoint, const char *source, int take_fd, Mount **ret) {
        _cleanup_close_ int fd = take_fd;
        if (t->count >= MOUNT_TABLE_MAX)
                return -ENOSPC;
        Mount *m = calloc(1, sizeof(*m));
        if (!m)
                return -ENOMEM;
        m->fd = -EBADF;
        m->mountpoint = strdup(mountpoint);
        m->source = strdup(source);
        if (!m->mountpoint || !m->source) {
                mount_free(m);
                return -ENOMEM;
        }
        if (t->next_id == 0)
                t->next_id = 1;
        m->id = t->next_id++;
        m->fd = TAKE_FD(fd);
        m->next = t->head;
        t->head = m;
        t->count++;
        *ret = m;
        return 0;
}

Mount *mount_table_find(MountTable *t, uint64_t id) {
        for (Mount *m = t->head; m; m = m->next)
                if (m->id == id)
                        return m;
        return NULL;
}

Mount *mount_table_find_path(MountTable *t, const char *mountpoint) {
        for (Mount *m = t->head; m; m = m->next)
                if (strcmp(m->mountpoint, mountpoint) == 0)
                        return m;
        return NULL;
}

void mount_table_remove(MountTable *t, Mount *m) {
        for (Mount **p = &t->head; *p; p = &(*p)->next)
                if (*p == m) {
                        *p = m->next;
                        t->count--;
                        mount_free(m);
                        return;
                }
}

void mount_table_clear(MountTable *t) {
        while (t->head)
                mount_table_remove(t, t->head);
}
