/* The one place where a RocksDB error string (errptr, Status::ToString():
 * "<Kind>: <detail>") becomes -errno and a message, for worker/meta and
 * worker/snapshotter alike. Any thread; never logs. */
#pragma once

#include "common/util/errmsg.h"

/* Frees errptr. -EBUSY for a LOCK file held by another process ("IO
 * error: While lock file: ...") or by this one ("IO error: lock hold by
 * current process"), -EBADMSG for "Corruption", -EIO for the rest. The
 * message reads "RocksDB WHAT ARG: detail" (arg may be ""). */
int meta_rocks_error(char *errptr, ErrMsg *err, const char *what, const char *arg);
