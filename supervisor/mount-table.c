/* The mount records (mount-table.h). Owns every Mount (one allocation
 * with its strings) and its /dev/fuse fd. Runs on the supervisor's loop only. Invariant: ids are
 * unique and smaller than next_id. */
#include "supervisor/mount-table.h"

int mount_table_add(MountTable *t, uint64_t id, const char *mountpoint, const char *source, int take_fd, Mount **ret) {
        _cleanup_close_ int fd = take_fd;
        if (t->count >= MOUNT_TABLE_MAX)
                return -ENOSPC;
        size_t mp_size = strlen(mountpoint) + 1, src_size = strlen(source) + 1;
        Mount *m = calloc(1, sizeof(*m) + mp_size + src_size);
        if (!m)
                return -ENOMEM;
        m->mountpoint = memcpy((char *) (m + 1), mountpoint, mp_size);
        m->source = memcpy(m->mountpoint + mp_size, source, src_size);
        if (t->next_id == 0)
                t->next_id = 1;
        m->id = id ? id : t->next_id++;
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

Mount *mount_table_find_path(MountTable *t, const char *path) {
        for (Mount *m = t->head; m; m = m->next)
                if (strcmp(m->mountpoint, path) == 0)
                        return m;
        return NULL;
}

void mount_table_remove(MountTable *t, Mount *m) {
        for (Mount **p = &t->head; *p; p = &(*p)->next)
                if (*p == m) {
                        *p = m->next;
                        t->count--;
                        closep(&m->fd);
                        free(m);
                        return;
                }
}

void mount_table_clear(MountTable *t) {
        while (t->head)
                mount_table_remove(t, t->head);
}

void mount_to_record(const Mount *m, holdfast_MountRecord *ret) {
        *ret = (holdfast_MountRecord) { .id = m->id, .initialized = m->initialized, .init = m->init };
        snprintf(ret->mountpoint, sizeof(ret->mountpoint), "%s", m->mountpoint);
        snprintf(ret->source, sizeof(ret->source), "%s", m->source);
}
