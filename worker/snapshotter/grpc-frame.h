/* gRPC's message framing over HTTP/2 DATA (PROTOCOL-HTTP2.md): each
 * message is a 1-byte compressed flag, a 4-byte big-endian length and the
 * message bytes; and the grpc-message trailer's percent-encoding. Pure:
 * no I/O, never logs; what it parses comes from the socket and is fuzzed
 * (tests/fuzz/fuzz-snapshotter.c). */
#pragma once

#include <stddef.h>
#include <stdint.h>

#define GRPC_FRAME_HEADER_SIZE 5

/* Looks at the first bytes of a request body. Returns 0 when fewer than
 * GRPC_FRAME_HEADER_SIZE bytes are there, 1 with *ret_len set to the
 * first message's declared length, -EMSGSIZE when that length is over
 * max, -EPROTONOSUPPORT for a compressed message (we announce no
 * compression, so a client must not send one) and -EBADMSG for a flag
 * byte that is neither 0 nor 1. */
int grpc_frame_peek(const uint8_t *buf, size_t size, size_t max, uint32_t *ret_len);

/* A whole request body of a unary or server-streaming call: exactly one
 * message. Sets *ret_msg (pointing into buf) and *ret_len. The peek()
 * errors, and -EBADMSG for no message, a truncated one or bytes after
 * it. */
int grpc_frame_single(const uint8_t *buf, size_t size, size_t max, const uint8_t **ret_msg, size_t *ret_len);

/* Writes the prefix of an uncompressed message of len bytes. */
void grpc_frame_header(uint8_t out[GRPC_FRAME_HEADER_SIZE], uint32_t len);

/* Percent-encodes a status message for the grpc-message trailer: bytes
 * outside 0x20..0x7e and '%' become %XX. Truncates to fit size (which
 * must be > 0) without splitting an escape; always NUL-terminates. */
void grpc_status_message_encode(const char *in, char *out, size_t size);
