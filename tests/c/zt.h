/*
 * zt.h - the tiny test framework of the C unit tests.
 *
 * A test is a void function; ZT_CHECK stops it at the first failed check
 * and prints where. zt_run() prints "ok <name>" or "FAIL <name>", and
 * zt_summary() prints "RESULT <passed> <failed>" which run.sh adds up (a
 * binary that dies before printing it counts as one more failure).
 * Single-threaded: only the main thread may use ZT_CHECK.
 */
#ifndef ZT_H
#define ZT_H

#include <stdio.h>

static int zt_cur_failed, zt_passed, zt_failed;

#define ZT_CHECK(cond)                                                                    \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);     \
            zt_cur_failed = 1;                                                            \
            return;                                                                       \
        }                                                                                 \
    } while (0)

/* Same, with a printf-style explanation of the values involved. */
#define ZT_CHECKF(cond, ...)                                                              \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond);      \
            fprintf(stderr, __VA_ARGS__);                                                 \
            fputc('\n', stderr);                                                          \
            zt_cur_failed = 1;                                                            \
            return;                                                                       \
        }                                                                                 \
    } while (0)

static inline void zt_run(const char *name, void (*fn)(void))
{
    zt_cur_failed = 0;
    fn();
    printf("%s %s\n", zt_cur_failed ? "FAIL" : "ok", name);
    fflush(stdout);
    if (zt_cur_failed)
        zt_failed++;
    else
        zt_passed++;
}

#define ZT_RUN(fn) zt_run(#fn, fn)

/* Prints the RESULT line; returns the process exit status. */
static inline int zt_summary(void)
{
    printf("RESULT %d %d\n", zt_passed, zt_failed);
    return zt_failed != 0;
}

#endif
