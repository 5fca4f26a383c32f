/* containerd.services.snapshots.v1.Snapshots over the gRPC server
 * (grpc.c), backed by a Snapshotter (snapshots.c): what containerd's
 * [proxy_plugins.NAME] type = "snapshot" dials.
 *
 * The worker's wiring (the lead's, later) is:
 *     Snapshotter *s;   snapshotter_new(&(SnapshotterConfig){ root, hooks }, &s, &err);
 *     GrpcServer *g;    snap_service_start(s, listen_fd, NULL, &g, &err);
 *     ...
 *     grpc_server_drain(g, 5000);   (a takeover: let calls in flight end)
 *     grpc_server_free(g);   (first: no handler runs after it returns)
 *     snapshotter_free(s);
 * Status codes: see snap_service_code(). */
#pragma once

#include "common/util/errmsg.h"
#include "worker/snapshotter/grpc.h"
#include "worker/snapshotter/snapshots.h"

/* The ten methods; their userdata is the Snapshotter. */
const GrpcMethod *snap_service_methods(size_t *ret_n);

/* Serves s on take_listen_fd (taken, also on failure). tuning, if not
 * NULL, gives the server's bounds and on_error (its methods and userdata
 * are ignored). */
int snap_service_start(Snapshotter *s, int take_listen_fd, const GrpcServerConfig *tuning, GrpcServer **ret,
                       ErrMsg *err);

/* The one place an errno becomes a gRPC status: ENOENT NotFound, EEXIST
 * AlreadyExists, EINVAL/E2BIG/ENAMETOOLONG InvalidArgument, ENOTEMPTY and
 * EMEDIUMTYPE FailedPrecondition, EBUSY/EAGAIN Unavailable,
 * ENOMEM/EMSGSIZE ResourceExhausted, ECANCELED Cancelled, ETIMEDOUT
 * DeadlineExceeded, EOPNOTSUPP Unimplemented, anything else (I/O, an undecodable request) Internal. */
GrpcCode snap_service_code(int err);
