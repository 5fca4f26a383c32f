/* Condition variables whose timed waits count on CLOCK_MONOTONIC (the
 * deadlines in the worker are monotonic: a clock step must not shorten or
 * stretch a wait). Header only. */
#pragma once

#include <pthread.h>
#include <time.h>

static inline void cond_init_monotonic(pthread_cond_t *c) {
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(c, &ca);
        pthread_condattr_destroy(&ca);
}
