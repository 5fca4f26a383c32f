/* Deferred teardown of the worker's memory. A killed process frees its
 * whole address space before its pidfd reports the exit, and the
 * supervisor hands the mounts to the next worker only after that report:
 * freeing hundreds of MB of layer indexes (and their page tables) is a
 * stall for every reader. The keeper is a tiny child that shares the
 * worker's memory (CLONE_VM) and nothing else: no fd, no signal handler,
 * no thread of the worker's. While it lives, the worker's exit skips the
 * teardown; the keeper dies with its parent (PR_SET_PDEATHSIG) and frees
 * the memory then, off the takeover's path. It never runs code of the
 * worker: it blocks in ppoll(2) until it is killed. Main thread only. */
#pragma once

/* Starts the keeper; 0 or -errno (then exits cost what they did). */
int mm_keeper_start(void);
