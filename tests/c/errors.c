/* Every error path of the C ABI returns its status, keeps a message, and writes no output:
 * NULL arguments, text that is not UTF-8, bad sizes, unknown option versions, a cancelled
 * handle, a bad bundle, wrong handle kinds, and frees of NULL. */
#include "check.h"

#define SENTINEL ((void *)0x1)

static void engine_open_errors(void) {
    dpoimg_engine *e = SENTINEL;
    dpoimg_engine_options o;
    CHECK_STATUS(dpoimg_engine_options_init(NULL, DPOIMG_ENGINE_OPTIONS_VERSION),
                 DPOIMG_ERR_MISUSE, "options");
    memset(&o, 0, sizeof o);
    CHECK_STATUS(dpoimg_engine_options_init(&o, 0), DPOIMG_ERR_VERSION, "version 0");
    CHECK_STATUS(dpoimg_engine_options_init(&o, DPOIMG_ENGINE_OPTIONS_VERSION + 1),
                 DPOIMG_ERR_VERSION, "not supported");
    CHECK(o.version == 0); /* untouched on failure */
    CHECK_OK(dpoimg_engine_options_init(&o, DPOIMG_ENGINE_OPTIONS_VERSION));
    o.verify = false;

    CHECK_STATUS(dpoimg_engine_open(NULL, &o, &e), DPOIMG_ERR_MISUSE, "bundle_dir");
    CHECK_STATUS(dpoimg_engine_open(test_bundle(), &o, NULL), DPOIMG_ERR_MISUSE, "out_engine");
    CHECK_STATUS(dpoimg_engine_open("\xc3\x28", &o, &e), DPOIMG_ERR_INVALID_ARGUMENT, "UTF-8");
    CHECK_STATUS(dpoimg_engine_open("/nonexistent/bundle", &o, &e), DPOIMG_ERR_BUNDLE,
                 "bundle.json");
    /* A directory that exists but is not a bundle (the adapters folder). */
    CHECK_STATUS(dpoimg_engine_open("tests/assets/adapters", &o, &e), DPOIMG_ERR_BUNDLE,
                 "bundle.json");
    dpoimg_engine_options wrong = o;
    wrong.version = 42;
    CHECK_STATUS(dpoimg_engine_open(test_bundle(), &wrong, &e), DPOIMG_ERR_VERSION, "42");
    wrong = o;
    wrong.device = "tpu";
    CHECK_STATUS(dpoimg_engine_open(test_bundle(), &wrong, &e), DPOIMG_ERR_INVALID_ARGUMENT,
                 "unknown device");
    wrong = o;
    wrong.device = "\xff";
    CHECK_STATUS(dpoimg_engine_open(test_bundle(), &wrong, &e), DPOIMG_ERR_INVALID_ARGUMENT,
                 "device");
    CHECK(e == SENTINEL); /* never written on failure */
}

static void generate_errors(dpoimg_engine *e) {
    dpoimg_images *out = SENTINEL;
    dpoimg_generate_options o, bad;
    CHECK_STATUS(dpoimg_generate_options_init(NULL, DPOIMG_GENERATE_OPTIONS_VERSION),
                 DPOIMG_ERR_MISUSE, "options");
    CHECK_STATUS(dpoimg_generate_options_init(&o, 12), DPOIMG_ERR_VERSION, "12");
    CHECK_OK(dpoimg_generate_options_init(&o, DPOIMG_GENERATE_OPTIONS_VERSION));
    o.prompt = "errors";
    o.steps = 2;

    CHECK_STATUS(dpoimg_generate(NULL, &o, &out), DPOIMG_ERR_MISUSE, "NULL");
    CHECK_STATUS(dpoimg_generate(e, NULL, &out), DPOIMG_ERR_MISUSE, "options");
    CHECK_STATUS(dpoimg_generate(e, &o, NULL), DPOIMG_ERR_MISUSE, "out_images");

    bad = o; bad.version = 0;
    CHECK_STATUS(dpoimg_generate(e, &bad, &out), DPOIMG_ERR_VERSION, "version 0");
    bad = o; bad.version = DPOIMG_GENERATE_OPTIONS_VERSION + 1;
    CHECK_STATUS(dpoimg_generate(e, &bad, &out), DPOIMG_ERR_VERSION, "not supported");
    bad = o; bad.prompt = NULL;
    CHECK_STATUS(dpoimg_generate(e, &bad, &out), DPOIMG_ERR_MISUSE, "prompt");
    bad = o; bad.prompt = "caf\xe9"; /* Latin-1, not UTF-8 */
    CHECK_STATUS(dpoimg_generate(e, &bad, &out), DPOIMG_ERR_INVALID_ARGUMENT, "prompt");
    bad = o; bad.negative_prompt = "\x80";
    CHECK_STATUS(dpoimg_generate(e, &bad, &out), DPOIMG_ERR_INVALID_ARGUMENT, "negative_prompt");
    bad = o; bad.sampler = "heun";
    CHECK_STATUS(dpoimg_generate(e, &bad, &out), DPOIMG_ERR_INVALID_ARGUMENT, "sampler");

    /* Sizes and ranges. */
    bad = o; bad.width = 17;
    CHECK_STATUS(dpoimg_generate(e, &bad, &out), DPOIMG_ERR_INVALID_ARGUMENT, "width");
    bad = o; bad.height = 4096;
    CHECK_STATUS(dpoimg_generate(e, &bad, &out), DPOIMG_ERR_INVALID_ARGUMENT, "height");
    bad = o; bad.count = 0;
    CHECK_STATUS(dpoimg_generate(e, &bad, &out), DPOIMG_ERR_INVALID_ARGUMENT, "count");
    bad = o; bad.count = 17;
    CHECK_STATUS(dpoimg_generate(e, &bad, &out), DPOIMG_ERR_INVALID_ARGUMENT, "count");
    bad = o; bad.steps = 100000;
    CHECK_STATUS(dpoimg_generate(e, &bad, &out), DPOIMG_ERR_INVALID_ARGUMENT, "steps");
    bad = o; bad.guidance = 1e9f;
    CHECK_STATUS(dpoimg_generate(e, &bad, &out), DPOIMG_ERR_INVALID_ARGUMENT, "guidance");
    bad = o; bad.eta = -1.0;
    CHECK_STATUS(dpoimg_generate(e, &bad, &out), DPOIMG_ERR_INVALID_ARGUMENT, "eta");
    {
        static char big[20000];
        memset(big, 'a', sizeof big - 1);
        bad = o; bad.prompt = big;
        CHECK_STATUS(dpoimg_generate(e, &bad, &out), DPOIMG_ERR_INVALID_ARGUMENT, "prompt");
    }
    bad = o; bad.adapter_count = (size_t)-1; /* refused before any array is formed */
    CHECK_STATUS(dpoimg_generate(e, &bad, &out), DPOIMG_ERR_INVALID_ARGUMENT, "adapters");
    bad = o; bad.adapter_count = 17;
    CHECK_STATUS(dpoimg_generate(e, &bad, &out), DPOIMG_ERR_INVALID_ARGUMENT, "adapters");
    bad = o; bad.adapter_count = 1; /* NULL array with a count */
    CHECK_STATUS(dpoimg_generate(e, &bad, &out), DPOIMG_ERR_MISUSE, "adapters");
    {
        dpoimg_adapter_ref refs[1] = {{NULL, "not-loaded", 1.0f}};
        bad = o; bad.adapters = refs; bad.adapter_count = 1;
        CHECK_STATUS(dpoimg_generate(e, &bad, &out), DPOIMG_ERR_NOT_FOUND, "not-loaded");
        refs[0].name = NULL;
        CHECK_STATUS(dpoimg_generate(e, &bad, &out), DPOIMG_ERR_MISUSE, "exactly one");
        refs[0].name = "\xfe";
        CHECK_STATUS(dpoimg_generate(e, &bad, &out), DPOIMG_ERR_INVALID_ARGUMENT, "UTF-8");
    }

    /* Use after cancel: a cancelled handle stops every call given it, at once. */
    dpoimg_cancel *c = NULL;
    CHECK_STATUS(dpoimg_cancel_new(NULL), DPOIMG_ERR_MISUSE, "out_cancel");
    CHECK_OK(dpoimg_cancel_new(&c));
    CHECK(!dpoimg_cancel_is_requested(c));
    CHECK_OK(dpoimg_cancel_request(c));
    CHECK_OK(dpoimg_cancel_request(c)); /* idempotent */
    CHECK(dpoimg_cancel_is_requested(c));
    bad = o; bad.cancel = c;
    CHECK_STATUS(dpoimg_generate(e, &bad, &out), DPOIMG_ERR_CANCELLED, "cancelled");
    CHECK_STATUS(dpoimg_generate(e, &bad, &out), DPOIMG_ERR_CANCELLED, "cancelled");

    /* A handle of the wrong kind is misuse, not a crash. */
    CHECK_STATUS(dpoimg_generate((const dpoimg_engine *)c, &o, &out), DPOIMG_ERR_MISUSE,
                 "dpoimg_engine");
    bad = o; bad.cancel = (const dpoimg_cancel *)e;
    CHECK_STATUS(dpoimg_generate(e, &bad, &out), DPOIMG_ERR_MISUSE, "dpoimg_cancel");
    CHECK_STATUS(dpoimg_images_get((const dpoimg_images *)c, 0, NULL), DPOIMG_ERR_MISUSE,
                 "dpoimg_images");
    dpoimg_cancel_free(c);
    CHECK(out == SENTINEL);

    /* The engine keeps the last error of calls on it, readable like snprintf. */
    char buf[16];
    size_t n = dpoimg_engine_last_error(e, buf, sizeof buf);
    CHECK(n > 0);
    CHECK(strlen(buf) == (n < sizeof buf ? n : sizeof buf - 1));
    CHECK(dpoimg_engine_last_error(e, NULL, 0) == n);
    CHECK(dpoimg_engine_last_error(NULL, buf, sizeof buf) == 0 && buf[0] == '\0');
}

static void result_errors(dpoimg_engine *e) {
    dpoimg_generate_options o;
    dpoimg_images *images = NULL;
    const dpoimg_image *img = SENTINEL;
    dpoimg_bytes *png = SENTINEL;
    CHECK_OK(dpoimg_generate_options_init(&o, DPOIMG_GENERATE_OPTIONS_VERSION));
    o.prompt = "result";
    o.steps = 1;
    CHECK_OK(dpoimg_generate(e, &o, &images));
    CHECK(dpoimg_images_count(images) == 1);
    CHECK_STATUS(dpoimg_images_get(images, 1, &img), DPOIMG_ERR_INVALID_ARGUMENT, "out of range");
    CHECK_STATUS(dpoimg_images_get(images, 0, NULL), DPOIMG_ERR_MISUSE, "out_image");
    CHECK_STATUS(dpoimg_images_get(NULL, 0, &img), DPOIMG_ERR_MISUSE, "NULL");
    CHECK_STATUS(dpoimg_images_encode_png(images, 5, &png), DPOIMG_ERR_INVALID_ARGUMENT,
                 "out of range");
    CHECK_STATUS(dpoimg_images_encode_png(images, 0, NULL), DPOIMG_ERR_MISUSE, "out_png");
    CHECK(img == SENTINEL && png == SENTINEL);
    dpoimg_images_free(images);
}

static void adapter_errors(dpoimg_engine *e) {
    const dpoimg_adapter *a = SENTINEL;
    dpoimg_adapter_list *list = SENTINEL;
    const dpoimg_adapter_info *info = SENTINEL;
    CHECK_STATUS(dpoimg_engine_adapter_load(NULL, "x", NULL, &a), DPOIMG_ERR_MISUSE, "NULL");
    CHECK_STATUS(dpoimg_engine_adapter_load(e, NULL, NULL, &a), DPOIMG_ERR_MISUSE, "path");
    CHECK_STATUS(dpoimg_engine_adapter_load(e, "\xff", NULL, &a), DPOIMG_ERR_INVALID_ARGUMENT,
                 "UTF-8");
    CHECK_STATUS(dpoimg_engine_adapter_load(e, "/nonexistent.safetensors", NULL, &a),
                 DPOIMG_ERR_ADAPTER, "nonexistent");
    CHECK_STATUS(dpoimg_engine_adapter_load(e, "tests/assets/tiny-bundle/bundle.json", NULL, &a),
                 DPOIMG_ERR_ADAPTER, "safetensors");
    CHECK_STATUS(dpoimg_engine_adapter_load(e, "tests/assets/adapters/r4.safetensors", "", &a),
                 DPOIMG_ERR_INVALID_ARGUMENT, "empty");
    CHECK_STATUS(dpoimg_engine_adapter_unload(e, "nope"), DPOIMG_ERR_NOT_FOUND, "nope");
    CHECK_STATUS(dpoimg_engine_adapter_unload(e, NULL), DPOIMG_ERR_MISUSE, "name");
    CHECK_STATUS(dpoimg_engine_adapter_list(e, NULL), DPOIMG_ERR_MISUSE, "out_list");
    CHECK_STATUS(dpoimg_adapter_get_info(NULL, &info), DPOIMG_ERR_MISUSE, "NULL");
    CHECK_STATUS(dpoimg_adapter_list_get(NULL, 0, &a), DPOIMG_ERR_MISUSE, "NULL");
    CHECK(a == SENTINEL && list == SENTINEL && info == SENTINEL);
}

static void frees_of_null(void) {
    dpoimg_engine_close(NULL);
    dpoimg_images_free(NULL);
    dpoimg_bytes_free(NULL);
    dpoimg_adapter_free(NULL);
    dpoimg_adapter_list_free(NULL);
    dpoimg_cancel_free(NULL);
    CHECK(dpoimg_images_count(NULL) == 0);
    CHECK(dpoimg_adapter_list_count(NULL) == 0);
    CHECK(!dpoimg_cancel_is_requested(NULL));
    CHECK_STATUS(dpoimg_cancel_request(NULL), DPOIMG_ERR_MISUSE, "NULL");
}

int main(void) {
    engine_open_errors();
    frees_of_null();
    dpoimg_engine *e = open_test_engine();
    CHECK(e != NULL);
    if (e) {
        generate_errors(e);
        result_errors(e);
        adapter_errors(e);
    }
    dpoimg_engine_close(e);
    return check_finish("errors");
}
