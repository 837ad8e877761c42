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
    dpoimg_images_free(images);
    dpoimg_cancel_free(cancel);
    dpoimg_engine_close(engine);
    return DPOIMG_VERSION_MAJOR >= 0 && img == 0 ? 0 : (int)img->width;
}
