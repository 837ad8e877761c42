/* One engine, two threads generating at once, each getting exactly the pixels a lone call gets;
 * then a generation cancelled from another thread while it runs. */
#include "check.h"
#include <pthread.h>

typedef struct {
    dpoimg_engine *engine;
    uint64_t seed;
    unsigned char pixels[16 * 16 * 3];
    dpoimg_status status;
} job;

static dpoimg_status generate_into(dpoimg_engine *e, uint64_t seed, unsigned char *pixels) {
    dpoimg_generate_options o;
    dpoimg_images *images = NULL;
    const dpoimg_image *img = NULL;
    dpoimg_generate_options_init(&o, DPOIMG_GENERATE_OPTIONS_VERSION);
    o.prompt = "two threads";
    o.seed = seed;
    o.steps = 3;
    dpoimg_status s = dpoimg_generate(e, &o, &images);
    if (s != DPOIMG_OK) return s;
    s = dpoimg_images_get(images, 0, &img);
    if (s == DPOIMG_OK) memcpy(pixels, img->data, img->len < 768 ? img->len : 768);
    dpoimg_images_free(images);
    return s;
}

static void *run_job(void *arg) {
    job *j = arg;
    j->status = generate_into(j->engine, j->seed, j->pixels);
    return NULL;
}

/* Cancellation from another thread: the progress callback (on the generating thread) announces
 * step 1 and waits until the other thread has requested cancellation, so the cancel lands in the
 * middle of the run every time. */
typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int reached_step;
    int cancel_sent;
    const dpoimg_cancel *cancel;
} rendezvous;

static bool wait_for_cancel(void *userdata, const dpoimg_progress *p) {
    rendezvous *r = userdata;
    if (p->stage == DPOIMG_STAGE_DENOISING && p->step == 1) {
        pthread_mutex_lock(&r->lock);
        r->reached_step = 1;
        pthread_cond_broadcast(&r->cond);
        while (!r->cancel_sent) pthread_cond_wait(&r->cond, &r->lock);
        pthread_mutex_unlock(&r->lock);
    }
    return true; /* keep going: the cancel handle, not the callback, stops the run */
}

static void *canceller(void *arg) {
    rendezvous *r = arg;
    pthread_mutex_lock(&r->lock);
    while (!r->reached_step) pthread_cond_wait(&r->cond, &r->lock);
    CHECK_OK(dpoimg_cancel_request(r->cancel));
    r->cancel_sent = 1;
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->lock);
    return NULL;
}

int main(void) {
    dpoimg_engine *e = open_test_engine();
    if (!e) return 1;
    unsigned char alone[2][768];
    CHECK_OK(generate_into(e, 1, alone[0]));
    CHECK_OK(generate_into(e, 2, alone[1]));
    CHECK(memcmp(alone[0], alone[1], 768) != 0);

    job jobs[2] = {{e, 1, {0}, -100}, {e, 2, {0}, -100}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++) pthread_create(&t[i], NULL, run_job, &jobs[i]);
    for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
    for (int i = 0; i < 2; i++) {
        CHECK(jobs[i].status == DPOIMG_OK);
        CHECK(memcmp(jobs[i].pixels, alone[i], 768) == 0);
    }

    rendezvous r = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, NULL};
    dpoimg_cancel *c = NULL;
    CHECK_OK(dpoimg_cancel_new(&c));
    r.cancel = c;
    pthread_t ct;
    pthread_create(&ct, NULL, canceller, &r);
    dpoimg_generate_options o;
    dpoimg_generate_options_init(&o, DPOIMG_GENERATE_OPTIONS_VERSION);
    o.prompt = "cancel me";
    o.steps = 5;
    o.cancel = c;
    o.progress = wait_for_cancel;
    o.progress_userdata = &r;
    dpoimg_images *images = NULL;
    CHECK_STATUS(dpoimg_generate(e, &o, &images), DPOIMG_ERR_CANCELLED, "cancelled");
    CHECK(images == NULL);
    pthread_join(ct, NULL);
    /* Per-thread last error: this thread's message is still the cancellation. */
    CHECK(strstr(dpoimg_last_error(), "cancelled") != NULL);
    dpoimg_cancel_free(c);
    dpoimg_engine_close(e);
    return check_finish("concurrency");
}
