/* Adapters on the engine (load, list, use by name and by handle, unload; handles outliving the
 * unload and the engine) and the log callback (userdata first, level filter, replacement). */
#include "check.h"

typedef struct {
    int messages;
    int infos;
    int above_level;
    int saw_engine_ready;
} log_counts;

static void on_log(void *userdata, int32_t level, const char *message) {
    log_counts *c = userdata;
    c->messages++;
    if (level == DPOIMG_LOG_INFO) c->infos++;
    if (level > DPOIMG_LOG_INFO) c->above_level++;
    if (strstr(message, "engine ready")) c->saw_engine_ready++;
}

static unsigned checksum(dpoimg_engine *e, const dpoimg_adapter_ref *refs, size_t n) {
    dpoimg_generate_options o;
    dpoimg_images *images = NULL;
    const dpoimg_image *img = NULL;
    unsigned sum = 0;
    dpoimg_generate_options_init(&o, DPOIMG_GENERATE_OPTIONS_VERSION);
    o.prompt = "adapters";
    o.steps = 2;
    o.adapters = refs;
    o.adapter_count = n;
    CHECK_OK(dpoimg_generate(e, &o, &images));
    if (dpoimg_images_get(images, 0, &img) == DPOIMG_OK)
        for (size_t i = 0; i < img->len; i++) sum = sum * 31 + img->data[i];
    dpoimg_images_free(images);
    return sum;
}

int main(void) {
    log_counts counts = {0, 0, 0, 0};
    CHECK_OK(dpoimg_log_set_callback(on_log, &counts, DPOIMG_LOG_INFO));
    dpoimg_engine *e = open_test_engine();
    if (!e) return 1;
    CHECK(counts.saw_engine_ready == 1);
    CHECK(counts.infos >= 1);
    CHECK(counts.above_level == 0);

    const dpoimg_adapter *r4 = NULL, *r8 = NULL;
    CHECK_OK(dpoimg_engine_adapter_load(e, "tests/assets/adapters/r4.safetensors", NULL, &r4));
    CHECK_OK(dpoimg_engine_adapter_load(e, "tests/assets/adapters/r8.safetensors", "eight", &r8));
    CHECK_STATUS(dpoimg_engine_adapter_load(e, "tests/assets/adapters/r8.safetensors", "eight",
                                            NULL),
                 DPOIMG_ERR_EXISTS, "already loaded");
    /* kohya names load too, with no handle asked for */
    CHECK_OK(dpoimg_engine_adapter_load(e, "tests/assets/adapters/r4_kohya.safetensors", "kohya",
                                        NULL));

    const dpoimg_adapter_info *info = NULL;
    CHECK_OK(dpoimg_adapter_get_info(r4, &info));
    CHECK(info && strcmp(info->name, "r4") == 0 && info->rank == 4 && strlen(info->sha256) == 64);
    CHECK_OK(dpoimg_adapter_get_info(r8, &info));
    CHECK(info && strcmp(info->name, "eight") == 0 && info->rank == 8);

    dpoimg_adapter_list *list = NULL;
    CHECK_OK(dpoimg_engine_adapter_list(e, &list));
    CHECK(dpoimg_adapter_list_count(list) == 3);
    const char *expected[3] = {"eight", "kohya", "r4"}; /* sorted by name */
    for (size_t i = 0; i < 3; i++) {
        const dpoimg_adapter *a = NULL;
        CHECK_OK(dpoimg_adapter_list_get(list, i, &a));
        CHECK_OK(dpoimg_adapter_get_info(a, &info));
        CHECK(info && strcmp(info->name, expected[i]) == 0);
    }

    dpoimg_adapter_ref by_name[2] = {{NULL, "r4", 0.7f}, {NULL, "eight", 0.3f}};
    dpoimg_adapter_ref by_handle[2] = {{r4, NULL, 0.7f}, {r8, NULL, 0.3f}};
    dpoimg_adapter_ref off[1] = {{r4, NULL, 0.0f}};
    unsigned base = checksum(e, NULL, 0);
    unsigned named = checksum(e, by_name, 2);
    CHECK(named == checksum(e, by_handle, 2));
    CHECK(named != base);
    CHECK(checksum(e, off, 1) == base); /* strength 0 is the base model */

    CHECK_OK(dpoimg_engine_adapter_unload(e, "r4"));
    CHECK_STATUS(dpoimg_engine_adapter_unload(e, "r4"), DPOIMG_ERR_NOT_FOUND, "r4");
    CHECK_STATUS(dpoimg_generate(e, NULL, NULL), DPOIMG_ERR_MISUSE, "options");
    {
        dpoimg_generate_options o;
        dpoimg_images *images = NULL;
        dpoimg_generate_options_init(&o, DPOIMG_GENERATE_OPTIONS_VERSION);
        o.prompt = "unloaded";
        o.adapters = by_name;
        o.adapter_count = 2;
        CHECK_STATUS(dpoimg_generate(e, &o, &images), DPOIMG_ERR_NOT_FOUND, "r4");
    }
    /* The handle outlives the unload, and the list snapshot still holds its adapter. */
    CHECK(checksum(e, by_handle, 2) == named);
    CHECK(dpoimg_adapter_list_count(list) == 3);
    dpoimg_adapter_list_free(list);

    /* Replacing the callback: the old one is never called again after the call returns. */
    log_counts quiet = {0, 0, 0, 0};
    CHECK_OK(dpoimg_log_set_callback(on_log, &quiet, DPOIMG_LOG_ERROR));
    int before = counts.messages;
    dpoimg_engine_close(e);
    e = open_test_engine();
    CHECK(e != NULL);
    CHECK(counts.messages == before);
    CHECK(quiet.saw_engine_ready == 0); /* info is below the error level */
    CHECK_OK(dpoimg_log_set_callback(NULL, NULL, DPOIMG_LOG_OFF));

    /* An adapter handle from one engine is refused by another. */
    {
        dpoimg_generate_options o;
        dpoimg_images *images = NULL;
        dpoimg_generate_options_init(&o, DPOIMG_GENERATE_OPTIONS_VERSION);
        o.prompt = "other engine";
        o.adapters = by_handle;
        o.adapter_count = 1;
        CHECK_STATUS(dpoimg_generate(e, &o, &images), DPOIMG_ERR_MISUSE, "another engine");
    }
    dpoimg_engine_close(e);
    /* Handles stay valid after their engine closed, until freed. */
    CHECK_OK(dpoimg_adapter_get_info(r8, &info));
    CHECK(info && strcmp(info->name, "eight") == 0);
    dpoimg_adapter_free(r4);
    dpoimg_adapter_free(r8);
    return check_finish("adapters_log");
}
