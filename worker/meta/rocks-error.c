/* RocksDB errors (rocks-error.h). */
#include "worker/meta/rocks-error.h"

#include <errno.h>
#include <rocksdb/c.h>
#include <string.h>

int meta_rocks_error(char *errptr, ErrMsg *err, const char *what, const char *arg) {
        int r;
        if (strstr(errptr, "While lock file") || strstr(errptr, "lock hold by current process") ||
            strncmp(errptr, "Resource busy", strlen("Resource busy")) == 0)
                r = -EBUSY;
        else if (strncmp(errptr, "Corruption", strlen("Corruption")) == 0)
                r = -EBADMSG;
        else
                r = -EIO; /* "IO error" and everything else */
        errmsg_set(err, r, "RocksDB %s%s%s: %s", what, arg[0] ? " " : "", arg, errptr);
        rocksdb_free(errptr);
        return r;
}
