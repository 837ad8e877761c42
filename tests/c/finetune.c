/* Fine-tuning through the C ABI: a short Diffusion-DPO run on the committed preference set with
 * a progress callback, then its error paths (bad JSON, unknown keys, an existing run without
 * resume, a cancel from the callback, unknown versions). */
#define _DEFAULT_SOURCE /* mkdtemp */
#include "check.h"

#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

struct counts {
    int steps, encoding, checkpoints, finished;
    double first_loss;
    int stop_at; /* return false at this step (0 = never) */
};

static bool on_progress(void *userdata, const dpoimg_finetune_progress *p) {
    struct counts *c = userdata;
    switch (p->stage) {
    case DPOIMG_FINETUNE_STAGE_ENCODING: c->encoding++; break;
    case DPOIMG_FINETUNE_STAGE_STEP:
        if (c->steps++ == 0) c->first_loss = p->loss;
        if (c->stop_at && (int)p->done == c->stop_at) return false;
        break;
    case DPOIMG_FINETUNE_STAGE_CHECKPOINT: c->checkpoints++; break;
    case DPOIMG_FINETUNE_STAGE_FINISHED: c->finished++; break;
    default: break;
    }
    return true;
}

static char json[4096];

static const char *config(const char *dir, const char *run, const char *extra) {
    snprintf(json, sizeof json,
             "{\"bundle\": \"%s\", \"data\": \"tests/assets/train/prefs.jsonl\", "
             "\"output\": \"%s/%s\", \"cache_dir\": \"%s/cache\", \"steps\": 3, "
             "\"batch_pairs\": 1, \"threads\": 1, \"lr\": 0.001%s}",
             test_bundle(), dir, run, dir, extra);
    return json;
}

int main(void) {
    char dir[] = "/tmp/dpoimg-c-finetune-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);

    dpoimg_finetune_options o;
    CHECK_STATUS(dpoimg_finetune_options_init(NULL, DPOIMG_FINETUNE_OPTIONS_VERSION),
                 DPOIMG_ERR_MISUSE, "options");
    CHECK_STATUS(dpoimg_finetune_options_init(&o, 0), DPOIMG_ERR_VERSION, "version");
    CHECK_OK(dpoimg_finetune_options_init(&o, DPOIMG_FINETUNE_OPTIONS_VERSION));
    CHECK_STATUS(dpoimg_finetune_run(&o), DPOIMG_ERR_MISUSE, "config_json");
    CHECK_STATUS(dpoimg_finetune_run(NULL), DPOIMG_ERR_MISUSE, "options");

    /* a whole run */
    struct counts c = {0};
    o.config_json = config(dir, "a", "");
    o.progress = on_progress;
    o.progress_userdata = &c;
    CHECK_OK(dpoimg_finetune_run(&o));
    CHECK(c.steps == 3);
    CHECK(c.finished == 1);
    CHECK(c.encoding >= 1);
    CHECK(c.first_loss > 0.6931 && c.first_loss < 0.6932); /* ln 2 at initialisation */
    char path[512];
    struct stat st;
    snprintf(path, sizeof path, "%s/a/adapter.safetensors", dir);
    CHECK(stat(path, &st) == 0 && st.st_size > 0);
    /* the adapter loads on an engine */
    dpoimg_engine *e = open_test_engine();
    CHECK(e != NULL);
    if (e) {
        const dpoimg_adapter *a = NULL;
        CHECK_OK(dpoimg_engine_adapter_load(e, path, "tuned", &a));
        dpoimg_adapter_free(a);
        dpoimg_engine_close(e);
    }

    /* the same output again without resume: refused, nothing lost */
    CHECK_STATUS(dpoimg_finetune_run(&o), DPOIMG_ERR_IO, "--resume");
    CHECK(stat(path, &st) == 0 && st.st_size > 0);

    /* bad settings */
    o.config_json = "{not json";
    CHECK_STATUS(dpoimg_finetune_run(&o), DPOIMG_ERR_INVALID_ARGUMENT, "config_json");
    o.config_json = config(dir, "b", ", \"stepz\": 3");
    CHECK_STATUS(dpoimg_finetune_run(&o), DPOIMG_ERR_INVALID_ARGUMENT, "stepz");
    o.config_json = config(dir, "c", ", \"beta\": -1");
    CHECK_STATUS(dpoimg_finetune_run(&o), DPOIMG_ERR_INVALID_ARGUMENT, "beta");
    snprintf(json, sizeof json, "{\"data\": \"/nonexistent.jsonl\", \"output\": \"%s/f\"}", dir);
    o.config_json = json;
    CHECK_STATUS(dpoimg_finetune_run(&o), DPOIMG_ERR_INVALID_ARGUMENT, "nonexistent");
    snprintf(path, sizeof path, "%s/f", dir);
    CHECK(stat(path, &st) != 0); /* a run that failed before starting leaves no directory */

    /* cancel from the callback after step 2, then resume to the end */
    struct counts c2 = {0};
    c2.stop_at = 2;
    o.config_json = config(dir, "d", "");
    o.progress_userdata = &c2;
    CHECK_STATUS(dpoimg_finetune_run(&o), DPOIMG_ERR_CANCELLED, "cancelled");
    CHECK(c2.checkpoints == 1); /* the completed steps are checkpointed */
    struct counts c3 = {0};
    o.config_json = config(dir, "d", ", \"resume\": true");
    o.progress_userdata = &c3;
    CHECK_OK(dpoimg_finetune_run(&o));
    CHECK(c3.steps == 1 && c3.finished == 1);

    /* a cancel handle already requested */
    dpoimg_cancel *k = NULL;
    CHECK_OK(dpoimg_cancel_new(&k));
    CHECK_OK(dpoimg_cancel_request(k));
    o.cancel = k;
    o.config_json = config(dir, "e", "");
    CHECK_STATUS(dpoimg_finetune_run(&o), DPOIMG_ERR_CANCELLED, "cancelled");
    dpoimg_cancel_free(k);

    /* the same run as a job on its own thread: poll, wait, adapter path; then a cancelled job */
    dpoimg_finetune_options jo;
    CHECK_OK(dpoimg_finetune_options_init(&jo, DPOIMG_FINETUNE_OPTIONS_VERSION));
    jo.config_json = config(dir, "g", "");
    dpoimg_finetune_job *job = NULL;
    CHECK_OK(dpoimg_finetune_start(&jo, &job));
    if (job) {
        char small[4];
        size_t need = 0;
        bool finished = true;
        dpoimg_finetune_progress p;
        CHECK_OK(dpoimg_finetune_job_poll(job, &p, &finished));
        if (!finished) /* still running: no adapter yet */
            CHECK_STATUS(dpoimg_finetune_job_adapter_path(job, small, sizeof small, &need),
                         DPOIMG_ERR_NOT_FOUND, "not finished");
        CHECK_OK(dpoimg_finetune_job_wait(job));
        CHECK_OK(dpoimg_finetune_job_wait(job)); /* again: same result */
        CHECK_OK(dpoimg_finetune_job_poll(job, &p, &finished));
        CHECK(finished && p.stage == DPOIMG_FINETUNE_STAGE_FINISHED && p.done == 3);
        CHECK_STATUS(dpoimg_finetune_job_adapter_path(job, small, sizeof small, &need),
                     DPOIMG_ERR_INVALID_ARGUMENT, "too small");
        char full[512];
        CHECK_OK(dpoimg_finetune_job_adapter_path(job, full, sizeof full, &need));
        CHECK(need == strlen(full) && strstr(full, "/g/adapter.safetensors") != NULL);
        dpoimg_finetune_job_free(job);
    }
    job = NULL;
    jo.config_json = config(dir, "h", ", \"grad_accum\": 1000");
    CHECK_OK(dpoimg_finetune_start(&jo, &job));
    CHECK_OK(dpoimg_finetune_job_cancel(job));
    CHECK_STATUS(dpoimg_finetune_job_wait(job), DPOIMG_ERR_CANCELLED, "cancelled");
    dpoimg_finetune_job_free(job);
    dpoimg_finetune_job_free(NULL);
    jo.config_json = "[1, 2]";
    CHECK_STATUS(dpoimg_finetune_start(&jo, &job), DPOIMG_ERR_INVALID_ARGUMENT, "config_json");

    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0);
    return check_finish("finetune");
}
