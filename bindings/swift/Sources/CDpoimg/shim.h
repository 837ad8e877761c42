/* The module's umbrella: dpoimg.h from the include directory pkg-config names. */
#include <dpoimg.h>
