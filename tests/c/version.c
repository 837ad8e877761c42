/* The header's version macros agree with the library's version functions. */
#include "check.h"

int main(void) {
    char expected[64];
    snprintf(expected, sizeof expected, "%d.%d.%d", DPOIMG_VERSION_MAJOR, DPOIMG_VERSION_MINOR,
             DPOIMG_VERSION_PATCH);
    CHECK(strcmp(dpoimg_version(), expected) == 0);
    CHECK(strcmp(dpoimg_version(), DPOIMG_VERSION_STRING) == 0);
    CHECK(dpoimg_version_number() == DPOIMG_VERSION_NUMBER);
    CHECK(DPOIMG_VERSION_NUMBER == DPOIMG_VERSION_MAJOR * 1000000 + DPOIMG_VERSION_MINOR * 1000 +
                                       DPOIMG_VERSION_PATCH);
    CHECK(strcmp(dpoimg_status_name(DPOIMG_OK), "DPOIMG_OK") == 0);
    CHECK(strcmp(dpoimg_status_name(-999), "DPOIMG_ERR_UNKNOWN") == 0);
    CHECK(DPOIMG_ERR_MISUSE < 0 && DPOIMG_ERR_PANIC < 0);
    return check_finish("version");
}
