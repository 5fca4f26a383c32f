/* Tree removal and disk usage (worker/snapshotter/snapshots-fs.h).
 *
 * walk() is the one traversal: depth first, an explicit stack of frames
 * (each a directory's names and its identity), one open directory fd.
 * Every iteration consumes one name or leaves one directory, so the walk
 * ends after (entries + directories) iterations; WALK_DEPTH_MAX bounds
 * the memory of a hostile tree. */
#include "worker/snapshotter/snapshots-fs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "common/util/macro.h"

#define WALK_DEPTH_MAX 65536

typedef struct Frame {
        char **names;   /* owned, each owned */
        size_t n, next;
        struct stat st; /* the directory itself */
} Frame;

typedef struct WalkOps {
        /* A non-directory, or a directory on another filesystem. */
        int (*entry)(void *ud, int dfd, const char *name, const struct stat *st);
        /* A directory, after its contents. */
        int (*dir_done)(void *ud, int dfd, const char *name, const struct stat *st);
        bool keep_going; /* record the first error and go on */
} WalkOps;

static void names_free(char **names, size_t n) {
        for (size_t i = 0; i < n; i++)
                free(names[i]);
        free(names);
}

/* Every name in the directory fd (which stays open). */
static int read_names(int fd, char ***ret, size_t *ret_n) {
        int dfd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        if (dfd < 0)
                return -errno;
        DIR *d = fdopendir(dfd);
        if (!d) {
                int r = -errno;
                close(dfd);
                return r;
        }
        char **names = NULL;
        size_t n = 0, cap = 0;
        int r = 0;
        struct dirent *de;
        errno = 0;
        /* Bounded by the directory's entries. */
        while ((de = readdir(d))) {
                if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                        continue;
                if (n == cap) {
                        size_t ncap = cap ? cap * 2 : 16;
                        char **nn = realloc(names, ncap * sizeof(*nn));
                        if (!nn) {
                                r = -ENOMEM;
                                break;
                        }
                        names = nn;
                        cap = ncap;
                }
                names[n] = strdup(de->d_name);
                if (!names[n]) {
                        r = -ENOMEM;
                        break;
                }
                n++;
                errno = 0;
        }
        if (r == 0 && errno != 0)
                r = -errno;
        closedir(d);
        if (r < 0) {
                names_free(names, n);
                return r;
        }
        *ret = names;
        *ret_n = n;
        return 0;
}

/* fstatat() plus whether the entry is the root of a mount (statx's
 * STATX_ATTR_MOUNT_ROOT, which also sees a bind mount from the same
 * filesystem; a different st_dev where the kernel does not say). */
static int stat_entry(int dfd, const char *name, struct stat *st, bool *ret_mount_root) {
        struct statx sx;
        if (statx(dfd, name, AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT,
                  STATX_TYPE | STATX_MODE | STATX_INO | STATX_NLINK | STATX_BLOCKS, &sx) < 0)
                return -errno;
        *st = (struct stat) {
                .st_mode = sx.stx_mode,
                .st_ino = sx.stx_ino,
                .st_nlink = sx.stx_nlink,
                .st_blocks = (blkcnt_t) sx.stx_blocks,
                .st_dev = makedev(sx.stx_dev_major, sx.stx_dev_minor),
        };
        *ret_mount_root = (sx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT) &&
                          (sx.stx_attributes & STATX_ATTR_MOUNT_ROOT);
        return 0;
}

static int walk(int root_fd, const WalkOps *ops, void *ud, ErrMsg *err) {
        Frame *stack = NULL;
        size_t depth = 0, cap = 0;
        int first = 0, r;
        int fd = fcntl(root_fd, F_DUPFD_CLOEXEC, 3);
        if (fd < 0)
                return errmsg_set(err, -errno, "dup: %m");

#define FAIL(x)                                  \
        do {                                     \
                int _r = (x);                    \
                if (first == 0)                  \
                        first = _r;              \
                if (!ops->keep_going)            \
                        goto out;                \
        } while (0)

        cap = 16;
        stack = calloc(cap, sizeof(*stack));
        if (!stack) {
                first = -ENOMEM;
                goto out;
        }
        if (fstat(fd, &stack[0].st) < 0) {
                first = errmsg_set(err, -errno, "fstat: %m");
                goto out;
        }
        r = read_names(fd, &stack[0].names, &stack[0].n);
        if (r < 0) {
                first = errmsg_set(err, r, "cannot read a directory: %s", strerror(-r));
                goto out;
        }
        dev_t dev = stack[0].st.st_dev;

        for (;;) {
                Frame *top = &stack[depth];
                if (top->next == top->n) {
                        names_free(top->names, top->n);
                        top->names = NULL;
                        top->n = top->next = 0;
                        if (depth == 0)
                                break;
                        /* Up through "..", which must be the directory we
                         * came from (nobody moved it meanwhile). */
                        int pfd = openat(fd, "..", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
                        struct stat pst;
                        if (pfd < 0 || fstat(pfd, &pst) < 0) {
                                first = errmsg_set(err, -errno, "cannot go back up a tree: %m");
                                if (pfd >= 0)
                                        close(pfd);
                                goto out;
                        }
                        Frame *parent = &stack[depth - 1];
                        if (pst.st_dev != parent->st.st_dev || pst.st_ino != parent->st.st_ino) {
                                close(pfd);
                                first = errmsg_set(err, -ESTALE, "a directory moved during the walk");
                                goto out;
                        }
                        close(fd);
                        fd = pfd;
                        struct stat child = top->st;
                        depth--;
                        r = ops->dir_done(ud, fd, parent->names[parent->next - 1], &child);
                        if (r < 0)
                                FAIL(r);
                        continue;
                }
                const char *name = top->names[top->next++];
                struct stat st = {};
                bool mount_root = false;
                r = stat_entry(fd, name, &st, &mount_root);
                if (r == -ENOENT)
                        continue;
                if (r < 0) {
                        FAIL(errmsg_set(err, r, "stat %s: %s", name, strerror(-r)));
                        continue;
                }
                if (!S_ISDIR(st.st_mode) || st.st_dev != dev || mount_root) {
                        r = ops->entry(ud, fd, name, &st);
                        if (r < 0)
                                FAIL(r);
                        continue;
                }
                if (depth + 1 >= WALK_DEPTH_MAX) {
                        FAIL(errmsg_set(err, -ELOOP, "tree deeper than %d levels", WALK_DEPTH_MAX));
                        continue;
                }
                int cfd = openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
                if (cfd < 0) {
                        if (errno == ENOENT)
                                continue;
                        FAIL(errmsg_set(err, -errno, "open %s: %m", name));
                        continue;
                }
                if (depth + 1 == cap) {
                        Frame *ns = realloc(stack, cap * 2 * sizeof(*ns));
                        if (!ns) {
                                close(cfd);
                                first = -ENOMEM;
                                goto out;
                        }
                        stack = ns;
                        cap *= 2;
                }
                Frame *child = &stack[depth + 1];
                *child = (Frame) { .st = st };
                r = read_names(cfd, &child->names, &child->n);
                if (r < 0) {
                        close(cfd);
                        FAIL(errmsg_set(err, r, "cannot read %s: %s", name, strerror(-r)));
                        continue;
                }
                close(fd);
                fd = cfd;
                depth++;
        }
#undef FAIL
out:
        if (stack)
                for (size_t i = 0; i <= depth; i++)
                        names_free(stack[i].names, stack[i].n);
        free(stack);
        close(fd);
        return first;
}

/* ---- removal ---- */

static int remove_entry(void *ud, int dfd, const char *name, const struct stat *st) {
        ErrMsg *err = ud;
        if (S_ISDIR(st->st_mode))
                return errmsg_set(err, -EBUSY, "%s is a mount point: left in place", name);
        if (unlinkat(dfd, name, 0) < 0 && errno != ENOENT)
                return errmsg_set(err, -errno, "unlink %s: %m", name);
        return 0;
}

static int remove_dir(void *ud, int dfd, const char *name, const struct stat *st) {
        (void) st;
        ErrMsg *err = ud;
        if (unlinkat(dfd, name, AT_REMOVEDIR) < 0 && errno != ENOENT)
                return errmsg_set(err, -errno, "rmdir %s: %m", name);
        return 0;
}

int snap_fs_remove_tree(const char *path, ErrMsg *err) {
        int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0) {
                if (errno == ENOENT)
                        return 0;
                if (errno == ENOTDIR || errno == ELOOP) {
                        if (unlink(path) < 0 && errno != ENOENT)
                                return errmsg_set(err, -errno, "unlink %s: %m", path);
                        return 0;
                }
                return errmsg_set(err, -errno, "open %s: %m", path);
        }
        if (snap_fs_is_mountpoint(path) == 1) {
                close(fd);
                return errmsg_set(err, -EBUSY, "%s is a mount point: left in place", path);
        }
        static const WalkOps ops = { .entry = remove_entry, .dir_done = remove_dir, .keep_going = true };
        int r = walk(fd, &ops, err, err);
        close(fd);
        if (rmdir(path) < 0 && errno != ENOENT && r == 0)
                r = errmsg_set(err, -errno, "rmdir %s: %m", path);
        if (r < 0)
                errmsg_prefix(err, r, "removing %s", path);
        return r;
}

/* ---- usage ---- */

/* (dev, ino) of files with more than one link: a set, open addressing. */
typedef struct InodeSet {
        struct { dev_t dev; ino_t ino; bool used; } *slots; /* owned */
        size_t cap, n;
} InodeSet;

static size_t inode_hash(dev_t dev, ino_t ino) {
        uint64_t h = (uint64_t) ino * 0x9e3779b97f4a7c15ull ^ (uint64_t) dev;
        return (size_t) (h ^ (h >> 29));
}

/* 1 when added, 0 when there already, -ENOMEM. */
static int inode_set_add(InodeSet *s, dev_t dev, ino_t ino) {
        if ((s->n + 1) * 2 > s->cap) {
                size_t cap = s->cap ? s->cap * 2 : 64;
                __typeof__(s->slots) slots = calloc(cap, sizeof(*slots));
                if (!slots)
                        return -ENOMEM;
                for (size_t i = 0; i < s->cap; i++)
                        if (s->slots[i].used) {
                                size_t j = inode_hash(s->slots[i].dev, s->slots[i].ino) & (cap - 1);
                                while (slots[j].used) /* bounded: the table is at most half full */
                                        j = (j + 1) & (cap - 1);
                                slots[j] = s->slots[i];
                        }
                free(s->slots);
                s->slots = slots;
                s->cap = cap;
        }
        size_t j = inode_hash(dev, ino) & (s->cap - 1);
        while (s->slots[j].used) { /* bounded: the table is at most half full */
                if (s->slots[j].dev == dev && s->slots[j].ino == ino)
                        return 0;
                j = (j + 1) & (s->cap - 1);
        }
        s->slots[j].dev = dev;
        s->slots[j].ino = ino;
        s->slots[j].used = true;
        s->n++;
        return 1;
}

typedef struct UsageWalk {
        SnapUsage u;
        InodeSet links;
} UsageWalk;

static int usage_count(UsageWalk *w, const struct stat *st) {
        if (!S_ISDIR(st->st_mode) && st->st_nlink > 1) {
                int r = inode_set_add(&w->links, st->st_dev, st->st_ino);
                if (r <= 0)
                        return r;
        }
        w->u.inodes++;
        w->u.size += (int64_t) st->st_blocks * 512;
        return 0;
}

static int usage_entry(void *ud, int dfd, const char *name, const struct stat *st) {
        (void) dfd;
        (void) name;
        if (S_ISDIR(st->st_mode))
                return 0; /* a mount point: not ours */
        return usage_count(ud, st);
}

static int usage_dir(void *ud, int dfd, const char *name, const struct stat *st) {
        (void) dfd;
        (void) name;
        return usage_count(ud, st);
}

int snap_fs_usage(const char *path, SnapUsage *ret, ErrMsg *err) {
        int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
                return errmsg_set(err, -errno, "open %s: %m", path);
        UsageWalk w = {};
        struct stat st;
        int r = fstat(fd, &st) < 0 ? -errno : usage_count(&w, &st);
        if (r == 0) {
                static const WalkOps ops = { .entry = usage_entry, .dir_done = usage_dir };
                r = walk(fd, &ops, &w, err);
        }
        close(fd);
        free(w.links.slots);
        if (r < 0)
                return errmsg_prefix(err, r, "usage of %s", path);
        *ret = w.u;
        return 0;
}

int snap_fs_is_mountpoint(const char *path) {
        struct stat st = {}, pst;
        bool mount_root = false;
        int r = stat_entry(AT_FDCWD, path, &st, &mount_root);
        if (r < 0)
                return r;
        if (!S_ISDIR(st.st_mode))
                return 0;
        if (mount_root)
                return 1;
        size_t len = strlen(path);
        _cleanup_free_ char *parent = malloc(len + 4);
        if (!parent)
                return -ENOMEM;
        memcpy(parent, path, len);
        memcpy(parent + len, "/..", 4);
        if (stat(parent, &pst) < 0)
                return -errno;
        return st.st_dev != pst.st_dev || st.st_ino == pst.st_ino;
}
