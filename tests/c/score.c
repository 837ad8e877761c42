/* Scoring through the C ABI: generate the image of tests/c/generate.c, score it with the tiny
 * reward bundle, and compare with the score `dpoimg score` gives the CLI's identical PNG
 * (argv[1], printed by scripts/test-c.sh); then the error paths.
 *
 * Usage: score [EXPECTED_SCORE] */
#include "check.h"

#include <math.h>

#define PROMPT "a red circle above a blue square"

int main(int argc, char **argv) {
    dpoimg_engine *engine = open_test_engine();
    CHECK(engine != NULL);
    if (!engine) return check_finish("score");
    const dpoimg_adapter *adapter = NULL;
    CHECK_OK(dpoimg_engine_adapter_load(engine, "tests/assets/adapters/r4.safetensors", NULL,
                                        &adapter));
    dpoimg_generate_options go;
    CHECK_OK(dpoimg_generate_options_init(&go, DPOIMG_GENERATE_OPTIONS_VERSION));
    dpoimg_adapter_ref refs[1] = {{adapter, NULL, 0.5f}};
    go.prompt = PROMPT;
    go.negative_prompt = "blurry";
    go.seed = 42;
    go.steps = 4;
    go.sampler = "euler-a";
    go.adapters = refs;
    go.adapter_count = 1;
    dpoimg_images *images = NULL;
    CHECK_OK(dpoimg_generate(engine, &go, &images));

    dpoimg_engine_options eo;
    CHECK_OK(dpoimg_engine_options_init(&eo, DPOIMG_ENGINE_OPTIONS_VERSION));
    eo.device = "cpu";
    eo.intra_threads = 1;
    dpoimg_reward *reward = NULL;
    CHECK_OK(dpoimg_reward_open("tests/assets/reward-tiny", &eo, &reward));
    if (images && reward) {
        const dpoimg_image *got = NULL;
        CHECK_OK(dpoimg_images_get(images, 0, &got));
        if (!got) return check_finish("score");
        dpoimg_image img = *got;
        dpoimg_image two[2] = {img, img};
        float s[2] = {0, 0};
        CHECK_OK(dpoimg_reward_score(reward, PROMPT, two, 2, s));
        CHECK(s[0] == s[1]);
        if (argc > 1) {
            double want = atof(argv[1]);
            CHECK(fabs(s[0] - want) <= 1e-6);
            if (fabs(s[0] - want) > 1e-6) fprintf(stderr, "score %.9f, CLI %.9f\n", s[0], want);
        }
        /* error paths: nothing is written on failure */
        float untouched = 42.0f;
        CHECK_STATUS(dpoimg_reward_score(reward, PROMPT, two, 0, &untouched),
                     DPOIMG_ERR_INVALID_ARGUMENT, "count 0");
        CHECK_STATUS(dpoimg_reward_score(reward, NULL, two, 1, &untouched), DPOIMG_ERR_MISUSE,
                     "prompt");
        CHECK_STATUS(dpoimg_reward_score(reward, PROMPT, NULL, 1, &untouched), DPOIMG_ERR_MISUSE,
                     "images");
        dpoimg_image bad = img;
        bad.len = 5;
        CHECK_STATUS(dpoimg_reward_score(reward, PROMPT, &bad, 1, &untouched),
                     DPOIMG_ERR_INVALID_ARGUMENT, "inconsistent");
        CHECK_STATUS(dpoimg_reward_score((const dpoimg_reward *)engine, PROMPT, two, 1, &untouched),
                     DPOIMG_ERR_MISUSE, "dpoimg_reward");
        CHECK(untouched == 42.0f);
    }
    dpoimg_reward *r2 = NULL;
    CHECK_STATUS(dpoimg_reward_open(test_bundle(), &eo, &r2), DPOIMG_ERR_BUNDLE, "model bundle");
    CHECK_STATUS(dpoimg_reward_open("/nonexistent", &eo, &r2), DPOIMG_ERR_BUNDLE, "nonexistent");
    CHECK(r2 == NULL);
    dpoimg_reward_close(NULL);
    dpoimg_reward_close(reward);
    dpoimg_images_free(images);
    dpoimg_adapter_free(adapter);
    dpoimg_engine_close(engine);
    return check_finish("score");
}
