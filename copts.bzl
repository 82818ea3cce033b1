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

# Tests that replace malloc themselves (the shim, LD_PRELOAD): the sanitizer
# runtimes own malloc, and valgrind replaces it.
SHIM_TEST_TAGS = ["no_asan", "no_msan", "no_tsan", "no_valgrind"]

# Tests that run programs or tools of their own (LD_PRELOAD into system
# programs, valgrind inside the test): no sanitizer config can run them.
NO_SANITIZER_TAGS = ["no_asan", "no_msan", "no_tsan", "no_ubsan", "no_valgrind"]
