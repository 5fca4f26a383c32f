/* A client of the supervisor's control socket (holdfastctl, and the
 * worker's remote snapshots): connect to ROOT/supervisor.sock, send one
 * CtlRequest, collect the MountInfos and the CtlReply. No state; never
 * prints. */
#pragma once

#include <stddef.h>

#include "holdfast.pb.h"

#define DEFAULT_ROOT "/var/lib/holdfast"

typedef struct DaemonReply {
        holdfast_CtlReply reply;
        holdfast_MountInfo *mounts;   /* owned; n_mounts of them */
        size_t n_mounts;
} DaemonReply;

/* Returns 0 (the supervisor's own error is in ret->reply.error), or -errno
 * when the supervisor cannot be reached or answered nonsense; then
 * *ret_what says which step failed ("connect", "send", "receive").
 * timeout_ms bounds each receive (-EAGAIN when it passes); 0 waits as
 * long as the supervisor takes. */
int daemon_call(const char *root, const holdfast_CtlRequest *req, unsigned timeout_ms, DaemonReply *ret,
                const char **ret_what);
void daemon_reply_done(DaemonReply *r);
