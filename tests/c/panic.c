/* A panic inside the library becomes DPOIMG_ERR_PANIC with its message, on every call, and leaves
 * the library (and an open engine) usable. Run under valgrind too: the unwinding must not leak. */
#include "check.h"

int main(void) {
    CHECK_STATUS(dpoimg_debug_panic("first forced panic"), DPOIMG_ERR_PANIC, "first forced panic");
    CHECK(strstr(dpoimg_last_error(), "panic") != NULL);
    CHECK_STATUS(dpoimg_debug_panic(NULL), DPOIMG_ERR_PANIC, "dpoimg_debug_panic");
    /* Invalid UTF-8 in the message is reported before anything panics. */
    CHECK_STATUS(dpoimg_debug_panic("\xff\xfe"), DPOIMG_ERR_INVALID_ARGUMENT, "UTF-8");

    dpoimg_engine *e = open_test_engine();
    CHECK(e != NULL);
    CHECK_STATUS(dpoimg_debug_panic("with an engine open"), DPOIMG_ERR_PANIC, "engine open");
    dpoimg_generate_options go;
    CHECK_OK(dpoimg_generate_options_init(&go, DPOIMG_GENERATE_OPTIONS_VERSION));
    go.prompt = "still works";
    go.steps = 2;
    dpoimg_images *images = NULL;
    CHECK_OK(dpoimg_generate(e, &go, &images));
    CHECK(dpoimg_images_count(images) == 1);
    dpoimg_images_free(images);
    dpoimg_engine_close(e);
    return check_finish("panic");
}
