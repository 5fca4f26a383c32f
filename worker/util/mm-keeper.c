/* The memory keeper (mm-keeper.h). The child runs on a small stack of its
 * own inside the shared address space and uses raw system calls only: it
 * shares the parent's memory but not its threads' locks, so nothing in it
 * may touch malloc, stdio or errno-dependent state. */
#include "worker/util/mm-keeper.h"

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#define KEEPER_STACK (64u << 10)

__attribute__((no_sanitize_address, no_sanitize_undefined)) static int keeper_main(void *arg) {
        pid_t parent = (pid_t) (intptr_t) arg;
        uint64_t all = ~0ull;
        syscall(SYS_rt_sigprocmask, SIG_SETMASK, &all, NULL, sizeof(all));
        syscall(SYS_close_range, 0u, ~0u, 0u);
        syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
        /* the parent may have died before PR_SET_PDEATHSIG */
        if (syscall(SYS_getppid) != parent)
                syscall(SYS_exit, 0);
        for (;;)
                syscall(SYS_ppoll, NULL, 0, NULL, NULL, 0);
        return 0;
}

int mm_keeper_start(void) {
        void *stack = mmap(NULL, KEEPER_STACK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
        if (stack == MAP_FAILED)
                return -errno;
        /* the stack stays mapped: it is the keeper's for its whole life */
        pid_t pid = clone(keeper_main, (char *) stack + KEEPER_STACK, CLONE_VM | SIGCHLD,
                          (void *) (intptr_t) getpid());
        if (pid < 0) {
                int r = -errno;
                munmap(stack, KEEPER_STACK);
                return r;
        }
        return 0;
}
