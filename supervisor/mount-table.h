/* The supervisor's record of every mount it made: the /dev/fuse fd that
 * keeps the connection alive, and what a worker needs to take it over
 * (the INIT parameters the last worker negotiated). A plain list; no
 * thread safety (the supervisor has one loop). */
#pragma once

#include "holdfast.pb.h"
#include "supervisor/base.h"

/* FileDescriptorStoreMax= in packaging/holdfast-supervisor.service is
 * this plus two (the records and the snapshotter socket). */
#define MOUNT_TABLE_MAX 4096

typedef struct CtlConn CtlConn;

typedef struct Mount {
        uint64_t id;
        char *mountpoint;        /* canonical, absolute; in m's allocation */
        char *source;            /* canonical path, or a layer reference; ditto */
        int fd;                  /* owned: the /dev/fuse connection */
        bool initialized;        /* a worker answered FUSE_INIT */
        holdfast_MountRecord_init_t init;   /* what it negotiated */

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

/* Creates a record taking ownership of fd (closed on failure too); id 0
 * numbers it, else it keeps the given id (a record carried over). */
int mount_table_add(MountTable *t, uint64_t id, const char *mountpoint, const char *source, int take_fd, Mount **ret);
Mount *mount_table_find(MountTable *t, uint64_t id);
/* By mountpoint as recorded (canonical: the clients resolve paths, the
 * supervisor never looks one up). */
Mount *mount_table_find_path(MountTable *t, const char *path);
/* Unlinks m, closes its fd, frees it. */
void mount_table_remove(MountTable *t, Mount *m);
void mount_table_clear(MountTable *t);
/* m as the worker protocol and the state file carry it. */
void mount_to_record(const Mount *m, holdfast_MountRecord *ret);
