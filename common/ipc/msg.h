/* holdfast's messages on the wire: an Envelope (proto/holdfast.proto)
 * encoded with nanopb into one SOCK_SEQPACKET datagram of at most
 * HOLDFAST_MSG_MAX bytes, with at most one fd. Decoding checks the size
 * caps and the protocol version; everything else is the receiver's to
 * validate. */
#pragma once

#include "holdfast.pb.h"

#define HOLDFAST_PROTO_VERSION 1
#define HOLDFAST_MSG_MAX 16384

/* Encodes e (its version is set here) and sends it with fd (or -1).
 * Returns 0 or -errno (-EMSGSIZE: does not fit). */
int msg_send(int sock, holdfast_Envelope *e, int fd);

/* Receives and decodes one Envelope. Returns 1, 0 when the peer closed,
 * -EBADMSG (undecodable, or a datagram with a stray fd), -EPROTO (another
 * protocol version), -errno. The fd that came with it is in *ret_fd (or
 * -EBADF); it is closed on any failure. */
int msg_recv(int sock, holdfast_Envelope *e, int *ret_fd);

/* Decodes a datagram already received (for fuzzing and tests). */
int msg_decode(const void *buf, size_t len, holdfast_Envelope *e);
