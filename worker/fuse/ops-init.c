/* FUSE_INIT and FUSE_DESTROY: the start and end of a connection. INIT
 * comes once per connection (never again after a takeover: the
 * parameters are restored from the init blob instead). Serving threads. */
#include <errno.h>
#include <inttypes.h>

#include "worker/fuse/ops.h"
#include "worker/util/log.h"

int op_init(FuseReq *r, const FuseDispatchHooks *hooks) {
        FuseSession *s = r->session;
        if (fuse_session_initialized(s)) {
                log_warn_ratelimited(0, "mount %" PRIu64 ": FUSE_INIT on a connection already initialized", s->id);
                return -EPROTO;
        }
        FuseParams p;
        struct fuse_init_out out;
        size_t out_len;
        int ret = fuse_params_negotiate(r->arg, r->arg_len, &p, &out, &out_len);
        if (ret == 1)
                return fuse_reply(r, &out, out_len); /* the kernel asks again with 7.x */
        if (ret < 0) {
                log_error_errno(ret, "mount %" PRIu64 ": cannot negotiate FUSE_INIT: %m", s->id);
                return ret;
        }
        ret = fuse_session_set_params(s, &p);
        if (ret < 0)
                return ret;
        fuse_reply(r, &out, out_len);
        log_info("mount %" PRIu64 ": FUSE %" PRIu32 ".%" PRIu32 " initialized (flags 0x%" PRIx64 ")", s->id, p.major,
                 p.minor, p.flags);
        if (hooks && hooks->on_init)
                hooks->on_init(hooks->userdata, s);
        return 0;
}

int op_destroy(FuseReq *r) {
        return fuse_reply(r, NULL, 0);
}
