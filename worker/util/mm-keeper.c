/* The memory keeper (mm-keeper.h). The child runs on a small stack of its
 * own inside the shared address space and uses raw system calls only: it
 * shares the parent's memory but not its threads' locks, so nothing in it
 * may touch malloc, stdio or errno-dependent state. */
#include "worker/util/mm-keeper.h"

#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <time.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#define KEEPER_STACK (64u << 10)
#define SHUTDOWN_MAX 256

/* Registered fds: fd + 1 to shut down, -(fd + 1) to close; 0: a free
 * slot */
static int shutdown_fds[SHUTDOWN_MAX];

static void on_death(int v, bool add) {
        for (unsigned i = 0; i < SHUTDOWN_MAX; i++) {
                int expected = add ? 0 : v;
                if (__atomic_compare_exchange_n(&shutdown_fds[i], &expected, add ? v : 0, false, __ATOMIC_SEQ_CST,
                                                __ATOMIC_SEQ_CST))
                        return;
        }
}

void mm_keeper_shutdown_on_death(int fd, bool add) {
        on_death(fd + 1, add);
}

void mm_keeper_close_on_death(int fd, bool add) {
        on_death(-(fd + 1), add);
}

__attribute__((no_sanitize_address, no_sanitize_undefined)) static int keeper_main(void *arg) {
        pid_t parent = (pid_t) (intptr_t) arg;
        uint64_t all = ~0ull;
        syscall(SYS_rt_sigprocmask, SIG_SETMASK, &all, NULL, sizeof(all));
        /* a pidfd in the shared table, with close-on-exec: readable once
         * the worker exited */
        long pidfd = syscall(SYS_pidfd_open, parent, 0);
        if (pidfd >= 0 && syscall(SYS_getppid) == parent) {
                struct pollfd p = { .fd = (int) pidfd, .events = POLLIN };
                while (syscall(SYS_ppoll, &p, 1, NULL, NULL, 0) != 1)
                        ;
        }
        for (unsigned i = 0; i < SHUTDOWN_MAX; i++) {
                int v = __atomic_load_n(&shutdown_fds[i], __ATOMIC_SEQ_CST);
                if (v > 0)
                        syscall(SYS_shutdown, v - 1, SHUT_RDWR);
                else if (v < 0)
                        syscall(SYS_close, -v - 1);
        }
        /* let the next worker finish its takeover before the kernel frees
         * what this one held */
        struct timespec grace = { .tv_nsec = 300 * 1000 * 1000 };
        syscall(SYS_ppoll, NULL, 0, &grace, NULL, 0);
        syscall(SYS_exit, 0);
        return 0;
}

int mm_keeper_start(void) {
        void *stack = mmap(NULL, KEEPER_STACK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
        if (stack == MAP_FAILED)
                return -errno;
        /* the stack stays mapped: it is the keeper's for its whole life */
        pid_t pid = clone(keeper_main, (char *) stack + KEEPER_STACK, CLONE_VM | CLONE_FILES | SIGCHLD,
                          (void *) (intptr_t) getpid());
        if (pid < 0) {
                int r = -errno;
                munmap(stack, KEEPER_STACK);
                return r;
        }
        return 0;
}
