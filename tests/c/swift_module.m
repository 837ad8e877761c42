/* Checks bindings/swift's module map: the CDpoimg module imports and exposes the API the Swift
 * wrapper uses (scripts/test-c.sh compiles this with clang -fmodules -fsyntax-only). */
@import CDpoimg;

int main(void) {
    dpoimg_engine_options eo;
    dpoimg_generate_options go;
    dpoimg_engine *engine = 0;
    dpoimg_images *images = 0;
    dpoimg_adapter_ref ref = {0, "name", 1.0f};
    const dpoimg_image *img = 0;
    dpoimg_bytes *png = 0;
    dpoimg_cancel *cancel = 0;
    if (dpoimg_engine_options_init(&eo, DPOIMG_ENGINE_OPTIONS_VERSION) != DPOIMG_OK) return 1;
    if (dpoimg_generate_options_init(&go, DPOIMG_GENERATE_OPTIONS_VERSION) != DPOIMG_OK) return 1;
    go.adapters = &ref;
    go.adapter_count = 1;
    if (dpoimg_cancel_new(&cancel) == DPOIMG_OK) go.cancel = cancel;
    if (dpoimg_engine_open("bundle", &eo, &engine) == DPOIMG_OK &&
        dpoimg_generate(engine, &go, &images) == DPOIMG_OK &&
        dpoimg_images_get(images, 0, &img) == DPOIMG_OK &&
        dpoimg_images_encode_png(images, 0, &png) == DPOIMG_OK) {
        dpoimg_bytes_free(png);
    }
    /* scoring and fine-tuning (ScoreFinetune.swift) */
    dpoimg_reward *reward = 0;
    float score = 0;
    if (dpoimg_reward_open("reward", &eo, &reward) == DPOIMG_OK && img)
        (void)dpoimg_reward_score(reward, "prompt", img, 1, &score);
    dpoimg_reward_close(reward);
    dpoimg_finetune_options fo;
    dpoimg_finetune_job *job = 0;
    dpoimg_finetune_progress fp;
    bool finished = false;
    char path[64];
    size_t n = 0;
    if (dpoimg_finetune_options_init(&fo, DPOIMG_FINETUNE_OPTIONS_VERSION) == DPOIMG_OK) {
        fo.config_json = "{}";
        if (dpoimg_finetune_start(&fo, &job) == DPOIMG_OK &&
            dpoimg_finetune_job_poll(job, &fp, &finished) == DPOIMG_OK) {
            (void)dpoimg_finetune_job_cancel(job);
            (void)dpoimg_finetune_job_wait(job);
            (void)dpoimg_finetune_job_adapter_path(job, path, sizeof path, &n);
        }
        dpoimg_finetune_job_free(job);
    }
    dpoimg_images_free(images);
    dpoimg_cancel_free(cancel);
    dpoimg_engine_close(engine);
    return DPOIMG_VERSION_MAJOR >= 0 && img == 0 ? 0 : (int)img->width;
}
