/* The background fetch's turns (layers.h): one piece at a time over
 * every layer of a LayerEnv, handed round the waiting layers in the order
 * they asked, and none while a prefetch is still in its landmark's part.
 * Each waiter sleeps on a condition of its own, so that a turn wakes one
 * thread, not one per mounted layer. Any thread; never logs. */
#include "worker/layers/layers.h"

#include <time.h>

#include "worker/util/cond.h"

#define WALKING_QUIET_MS 250

void layer_waiter_init(LayerWaiter *w) {
        *w = (LayerWaiter) {};
        cond_init_monotonic(&w->cond);
}

void layer_waiter_done(LayerWaiter *w) {
        pthread_cond_destroy(&w->cond);
}

/* Under turn_lock: hands the turn to the first waiter, when it is free. */
static void grant_locked(LayerEnv *env) {
        LayerWaiter *w = env->turn_head;
        if (!w || env->background_busy || env->landmarks > 0)
                return;
        env->turn_head = w->next;
        if (!env->turn_head)
                env->turn_tail = NULL;
        w->next = NULL;
        w->granted = true;
        env->background_busy = true;
        pthread_cond_signal(&w->cond);
}

static void unqueue_locked(LayerEnv *env, LayerWaiter *w) {
        LayerWaiter *prev = NULL;
        for (LayerWaiter *q = env->turn_head; q; prev = q, q = q->next)
                if (q == w) {
                        if (prev)
                                prev->next = w->next;
                        else
                                env->turn_head = w->next;
                        if (env->turn_tail == w)
                                env->turn_tail = prev;
                        w->next = NULL;
                        return;
                }
}

void layer_env_landmark_begin(LayerEnv *env) {
        pthread_mutex_lock(&env->turn_lock);
        env->landmarks++;
        pthread_mutex_unlock(&env->turn_lock);
}

void layer_env_landmark_end(LayerEnv *env) {
        pthread_mutex_lock(&env->turn_lock);
        env->landmarks--;
        grant_locked(env);
        pthread_mutex_unlock(&env->turn_lock);
}

int layer_env_background_take(LayerEnv *env, LayerWaiter *w, const bool *stop, const bool *wake) {
        pthread_mutex_lock(&env->turn_lock);
        w->granted = false;
        w->next = NULL;
        if (env->turn_tail)
                env->turn_tail->next = w;
        else
                env->turn_head = w;
        env->turn_tail = w;
        grant_locked(env);
        int r = 1;
        while (!w->granted) {
                if (__atomic_load_n(stop, __ATOMIC_ACQUIRE))
                        r = 0;
                else if (__atomic_load_n(wake, __ATOMIC_ACQUIRE))
                        r = 2;
                else {
                        pthread_cond_wait(&w->cond, &env->turn_lock);
                        continue;
                }
                unqueue_locked(env, w);
                break;
        }
        pthread_mutex_unlock(&env->turn_lock);
        return r;
}

void layer_env_background_give(LayerEnv *env) {
        pthread_mutex_lock(&env->turn_lock);
        env->background_busy = false;
        grant_locked(env);
        pthread_mutex_unlock(&env->turn_lock);
}

void layer_env_walking(LayerEnv *env) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        uint64_t until = (uint64_t) ts.tv_sec * 1000000000ull + (uint64_t) ts.tv_nsec + WALKING_QUIET_MS * 1000000ull;
        __atomic_store_n(&env->walking_until, until, __ATOMIC_RELAXED);
}

bool layer_env_sleep(LayerEnv *env, LayerWaiter *w, const bool *stop, const bool *wake) {
        pthread_mutex_lock(&env->turn_lock);
        while (!__atomic_load_n(stop, __ATOMIC_ACQUIRE) && !__atomic_load_n(wake, __ATOMIC_ACQUIRE))
                pthread_cond_wait(&w->cond, &env->turn_lock);
        bool stopped = __atomic_load_n(stop, __ATOMIC_ACQUIRE);
        pthread_mutex_unlock(&env->turn_lock);
        return !stopped;
}

void layer_env_wake(LayerEnv *env, LayerWaiter *w) {
        pthread_mutex_lock(&env->turn_lock);
        pthread_cond_signal(&w->cond);
        pthread_mutex_unlock(&env->turn_lock);
}
