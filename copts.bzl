"""Compiler options shared by every hakmem target, set once."""

# Strict C11 warnings for our own code.
HAK_COPTS = [
    "-std=gnu11",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Wshadow",
    "-Wstrict-prototypes",
    "-Wmissing-prototypes",
    "-Wpointer-arith",
    "-Wvla",
    "-Wno-unused-parameter",
    "-fvisibility=hidden",
    "-ftls-model=initial-exec",
    "-fno-builtin-malloc",
    "-fno-builtin-free",
    "-fno-builtin-calloc",
    "-fno-builtin-realloc",
]

# Tests use the same warnings but may be sloppier about prototypes.
# -fno-builtin: the compiler must not elide or fold allocation calls whose
# results the tests inspect (e.g. aligned_alloc(64, SIZE_MAX) == NULL).
HAK_TEST_COPTS = HAK_COPTS + [
    "-Wno-missing-prototypes",
    "-fno-builtin",
]
