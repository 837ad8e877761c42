/* Built with `pkg-config --cflags --libs dpoimg` against an installed prefix (scripts/install.sh):
 * the library links, loads the ONNX Runtime installed beside it (argv[1] = PREFIX/lib), and
 * generates. */
#include "check.h"

static char ort_line[4096];

static void on_log(void *userdata, int32_t level, const char *message) {
    (void)userdata;
    (void)level;
    if (strstr(message, "ONNX Runtime loaded") && !ort_line[0])
        snprintf(ort_line, sizeof ort_line, "%s", message);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s PREFIX_LIBDIR\n", argv[0]);
        return 2;
    }
    CHECK(strcmp(dpoimg_version(), DPOIMG_VERSION_STRING) == 0);
    CHECK_OK(dpoimg_log_set_callback(on_log, NULL, DPOIMG_LOG_INFO));
    dpoimg_engine *e = open_test_engine();
    CHECK(e != NULL);
    CHECK_OK(dpoimg_log_set_callback(NULL, NULL, DPOIMG_LOG_OFF));
    char expected[2048];
    snprintf(expected, sizeof expected, "path=%s/libonnxruntime.so", argv[1]);
    CHECK(strstr(ort_line, expected) != NULL);
    if (!strstr(ort_line, expected))
        fprintf(stderr, "ONNX Runtime not loaded from %s: \"%s\"\n", argv[1], ort_line);
    dpoimg_generate_options o;
    dpoimg_images *images = NULL;
    CHECK_OK(dpoimg_generate_options_init(&o, DPOIMG_GENERATE_OPTIONS_VERSION));
    o.prompt = "installed";
    o.steps = 2;
    CHECK_OK(dpoimg_generate(e, &o, &images));
    CHECK(dpoimg_images_count(images) == 1);
    dpoimg_images_free(images);
    dpoimg_engine_close(e);
    return check_finish("installed");
}
