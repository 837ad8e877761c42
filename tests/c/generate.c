/* The header's example, made a test: generate with fixed settings, write the PNG, and compare its
 * pixels with a PNG the `dpoimg` command-line tool made with the same settings (argv[2]).
 *
 * Usage: generate OUT.png [REFERENCE.png]
 *
 * Pixels are compared through the PNG data streams (IHDR + IDAT): both files come from the same
 * encoder with the same settings, which is deterministic, so equal pixels give equal streams and
 * any differing pixel changes them. No PNG decoder is needed in C. The Rust test tests/ffi.rs
 * compares the raw buffers with Engine::generate as well. */
#include "check.h"

/* The settings; scripts/test-c.sh passes the same ones to `dpoimg generate`. */
#define PROMPT "a red circle above a blue square"
#define NEGATIVE "blurry"
#define SEED 42
#define STEPS 4
#define SAMPLER "euler-a"
#define ADAPTER "tests/assets/adapters/r4.safetensors"
#define STRENGTH 0.5f

static bool on_progress(void *userdata, const dpoimg_progress *p) {
    unsigned *calls = userdata;
    (*calls)++;
    CHECK(p->total_steps == STEPS);
    CHECK(p->stage >= DPOIMG_STAGE_ENCODING_PROMPT && p->stage <= DPOIMG_STAGE_DECODING);
    return true;
}

/* The concatenated IHDR and IDAT chunk payloads of a PNG file; NULL if it is not one. */
static unsigned char *png_pixel_stream(const unsigned char *png, size_t len, size_t *out_len) {
    static const unsigned char magic[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    if (len < 8 || memcmp(png, magic, 8) != 0) return NULL;
    unsigned char *out = malloc(len);
    size_t n = 0;
    for (size_t at = 8; at + 12 <= len;) {
        size_t clen = ((size_t)png[at] << 24) | ((size_t)png[at + 1] << 16) |
                      ((size_t)png[at + 2] << 8) | png[at + 3];
        const unsigned char *type = png + at + 4;
        if (at + 12 + clen > len) break;
        if (memcmp(type, "IHDR", 4) == 0 || memcmp(type, "IDAT", 4) == 0) {
            memcpy(out + n, png + at + 8, clen);
            n += clen;
        }
        at += 12 + clen;
    }
    *out_len = n;
    return out;
}

static unsigned char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc(n > 0 ? (size_t)n : 1);
    *len = fread(buf, 1, (size_t)n, f);
    fclose(f);
    return buf;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s OUT.png [REFERENCE.png]\n", argv[0]);
        return 2;
    }
    dpoimg_engine_options eo;
    CHECK_OK(dpoimg_engine_options_init(&eo, DPOIMG_ENGINE_OPTIONS_VERSION));
    eo.device = "cpu";
    eo.intra_threads = 1;
    dpoimg_engine *engine = NULL;
    if (dpoimg_engine_open(test_bundle(), &eo, &engine) != DPOIMG_OK) {
        fprintf(stderr, "open: %s\n", dpoimg_last_error());
        return 1;
    }
    const dpoimg_adapter *adapter = NULL;
    CHECK_OK(dpoimg_engine_adapter_load(engine, ADAPTER, NULL, &adapter));

    dpoimg_generate_options go;
    CHECK_OK(dpoimg_generate_options_init(&go, DPOIMG_GENERATE_OPTIONS_VERSION));
    unsigned calls = 0;
    dpoimg_adapter_ref refs[1] = {{adapter, NULL, STRENGTH}};
    go.prompt = PROMPT;
    go.negative_prompt = NEGATIVE;
    go.seed = SEED;
    go.steps = STEPS;
    go.sampler = SAMPLER;
    go.adapters = refs;
    go.adapter_count = 1;
    go.progress = on_progress;
    go.progress_userdata = &calls;
    dpoimg_images *images = NULL;
    CHECK_OK(dpoimg_generate(engine, &go, &images));
    CHECK(calls == STEPS + 2); /* encoding, each step, decoding */

    const dpoimg_image *img = NULL;
    CHECK_OK(dpoimg_images_get(images, 0, &img));
    if (img) {
        CHECK(img->width == 16 && img->height == 16);
        CHECK(img->stride >= 3 * (size_t)img->width);
        CHECK(img->len == img->stride * img->height);
    }
    dpoimg_bytes *png = NULL;
    CHECK_OK(dpoimg_images_encode_png(images, 0, &png));
    if (png) {
        FILE *f = fopen(argv[1], "wb");
        CHECK(f != NULL);
        if (f) {
            CHECK(fwrite(png->data, 1, png->len, f) == png->len);
            fclose(f);
        }
    }
    if (argc > 2 && png) {
        size_t ref_len = 0, a_len = 0, b_len = 0;
        unsigned char *ref = read_file(argv[2], &ref_len);
        CHECK(ref != NULL);
        unsigned char *a = png_pixel_stream(png->data, png->len, &a_len);
        unsigned char *b = ref ? png_pixel_stream(ref, ref_len, &b_len) : NULL;
        CHECK(a != NULL && b != NULL);
        CHECK(a_len > 13 && a_len == b_len && memcmp(a, b, a_len) == 0);
        if (a && b && (a_len != b_len || memcmp(a, b, a_len) != 0))
            fprintf(stderr, "pixels differ from the dpoimg CLI's %s\n", argv[2]);
        free(a);
        free(b);
        free(ref);
    }
    dpoimg_bytes_free(png);
    dpoimg_images_free(images);
    dpoimg_adapter_free(adapter);
    dpoimg_engine_close(engine);
    return check_finish("generate");
}
