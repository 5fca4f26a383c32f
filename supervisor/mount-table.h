/* The supervisor's record of every mount it made: the /dev/fuse fd that
 * keeps the connection alive, and what a worker needs to take it over
 * (the INIT parameters the last worker negotiated). A plain list; no
 * thread safety (the supervisor has one loop). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MOUNT_INIT_MAX 128
/* Same as FileDescriptorStoreMax= in packaging/holdfast-supervisor.service. */
#define MOUNT_TABLE_MAX 4096

typedef struct CtlConn CtlConn;

typedef struct Mount {
        uint64_t id;
        char *mountpoint;        /* owned; canonical, absolute */
        char *source;            /* owned; canonical, absolute */
        int fd;                  /* owned: the /dev/fuse connection */
        bool initialized;        /* a worker answered FUSE_INIT */
        uint8_t init[MOUNT_INIT_MAX];
        size_t init_size;

        uint64_t sent_gen;       /* generation of the worker that has it, 0: none */
        bool in_batch;           /* sent in a start sequence, no MountStatus yet */
        bool served;             /* the worker that has it said it serves it */
        CtlConn *waiter;         /* a MOUNT request waiting for the worker's answer */

        struct Mount *next;
} Mount;

typedef struct MountTable {
        Mount *head;             /* owned */
        size_t count;
        uint64_t next_id;        /* ids are never reused: a late MountStatus
                                  * for a removed id is recognized as such */
} MountTable;

/* Creates a record taking ownership of fd (closed on failure too). */
int mount_table_add(MountTable *t, const char *mountpoint, const char *source, int take_fd, Mount **ret);
Mount *mount_table_find(MountTable *t, uint64_t id);
Mount *mount_table_find_path(MountTable *t, const char *mountpoint);
/* Unlinks m, closes its fd, frees it. */
void mount_table_remove(MountTable *t, Mount *m);
void mount_table_clear(MountTable *t);
