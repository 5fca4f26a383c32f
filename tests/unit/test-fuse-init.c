/* worker/fuse/init.c: FUSE_INIT negotiation and the init blob that
 * carries the negotiated parameters from one worker to the next. */
#include <errno.h>
#include <string.h>

#include "common/util/macro.h"
#include "tap.h"
#include "worker/fuse/init.h"

static struct fuse_init_in kernel_init(uint32_t minor, uint64_t flags) {
        struct fuse_init_in in = {
                .major = 7,
                .minor = minor,
                .max_readahead = 131072,
                .flags = (uint32_t) flags | FUSE_INIT_EXT,
                .flags2 = (uint32_t) (flags >> 32),
        };
        return in;
}

static void test_negotiate(void) {
        uint64_t offered = FUSE_ASYNC_READ | FUSE_DO_READDIRPLUS | FUSE_READDIRPLUS_AUTO | FUSE_CACHE_SYMLINKS |
                           FUSE_PARALLEL_DIROPS | FUSE_MAX_PAGES | FUSE_POSIX_LOCKS | FUSE_SPLICE_READ |
                           FUSE_HAS_RESEND | FUSE_PASSTHROUGH;
        struct fuse_init_in in = kernel_init(41, offered);
        FuseParams p;
        struct fuse_init_out out;
        size_t out_len;
        is_int(fuse_params_negotiate(&in, sizeof(in), &p, &out, &out_len), 0, "7.41 negotiates");
        is_int(out.major, 7, "major 7");
        is_int(out.minor, 40, "minor capped at 40");
        is_int(out_len, sizeof(out), "full init_out");
        uint64_t flags = out.flags | (uint64_t) out.flags2 << 32;
        ok(flags & FUSE_DO_READDIRPLUS, "READDIRPLUS kept");
        ok(!(flags & FUSE_READDIRPLUS_AUTO), "READDIRPLUS_AUTO not asked for");
        ok(!(flags & (FUSE_POSIX_LOCKS | FUSE_SPLICE_READ)), "unwanted flags dropped");
        ok(flags & FUSE_PASSTHROUGH, "passthrough kept");
        is_int(out.unused[0], 1, "max_stack_depth 1 with passthrough");
        ok((flags & FUSE_ASYNC_READ) && (flags & FUSE_CACHE_SYMLINKS) && (flags & FUSE_PARALLEL_DIROPS) &&
                   (flags & FUSE_MAX_PAGES) && (flags & FUSE_INIT_EXT),
           "wanted flags kept");
        is_int(out.max_pages, 256, "max_pages 256");
        is_int(out.max_write, 1 << 20, "max_write 1 MiB");
        is_int(out.time_gran, 1, "time_gran 1");
        is_int(out.max_readahead, 131072, "max_readahead as offered");

        in = kernel_init(41, FUSE_ASYNC_READ | FUSE_MAX_PAGES);
        is_int(fuse_params_negotiate(&in, sizeof(in), &p, &out, &out_len), 0, "no passthrough offered");
        is_int(out.unused[0], 0, "max_stack_depth 0 without passthrough");

        in = kernel_init(31, FUSE_ASYNC_READ);
        is_int(fuse_params_negotiate(&in, sizeof(in), &p, &out, &out_len), 0, "7.31 negotiates");
        is_int(out.minor, 31, "minor of an older kernel");
        is_int(out.flags, FUSE_ASYNC_READ | FUSE_INIT_EXT, "only what was offered");
        is_int(out.max_pages, 0, "no max_pages without FUSE_MAX_PAGES");

        in = kernel_init(22, 0);
        in.flags = 0;
        is_int(fuse_params_negotiate(&in, 16, &p, &out, &out_len), 0, "7.22 with a 16-byte init_in");
        is_int(out_len, FUSE_COMPAT_22_INIT_OUT_SIZE, "7.22 gets the short init_out");

        in = kernel_init(40, 0);
        in.major = 8;
        is_int(fuse_params_negotiate(&in, sizeof(in), &p, &out, &out_len), 1, "major 8: answer 7 and wait");
        is_int(out.major, 7, "we say 7");
        in.major = 6;
        is_int(fuse_params_negotiate(&in, sizeof(in), &p, &out, &out_len), -EPROTO, "major 6 refused");
        in = kernel_init(11, 0);
        is_int(fuse_params_negotiate(&in, sizeof(in), &p, &out, &out_len), -EPROTO, "minor 11 refused");
        is_int(fuse_params_negotiate(&in, 8, &p, &out, &out_len), -EINVAL, "short init_in refused");
}

static void test_blob(void) {
        struct fuse_init_in in = kernel_init(40, FUSE_ASYNC_READ | FUSE_MAX_PAGES | FUSE_HAS_RESEND);
        FuseParams p, q;
        struct fuse_init_out out;
        size_t out_len;
        fuse_params_negotiate(&in, sizeof(in), &p, &out, &out_len);
        uint8_t blob[FUSE_PARAMS_BLOB_SIZE];
        fuse_params_encode(&p, blob);
        ok(FUSE_PARAMS_BLOB_SIZE <= 128, "blob fits MountRecord.init");
        is_int(fuse_params_decode(blob, sizeof(blob), &q), 0, "round trip decodes");
        ok(p.major == q.major && p.minor == q.minor && p.max_readahead == q.max_readahead && p.flags == q.flags &&
                   p.max_write == q.max_write && p.max_pages == q.max_pages && p.time_gran == q.time_gran,
           "round trip is exact");

        is_int(fuse_params_decode(blob, sizeof(blob) - 1, &q), -EBADMSG, "truncated");
        is_int(fuse_params_decode(blob, 0, &q), -EBADMSG, "empty");
        uint8_t bad[FUSE_PARAMS_BLOB_SIZE + 1];
        memcpy(bad, blob, sizeof(blob));
        bad[FUSE_PARAMS_BLOB_SIZE] = 0;
        is_int(fuse_params_decode(bad, sizeof(bad), &q), -EBADMSG, "trailing byte");
        memcpy(bad, blob, sizeof(blob));
        bad[3] = 2;
        is_int(fuse_params_decode(bad, sizeof(blob), &q), -EPROTO, "another version");
        memcpy(bad, blob, sizeof(blob));
        bad[0] = 'X';
        is_int(fuse_params_decode(bad, sizeof(blob), &q), -EBADMSG, "wrong magic");

        /* every single-field corruption that leaves a value out of range */
        static const struct { size_t off; uint8_t v; const char *what; } cases[] = {
                { 4, 8, "major 8" },   { 8, 41, "minor 41" },   { 8, 5, "minor 5" },
                { 19, 0x80, "unknown flag" }, { 26, 0x20, "max_write" }, { 29, 0x02, "max_pages 512+" },
                { 32, 0, "time_gran 0" }, { 36, 1, "reserved" },
        };
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                memcpy(bad, blob, sizeof(blob));
                bad[cases[i].off] = cases[i].v;
                is_int(fuse_params_decode(bad, sizeof(blob), &q), -EBADMSG, "refused: %s", cases[i].what);
        }
        /* a blob from a kernel that did not offer FUSE_MAX_PAGES */
        in = kernel_init(40, FUSE_ASYNC_READ);
        fuse_params_negotiate(&in, sizeof(in), &p, &out, &out_len);
        fuse_params_encode(&p, blob);
        is_int(fuse_params_decode(blob, sizeof(blob), &q), 0, "max_pages 0 is valid");
}

int main(void) {
        test_negotiate();
        test_blob();
        return done();
}
