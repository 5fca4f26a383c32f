/* Layer records through worker/meta (see record.h). Any thread: the store
 * is thread-safe and everything else here is local. */
#include "worker/layers/record.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "common/estargz/index-io.h"
#include "common/util/macro.h"
#include "worker/meta/store.h"

int layer_record_load(MetaStore *store, const char *key, ReadAtFn read_at, void *userdata, uint64_t blob_size,
                      Layer **ret, ErrMsg *err) {
        _cleanup_free_ void *val = NULL;
        size_t len;
        int r = meta_layer_get(store, key, &val, &len, err);
        if (r < 0)
                return r;
        LayerImage img;
        Index *idx = NULL;
        r = layer_image_decode(val, len, &img, &idx, err);
        if (r < 0)
                return r;
        /* The key names the file by size and mtime; a record that says
         * otherwise is not this blob's. A content-addressed key (blob
         * digest) passes 0: the record says how large the blob is. */
        if (blob_size != 0 && img.blob_size != blob_size) {
                index_free(idx);
                return errmsg_set(err, -EBADMSG, "stored layer is for a blob of %" PRIu64 " bytes, not %" PRIu64,
                                  img.blob_size, blob_size);
        }
        return layer_new_from_image(read_at, userdata, &img.footer, img.blob_size, img.toc_digest, idx, NULL, ret, err);
}

int layer_record_save(MetaStore *store, const char *key, const Layer *l, ErrMsg *err) {
        LayerImage img = { .footer = l->footer, .blob_size = l->blob_size, .index = l->index };
        memcpy(img.toc_digest, l->toc_digest, SHA256_LEN);
        _cleanup_free_ uint8_t *buf = NULL;
        size_t len;
        int r = layer_image_encode(&img, &buf, &len);
        if (r < 0)
                return errmsg_set(err, r, "cannot encode the layer's index");
        return meta_layer_put(store, key, buf, len, err);
}
