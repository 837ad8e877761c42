/* Tiny test harness shared by the C tests: each CHECK prints the failing expression with the
 * library's last error, counts failures, and main() returns non-zero if any failed. */
#ifndef DPOIMG_TEST_CHECK_H
#define DPOIMG_TEST_CHECK_H

#include <dpoimg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int check_failures = 0;

#define CHECK(cond)                                                                        \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "%s:%d: FAIL: %s (last error: %s)\n", __FILE__, __LINE__,      \
                    #cond, dpoimg_last_error());                                           \
            check_failures++;                                                              \
        }                                                                                  \
    } while (0)

/* A call must return `want`, and on failure the thread's last error must contain `needle`. */
#define CHECK_STATUS(call, want, needle)                                                   \
    do {                                                                                   \
        dpoimg_status s_ = (call);                                                         \
        if (s_ != (want)) {                                                                \
            fprintf(stderr, "%s:%d: FAIL: %s returned %s, want %s (last error: %s)\n",     \
                    __FILE__, __LINE__, #call, dpoimg_status_name(s_),                     \
                    dpoimg_status_name(want), dpoimg_last_error());                        \
            check_failures++;                                                              \
        } else if ((want) != DPOIMG_OK && strstr(dpoimg_last_error(), (needle)) == NULL) { \
            fprintf(stderr, "%s:%d: FAIL: %s: last error \"%s\" lacks \"%s\"\n", __FILE__, \
                    __LINE__, #call, dpoimg_last_error(), (needle));                       \
            check_failures++;                                                              \
        }                                                                                  \
    } while (0)

#define CHECK_OK(call) CHECK_STATUS(call, DPOIMG_OK, "")

/* The tiny test bundle: $DPOIMG_TEST_BUNDLE (set by scripts/test-c.sh). */
static const char *test_bundle(void) {
    const char *b = getenv("DPOIMG_TEST_BUNDLE");
    return b ? b : "tests/assets/tiny-bundle";
}

/* Opens the tiny bundle on the CPU with one thread (quick, and deterministic under valgrind). */
static dpoimg_engine *open_test_engine(void) __attribute__((unused));
static dpoimg_engine *open_test_engine(void) {
    dpoimg_engine_options o;
    dpoimg_engine *e = NULL;
    if (dpoimg_engine_options_init(&o, DPOIMG_ENGINE_OPTIONS_VERSION) != DPOIMG_OK) return NULL;
    o.device = "cpu";
    o.intra_threads = 1;
    o.verify = false;
    if (dpoimg_engine_open(test_bundle(), &o, &e) != DPOIMG_OK) {
        fprintf(stderr, "cannot open %s: %s\n", test_bundle(), dpoimg_last_error());
        return NULL;
    }
    return e;
}

static int check_finish(const char *name) {
    if (check_failures == 0) {
        printf("%s: ok\n", name);
        return 0;
    }
    printf("%s: %d check(s) failed\n", name, check_failures);
    return 1;
}

#endif
