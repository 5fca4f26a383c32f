/* containerd's filter language (github.com/containerd/containerd/filters),
 * as List requests carry it: each string is a comma-separated list of
 * selectors that must all match, and a list of strings matches when any
 * of them does.
 *
 *   selector  := fieldpath [ ("==" | "!=" | "~=") value ]
 *   fieldpath := field ("." field)*
 *   field     := [A-Za-z0-9_]+ | "quoted"
 *   value     := quoted | a run of anything but "," and white space
 *
 * Quoted strings take Go's escapes; "~=" values may also be quoted with
 * /.../ or |...| and are POSIX extended regular expressions here (RE2 in
 * containerd: the common subset behaves the same). A selector without an
 * operator tests presence. containerd's metadata layer sends, for remote
 * snapshots, `labels."containerd.io/snapshot.ref"==X,parent=="Y"`.
 *
 * Pure: no I/O, never logs; the strings come from the socket and are
 * fuzzed (tests/fuzz/fuzz-snapshotter.c). A parsed SnapFilter is
 * immutable and may be matched from several threads. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "common/util/errmsg.h"

/* Bounds on one List request's filters. */
#define SNAP_FILTER_STRINGS_MAX 64
#define SNAP_FILTER_STRING_MAX 4096
#define SNAP_FILTER_REGEX_MAX 256

typedef struct SnapFilter SnapFilter;

/* Looks a field path up in the object being matched: sets *ret_value (a
 * string that stays valid during the match) and returns true when the
 * field is present. */
typedef bool (*SnapFilterLookup)(void *userdata, char *const *fieldpath, size_t n, const char **ret_value);

/* Parses n filter strings (n == 0: matches everything). -EINVAL with a
 * message naming the position for a syntax error, -E2BIG past the
 * bounds above, -ENOMEM. */
int snap_filter_parse(const char *const *strings, size_t n, SnapFilter **ret, ErrMsg *err);
SnapFilter *snap_filter_free(SnapFilter *f);
bool snap_filter_match(const SnapFilter *f, SnapFilterLookup lookup, void *userdata);
